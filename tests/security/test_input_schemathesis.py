"""Issue 12 proof: schemathesis over the whole OpenAPI document of a real control plane on a
loopback socket, 0 failures. Bearer routes run as an admin (every route is reachable), the
runner routes are HMAC-signed as a registered runner (the signature is computed over the
exact bytes schemathesis sends), and add_sub is pushed so model routes see a real model.

Every check of schemathesis runs (server errors, status codes, content types, response
headers and bodies against the schema, schema-invalid data rejected, schema-valid data not
refused as invalid, missing required headers, unsupported methods). Bounded: at most
``GPUFLEET_SCHEMATHESIS_EXAMPLES`` (default 6) examples per operation, no shrinking past a
deadline, derandomised so a run is repeatable. docs/security.md lists what it covers.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from gpufleet import signing
from gpufleet.client import Client
from schemathesis.core import NotSet
from schemathesis.specs.openapi.checks import positive_data_acceptance

from control_plane.app import create_app
from control_plane.composition import build_services
from control_plane.http_server import server_config
from control_plane.settings import Settings
from tests.conftest import TEST_JWT_SECRET
from tests.control_plane.api.helpers import ADD_SUB

EXAMPLES = int(os.environ.get("GPUFLEET_SCHEMATHESIS_EXAMPLES", "6"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("schemathesis"),
    # schemathesis' own strategies trip Hypothesis deprecations (not this project's code)
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleet:
    """A control plane on a socket, an admin token, a registered runner, add_sub pushed."""

    def __init__(self, data_dir: Path) -> None:
        import uvicorn

        self.settings = Settings(
            embedded=True,
            data_dir=data_dir,
            jwt_secret=TEST_JWT_SECRET,
            max_wait_s=0.5,  # long polls stay short under fuzzing
            max_lease_wait_s=0.2,
            infer_wait_s=0.5,
            sweep_interval_s=0.5,
            poll_interval_s=0.05,
        )
        self.services = build_services(self.settings)
        self.app = create_app(self.settings, self.services)
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        assert self.services.stores is not None
        self.services.stores.set_public_url(self.url)
        config = server_config(self.app, self.settings, "127.0.0.1", port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started
        key = self.services.auth.issue_api_key("default", "admin", "schemathesis").api_key
        with Client(self.url, api_key=key, timeout=30.0) as client:
            client.models.push(ADD_SUB)
            join = client.admin.create_join_token().join_token
        self.session = requests.Session()
        r = self.session.post(f"{self.url}/v1/auth/token", json={"api_key": key}, timeout=30)
        r.raise_for_status()
        self.admin = {"Authorization": f"Bearer {r.json()['access_token']}"}
        r = self.session.post(
            f"{self.url}/v1/runners/register",
            json={"join_token": join, "name": "fuzz-runner"},
            timeout=30,
        )
        r.raise_for_status()
        self.runner_id, self.runner_secret = r.json()["runner_id"], r.json()["secret"]

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.session.close()
        if self.services.stores is not None:
            self.services.stores.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("schemathesis") / "data")
    yield f
    f.close()


@pytest.fixture(scope="module")
def api_schema(fleet: Fleet) -> Any:
    loaded = schemathesis.openapi.from_dict(fleet.app.state.openapi)
    loaded.config.update(base_url=fleet.url)

    class FleetAuth:
        """An admin bearer token on bearer routes; on runner routes, the registered runner's
        id in the path and an HMAC signature over the exact JSON bytes the transport sends
        (``requests``: ``json.dumps(body, allow_nan=False)``, UTF-8)."""

        def get(self, case: Any, ctx: Any) -> str:
            return "fleet"

        def set(self, case: Any, data: str, ctx: Any) -> None:
            case.headers = dict(case.headers or {})
            if not _runner_signed(case):
                case.headers.update(fleet.admin)
                return
            if "runner_id" in (case.path_parameters or {}):
                case.path_parameters["runner_id"] = fleet.runner_id
            raw = _wire_bytes(case.body)
            path = case.formatted_path
            case.headers.update(
                signing.sign_headers(
                    fleet.runner_id, fleet.runner_secret, case.method, path, "", raw
                )
            )

    loaded.auth.auth(refresh_interval=None, retry_on=[])(FleetAuth)
    return loaded


schema = schemathesis.pytest.from_fixture("api_schema")


def _wire_bytes(body: Any) -> bytes:
    """The bytes ``requests`` sends for ``body`` (JSON: ``json.dumps(allow_nan=False)``);
    b"" for a body it cannot serialise (then the signature is wrong and the call is a 401)."""
    if body is None or isinstance(body, NotSet):
        return b""
    if isinstance(body, bytes):
        return body
    try:
        return json.dumps(body, allow_nan=False).encode()
    except (TypeError, ValueError):
        return b""


def _runner_signed(case: Any) -> bool:
    return "runnerSignature" in json.dumps(case.operation.definition.raw.get("security", []))


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)
def test_api_conforms_to_its_schema(case: Any, fleet: Fleet) -> None:
    # positive_data_acceptance is left out: a schema cannot say that a tensor's shape must
    # fit the model's config or that Inference-Header-Content-Length must fit the body, so
    # schema-valid requests are rightly refused with 422 (docs/security.md#schemathesis).
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
