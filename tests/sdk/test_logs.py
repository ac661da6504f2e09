"""Log lines: JSON off a terminal with the context fields, readable text on one, chatty
HTTP client loggers quiet (the control plane's X-Request-ID:
tests/control_plane/api/test_system_routes.py)."""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

import pytest
from gpufleet import _logs


@pytest.fixture(autouse=True)
def restore_logging() -> Any:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {n: logging.getLogger(n).level for n in _logs.QUIET}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)
    _logs.bind(request_id=None, tenant=None, job=None, runner=None, model=None)
    _logs.defaults.clear()


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_carry_the_context() -> None:
    out = io.StringIO()
    _logs.configure("info", "auto", out)  # not a terminal: JSON
    _logs.bind(request_id="req_1", job="job_9", model="add_sub")
    logging.getLogger("gpufleet.test").info("job %s started", "job_9")
    logging.getLogger("httpx").info("HTTP Request: POST /heartbeat")  # quiet below WARNING
    [line] = out.getvalue().splitlines()
    doc = json.loads(line)
    assert doc["msg"] == "job job_9 started" and doc["level"] == "info"
    assert (doc["request_id"], doc["job"], doc["model"]) == ("req_1", "job_9", "add_sub")
    assert "tenant" not in doc and doc["ts"].endswith("Z")


def test_text_on_a_terminal_and_bad_format() -> None:
    out = Tty()
    _logs.configure("info", "auto", out)
    _logs.bind(runner="run_1")
    logging.getLogger("x").warning("control plane not reachable")
    text = out.getvalue()
    assert "WARNING x: control plane not reachable [runner=run_1]" in text
    with pytest.raises(ValueError, match="auto, json or text"):
        _logs.configure("info", "yaml", out)


def test_process_wide_fields_fill_in_where_the_context_has_none() -> None:
    """The runner's id, known only once it registers (maybe after its loops started, and
    again after a re-registration), is on every line without a value of its own."""
    out = io.StringIO()
    _logs.configure("info", "json", out)
    log = logging.getLogger("gpufleet.test")
    log.info("before registering")
    _logs.bind_process(runner="run_1")
    log.info("registered")
    _logs.bind_process(runner="run_2")  # re-registered
    log.info("again")
    _logs.bind(runner="run_own")
    log.info("own")
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d.get("runner") for d in docs] == [None, "run_1", "run_2", "run_own"]
    with pytest.raises(ValueError, match="unknown log field"):
        _logs.bind_process(color="red")


def test_json_time_stamp_follows_each_second() -> None:
    """The formatter writes the date once a second: lines of one second share it, the next
    second gets its own, and a line back in time (clock step) is right too."""
    fmt = _logs.JsonFormatter()
    for created in (1_000_000_000.001, 1_000_000_000.999, 1_000_000_001.5, 999_999_999.25):
        record = logging.LogRecord("x", logging.INFO, "f.py", 1, "m %s", ("a",), None)
        record.created, record.msecs = created, (created % 1) * 1000
        want = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        assert json.loads(fmt.format(record))["ts"] == f"{want}.{int(record.msecs):03d}Z"
