"""gpufleet.tls on its own: precedence of the TLS options (argument > environment > login
file > defaults), loopback detection, and errors that name the setting."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
from gpufleet import tls
from gpufleet.config import Credentials, load_credentials, save_credentials
from gpufleet.tls import TlsOptions, TlsSettingError


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("[::1]", True),
        ("localhost", True),
        ("api.localhost", True),
        ("10.0.0.1", False),
        ("fleet.example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert tls.is_loopback(host) is loopback


def test_arguments_win_over_env_over_login_file(tmp_path: Path) -> None:
    stored = TlsOptions(ca_bundle=Path("/stored.pem"), verify=False)
    env = {"GPUFLEET_CA_BUNDLE": "/env.pem"}
    got = tls.resolve(stored=stored, env=env)
    assert got.ca_bundle == Path("/env.pem") and got.verify is False  # verify: file
    got = tls.resolve(ca_bundle="/arg.pem", verify=True, stored=stored, env=env)
    assert got.ca_bundle == Path("/arg.pem") and got.verify is True
    got = tls.resolve(env={"GPUFLEET_TLS_VERIFY": "true"}, stored=stored)
    assert got.verify is True
    assert tls.resolve(env={}) == TlsOptions()


def test_a_bad_boolean_names_the_variable() -> None:
    with pytest.raises(TlsSettingError, match="GPUFLEET_TLS_VERIFY"):
        tls.resolve(env={"GPUFLEET_TLS_VERIFY": "maybe"})


def test_login_file_keeps_the_tls_options(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    save_credentials(Credentials(url="https://x", api_key="gf_1", ca_bundle="/ca.pem"), path)
    creds = load_credentials(path)
    assert creds is not None
    assert creds.tls() == TlsOptions(ca_bundle=Path("/ca.pem"))
    save_credentials(Credentials(url="https://x", api_key="gf_1", tls_verify=False), path)
    creds = load_credentials(path)
    assert creds is not None and creds.tls().verify is False


def test_verify_off_is_refused_for_a_remote_host_only() -> None:
    with pytest.raises(TlsSettingError, match="GPUFLEET_TLS_INSECURE_REMOTE"):
        tls.check_url("https://10.1.2.3:8443", TlsOptions(verify=False))
    tls.check_url("https://10.1.2.3:8443", TlsOptions(verify=False, insecure_remote=True))
    tls.check_url("https://127.0.0.1:8443", TlsOptions(verify=False))
    tls.check_url("http://10.1.2.3:8080", TlsOptions(verify=False))  # no TLS: nothing to check


def test_contexts(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    default = tls.client_context(TlsOptions())
    assert default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    with_ca = tls.client_context(TlsOptions(ca_bundle=ca_file))
    # the private CA is added to the system store, not in place of it
    assert len(with_ca.get_ca_certs()) == len(default.get_ca_certs()) + 1
    off = tls.client_context(TlsOptions(verify=False))
    assert off.verify_mode == ssl.CERT_NONE and not off.check_hostname


def test_bad_files_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(TlsSettingError, match=r"GPUFLEET_CA_BUNDLE.*does not exist"):
        tls.client_context(TlsOptions(ca_bundle=tmp_path / "missing.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(TlsSettingError, match="not a PEM certificate"):
        tls.client_context(TlsOptions(ca_bundle=junk))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TlsSettingError, match="no certificate files"):
        tls.client_context(TlsOptions(ca_bundle=tmp_path / "empty"))
    with pytest.raises(TlsSettingError, match="GPUFLEET_CLIENT_KEY"):
        tls.client_context(TlsOptions(client_cert=junk))
