"""TLS settings shared by every gpufleet client (SDK, CLI, runner).

>>> options = TlsOptions(ca_bundle=Path("/etc/gpufleet/ca.pem"))    # doctest: +SKIP
>>> check_url("https://cp.internal:8443", options)                  # doctest: +SKIP
>>> context = client_context(options)    # for httpx ``verify=`` and websockets ``ssl=``

* Verification is on by default, with the system's trust store (OpenSSL's default paths,
  which ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` override; certifi's bundle when the system has
  none).
* ``ca_bundle``: a PEM file, or a directory of PEM files, trusted **in addition** to the
  system store (a private CA for the control plane, while presigned bucket URLs may still name
  a public endpoint).
* ``verify=False`` turns verification off. It is refused (:class:`TlsSettingError`) for a URL
  whose host is not a loopback address unless ``insecure_remote`` is also set, and it logs a
  warning whenever it is used.
* ``client_cert`` / ``client_key``: a client certificate for control planes that require one
  (mutual TLS).

Setting names differ per client (``tls_verify=`` in the SDK, ``GPUFLEET_RUNNER_TLS_VERIFY`` in
the runner); :class:`SettingNames` carries them so errors name the one the user can change.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "SDK_NAMES",
    "SettingNames",
    "TlsOptions",
    "TlsSettingError",
    "check_url",
    "client_context",
    "explain",
    "is_loopback",
    "parse_bool",
    "resolve",
]

log = logging.getLogger("gpufleet.tls")


class TlsSettingError(ValueError):
    """A TLS setting is invalid or refused; the message names the setting."""


@dataclass(frozen=True)
class SettingNames:
    """How the user sets each option, for error messages."""

    ca_bundle: str
    verify: str
    insecure_remote: str
    client_cert: str
    client_key: str


SDK_NAMES = SettingNames(
    ca_bundle="ca_bundle= / GPUFLEET_CA_BUNDLE / --ca-bundle",
    verify="tls_verify= / GPUFLEET_TLS_VERIFY / --tls-verify",
    insecure_remote="tls_insecure_remote= / GPUFLEET_TLS_INSECURE_REMOTE",
    client_cert="client_cert= / GPUFLEET_CLIENT_CERT",
    client_key="client_key= / GPUFLEET_CLIENT_KEY",
)


@dataclass(frozen=True)
class TlsOptions:
    """How a client verifies the control plane and presents itself."""

    ca_bundle: Path | None = None
    verify: bool = True
    insecure_remote: bool = False
    client_cert: Path | None = None
    client_key: Path | None = None
    names: SettingNames = SDK_NAMES


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(value: str | bool | None, name: str) -> bool | None:
    """``"true"``/``"false"`` (and 1/0, yes/no, on/off) as a bool; ``None`` stays ``None``."""
    if value is None or isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise TlsSettingError(f"{name}: expected true or false, got {value!r}")


ENV = {
    "ca_bundle": "GPUFLEET_CA_BUNDLE",
    "verify": "GPUFLEET_TLS_VERIFY",
    "insecure_remote": "GPUFLEET_TLS_INSECURE_REMOTE",
    "client_cert": "GPUFLEET_CLIENT_CERT",
    "client_key": "GPUFLEET_CLIENT_KEY",
}


def resolve(
    *,
    ca_bundle: str | Path | None = None,
    verify: bool | None = None,
    insecure_remote: bool | None = None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
    stored: TlsOptions | None = None,
    env: Mapping[str, str] | None = None,
) -> TlsOptions:
    """The SDK's options: each argument given wins, then ``GPUFLEET_CA_BUNDLE``,
    ``GPUFLEET_TLS_VERIFY``, ``GPUFLEET_TLS_INSECURE_REMOTE``, ``GPUFLEET_CLIENT_CERT``,
    ``GPUFLEET_CLIENT_KEY``, then ``stored`` (what ``gpufleet login`` saved), then defaults."""
    environ = os.environ if env is None else env
    base = stored or TlsOptions()

    def env_path(key: str) -> Path | None:
        value = environ.get(ENV[key])
        return Path(value) if value else None

    def env_bool(key: str) -> bool | None:
        value = environ.get(ENV[key])
        return parse_bool(value, ENV[key]) if value else None

    def pick(arg: object, from_env: object, fallback: object) -> object:
        return arg if arg is not None else from_env if from_env is not None else fallback

    return replace(
        base,
        ca_bundle=_path(pick(ca_bundle, env_path("ca_bundle"), base.ca_bundle)),
        verify=bool(pick(verify, env_bool("verify"), base.verify)),
        insecure_remote=bool(
            pick(insecure_remote, env_bool("insecure_remote"), base.insecure_remote)
        ),
        client_cert=_path(pick(client_cert, env_path("client_cert"), base.client_cert)),
        client_key=_path(pick(client_key, env_path("client_key"), base.client_key)),
    )


def _path(value: object) -> Path | None:
    return None if value is None else Path(str(value))


def is_loopback(host: str) -> bool:
    """``localhost`` (and ``*.localhost``), 127.0.0.0/8 and ::1."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_url(url: str, options: TlsOptions) -> None:
    """Refuse ``verify=False`` for a non-loopback host unless ``insecure_remote``; warn when
    verification is off. Raises :class:`TlsSettingError` naming the settings."""
    parts = urlsplit(url)
    if options.verify or parts.scheme not in ("https", "wss"):
        return
    host = parts.hostname or ""
    if not is_loopback(host) and not options.insecure_remote:
        raise TlsSettingError(
            f"{options.names.verify} is false but {url} is not a loopback address: "
            f"certificate verification can be turned off for another host only with "
            f"{options.names.insecure_remote} set to true as well (better: give the CA with "
            f"{options.names.ca_bundle})"
        )
    log.warning(
        "TLS certificate verification is OFF for %s (%s): anyone on the path can read and "
        "alter this traffic",
        url,
        options.names.verify,
    )


def _load_bundle(ctx: ssl.SSLContext, bundle: Path, name: str) -> None:
    path = bundle.expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise TlsSettingError(f"{name}: directory {path} holds no certificate files")
    elif path.is_file():
        files = [path]
    else:
        raise TlsSettingError(f"{name}: {path} does not exist")
    for f in files:
        try:
            ctx.load_verify_locations(cafile=str(f))
        except (ssl.SSLError, OSError) as exc:
            raise TlsSettingError(f"{name}: {f} is not a PEM certificate file: {exc}") from exc


def client_context(options: TlsOptions) -> ssl.SSLContext:
    """An ``SSLContext`` for httpx (``verify=``) and websockets (``ssl=``).

    Build it once per client: loading a trust store costs milliseconds."""
    names = options.names
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not options.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        if not ctx.get_ca_certs() and not ctx.cert_store_stats().get("x509_ca"):
            try:
                import certifi

                ctx.load_verify_locations(cafile=certifi.where())
            except ImportError:  # pragma: no cover - httpx depends on certifi
                pass
        if options.ca_bundle is not None:
            _load_bundle(ctx, options.ca_bundle, names.ca_bundle)
    if (options.client_cert is None) != (options.client_key is None):
        missing = names.client_key if options.client_key is None else names.client_cert
        raise TlsSettingError(f"a client certificate needs its key and vice versa: set {missing}")
    if options.client_cert is not None and options.client_key is not None:
        try:
            ctx.load_cert_chain(
                str(options.client_cert.expanduser()), str(options.client_key.expanduser())
            )
        except (ssl.SSLError, OSError) as exc:
            raise TlsSettingError(
                f"{names.client_cert} / {names.client_key}: cannot load "
                f"{options.client_cert} with {options.client_key}: {exc}"
            ) from exc
    return ctx


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack:
        cur = stack.pop()
        if cur is None or any(cur is s for s in seen):
            continue
        seen.append(cur)
        stack.extend([cur.__cause__, cur.__context__])
    return seen


def explain(url: str, exc: BaseException, names: SettingNames = SDK_NAMES) -> str | None:
    """A message naming ``url`` and the setting to change when ``exc`` (or what caused it)
    is a TLS failure; ``None`` for other errors."""
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or str(cause)
            # 62/64: X509_V_ERR_HOSTNAME_MISMATCH / X509_V_ERR_IP_ADDRESS_MISMATCH
            if cause.verify_code in (62, 64) or "mismatch" in reason.lower():
                return (
                    f"TLS: the certificate of {url} is not valid for that host name "
                    f"({reason}); reach the control plane by a name its certificate lists"
                )
            return (
                f"TLS: the certificate of {url} is not trusted ({reason}); if it is signed by "
                f"a private CA, give that CA's certificate with {names.ca_bundle}"
            )
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLError):
            # A server requiring a client certificate rejects the handshake after it
            # completed on the client's side (TLS 1.3): all the client sees is a failed read.
            return (
                f"TLS handshake with {url} failed ({cause}); if it requires a client "
                f"certificate (mutual TLS), set {names.client_cert} and {names.client_key}"
            )
    if url.startswith("https:"):
        for cause in _chain(exc):
            # The same refusal when it races the first request (a loaded host): the server
            # closes the connection before answering and no TLS alert reaches the client.
            if isinstance(cause, ConnectionResetError) or type(cause).__name__ in (
                "RemoteProtocolError",
                "ReadError",
            ):
                return (
                    f"{url} closed the connection without answering ({cause}); if it "
                    f"requires a client certificate (mutual TLS), set {names.client_cert} "
                    f"and {names.client_key}"
                )
    return None
