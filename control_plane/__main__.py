"""``python -m control_plane serve [--host H] [--port P] [--grpc-port G] [--embedded
[--data-dir DIR | --ephemeral] | --embedded-moto] [--admin-key-file F] [--tls-cert F
--tls-key F [--tls-client-ca F]] [--config FILE]``: run one control-plane process under
uvicorn (HTTPS and gRPC over TLS with ``--tls-cert``; the certificate is reloaded on SIGHUP
and when its files change, see ``control_plane/tls.py``).
``python -m control_plane backup DEST [--data-dir DIR]``: a consistent copy of the embedded
store's database (SQLite's online backup; safe while the control plane runs).

Prints ``gpufleet control plane listening on http(s)://H:P`` once it accepts connections
(``--port 0`` picks a free port and prints it), and ``gpufleet KServe gRPC listening on
H:G`` when the gRPC endpoint is on. SIGTERM/SIGINT shut it down cleanly (in-flight requests
finish, the sweeper stops, the store is closed).

Stores: ``--embedded`` uses the embedded SQLite store + local blobs under ``--data-dir``
(default: the user's data directory; persistent); ``--ephemeral`` puts them in a temporary
directory removed at exit; ``--embedded-moto`` runs the old in-process moto server
(DynamoDB/S3 compatibility checks only). Without any, the DynamoDB tables and S3 bucket named
in the settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from control_plane.api.kserve_fast import KServeFastPath
from control_plane.app import create_app
from control_plane.composition import Services, build_services
from control_plane.embedded import start_embedded
from control_plane.http_server import metrics_server, server_config
from control_plane.settings import Settings, load_settings
from control_plane.storage.embedded_store import DataDirInUse
from control_plane.storage.sqlite.schema import SchemaTooNew
from control_plane.storage.stores import build_stores
from control_plane.tls import CertificateReloader, Hsts, TlsFileError, hsts_value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m control_plane")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the control plane HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080, help="0 = a free port")
    serve.add_argument(
        "--embedded",
        action="store_true",
        help="run on the embedded store (SQLite + local blobs under --data-dir; no AWS)",
    )
    serve.add_argument(
        "--data-dir", type=Path, help="embedded store directory (default: user data dir)"
    )
    serve.add_argument(
        "--ephemeral",
        action="store_true",
        help="embedded store in a temporary directory, removed at exit",
    )
    serve.add_argument(
        "--embedded-moto",
        action="store_true",
        help="run on an in-process moto server (DynamoDB/S3 compatibility checks)",
    )
    serve.add_argument(
        "--grpc-port", type=int, help="serve KServe v2 gRPC on this port (0 = a free port)"
    )
    serve.add_argument(
        "--admin-key-file", type=Path, help="write a fresh admin API key (tenant default) here"
    )
    serve.add_argument(
        "--tls-cert", type=Path, help="serve HTTPS (and gRPC over TLS): PEM certificate chain"
    )
    serve.add_argument("--tls-key", type=Path, help="private key of --tls-cert (PEM)")
    serve.add_argument(
        "--tls-client-ca",
        type=Path,
        help="require client certificates signed by this CA (mutual TLS)",
    )
    serve.add_argument("--config", type=Path, help="YAML settings file (env still wins)")
    serve.add_argument("--log-level", default="warning")
    serve.add_argument(
        "--log-format",
        choices=("auto", "json", "text"),
        default="auto",
        help="json: one object a line; text: readable; auto: text on a terminal, else json",
    )
    backup = sub.add_parser("backup", help="copy the embedded store's database (online)")
    backup.add_argument("dest", type=Path, help="file to write (must not exist)")
    backup.add_argument("--data-dir", type=Path, help="embedded store directory")
    backup.add_argument("--config", type=Path, help="YAML settings file (env still wins)")
    return parser


def run_fast(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` on uvloop's event loop when installed (what uvicorn itself would pick),
    else on asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop_runner:
        loop_runner.run(coro)


def write_secret_file(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` readable by the owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content + "\n")
    os.chmod(path, 0o600)


class _Server(uvicorn.Server):
    """uvicorn's server with our own signal handling: SIGTERM/SIGINT start a graceful
    shutdown (a second one forces it) and the process then exits 0 instead of re-raising."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


async def _serve(
    server: uvicorn.Server,
    host: str,
    services: Services,
    grpc_port: int | None,
    tls: CertificateReloader | None = None,
    metrics: uvicorn.Server | None = None,
) -> None:
    scheme = "https" if tls is not None else "http"
    stop_watch = asyncio.Event()
    watcher = None
    if tls is not None:
        # Rotation: SIGHUP, and a change of the files seen by the watcher.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, tls.reload)
        interval = services.settings.tls_reload_interval_s
        if interval > 0:
            watcher = asyncio.create_task(tls.watch(stop_watch, interval))
    task = asyncio.create_task(server.serve())
    metrics_task = asyncio.create_task(metrics.serve()) if metrics is not None else None
    # uvicorn exposes readiness only as a flag, hence the short poll.
    while not server.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    grpc = None
    if server.started:
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"{scheme}://{host}:{port}"
        if services.stores is not None and not services.settings.public_url:
            services.stores.set_public_url(public_url(host, port, scheme))
        if grpc_port is not None:
            from control_plane.api.kserve_grpc import KServeGrpcServer

            credentials = tls.grpc_credentials() if tls is not None else None
            grpc = KServeGrpcServer(
                services,
                host,
                grpc_port,
                credentials=credentials,
                ssl_context=tls.h2_context if tls is not None else None,
            )
            bound = await grpc.start()
            print(f"gpufleet KServe gRPC listening on {host}:{bound}", flush=True)
        if metrics is not None:
            print(f"gpufleet metrics listening on {services.settings.metrics_listen}", flush=True)
        print(f"gpufleet control plane listening on {url}", flush=True)
    try:
        await task
    finally:
        if metrics is not None and metrics_task is not None:
            metrics.should_exit = True
            await metrics_task
        stop_watch.set()
        if watcher is not None:
            await watcher
        if tls is not None:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if grpc is not None:
            await grpc.stop(5.0)


def public_url(host: str, port: int, scheme: str = "http") -> str:
    """The URL the embedded store's blob URLs name when ``GPUFLEET_PUBLIC_URL`` is unset: the
    listening address, or this host's name when listening on every interface (a client cannot
    reach ``0.0.0.0``)."""
    if host in ("0.0.0.0", "::", ""):
        name = socket.getfqdn()
        logging.getLogger("control_plane").warning(
            "listening on all interfaces: blob URLs name %s://%s:%d; set GPUFLEET_PUBLIC_URL "
            "if clients reach this control plane by another name",
            scheme,
            name,
            port,
        )
        return f"{scheme}://{name}:{port}"
    return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"


def _settings(args: argparse.Namespace, tmp: str | None) -> tuple[Settings, Any]:
    """Settings for the chosen store, and the moto server to stop (``--embedded-moto``)."""
    if args.embedded_moto:
        try:
            import moto  # noqa: F401  - a test tool, not a runtime dependency
        except ImportError:
            raise SystemExit(
                "--embedded-moto needs moto, a test tool: pip install 'moto[server,dynamodb,s3]'"
                " (or use --embedded, the SQLite store)"
            ) from None
        embedded = start_embedded()
        return embedded.settings, embedded
    overrides: dict[str, Any] = {}
    if args.embedded or args.ephemeral:
        overrides["embedded"] = True
        if tmp is not None:
            overrides["data_dir"] = Path(tmp)
        elif args.data_dir is not None:
            overrides["data_dir"] = args.data_dir
    if args.grpc_port is not None:
        overrides["grpc_port"] = args.grpc_port
    for flag, field in (
        ("tls_cert", "tls_cert_file"),
        ("tls_key", "tls_key_file"),
        ("tls_client_ca", "tls_client_ca_file"),
    ):
        if getattr(args, flag) is not None:
            overrides[field] = getattr(args, flag)
    return load_settings(**overrides), None


def no_admin_key_hint(kind: str) -> str:
    """Where a first API key comes from when the server was started without one."""
    if kind == "sqlite":
        return (
            "note: no --admin-key-file: to get an admin API key, start with "
            "--admin-key-file admin.key (a fresh key is written there at each start; keys "
            'made before stay valid), then `gpufleet login --api-key "$(cat admin.key)"`'
        )
    return (
        "note: no --admin-key-file: an admin API key for these tables comes from "
        "`python scripts/create_admin_key.py --stack NAME` (or --admin-key-file F here)"
    )


def serve(args: argparse.Namespace) -> int:
    from gpufleet._logs import configure as configure_logs

    configure_logs(args.log_level, args.log_format)
    # moto's werkzeug logs every storage call at INFO; keep it at WARNING or above.
    logging.getLogger("werkzeug").setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.config is not None:
        os.environ["GPUFLEET_CONFIG_FILE"] = str(args.config)
    tmp = tempfile.mkdtemp(prefix="gpufleet-") if args.ephemeral else None
    moto = None
    stores = None
    try:
        settings, moto = _settings(args, tmp)
        try:
            stores = build_stores(settings)
        except (DataDirInUse, SchemaTooNew) as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2
        services = build_services(settings, stores)
        if args.admin_key_file is not None:
            created = services.auth.issue_api_key("default", "admin", "bootstrap admin")
            write_secret_file(args.admin_key_file, created.api_key)
        else:
            print(no_admin_key_hint(stores.kind), file=sys.stderr, flush=True)
        api = create_app(settings, services)
        app: Any = api
        tls = None
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            try:
                tls = CertificateReloader(
                    settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
                )
            except TlsFileError as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
                return 2
            if settings.hsts_max_age_s > 0:
                app = Hsts(app, settings.hsts_max_age_s)
        short = KServeFastPath(
            api,
            max_body_bytes=settings.max_body_bytes,
            body_idle_s=settings.http_body_timeout_s,
            body_min_rate=settings.http_body_min_rate,
            storage_budget_s=settings.storage_budget_s,
            hsts=hsts_value(settings.hsts_max_age_s) if tls is not None else None,
        )
        config = server_config(
            app,
            settings,
            args.host,
            args.port,
            short,
            log_level=args.log_level,
            lifespan="on",
            ws_per_message_deflate=False,
            ws_max_size=settings.max_body_bytes,
            ssl_certfile=settings.tls_cert_file,
            ssl_keyfile=settings.tls_key_file,
        )
        if tls is not None:
            config.load()
            config.ssl = tls.context  # the reloadable context instead of uvicorn's own
        extra = None
        if settings.metrics_listen:
            extra = metrics_server(api.state.metrics, settings.metrics_listen, settings)
        run_fast(_serve(_Server(config), args.host, services, settings.grpc_port, tls, extra))
    finally:
        if stores is not None:
            stores.close()
        if moto is not None:
            moto.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def backup(args: argparse.Namespace) -> int:
    """Copy the embedded database with SQLite's online backup API (consistent snapshot)."""
    from control_plane.storage.embedded_store import DB_FILE, default_data_dir
    from control_plane.storage.sqlite.db import Database

    if args.config is not None:
        os.environ["GPUFLEET_CONFIG_FILE"] = str(args.config)
    settings = load_settings()
    data_dir = Path(args.data_dir or settings.data_dir or default_data_dir())
    source = data_dir / DB_FILE
    if not source.exists():
        print(f"error: no embedded store at {source}", file=sys.stderr)
        return 2
    if args.dest.exists():
        print(f"error: {args.dest} exists; give a new file", file=sys.stderr)
        return 2
    db = Database(source)
    try:
        db.backup(args.dest)
    finally:
        db.close()
    os.chmod(args.dest, 0o600)
    print(f"backed up {source} to {args.dest} (model files and blobs: copy {data_dir / 'blobs'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m control_plane`` and ``gpufleet-control-plane``."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "backup":
        return backup(args)
    return 2  # pragma: no cover - argparse rejects other commands


if __name__ == "__main__":
    sys.exit(main())
