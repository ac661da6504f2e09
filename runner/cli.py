"""``gpufleet-runner``: configure | start | status | set KEY VALUE."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
import yaml
from gpufleet.tls import TlsSettingError, client_context
from gpufleet.wire import RunnerConfigPatch, RunnerView, TokenPair, TokenRequest
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from runner.credentials import load_credentials
from runner.settings import CONFIG_FILE_ENV, RunnerSettings, default_config_file, load_settings

T = TypeVar("T")

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="gpufleet runner: Triton on this host."
)
console = Console()

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help=f"YAML settings file (env {CONFIG_FILE_ENV}).", show_default=False
    ),
]
SETTABLE = {"max_concurrency", "acceptance_rate", "drain", "heartbeat_interval_s", "lease_wait_s"}


def _settings(config: Path | None, **overrides: Any) -> RunnerSettings:
    try:
        return load_settings(config, **overrides)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(x) for x in err["loc"]) or "settings"
            console.print(f"[red]invalid setting {where}:[/red] {err['msg']}")
        raise typer.Exit(2) from None


def _config_path(config: Path | None) -> Path:
    if config is not None:
        return config.expanduser()
    env = os.environ.get(CONFIG_FILE_ENV)
    return Path(env).expanduser() if env else default_config_file()


# --------------------------------------------------------------------------- configure


@app.command()
def configure(
    config: ConfigOpt = None,
    control_plane_url: Annotated[str | None, typer.Option(help="Control plane base URL.")] = None,
    join_token: Annotated[str | None, typer.Option(help="Join token.")] = None,
    name: Annotated[str | None, typer.Option(help="Runner name.")] = None,
    region: Annotated[str | None, typer.Option(help="Region.")] = None,
    backend: Annotated[str | None, typer.Option(help="docker | process | mock.")] = None,
    triton_image: Annotated[str | None, typer.Option(help="Triton image (docker).")] = None,
    model_repository: Annotated[str | None, typer.Option(help="Local model repository.")] = None,
    state_dir: Annotated[str | None, typer.Option(help="Credentials and logs directory.")] = None,
    status_port: Annotated[int | None, typer.Option(help="Local status port.")] = None,
    ca_bundle: Annotated[
        str | None, typer.Option(help="CA certificate(s) of a private-CA control plane (PEM).")
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="No prompts: flags and defaults.")
    ] = False,
) -> None:
    """Interactive wizard writing the runner's YAML settings (every prompt is also a flag)."""
    path = _config_path(config)
    existing: dict[str, Any] = {}
    if path.exists():
        existing = yaml.safe_load(path.read_text()) or {}
    defaults = RunnerSettings.model_construct()  # no env/file reads: plain defaults
    given = {
        "control_plane_url": control_plane_url,
        "join_token": join_token,
        "name": name,
        "region": region,
        "backend": backend,
        "triton_image": triton_image,
        "model_repository": model_repository,
        "state_dir": state_dir,
        "status_port": status_port,
    }
    values: dict[str, Any] = dict(existing)
    for key, flag in given.items():
        current = existing.get(key)
        if current is None:
            default = getattr(defaults, key, None)
            current = None if key == "join_token" else default
        if flag is not None:
            values[key] = flag
        elif yes:
            if current is not None:
                values[key] = current
        else:
            answer = typer.prompt(
                key.replace("_", " "),
                default="" if current is None else str(current),
                hide_input=key == "join_token",
                show_default=key != "join_token",
            )
            if answer != "":
                values[key] = answer
    if ca_bundle is not None:  # a flag only (no prompt: most control planes need none)
        values["ca_bundle"] = ca_bundle
    for key in (
        "state_dir",
        "model_repository",
        "ca_bundle",
    ):  # absolute: the daemon may run elsewhere
        if key in values and values[key] is not None:
            values[key] = str(Path(str(values[key])).expanduser().resolve())
    values = {k: v for k, v in values.items() if v is not None}
    try:  # validate what is written (env ignored: check the file's own values)
        typed = RunnerSettings.model_validate(values)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(x) for x in err["loc"]) or "settings"
            console.print(f"[red]invalid {where}:[/red] {err['msg']}")
        raise typer.Exit(2) from None
    # typed values (ports as numbers, …), the secret as its text
    dumped = typed.model_dump(mode="json", include=set(values))
    if typed.join_token is not None:
        dumped["join_token"] = typed.join_token.get_secret_value()
    _check_setup(typed)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the join token
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(dumped, fh, sort_keys=True)
    console.print(f"wrote {path}")
    console.print(f"next: gpufleet-runner start --config {path}")


def _check_setup(settings: RunnerSettings) -> None:
    """What can be checked before the first start, each as one line: warnings when the
    control plane or Docker do not answer (they may come up later); a join token the
    control plane refuses is an error (exit 2, nothing written: a start would fail)."""
    url = settings.control_plane_url
    answers = False
    try:
        resp = httpx.get(f"{url}/v1/health", timeout=5, verify=_verify(settings))
        ok = resp.status_code == 200 and resp.json().get("status") in ("ok", "degraded")
    except (httpx.HTTPError, ValueError, AttributeError, TlsSettingError) as exc:
        console.print(f"[yellow]warning:[/yellow] the control plane at {url} does not answer")
        console.print(f"  ({exc})")
    else:
        if ok:
            answers = True
            console.print(f"control plane at {url}: answers")
        else:
            console.print(
                f"[yellow]warning:[/yellow] {url} answers, but not as a gpufleet control plane "
                f"(HTTP {resp.status_code} on /v1/health)"
            )
    token = settings.join_token.get_secret_value() if settings.join_token else None
    if token is None:
        console.print(
            "[yellow]warning:[/yellow] no join token: create one with "
            "`gpufleet admin join-token` (needed at the first start)"
        )
    elif not token.startswith("gfj_"):
        console.print(
            "[yellow]warning:[/yellow] the join token does not look like one (gfj_…); the "
            "control plane checks it at start"
        )
    elif answers:
        _check_join_token(settings, token)
    if settings.backend == "docker":
        from runner.backends.docker_backend import docker_unreachable

        address = settings.docker_host or os.environ.get(
            "DOCKER_HOST", "unix:///var/run/docker.sock"
        )
        try:
            import docker

            client = (
                docker.DockerClient(base_url=settings.docker_host, timeout=5)
                if settings.docker_host
                else docker.from_env(timeout=5)
            )
            client.ping()
            client.close()
            console.print(f"Docker at {address}: answers")
        except Exception as exc:  # ImportError, docker's errors, BackendError: one line
            console.print(f"[yellow]warning:[/yellow] {docker_unreachable(address, exc)}")


def _verify(settings: RunnerSettings) -> Any:
    """What httpx verifies the control plane's certificate with (``ca_bundle`` …)."""
    return client_context(settings.tls_options())


def _check_join_token(settings: RunnerSettings, token: str) -> None:
    """Ask the control plane whether ``token`` would register this runner (uses none of
    it). Refused: exit 2 naming the reason and what to do, unless this host is registered
    already (then the token is not needed)."""
    from runner.cp_client import ControlPlaneClient, ControlPlaneError, NotFound, Unauthorized

    url = settings.control_plane_url

    async def ask() -> Any:
        client = ControlPlaneClient(url, timeout_s=10, verify=_verify(settings))
        try:
            return await client.check_join_token(token)
        finally:
            await client.aclose()

    try:
        found = asyncio.run(ask())
    except Unauthorized as exc:
        reason = str(exc).partition("unauthorized: ")[2] or str(exc)
        creds = load_credentials(settings.credentials_file)
        if creds is not None and creds.control_plane_url.rstrip("/") == url.rstrip("/"):
            console.print(
                f"[yellow]warning:[/yellow] the join token is refused ({reason}); this host "
                f"is registered already as {creds.runner_id}, so it needs none unless it "
                "registers again"
            )
            return
        console.print(
            f"[red]error:[/red] the control plane at {url} refused the join token: {reason}"
        )
        console.print(
            "  ask an admin for a new one (`gpufleet admin join-token`), then run "
            "`gpufleet-runner configure --join-token NEW` again; nothing was written"
        )
        raise typer.Exit(2) from None
    except NotFound:
        console.print(
            "[yellow]warning:[/yellow] this control plane cannot check join tokens (an older "
            "version); it checks the token at the first start"
        )
        return
    except ControlPlaneError as exc:
        console.print(f"[yellow]warning:[/yellow] could not check the join token ({exc})")
        return
    uses = "no use limit" if found.uses_left is None else f"{found.uses_left} use(s) left"
    console.print(
        f"join token {found.id}: accepted (region {found.region}, {uses}, "
        f"expires {found.expires_at})"
    )


# --------------------------------------------------------------------------- start


@app.command()
def start(
    config: ConfigOpt = None,
    control_plane_url: Annotated[str | None, typer.Option(help="Control plane base URL.")] = None,
    join_token: Annotated[str | None, typer.Option(help="Join token.")] = None,
    backend: Annotated[str | None, typer.Option(help="docker | process | mock.")] = None,
    name: Annotated[str | None, typer.Option(help="Runner name.")] = None,
    triton_image: Annotated[str | None, typer.Option(help="Triton image.")] = None,
    model_repository: Annotated[str | None, typer.Option(help="Local model repository.")] = None,
    state_dir: Annotated[str | None, typer.Option(help="State directory.")] = None,
    status_port: Annotated[int | None, typer.Option(help="Local status port.")] = None,
    log_level: Annotated[str | None, typer.Option(help="Logging level.")] = None,
    ca_bundle: Annotated[
        str | None, typer.Option(help="CA certificate(s) of a private-CA control plane (PEM).")
    ] = None,
    log_format: Annotated[
        str,
        typer.Option(help="json (one object a line), text, or auto (text on a terminal)."),
    ] = "auto",
) -> None:
    """Run the daemon until SIGTERM/SIGINT (then drain and exit 0)."""
    settings = _settings(
        config,
        ca_bundle=ca_bundle,
        control_plane_url=control_plane_url,
        join_token=join_token,
        backend=backend,
        name=name,
        triton_image=triton_image,
        model_repository=model_repository,
        state_dir=state_dir,
        status_port=status_port,
        log_level=log_level,
    )
    from gpufleet._logs import configure as configure_logs

    try:
        configure_logs(settings.log_level, log_format)
    except ValueError as exc:
        console.print(f"[red]--log-format:[/red] {exc}")
        raise typer.Exit(2) from None
    from runner.backends.base import BackendError
    from runner.daemon import build_daemon
    from runner.identity import StartupError

    async def main() -> int:
        daemon = build_daemon(settings)
        return await daemon.run()

    try:
        code = run_fast(main())
    except TlsSettingError as exc:
        logging.getLogger("runner").error("invalid TLS settings: %s", exc)
        code = 2
    except BackendError as exc:
        logging.getLogger("runner").error("Triton could not be started: %s", exc)
        code = 1
    except StartupError as exc:  # retrying cannot fix it: one line, non-zero
        logging.getLogger("runner").error("%s", exc)
        code = 2
    except KeyboardInterrupt:  # a signal before the daemon's handlers were installed
        code = 0
    raise typer.Exit(code)


def run_fast(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop's event loop when installed (less overhead per request),
    else on asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop_runner:
        return loop_runner.run(coro)


# --------------------------------------------------------------------------- status


@app.command()
def status(
    config: ConfigOpt = None,
    port: Annotated[int | None, typer.Option(help="Status port (default: settings).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Raw JSON.")] = False,
) -> None:
    """Health, GPUs, Triton state, loaded models and jobs in flight of the local daemon."""
    settings = _settings(config)
    status_port = port if port is not None else settings.status_port
    url = f"http://127.0.0.1:{status_port}/status"
    try:
        resp = httpx.get(url, timeout=5)
        resp.raise_for_status()
        data = resp.json()
        if not isinstance(data, dict) or "health" not in data:
            raise ValueError("not a runner's status")
    except (httpx.HTTPError, ValueError) as exc:
        reason = _not_answering(exc, status_port, settings)
        if as_json:
            typer.echo(json.dumps({"health": "down", "reason": reason}, indent=2))
        else:
            console.print(f"[red]health down:[/red] {reason}")
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    _render_status(data)


def _not_answering(exc: Exception, port: int, settings: RunnerSettings) -> str:
    """Why ``status`` got no runner's status, and what to do, in words."""
    if isinstance(exc, httpx.ConnectError):
        what = f"no runner is running here (nothing listens on 127.0.0.1:{port})"
    elif isinstance(exc, httpx.TimeoutException):
        what = f"the program on 127.0.0.1:{port} did not answer within 5 s"
    else:
        what = f"the program on 127.0.0.1:{port} is not a gpufleet runner ({exc})"
    hint = (
        "start it with `gpufleet-runner start` (or its service: systemctl/docker), or pass "
        "--port / --config if it uses another status port"
    )
    creds = load_credentials(settings.credentials_file)
    if creds is not None:
        hint += f"; this host was runner {creds.runner_id} of {creds.control_plane_url}"
    return f"{what}: {hint}"


def _render_status(data: dict[str, Any]) -> None:
    colour = {"ok": "green", "degraded": "yellow"}.get(data.get("health", ""), "red")
    console.print(
        f"[bold]{data.get('name')}[/bold] ({data.get('runner_id') or 'unregistered'}) "
        f"health [{colour}]{data.get('health')}[/{colour}] → {data.get('control_plane_url')}"
    )
    if data.get("control_plane", "ok") != "ok":
        console.print(f"[yellow]{data['control_plane']}[/yellow]")
    triton = data.get("triton", {})
    console.print("Triton: " + ", ".join(f"{k}={v}" for k, v in triton.items()))
    gpus = Table("GPU", "name", "util %", "memory MB", "temp °C", "power W", title="GPUs")
    for g in data.get("gpus", []):
        gpus.add_row(
            str(g["index"]),
            g["name"],
            str(g.get("utilization_pct")),
            f"{g['memory_used_mb']}/{g['memory_total_mb']}",
            str(g.get("temperature_c")),
            str(g.get("power_w")),
        )
    if data.get("gpus"):
        console.print(gpus)
    else:
        console.print(f"GPUs: none ({data.get('gpus_note') or 'CPU-only host'})")
    models = Table("model", "version", "state", "reason", title="Models")
    for m in data.get("models", []):
        models.add_row(m["name"], m["version"], m["state"], m.get("reason") or "")
    console.print(models)
    jobs = data.get("jobs_in_flight", [])
    console.print(f"Jobs in flight: {len(jobs)}  counters: {data.get('counters')}")
    for j in jobs:
        console.print(f"  {j['id']} {j['model']} {j['running_s']}s")


# --------------------------------------------------------------------------- set


@app.command("set")
def set_config(
    key: Annotated[
        str,
        typer.Argument(
            help="max_concurrency | acceptance_rate | drain | heartbeat_interval_s | lease_wait_s"
        ),
    ],
    value: Annotated[str, typer.Argument(help="New value.")],
    config: ConfigOpt = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="GPUFLEET_API_KEY", help="Admin API key.", show_default=False),
    ] = None,
    url: Annotated[str | None, typer.Option(help="Control plane URL (default: settings).")] = None,
    runner_id: Annotated[
        str | None, typer.Option(help="Runner id (default: this host's credentials).")
    ] = None,
) -> None:
    """Store a runtime setting at the control plane; the runner applies it on its next heartbeat."""
    field = key.removeprefix("load_control.")
    if field not in SETTABLE:
        console.print(f"[red]unknown key {key!r}[/red]; one of: {', '.join(sorted(SETTABLE))}")
        raise typer.Exit(2)
    try:
        patch = RunnerConfigPatch.model_validate({field: value})
    except ValidationError as exc:
        console.print(f"[red]invalid value for {field}:[/red] {exc.errors()[0]['msg']}")
        raise typer.Exit(2) from exc
    if not api_key:
        console.print("[red]an admin API key is needed:[/red] --api-key or GPUFLEET_API_KEY")
        raise typer.Exit(2)
    settings = _settings(config)
    base = (url or settings.control_plane_url).rstrip("/")
    if runner_id is None:
        creds = load_credentials(settings.credentials_file)
        if creds is None:
            console.print(
                f"[red]no runner id:[/red] pass --runner-id (no {settings.credentials_file})"
            )
            raise typer.Exit(2)
        runner_id = creds.runner_id
    try:
        verify = client_context(settings.tls_options())
    except TlsSettingError as exc:
        console.print(f"[red]invalid TLS settings:[/red] {exc}")
        raise typer.Exit(2) from exc
    with httpx.Client(base_url=base, timeout=15, verify=verify) as http:
        resp = http.post("/v1/auth/token", content=TokenRequest(api_key=api_key).model_dump_json())
        _check(resp)
        token = TokenPair.model_validate_json(resp.content).access_token
        resp = http.patch(
            f"/v1/runners/{runner_id}/config",
            content=patch.model_dump_json(exclude_unset=True),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        _check(resp)
    view = RunnerView.model_validate_json(resp.content)
    console.print(
        f"{view.id}: {field} = {getattr(view.config, field)} (applied on the next heartbeat)"
    )


def _check(resp: httpx.Response) -> None:
    if resp.status_code < 300:
        return
    try:
        err = resp.json()["error"]
        text = f"{err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError):
        text = resp.text[:300]
    console.print(
        f"[red]{resp.request.method} {resp.request.url.path} → {resp.status_code}[/red] {text}"
    )
    raise typer.Exit(1)


def main() -> None:
    """Entry point of ``gpufleet-runner``."""
    app()


if __name__ == "__main__":
    main()
