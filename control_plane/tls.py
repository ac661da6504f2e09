"""TLS served by the control plane itself (``serve --tls-cert F --tls-key F``): one
certificate for the HTTP listener (uvicorn) and the KServe gRPC listener, reloaded without a
restart, and the HSTS header.

Rotation: :class:`CertificateReloader` owns one live server ``SSLContext``. ``reload()``
reads the certificate chain and key, checks them on a scratch context, then loads them into
the live context with ``load_cert_chain``: OpenSSL uses a context's certificate for each new
handshake, so new connections get the new certificate while connections already open keep
theirs and are not interrupted. A bad pair (a key that does not match, a half-written file)
is logged and the old certificate stays. The gRPC listener has a live context of its own
(``h2_context``: ALPN h2) loaded with the same pair; served by grpcio instead
(``grpc_server=grpcio``), it reads the same PEM bytes through gRPC's dynamic credentials
(its fetcher is asked at each new handshake). ``reload()`` runs
on SIGHUP and, every ``tls_reload_interval_s``, when either file's mtime, size or inode
changed.

    reloader = CertificateReloader(cert, key, client_ca)
    uvicorn_config.ssl = reloader.context        # after uvicorn_config.load()
    grpc_server = KServeGrpcServer(..., credentials=reloader.grpc_credentials(),
                                   ssl_context=reloader.h2_context)
    asyncio.create_task(reloader.watch(stop, interval_s=10))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CertificateReloader", "Hsts", "TlsFileError"]

log = logging.getLogger(__name__)


class TlsFileError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file."""


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFileError(f"{what} {path}: {exc.strerror or exc}") from exc


class CertificateReloader:
    """The server certificate of both listeners, reloadable while they serve."""

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        client_ca_file: Path | None = None,
    ) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.client_ca_file = Path(client_ca_file) if client_ca_file is not None else None
        self.client_ca_pem: bytes | None = None
        if self.client_ca_file is not None:
            # mutual TLS: every connection presents a certificate signed by this CA
            self.client_ca_pem = _read(self.client_ca_file, "--tls-client-ca")
        self.context = self._new_context()
        # The same certificate for gpufleet's own gRPC server (api/grpc_h2.py): HTTP/2 only,
        # negotiated by ALPN as gRPC clients require (a context of its own: offering h2 on
        # the HTTP/1.1 listener would break HTTPS clients that prefer it).
        self.h2_context = self._new_context()
        self.h2_context.set_alpn_protocols(["h2"])
        self.generation = 0
        self.pem: tuple[bytes, bytes] = (b"", b"")  # (key, chain) now served
        self._seen: tuple[object, object] | None = None
        self._load()  # raises TlsFileError: a bad pair at start is fatal

    def _new_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.client_ca_pem is not None:
            try:
                context.load_verify_locations(cadata=self.client_ca_pem.decode())
            except (ssl.SSLError, ValueError) as exc:
                raise TlsFileError(
                    f"--tls-client-ca {self.client_ca_file}: not a PEM CA certificate: {exc}"
                ) from exc
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        seen = (_signature(self.cert_file), _signature(self.key_file))
        chain = _read(self.cert_file, "--tls-cert")
        key = _read(self.key_file, "--tls-key")
        # load_cert_chain takes paths: load the bytes read once (a file replaced meanwhile
        # cannot pair a new certificate with an old key) from a private directory.
        with tempfile.TemporaryDirectory(prefix="gpufleet-tls-") as tmp:
            cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            for path, data in ((cert_path, chain), (key_path, key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                scratch.load_cert_chain(cert_path, key_path)
            except ssl.SSLError as exc:
                raise TlsFileError(
                    f"--tls-cert {self.cert_file} / --tls-key {self.key_file}: not a PEM "
                    f"certificate chain and its private key ({exc.reason or exc})"
                ) from exc
            # The checked pair goes into the live contexts: new handshakes use it.
            self.context.load_cert_chain(cert_path, key_path)
            self.h2_context.load_cert_chain(cert_path, key_path)
        self.pem = (key, chain)
        self.generation += 1
        self._seen = seen

    def reload(self) -> bool:
        """Load the files again; ``False`` (old certificate kept, error logged) when they
        cannot be used."""
        try:
            self._load()
        except TlsFileError as exc:
            log.error("TLS certificate not reloaded, the previous one stays: %s", exc)
            return False
        log.warning("TLS certificate reloaded from %s (generation %d)", self.cert_file,
                    self.generation)  # fmt: skip
        return True

    def changed(self) -> bool:
        """Whether either file differs (mtime, size, inode) from what was loaded last."""
        return (_signature(self.cert_file), _signature(self.key_file)) != self._seen

    async def watch(self, stop: asyncio.Event, interval_s: float) -> None:
        """Reload whenever the files change, until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            if not stop.is_set() and self.changed():
                self.reload()

    # ------------------------------------------------------------------ gRPC
    def grpc_credentials(self) -> Any:
        """Server credentials of the gRPC listener that follow :meth:`reload`."""
        import grpc

        served = {"generation": self.generation}

        def config() -> Any:
            key, chain = self.pem
            return grpc.ssl_server_certificate_configuration(
                [(key, chain)], root_certificates=self.client_ca_pem
            )

        def fetch() -> Any:
            # Called by gRPC at each new handshake (on one of its threads): a new
            # configuration only when the certificate changed.
            if served["generation"] == self.generation:
                return None
            served["generation"] = self.generation
            return config()

        return grpc.dynamic_ssl_server_credentials(
            config(), fetch, require_client_authentication=self.client_ca_pem is not None
        )


def hsts_value(max_age_s: int) -> bytes | None:
    """The ``Strict-Transport-Security`` header value for ``max_age_s`` (None: not sent)."""
    return f"max-age={int(max_age_s)}".encode() if max_age_s > 0 else None


class Hsts:
    """Adds ``Strict-Transport-Security`` to every response sent over TLS."""

    def __init__(self, app: ASGIApp, max_age_s: int) -> None:
        self.app = app
        self.value = hsts_value(max_age_s) or b"max-age=0"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("scheme") != "https":
            await self.app(scope, receive, send)
            return

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    *message.get("headers", []),
                    (b"strict-transport-security", self.value),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_hsts)
