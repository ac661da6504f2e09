"""Input parsing, output rendering and exit codes of the ``gpufleet`` CLI."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from gpufleet import errors
from gpufleet.tensors import dtype_of, to_tensor

__all__ = [
    "EXIT_AUTH",
    "EXIT_CONFLICT",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_RETRYABLE",
    "EXIT_USAGE",
    "EXIT_VALIDATION",
    "Output",
    "exit_code_for",
    "parse_inputs",
    "parse_pairs",
]

# Stable exit codes (docs/cli.md).
EXIT_OK = 0
EXIT_FAILED = 1  # the job failed, or an unexpected error
EXIT_USAGE = 2  # bad command line (click's own usage errors use 2 as well)
EXIT_AUTH = 3  # 401 / 403
EXIT_NOT_FOUND = 4  # 404
EXIT_CONFLICT = 5  # 409
EXIT_VALIDATION = 6  # 422 / 413
EXIT_RETRYABLE = 7  # 429, 503, 504, connection errors, wait timeouts


def exit_code_for(exc: BaseException) -> int:
    """The CLI exit code for an SDK error."""
    table: list[tuple[type[BaseException] | tuple[type[BaseException], ...], int]] = [
        ((errors.AuthError, errors.ForbiddenError), EXIT_AUTH),
        (errors.NotFoundError, EXIT_NOT_FOUND),
        (errors.ConflictError, EXIT_CONFLICT),
        ((errors.InvalidRequestError, errors.PayloadTooLargeError), EXIT_VALIDATION),
        (
            (
                errors.RateLimitedError,
                errors.UnavailableError,
                errors.GatewayTimeoutError,
                errors.ConnectionError,
                errors.WaitTimeoutError,
            ),
            EXIT_RETRYABLE,
        ),
    ]
    for kinds, code in table:
        if isinstance(exc, kinds):
            return code
    return EXIT_FAILED


def parse_pairs(items: Iterable[str], what: str) -> dict[str, str]:
    """``["k=v", …]`` -> ``{"k": "v"}`` (usage error on a malformed item)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=what)
        out[key] = value
    return out


def parse_inputs(
    items: Sequence[str], datatypes: Mapping[str, str] | None = None
) -> dict[str, np.ndarray[Any, Any]]:
    """``NAME=@file.npy``, ``NAME=<JSON>`` or ``NAME:FP32=<JSON>`` -> arrays.

    JSON values are cast to the datatype given after the colon, else to the model's
    declared datatype (``datatypes``), else left as numpy infers them.
    """
    out: dict[str, np.ndarray[Any, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, _, datatype = key.partition(":")
        if not sep or not name:
            raise typer.BadParameter(f"expected NAME=@file.npy or NAME=JSON, got {item!r}")
        if value.startswith("@"):
            try:
                out[name] = np.load(Path(value[1:]), allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise typer.BadParameter(f"cannot read {value[1:]}: {exc}") from exc
            continue
        try:
            data = json.loads(value)
        except ValueError as exc:
            raise typer.BadParameter(f"input {name}: not JSON ({exc})") from exc
        target = datatype or (datatypes or {}).get(name)
        try:
            if target == "BYTES":
                array = np.asarray(data, dtype=object)
            elif target:
                array = np.asarray(data, dtype=dtype_of(target))
            else:
                array = np.asarray(data)
        except (TypeError, ValueError) as exc:
            raise typer.BadParameter(f"input {name}: {exc}") from exc
        out[name] = array
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, np.ndarray):
        tensor = to_tensor("x", value)
        return {"datatype": tensor.datatype, "shape": tensor.shape, "data": tensor.data}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


SECRETS = frozenset({"api_key", "join_token", "secret", "access_token", "refresh_token"})


class Output:
    """Where and how results go: ``table`` (rich, humans) or ``json`` (scripts) on stdout;
    messages and progress on stderr."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.out = Console(soft_wrap=True, highlight=False)
        self.err = Console(stderr=True, highlight=False)

    @property
    def json(self) -> bool:
        return self.mode == "json"

    def emit_json(self, value: Any) -> None:
        sys.stdout.write(json.dumps(_jsonable(value), indent=2) + "\n")
        sys.stdout.flush()

    def record(self, value: Any, title: str | None = None) -> None:
        """One object: JSON, or a two-column table of its fields."""
        if self.json:
            self.emit_json(value)
            return
        data = _jsonable(value)
        table = Table(title=title, show_header=False)
        table.add_column("field", no_wrap=True)
        table.add_column("value", overflow="fold")  # folded to the terminal, never cut short
        for key, val in data.items():
            if key == "api_version":
                continue
            text = val if isinstance(val, str) else json.dumps(val)
            if key not in SECRETS and len(text) >= 200:
                text = text[:197] + "..."
            table.add_row(str(key), text)
        self.out.print(table)

    def rows(self, items: Sequence[Any], columns: Sequence[str], key: str = "items") -> None:
        """Many objects: JSON ``{key: [...]}``, or a table of the chosen columns."""
        if self.json:
            self.emit_json({key: list(items)})
            return
        table = Table()
        for column in columns:  # every column folds: the table fits an 80-column terminal
            table.add_column(column, overflow="fold")
        for item in items:
            data = _jsonable(item)
            table.add_row(*[_cell(data.get(c)) for c in columns])
        self.out.print(table)

    def arrays(self, outputs: Mapping[str, np.ndarray[Any, Any]]) -> None:
        """Inference outputs."""
        if self.json:
            self.emit_json({"outputs": outputs})
            return
        table = Table("name", "datatype", "shape", "data")
        for name, array in outputs.items():
            enc = _jsonable(array)
            table.add_row(name, enc["datatype"], str(enc["shape"]), _cell(enc["data"]))
        self.out.print(table)

    def error(self, exc: BaseException) -> None:
        """An error on stderr (JSON in json mode); pydantic's text is turned into one line
        per field."""
        if isinstance(exc, ValidationError):
            exc = ValueError(plain_validation(exc))
        if self.json:
            body: dict[str, Any] = {"code": getattr(exc, "code", type(exc).__name__)}
            body["message"] = getattr(exc, "message", str(exc))
            if getattr(exc, "details", None) is not None:
                body["details"] = exc.details  # type: ignore[attr-defined]
            if isinstance(exc, errors.JobFailedError):
                body["job"] = _jsonable(exc.job)
            sys.stderr.write(json.dumps({"error": body}) + "\n")
            return
        self.err.print("[red]error:[/red]", str(exc).replace("[", "\\["))
        details = getattr(exc, "details", None)
        if details:
            self.err.print(json.dumps(details, indent=2))


def plain_validation(exc: ValidationError) -> str:
    """``field: message; …`` instead of pydantic's multi-line report."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "value"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
