"""The blocking Client against the real control plane over a loopback socket."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from gpufleet import Client, errors
from gpufleet.wire import ModelVersionView

from tests.helpers.fake_runner import FakeRunner, JobError

A = np.array([[1, 2, 3, 4]], dtype=np.float32)
B = np.array([[0.5, 1, 1, 1]], dtype=np.float32)


def test_push_reports_progress_and_model_is_ready(fleet: Client, add_sub_dir: Path) -> None:
    seen: list[tuple[int, int]] = []
    view = fleet.models.push(add_sub_dir, progress=lambda s, t: seen.append((s, t)))
    assert (view.name, view.version, view.state) == ("add_sub", "1", "READY")
    assert {t.name for t in view.inputs} == {"INPUT0", "INPUT1"}
    total = sum(
        p.stat().st_size for p in [add_sub_dir / "config.pbtxt", add_sub_dir / "1" / "model.py"]
    )
    assert seen[-1] == (total, total)
    assert [m.name for m in fleet.models.list()] == ["add_sub"]
    assert [v.version for v in fleet.models.get("add_sub").versions] == ["1"]
    seen.clear()
    again = fleet.models.push(add_sub_dir, progress=lambda s, t: seen.append((s, t)))
    assert (again.version, again.state, seen) == ("1", "READY", [])  # same content: no upload
    assert fleet.models.push(add_sub_dir, version="1").version == "1"  # pinned, identical
    code = add_sub_dir / "1" / "model.py"
    code.write_text(code.read_text() + "\n# changed\n")
    with pytest.raises(errors.ConflictError, match="push without a version"):
        fleet.models.push(add_sub_dir, version="1")  # pinned, other content
    assert fleet.models.push(add_sub_dir).version == "2"  # other content: the next version
    (add_sub_dir / "config.pbtxt").write_text("nonsense {")
    with pytest.raises(ValueError, match=r"config\.pbtxt"):
        fleet.models.push(add_sub_dir)  # refused before anything is sent
    fleet.models.delete("add_sub", "2")
    fleet.models.delete("add_sub", "1")
    with pytest.raises(errors.ModelNotFoundError):
        fleet.submit("add_sub", {"INPUT0": A, "INPUT1": B})


def test_infer_round_trip(fleet: Client, fake_runner: FakeRunner) -> None:
    out = fleet.infer("add_sub", {"INPUT0": A, "INPUT1": B}, timeout=30)
    assert set(out) == {"OUTPUT0", "OUTPUT1"}
    assert out["OUTPUT0"].dtype == np.float32
    np.testing.assert_array_equal(out["OUTPUT0"], A + B)
    np.testing.assert_array_equal(out["OUTPUT1"], A - B)


def test_submit_wait_get_list(fleet: Client, fake_runner: FakeRunner) -> None:
    job = fleet.submit("add_sub", {"INPUT0": A, "INPUT1": B}, priority=7, tags={"team": "a"})
    assert job.status == "QUEUED" and job.id.startswith("job_")
    done = fleet.wait(job.id, timeout=30)
    assert done.status == "SUCCEEDED" and done.outputs is not None
    assert fleet.get(job.id).status == "SUCCEEDED"
    ids = fleet.submit_batch(
        [{"model": "add_sub", "inputs": {"INPUT0": A, "INPUT1": B}} for _ in range(3)]
    )
    assert len(set(ids)) == 3
    for job_id in ids:
        assert fleet.wait(job_id, timeout=30).status == "SUCCEEDED"
    listed = [j.id for j in fleet.list(page_size=2)]  # 2 pages at least: follows next_cursor
    assert set(listed) == {job.id, *ids} and len(listed) == 4
    assert len(list(fleet.list(limit=3, page_size=2))) == 3
    assert [j.id for j in fleet.list(status="SUCCEEDED", model="nope")] == []


def test_failed_job_raises_with_its_error(
    fleet: Client, cp_url: str, ready_model: ModelVersionView
) -> None:
    def broken(_: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise JobError("model_error", "boom")

    token = fleet.admin.create_join_token().join_token
    with FakeRunner(cp_url, token, compute=broken), pytest.raises(errors.JobFailedError) as info:
        fleet.infer("add_sub", {"INPUT0": A, "INPUT1": B}, timeout=30, max_attempts=1)
    assert info.value.status == "FAILED"
    assert info.value.error is not None and info.value.error.code == "model_error"


def test_cancel_and_wait_timeout(fleet: Client, ready_model: ModelVersionView) -> None:
    job = fleet.submit("add_sub", {"INPUT0": A, "INPUT1": B})
    with pytest.raises(errors.WaitTimeoutError):
        fleet.wait(job.id, timeout=0.3, poll=0.2)
    assert fleet.cancel(job.id).status == "CANCELLED"
    with pytest.raises(errors.ConflictError):
        fleet.cancel(job.id)
    with pytest.raises(errors.JobFailedError):
        fleet.outputs(fleet.wait(job.id))


def test_error_mapping_against_the_server(fleet: Client, ready_model: ModelVersionView) -> None:
    with pytest.raises(errors.NotFoundError):
        fleet.get("job_doesnotexist")
    with pytest.raises(errors.ValidationError) as info:
        fleet.submit("add_sub", {"INPUT0": A.astype(np.int32), "INPUT1": B})
    assert "INPUT0" in str(info.value.details) or "INPUT0" in info.value.message
    with pytest.raises(errors.ModelNotFoundError):
        fleet.submit("nosuchmodel", {"INPUT0": A})
    key = fleet.submit("add_sub", {"INPUT0": A, "INPUT1": B}, idempotency_key="same-key")
    again = fleet.submit("add_sub", {"INPUT0": A, "INPUT1": B}, idempotency_key="same-key")
    assert again.id == key.id
    with pytest.raises(errors.ConflictError):
        fleet.submit("add_sub", {"INPUT0": B, "INPUT1": A}, idempotency_key="same-key")


def test_keys_roles_and_auth_errors(
    fleet: Client, cp_url: str, ready_model: ModelVersionView
) -> None:
    created = fleet.admin.create_api_key("acme", "viewer", "ro")
    assert created.api_key and created.id.startswith("key_")
    with Client(cp_url, api_key=created.api_key) as viewer:
        assert [m.name for m in viewer.models.list()] == ["add_sub"]
        with pytest.raises(errors.ForbiddenError):
            viewer.submit("add_sub", {"INPUT0": A, "INPUT1": B})
    fleet.admin.revoke_api_key(created.id)
    with Client(cp_url, api_key=created.api_key) as revoked, pytest.raises(errors.AuthError):
        revoked.models.list()
    with Client(cp_url, token="not-a-jwt") as bogus, pytest.raises(errors.AuthError):
        bogus.models.list()
    runners_before = fleet.runners.list()
    assert isinstance(runners_before, list)


def test_refresh_rotates_tokens_against_the_server(fleet: Client) -> None:
    fleet.authenticate()
    tokens = fleet._core.tokens
    first_access, first_refresh = tokens.access_token, tokens.refresh_token
    tokens.expires_at = 0.0  # as if the token were about to expire
    fleet.models.list()
    assert tokens.access_token != first_access and tokens.refresh_token != first_refresh


class FailFirstSubmit(httpx.BaseTransport):
    """Forwards to the real server, but answers the first submit with 503 *after* the
    server has taken it: the answer is lost, the job exists."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.submits = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path == "/v1/jobs":
            self.submits += 1
            if self.submits == 1:
                response.read()
                body = {"api_version": "v1", "error": {"code": "unavailable", "message": "lost"}}
                return httpx.Response(503, json=body)
        return response


def test_retry_after_a_lost_answer_does_not_duplicate_the_job(
    cp_url: str, admin_key: str, ready_model: ModelVersionView
) -> None:
    transport = FailFirstSubmit()
    with Client(cp_url, api_key=admin_key, transport=transport) as c:
        c._core.retry.base_s = 0.01
        job = c.submit("add_sub", {"INPUT0": A, "INPUT1": B})
        assert transport.submits == 2
        assert [j.id for j in c.list()] == [job.id]


def test_connection_refused_is_a_connection_error() -> None:
    from tests.conftest import free_port

    with Client(f"http://127.0.0.1:{free_port()}", token="t", max_retries=1) as c:
        c._core.retry.base_s = 0.01
        with pytest.raises(errors.ConnectionError):
            c.get("job_x")


def test_large_outputs_come_from_the_bucket(
    fleet: Client, cp_url: str, ready_model: ModelVersionView
) -> None:
    big = np.arange(200_000, dtype=np.float32).reshape(1, -1)  # ~1.4 MB of JSON

    def large(_: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"OUTPUT0": big}

    token = fleet.admin.create_join_token().join_token
    with FakeRunner(cp_url, token, compute=large):
        job = fleet.submit("add_sub", {"INPUT0": A, "INPUT1": B})
        done = fleet.wait(job.id, timeout=30)
    assert done.outputs is None and done.outputs_url is not None
    out = fleet.outputs(done)
    np.testing.assert_array_equal(out["OUTPUT0"], big)


def test_wait_reports_status_and_waiting_reason(
    fleet: Client, ready_model: ModelVersionView, caplog: pytest.LogCaptureFixture
) -> None:
    """No runner: ``wait`` calls ``progress`` with the job's status and why it waits, logs
    it once, and its timeout says the job is still queued (and why)."""
    job = fleet.submit("add_sub", {"INPUT0": A, "INPUT1": B})
    seen: list[tuple[str, str | None, float]] = []
    caplog.set_level("INFO", logger="gpufleet")
    with pytest.raises(errors.WaitTimeoutError) as exc:
        fleet.wait(
            job.id,
            timeout=1.5,
            poll=0.5,
            progress=lambda j, elapsed: seen.append((j.status, j.waiting_reason, elapsed)),
        )
    assert len(seen) >= 2 and all(status == "QUEUED" for status, _, _ in seen)
    assert seen[-1][1] == "no healthy runner is connected" and seen[-1][2] >= seen[0][2]
    assert "still QUEUED" in str(exc.value) and "no healthy runner" in str(exc.value)
    said = [r.getMessage() for r in caplog.records if r.name == "gpufleet"]
    assert len(said) == 1 and said[0].startswith(f"job {job.id} QUEUED after ")  # once
    assert said[0].endswith("s: no healthy runner is connected")
    assert exc.value.job.id == job.id


def test_infer_with_progress_reports_the_wait(
    fleet: Client, ready_model: ModelVersionView, caplog: pytest.LogCaptureFixture
) -> None:
    """``infer(progress=…)`` runs as a job so that its wait is reported (no runner here: the
    call times out saying the job is still queued, after reporting why)."""
    seen: list[tuple[str, str | None]] = []
    with pytest.raises(errors.WaitTimeoutError) as exc:
        fleet.infer(
            "add_sub",
            {"INPUT0": A, "INPUT1": B},
            timeout=1.5,
            progress=lambda j, _elapsed: seen.append((j.status, j.waiting_reason)),
        )
    assert seen and seen[-1] == ("QUEUED", "no healthy runner is connected")
    assert "still QUEUED" in str(exc.value)
    fleet.cancel(exc.value.job.id)


def test_lists_and_float64_are_cast_to_the_models_datatype(
    fleet: Client, fake_runner: FakeRunner
) -> None:
    """add_sub takes FP32: a list and a float64 array are sent as FP32 (no value changes);
    values FP32 cannot hold exactly are refused before anything is sent, naming the input."""
    out = fleet.infer("add_sub", {"INPUT0": [[1, 2, 3, 4]], "INPUT1": np.ones((1, 4))}, timeout=30)
    assert out["OUTPUT0"].dtype == np.float32
    np.testing.assert_array_equal(out["OUTPUT0"], [[2, 3, 4, 5]])
    job = fleet.submit("add_sub", {"INPUT0": np.full((1, 4), 0.5), "INPUT1": [[1.0] * 4]})
    assert fleet.wait(job.id, timeout=30).status == "SUCCEEDED"
    with pytest.raises(ValueError, match="input INPUT0: the model takes FP32"):
        fleet.submit("add_sub", {"INPUT0": np.full((1, 4), 0.1), "INPUT1": B})
