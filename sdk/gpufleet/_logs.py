"""Log lines a person can follow, for the control plane and the runner (stdlib only).

``configure(level, fmt)``: ``fmt`` ``json`` (one JSON object a line: ``ts``, ``level``,
``logger``, ``msg`` and the context below), ``text`` (readable), or ``auto`` (text on a
terminal, JSON otherwise). Every line carries what is known about what it concerns —
``request_id``, ``tenant``, ``job``, ``runner``, ``model`` — from ``context`` (context
variables: set once per request or job, they follow its tasks and threads)."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

FIELDS = ("request_id", "tenant", "job", "runner", "model")
context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"gpufleet_{name}", default=None) for name in FIELDS
}
QUIET = ("httpx", "httpcore", "botocore", "urllib3", "werkzeug", "websockets")


# Process-wide values, used where the context has none (the runner's id: known only once it
# registers, which may be after its loops started, and again after a re-registration).
defaults: dict[str, str | None] = {}


def bind(**values: str | None) -> None:
    """Set context fields for what runs next in this task or thread."""
    for name, value in values.items():
        context[name].set(value)


def bind_process(**values: str | None) -> None:
    """Set fields for every line of this process that has no value of its own for them."""
    for name, value in values.items():
        if name not in context:
            raise ValueError(f"unknown log field {name!r}")
        defaults[name] = value


class ContextFilter(logging.Filter):
    """Copies the context fields onto each record (``record.request_id``, …)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in context.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get() or defaults.get(name))
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        # (whole second, its text) of the last line: one strftime a second, not one a line;
        # a tuple, replaced whole, so threads formatting at once never mix two seconds
        self._stamp: tuple[int, str] = (-1, "")
        self._encode = json.JSONEncoder(default=str).encode  # built once, as dumps would

    def format(self, record: logging.LogRecord) -> str:
        stamp = self._stamp
        if stamp[0] != int(record.created):
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            stamp = self._stamp = (int(record.created), text)
        out: dict[str, Any] = {
            "ts": f"{stamp[1]}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return self._encode(out)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(
            f"{name}={getattr(record, name)}"
            for name in FIELDS
            if getattr(record, name, None) is not None
        )
        return f"{line} [{extra}]" if extra else line


def configure(level: str, fmt: str = "auto", stream: Any = None) -> None:
    """Root logging for one process (see the module docstring); chatty client libraries
    (each HTTP request, each storage call) only from WARNING unless ``level`` is DEBUG."""
    stream = stream or sys.stderr
    if fmt not in ("auto", "json", "text"):
        raise ValueError(f"log format must be auto, json or text, got {fmt!r}")
    if fmt == "auto":
        fmt = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if root.level > logging.DEBUG:
        for name in QUIET:
            logging.getLogger(name).setLevel(logging.WARNING)
