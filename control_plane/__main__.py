"""``python -m control_plane serve [--host H] [--port P] [--embedded] [--admin-key-file F]
[--config FILE]``: run one control-plane process under uvicorn.

Prints ``gpufleet control plane listening on http://H:P`` once it accepts connections
(``--port 0`` picks a free port and prints it). SIGTERM/SIGINT shut it down cleanly
(in-flight requests finish, the sweeper stops, the embedded moto server stops).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from control_plane.app import build_services, create_app
from control_plane.embedded import EmbeddedStorage, start_embedded
from control_plane.settings import load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m control_plane")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the control plane HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080, help="0 = a free port")
    serve.add_argument(
        "--embedded", action="store_true", help="run on an in-process moto server (no AWS)"
    )
    serve.add_argument(
        "--admin-key-file", type=Path, help="write a fresh admin API key (tenant default) here"
    )
    serve.add_argument("--config", type=Path, help="YAML settings file (env still wins)")
    serve.add_argument("--log-level", default="warning")
    return parser


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


async def _serve(server: uvicorn.Server, host: str) -> None:
    task = asyncio.create_task(server.serve())
    # uvicorn exposes readiness only as a flag, hence the short poll.
    while not server.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    if server.started:
        port = server.servers[0].sockets[0].getsockname()[1]
        print(f"gpufleet control plane listening on http://{host}:{port}", flush=True)
    await task


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # moto's werkzeug logs every storage call at INFO; keep it at WARNING or above.
    logging.getLogger("werkzeug").setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.config is not None:
        os.environ["GPUFLEET_CONFIG_FILE"] = str(args.config)
    embedded: EmbeddedStorage | None = None
    if args.embedded:
        embedded = start_embedded()
        settings = embedded.settings
    else:
        settings = load_settings()
    try:
        services = build_services(settings)
        if args.admin_key_file is not None:
            created = services.auth.issue_api_key("default", "admin", "bootstrap admin")
            write_secret_file(args.admin_key_file, created.api_key)
        app = create_app(settings, services)
        config = uvicorn.Config(
            app, host=args.host, port=args.port, log_level=args.log_level, lifespan="on"
        )
        asyncio.run(_serve(_Server(config), args.host))
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m control_plane`` and ``gpufleet-control-plane``."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return 2  # pragma: no cover - argparse rejects other commands


if __name__ == "__main__":
    sys.exit(main())
