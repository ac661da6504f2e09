"""Verification of runner-signed calls (RunnerService.authenticate) on in-memory stores."""

from __future__ import annotations

import time
from typing import Any

import pytest
from gpufleet import signing

from control_plane.errors import Unauthorized
from control_plane.services.principal import ROLE_SCOPES, Principal
from control_plane.services.runners import RunnerService
from control_plane.storage.protocols_auth import JoinTokenRecord, RunnerRecord

SECRET = "runner-secret-0123456789abcdef"
PATH = "/v1/runners/run_1/heartbeat"
ADMIN = Principal(sub="admin", tenant="t", role="admin", scopes=ROLE_SCOPES["admin"])


class MemoryRunnerStore:
    """A RunnerStore in a dict (only what authenticate needs is exercised)."""

    def __init__(self) -> None:
        self.runners: dict[str, RunnerRecord] = {}

    def create_runner(self, rec: RunnerRecord) -> None:
        self.runners[rec.id] = rec

    def find_runner(self, runner_id: str) -> RunnerRecord | None:
        return self.runners.get(runner_id)

    def record_heartbeat(
        self,
        runner_id: str,
        at: float,
        gpus: list[dict[str, Any]],
        models: list[dict[str, Any]],
        triton: dict[str, Any],
        running_jobs: list[str],
    ) -> RunnerRecord | None:
        return None

    def merge_config(self, runner_id: str, patch: dict[str, Any]) -> RunnerRecord | None:
        return None

    def revoke_runner(self, runner_id: str) -> bool:
        rec = self.runners[runner_id]
        self.runners[runner_id] = RunnerRecord(**{**rec.__dict__, "revoked": True})
        return True

    def list_runners(self) -> list[RunnerRecord]:
        return list(self.runners.values())

    def ping(self) -> None:
        return None


class MemoryNonceStore:
    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def remember_nonce(self, key: str, now: float, expires_at: float) -> bool:
        if key in self.seen and self.seen[key] >= now:
            return False
        self.seen[key] = expires_at
        return True


def _no_join(token: str) -> JoinTokenRecord:
    raise Unauthorized("no")


@pytest.fixture
def svc() -> tuple[RunnerService, MemoryRunnerStore, MemoryNonceStore]:
    store, nonces = MemoryRunnerStore(), MemoryNonceStore()
    store.create_runner(RunnerRecord("run_1", "r", "eu", {}, SECRET, time.time()))
    service = RunnerService(
        store, nonces, _no_join, lambda ids: [], window_s=300, offline_after_s=30
    )
    return service, store, nonces


def call(
    service: RunnerService,
    headers: dict[str, str],
    *,
    path: str = PATH,
    path_id: str = "run_1",
    body: bytes = b"{}",
    query: str = "",
) -> RunnerRecord:
    lower = {k.lower(): v for k, v in headers.items()}
    return service.authenticate(path_id, "POST", path, query, lower, body)


def test_valid_signature_accepted_once(svc: Any) -> None:
    service, _, nonces = svc
    h = signing.sign_headers("run_1", SECRET, "POST", PATH, body=b"{}")
    assert call(service, h).id == "run_1"
    assert len(nonces.seen) == 1
    with pytest.raises(Unauthorized, match="nonce"):
        call(service, h)


def test_query_is_signed_sorted(svc: Any) -> None:
    service, _, _ = svc
    h = signing.sign_headers("run_1", SECRET, "POST", PATH, query="b=2&a=1", body=b"{}")
    assert call(service, h, query="b=2&a=1").id == "run_1"
    h = signing.sign_headers("run_1", SECRET, "POST", PATH, query="a=1", body=b"{}")
    with pytest.raises(Unauthorized):
        call(service, h, query="a=2")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda h: h.pop(signing.HEADER_SIGNATURE),
        lambda h: h.pop(signing.HEADER_NONCE),
        lambda h: h.update({signing.HEADER_SIGNATURE: "v1=" + "0" * 64}),
        lambda h: h.update({signing.HEADER_SIGNATURE: "v2=" + "0" * 64}),
        lambda h: h.update({signing.HEADER_TIMESTAMP: "yesterday"}),
        lambda h: h.update({signing.HEADER_NONCE: "short"}),
    ],
)
def test_bad_headers_rejected(svc: Any, mutate: Any) -> None:
    service, _, nonces = svc
    h = signing.sign_headers("run_1", SECRET, "POST", PATH, body=b"{}")
    mutate(h)
    with pytest.raises(Unauthorized):
        call(service, h)
    assert nonces.seen == {}


def test_tampered_body_rejected(svc: Any) -> None:
    service, _, _ = svc
    h = signing.sign_headers("run_1", SECRET, "POST", PATH, body=b"{}")
    with pytest.raises(Unauthorized, match="signature"):
        call(service, h, body=b'{"running_jobs": []}')


def test_signature_bound_to_path(svc: Any) -> None:
    service, _, _ = svc
    h = signing.sign_headers("run_1", SECRET, "POST", "/v1/runners/run_1/lease", body=b"{}")
    with pytest.raises(Unauthorized, match="signature"):
        call(service, h)


def test_runner_header_must_match_path(svc: Any) -> None:
    service, store, _ = svc
    store.create_runner(RunnerRecord("run_2", "r2", "eu", {}, SECRET, time.time()))
    h = signing.sign_headers("run_2", SECRET, "POST", PATH, body=b"{}")
    with pytest.raises(Unauthorized, match="path"):
        call(service, h)


# A minute past the 300 s window both ways: a loaded machine may take seconds to verify.
@pytest.mark.parametrize("skew", [-360, 360, -10_000])
def test_stale_or_future_timestamp_rejected(svc: Any, skew: int) -> None:
    service, _, _ = svc
    h = signing.sign_headers("run_1", SECRET, "POST", PATH, body=b"{}", now=time.time() + skew)
    with pytest.raises(Unauthorized, match="window"):
        call(service, h)


def test_unknown_and_revoked_runner_rejected(svc: Any) -> None:
    service, store, _ = svc
    h = signing.sign_headers("run_9", SECRET, "POST", "/v1/runners/run_9/x", body=b"")
    with pytest.raises(Unauthorized):
        call(service, h, path="/v1/runners/run_9/x", path_id="run_9", body=b"")
    store.revoke_runner("run_1")
    h = signing.sign_headers("run_1", SECRET, "POST", PATH, body=b"{}")
    with pytest.raises(Unauthorized, match="revoked"):
        call(service, h)


def test_usable_is_read_once_per_fresh_window_and_sees_local_changes_at_once(
    svc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease long poll asks ``usable`` every round: a usable answer is trusted for
    ``USABLE_FRESH_S``, a revocation made through the service is seen at once, a drain
    written elsewhere (another replica, the autoscaler) once that time has passed."""
    from control_plane.services import runners as runners_module

    service, store, _ = svc
    reads = 0
    find = store.find_runner

    def counted(runner_id: str) -> RunnerRecord | None:
        nonlocal reads
        reads += 1
        return find(runner_id)

    monkeypatch.setattr(store, "find_runner", counted)
    monkeypatch.setattr(runners_module, "USABLE_FRESH_S", 0.2)
    assert service.usable("run_1") and service.usable("run_1") and reads == 1
    rec = store.runners["run_1"]
    store.runners["run_1"] = RunnerRecord(**{**rec.__dict__, "config": {"drain": True}})
    assert service.usable("run_1")  # written behind the service's back: trusted a while
    time.sleep(0.25)
    assert not service.usable("run_1") and reads == 2
    assert not service.usable("run_1") and reads == 3  # an unusable answer is never cached
    store.runners["run_1"] = rec
    assert service.usable("run_1") and reads == 4
    service.revoke(ADMIN, "run_1")
    assert not service.usable("run_1") and reads == 5  # revoked here: seen at once
    assert not service.usable("run_missing")
