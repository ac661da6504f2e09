"""TLS end to end with a local CA (trustme): the control plane serves HTTPS and gRPC over TLS
itself (``GPUFLEET_TLS_CERT_FILE`` / ``GPUFLEET_TLS_KEY_FILE``, as ``serve --tls-cert/--tls-key``
set them), the SDK, the CLI and the runner (mock backend: registration, model download from
HTTPS blob URLs, a durable job, a synchronous infer over the wss:// dispatch channel) connect
with the CA bundle and refuse what they should; mutual TLS for runners; certificate rotation
(file change and SIGHUP) under a steady request stream, with a connection open across it."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trustme
from gpufleet import Client, ConnectionError, TlsSettingError
from pydantic import ValidationError
from typer.testing import CliRunner

from runner.backends.mock_backend import MockBackend
from runner.cp_client import ControlPlaneError
from runner.daemon import Daemon
from runner.gpu import GpuReader
from runner.settings import RunnerSettings
from tests.helpers.procs import ControlPlaneProc, start_control_plane

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "model_repository"

pytestmark = pytest.mark.slow


@dataclass
class Pki:
    """A CA and a server certificate for 127.0.0.1 and localhost, as PEM files."""

    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path


def _pki(directory: Path, *names: str) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert(*(names or ("127.0.0.1", "localhost")))
    pki = Pki(ca, directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(pki.ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(pki.cert_file))
    cert.private_key_pem.write_to_path(str(pki.key_file))
    return pki


def _start(workdir: Path, pki: Pki, **env: str) -> ControlPlaneProc:
    base = {
        "GPUFLEET_TLS_CERT_FILE": str(pki.cert_file),
        "GPUFLEET_TLS_KEY_FILE": str(pki.key_file),
    }
    try:
        return start_control_plane(workdir, {**base, **env})
    except RuntimeError as exc:
        pytest.fail(str(exc))


def _grpc_port(cp: ControlPlaneProc) -> int:
    for line in cp.log_file.read_text().splitlines():
        if line.startswith("gpufleet KServe gRPC listening on "):
            return int(line.rsplit(":", 1)[1])
    raise AssertionError("no gRPC line:\n" + cp.log_tail())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ControlPlaneProc]:
    proc = _start(tmp_path_factory.mktemp("cp"), pki, GPUFLEET_GRPC_PORT="0")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(autouse=True)
def _no_tls_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("GPUFLEET_CA", "GPUFLEET_TLS", "GPUFLEET_CLIENT", "SSL_CERT")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GPUFLEET_CONFIG_DIR", str(tmp_path / "sdk-config"))


# --------------------------------------------------------------------------- SDK and CLI


def test_the_control_plane_serves_https_with_hsts(cp: ControlPlaneProc, pki: Pki) -> None:
    assert cp.url.startswith("https://127.0.0.1:")
    resp = httpx.get(cp.url + "/v1/health", verify=ssl.create_default_context(cafile=pki.ca_file))
    assert resp.status_code == 200
    assert resp.headers["strict-transport-security"] == "max-age=31536000"


def test_the_kserve_short_path_answers_with_hsts_too(cp: ControlPlaneProc, pki: Pki) -> None:
    """A known token's KServe infer is answered by the listener itself (kserve_fast.py):
    its answers carry Strict-Transport-Security like every other response."""
    verify = ssl.create_default_context(cafile=pki.ca_file)
    with httpx.Client(base_url=cp.url, verify=verify, timeout=10) as http:
        token = http.post("/v1/auth/token", json={"api_key": cp.admin_key}).json()
        bearer = {"Authorization": f"Bearer {token['access_token']}"}
        assert http.get("/v2/models/none", headers=bearer).status_code == 404  # token known
        deep = b'{"inputs":' + b"[" * 100 + b"]" * 100 + b"}"  # refused before any runner
        for _ in range(2):
            resp = http.post("/v2/models/none/infer", content=deep, headers=bearer)
            assert resp.status_code == 422, resp.text
            assert resp.headers["strict-transport-security"] == "max-age=31536000"
            assert resp.headers["x-request-id"]


def test_sdk_connects_with_the_ca_bundle(cp: ControlPlaneProc, pki: Pki) -> None:
    with Client(cp.url, api_key=cp.admin_key, ca_bundle=pki.ca_file) as fleet:
        fleet.authenticate()
        assert fleet.runners.list() is not None


def test_sdk_takes_the_ca_bundle_from_the_environment(
    cp: ControlPlaneProc, pki: Pki, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # a directory of PEM files works as well as one file
    bundle = tmp_path / "cas"
    bundle.mkdir()
    shutil.copy(pki.ca_file, bundle / "private-ca.pem")
    monkeypatch.setenv("GPUFLEET_CA_BUNDLE", str(bundle))
    with Client(cp.url, api_key=cp.admin_key) as fleet:
        fleet.authenticate()


def test_sdk_without_the_ca_names_the_url_and_the_setting(cp: ControlPlaneProc) -> None:
    fleet = Client(cp.url, api_key=cp.admin_key, max_retries=0)
    with fleet, pytest.raises(ConnectionError) as err:
        fleet.authenticate()
    text = str(err.value)
    assert cp.url in text and "not trusted" in text and "GPUFLEET_CA_BUNDLE" in text


def test_sdk_refuses_a_certificate_for_another_host(tmp_path: Path) -> None:
    wrong = _pki(tmp_path / "pki", "fleet.example.com")
    proc = _start(tmp_path / "cp", wrong)
    try:
        fleet = Client(proc.url, api_key=proc.admin_key, ca_bundle=wrong.ca_file)
        with fleet, pytest.raises(ConnectionError) as err:
            fleet.authenticate()
        assert "not valid for that host name" in str(err.value) and proc.url in str(err.value)
    finally:
        proc.stop()


def test_verification_off_only_for_loopback_unless_asked(
    cp: ControlPlaneProc, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(TlsSettingError) as err:
        Client("https://fleet.example.com", api_key="gf_x", tls_verify=False)
    assert "GPUFLEET_TLS_INSECURE_REMOTE" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="gpufleet.tls"):
        Client(
            "https://fleet.example.com", api_key="gf_x", tls_verify=False, tls_insecure_remote=True
        ).close()
    assert "verification is OFF" in caplog.text
    # loopback: allowed (with the warning), and it connects to the self-signed server
    with Client(cp.url, api_key=cp.admin_key, tls_verify=False) as fleet:
        fleet.authenticate()


def test_cli_login_stores_the_ca_bundle(cp: ControlPlaneProc, pki: Pki, tmp_path: Path) -> None:
    from gpufleet.cli import app

    cli = CliRunner()
    result = cli.invoke(
        app,
        ["--ca-bundle", str(pki.ca_file), "login", "--url", cp.url, "--api-key", cp.admin_key],
    )
    assert result.exit_code == 0, result.output
    # later commands use the saved CA without the flag
    result = cli.invoke(app, ["-o", "json", "models", "list"])
    assert result.exit_code == 0, result.output
    # --no-tls-verify for a remote name is refused with a usage error naming the setting
    result = cli.invoke(
        app, ["--no-tls-verify", "--url", "https://fleet.example.com", "--api-key", "gf_x",
              "models", "list"],
    )  # fmt: skip
    assert result.exit_code == 2 and "GPUFLEET_TLS_INSECURE_REMOTE" in result.output


# --------------------------------------------------------------------------- gRPC


def test_grpc_listener_uses_the_same_certificate(cp: ControlPlaneProc, pki: Pki) -> None:
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    url = f"localhost:{_grpc_port(cp)}"
    token = httpx.post(
        cp.url + "/v1/auth/token",
        json={"api_key": cp.admin_key},
        verify=ssl.create_default_context(cafile=pki.ca_file),
    ).json()["access_token"]
    headers = {"authorization": f"Bearer {token}"}
    client = triton.InferenceServerClient(url, ssl=True, root_certificates=str(pki.ca_file))
    try:
        assert client.is_server_live(headers=headers)
    finally:
        client.close()
    other = _pki(Path(str(pki.ca_file.parent)) / "other")
    client = triton.InferenceServerClient(url, ssl=True, root_certificates=str(other.ca_file))
    try:
        with pytest.raises(InferenceServerException):
            client.is_server_live(headers=headers, client_timeout=5)
    finally:
        client.close()


def _grpc_live(
    cp: ControlPlaneProc, ca_file: Path, cert: Path | None = None, key: Path | None = None
) -> bool:
    """Whether a new gRPC channel trusting only ``ca_file`` (presenting ``cert``) gets an
    answer."""
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(
        f"localhost:{_grpc_port(cp)}",
        ssl=True,
        root_certificates=str(ca_file),
        private_key=str(key) if key else None,
        certificate_chain=str(cert) if cert else None,
    )
    try:
        client.is_server_live(client_timeout=5)
    except InferenceServerException as exc:
        # reached the server: unauthenticated (no token) is an answer over TLS
        return "Unauthenticated" in str(exc) or "UNAUTHENTICATED" in str(exc)
    finally:
        client.close()
    return True


# --------------------------------------------------------------------------- runner


def _runner_settings(url: str, token: str, tmp_path: Path, **extra: Any) -> RunnerSettings:
    return RunnerSettings(
        control_plane_url=url,
        join_token=token,
        name=f"tls-{tmp_path.name}"[:60],
        backend="mock",
        model_repository=REPO,
        state_dir=tmp_path / "state",
        status_port=0,
        **extra,
    )


async def test_runner_over_tls_registers_downloads_and_serves(
    cp: ControlPlaneProc, pki: Pki, tmp_path: Path
) -> None:
    fleet = Client(cp.url, api_key=cp.admin_key, ca_bundle=pki.ca_file, timeout=60)
    try:
        await asyncio.to_thread(fleet.models.push, REPO / "add_sub")  # HTTPS blob URLs
        token = (await asyncio.to_thread(fleet.admin.create_join_token)).join_token
        settings = _runner_settings(cp.url, token, tmp_path, ca_bundle=pki.ca_file)
        daemon = Daemon(settings, MockBackend(REPO), gpus=GpuReader())
        run = asyncio.create_task(daemon.run(install_signals=False))
        try:
            async with asyncio.timeout(30):
                while not (daemon.channel.connected and daemon.models.ready_refs()):
                    await asyncio.sleep(0.1)
            a = np.arange(4, dtype=np.float32).reshape(1, 4)
            b = np.ones((1, 4), dtype=np.float32)
            # a synchronous infer goes over the wss:// dispatch channel ...
            out = await asyncio.to_thread(fleet.infer, "add_sub", {"INPUT0": a, "INPUT1": b})
            assert set(out) >= {"OUTPUT0", "OUTPUT1"}
            assert daemon.channel.served >= 1
            # ... a durable job through lease/complete over HTTPS
            submitted = await asyncio.to_thread(fleet.submit, "add_sub", {"INPUT0": a, "INPUT1": b})
            job = await asyncio.to_thread(fleet.wait, submitted.id, 60)
            assert job.status == "SUCCEEDED", job
        finally:
            daemon.request_stop()
            assert await asyncio.wait_for(run, 30) == 0
    finally:
        fleet.close()


async def test_runner_without_the_ca_names_the_setting(
    cp: ControlPlaneProc, tmp_path: Path
) -> None:
    from gpufleet.wire import RegisterRequest

    settings = _runner_settings(cp.url, "gfj_x", tmp_path)
    daemon = Daemon(settings, MockBackend(REPO), gpus=GpuReader())
    try:
        with pytest.raises(ControlPlaneError) as err:
            await daemon.client.register(RegisterRequest(join_token="gfj_" + "x" * 20, name="x"))
    finally:
        await daemon.client.aclose()
    text = str(err.value)
    assert cp.url in text and "GPUFLEET_RUNNER_CA_BUNDLE" in text


def test_runner_settings_refuse_verify_off_for_a_remote_control_plane(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        RunnerSettings(control_plane_url="https://cp.example.com", tls_verify=False)
    assert "GPUFLEET_RUNNER_TLS_INSECURE_REMOTE" in str(err.value)
    ok = RunnerSettings(
        control_plane_url="https://cp.example.com", tls_verify=False, tls_insecure_remote=True
    )
    assert ok.tls_options().verify is False
    assert RunnerSettings(control_plane_url="https://127.0.0.1:8443", tls_verify=False)


def test_runner_tls_settings_come_from_env_over_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pki: Pki
) -> None:
    yaml_file = tmp_path / "runner.yaml"
    yaml_file.write_text("ca_bundle: /nowhere/ca.pem\ntls_verify: false\n")
    from runner.settings import load_settings

    settings = load_settings(yaml_file)
    assert settings.ca_bundle == Path("/nowhere/ca.pem") and settings.tls_verify is False
    monkeypatch.setenv("GPUFLEET_RUNNER_CA_BUNDLE", str(pki.ca_file))
    monkeypatch.setenv("GPUFLEET_RUNNER_TLS_VERIFY", "true")
    settings = load_settings(yaml_file)
    assert settings.ca_bundle == pki.ca_file and settings.tls_verify is True


async def test_mutual_tls_requires_the_runner_certificate(tmp_path: Path) -> None:
    pki = _pki(tmp_path / "pki")
    client_ca = trustme.CA()
    client_ca_file = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_file))
    runner_cert = client_ca.issue_cert("runner-1.fleet")
    cert_file, key_file = tmp_path / "runner.pem", tmp_path / "runner.key"
    runner_cert.cert_chain_pems[0].write_to_path(str(cert_file))
    runner_cert.private_key_pem.write_to_path(str(key_file))
    proc = _start(
        tmp_path / "cp",
        pki,
        GPUFLEET_TLS_CLIENT_CA_FILE=str(client_ca_file),
        GPUFLEET_GRPC_PORT="0",
    )
    try:
        # gRPC asks for the same client certificates
        assert not _grpc_live(proc, pki.ca_file)
        assert _grpc_live(proc, pki.ca_file, cert_file, key_file)

        # without a client certificate: refused, and the message says which setting to set
        bare = _runner_settings(proc.url, "gfj_x", tmp_path / "a", ca_bundle=pki.ca_file)
        daemon = Daemon(bare, MockBackend(REPO), gpus=GpuReader())
        try:
            with pytest.raises(ControlPlaneError) as err:
                await _unsigned_call(daemon)
        finally:
            await daemon.client.aclose()
        assert "client certificate" in str(err.value)
        assert "GPUFLEET_RUNNER_TLS_CLIENT_CERT" in str(err.value)

        # with it: the runner registers (join token from an admin with a client cert too)
        admin = httpx.Client(
            base_url=proc.url, verify=_ctx(pki.ca_file, cert_file, key_file), timeout=30
        )
        token = admin.post("/v1/auth/token", json={"api_key": proc.admin_key}).json()
        admin.headers["Authorization"] = f"Bearer {token['access_token']}"
        join = admin.post("/v1/admin/join-tokens", json={"region": "default"}).json()
        settings = _runner_settings(
            proc.url,
            join["join_token"],
            tmp_path / "b",
            ca_bundle=pki.ca_file,
            tls_client_cert=cert_file,
            tls_client_key=key_file,
        )
        daemon = Daemon(settings, MockBackend(REPO), gpus=GpuReader())
        run = asyncio.create_task(daemon.run(install_signals=False))
        try:
            async with asyncio.timeout(30):
                while not daemon.channel.connected:
                    await asyncio.sleep(0.1)
            assert daemon.identity.runner_id is not None
        finally:
            daemon.request_stop()
            assert await asyncio.wait_for(run, 30) == 0
            admin.close()
    finally:
        proc.stop()


def _ctx(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def _unsigned_call(daemon: Daemon) -> None:
    from gpufleet.wire import RegisterRequest

    await daemon.client.register(RegisterRequest(join_token="gfj_" + "x" * 20, name="x"))


# --------------------------------------------------------------------------- rotation


def _peer_serial(url: str, ca_files: list[Path]) -> int:
    """The serial number of the certificate a new connection to ``url`` is shown."""
    from cryptography import x509

    host, port = url.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context()
    for f in ca_files:
        ctx.load_verify_locations(cafile=str(f))
    raw = socket.create_connection((host, int(port)), timeout=5)
    with raw, ctx.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _serial(pem_file: Path) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem_file.read_bytes()).serial_number


@pytest.mark.parametrize("trigger", ["file_change", "sighup"])
def test_rotation_under_a_request_stream_loses_nothing(tmp_path: Path, trigger: str) -> None:
    old = _pki(tmp_path / "old")
    new = _pki(tmp_path / "new")  # another CA: a client sees which one it was shown
    live = _pki(tmp_path / "live")  # the files the control plane reads, rewritten below
    shutil.copy(old.cert_file, live.cert_file)
    shutil.copy(old.key_file, live.key_file)
    interval = "0.2" if trigger == "file_change" else "0"
    proc = _start(
        tmp_path / "cp", live, GPUFLEET_TLS_RELOAD_INTERVAL_S=interval, GPUFLEET_GRPC_PORT="0"
    )
    assert _grpc_live(proc, old.ca_file)
    both = ssl.create_default_context(cafile=str(old.ca_file))
    both.load_verify_locations(cafile=str(new.ca_file))
    errors: list[str] = []
    counts = {"ok": 0}
    stop = threading.Event()

    def stream(new_connections: bool) -> None:
        # keep-alive: one TLS connection opened before the rotation and used across it;
        # else a fresh connection (a new handshake) per request
        http = httpx.Client(verify=both, timeout=10)
        while not stop.is_set():
            try:
                resp = http.get(proc.url + "/v1/health")
                if resp.status_code != 200:
                    errors.append(f"HTTP {resp.status_code}")
                counts["ok"] += 1
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
            if new_connections:
                http.close()
                http = httpx.Client(verify=both, timeout=10)
        http.close()

    try:
        assert _peer_serial(proc.url, [old.ca_file]) == _serial(old.cert_file)
        kept = httpx.Client(verify=_ctx(old.ca_file), timeout=10)
        assert kept.get(proc.url + "/v1/health").status_code == 200
        threads = [threading.Thread(target=stream, args=(n,)) for n in (False, True)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        # rotate: write the new pair (temp + rename, as certbot-style tools do)
        for src, dst in ((new.cert_file, live.cert_file), (new.key_file, live.key_file)):
            tmp = dst.with_suffix(".tmp")
            shutil.copy(src, tmp)
            os.replace(tmp, dst)
        if trigger == "sighup":
            proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _peer_serial(proc.url, [old.ca_file, new.ca_file]) != _serial(new.cert_file):
            assert time.monotonic() < deadline, "the new certificate was not served"
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=15)
        assert not errors, errors[:5]
        assert counts["ok"] > 20
        # the connection opened with the old certificate still works (not dropped) ...
        assert kept.get(proc.url + "/v1/health").status_code == 200
        kept.close()
        # ... while a new one trusting only the old CA is now refused
        with pytest.raises(httpx.ConnectError):
            httpx.get(proc.url + "/v1/health", verify=_ctx(old.ca_file))
        # the gRPC listener follows: new channels are shown the new certificate
        assert _grpc_live(proc, new.ca_file)
        assert not _grpc_live(proc, old.ca_file)
        assert proc.proc.poll() is None
        assert "TLS certificate reloaded" in proc.log_tail()
    finally:
        stop.set()
        proc.stop()


def test_a_bad_pair_keeps_the_old_certificate(tmp_path: Path) -> None:
    old = _pki(tmp_path / "old")
    other = _pki(tmp_path / "other")
    live = _pki(tmp_path / "live")
    shutil.copy(old.cert_file, live.cert_file)
    shutil.copy(old.key_file, live.key_file)
    proc = _start(tmp_path / "cp", live, GPUFLEET_TLS_RELOAD_INTERVAL_S="0")
    try:
        shutil.copy(other.key_file, live.key_file)  # a key that does not match the cert
        proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "not reloaded" not in proc.log_tail():
            assert time.monotonic() < deadline, proc.log_tail()
            time.sleep(0.1)
        resp = httpx.get(proc.url + "/v1/health", verify=_ctx(old.ca_file))
        assert resp.status_code == 200
    finally:
        proc.stop()


def test_serve_refuses_a_missing_key_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    pki = _pki(tmp_path / "pki")
    out = subprocess.run(
        [sys.executable, "-m", "control_plane", "serve", "--ephemeral", "--port", "0",
         "--tls-cert", str(pki.cert_file), "--tls-key", str(tmp_path / "missing.key")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "--tls-key" in out.stderr and "missing.key" in out.stderr


def test_runner_warns_at_start_when_verification_is_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _runner_settings(
        "https://127.0.0.1:1", "gfj_" + "x" * 20, tmp_path, tls_verify=False
    )
    with caplog.at_level(logging.WARNING, logger="gpufleet.tls"):
        daemon = Daemon(settings, MockBackend(REPO), gpus=GpuReader())
    asyncio.run(daemon.client.aclose())
    assert "verification is OFF for https://127.0.0.1:1" in caplog.text
    assert "GPUFLEET_RUNNER_TLS_VERIFY" in caplog.text
