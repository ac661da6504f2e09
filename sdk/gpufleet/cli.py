"""The ``gpufleet`` command line (typer + rich).

``gpufleet [--url URL] [--api-key KEY | --token T] [--output table|json] COMMAND``; the
credentials come from the flags, then ``GPUFLEET_URL`` / ``GPUFLEET_API_KEY`` /
``GPUFLEET_TOKEN``, then what ``gpufleet login`` stored. Exit codes: see ``_cli_io``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from gpufleet import errors, tls
from gpufleet._cli_io import EXIT_FAILED, EXIT_USAGE, Output, exit_code_for, parse_inputs
from gpufleet._cli_io import parse_pairs as pairs
from gpufleet._version import __version__
from gpufleet.client import Client
from gpufleet.config import Credentials, load_credentials, resolve, save_credentials
from gpufleet.tls import TlsOptions
from gpufleet.wire import JobView

__all__ = ["app", "main"]

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    help="gpufleet: serverless inference on a GPU fleet.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion
)
jobs_app = typer.Typer(help="Submit, inspect and cancel jobs.", no_args_is_help=True)
models_app = typer.Typer(help="The model repository.", no_args_is_help=True)
runners_app = typer.Typer(help="Runners (GPU hosts).", no_args_is_help=True)
admin_app = typer.Typer(help="Administration (admin role).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
pools_app = typer.Typer(help="Capacity pools (docs/capacity.md).", no_args_is_help=True)
quotas_app = typer.Typer(help="Tenant quotas (docs/quotas.md).", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")
app.add_typer(runners_app, name="runners")
app.add_typer(admin_app, name="admin")
admin_app.add_typer(keys_app, name="keys")
admin_app.add_typer(pools_app, name="pools")
admin_app.add_typer(quotas_app, name="quotas")
regions_app = typer.Typer(
    help="Region defaults of tenants and API keys (docs/regions.md).", no_args_is_help=True
)
admin_app.add_typer(regions_app, name="regions")
join_tokens_app = typer.Typer(help="Runner join tokens.", no_args_is_help=True)
admin_app.add_typer(join_tokens_app, name="join-tokens")
webhooks_app = typer.Typer(help="The tenant's webhook signing secret.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")
JOB_STATUSES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")

JOB_COLUMNS = ["id", "status", "model", "model_version", "created_at", "run_ms"]


@dataclass
class State:
    """Global options, resolved lazily into a client."""

    url: str | None
    api_key: str | None
    token: str | None
    output: Output
    tls_flags: dict[str, Any] = field(default_factory=dict)
    _client: Client | None = field(default=None, repr=False)

    def tls_options(self, url: str | None) -> TlsOptions:
        """TLS options: flags, then ``GPUFLEET_*`` variables, then what login saved for the
        same URL, then defaults."""
        stored = load_credentials()
        saved = stored.tls() if stored is not None and url in (None, stored.url) else None
        return tls.resolve(**self.tls_flags, stored=saved)

    def client(self) -> Client:
        if self._client is None:
            try:  # flags and env (typer reads both), then what login stored: each part alone
                creds = resolve(self.url, self.api_key, self.token)
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
            if creds.api_key is None and creds.token is None:
                raise typer.BadParameter(
                    f"no credentials for {creds.url}: pass --api-key/--token, set "
                    "GPUFLEET_API_KEY or run `gpufleet login`"
                )
            self._client = Client(
                creds.url,
                api_key=creds.api_key,
                token=creds.token,
                tls=self.tls_options(creds.url),
            )
        return self._client


def handled(fn: F) -> F:
    """Turn SDK errors into a message and a stable exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = kwargs.get("ctx", args[0] if args else None)
        state = getattr(ctx, "obj", None)
        if not isinstance(state, State):
            raise TypeError("commands take ctx: typer.Context as their first parameter")
        try:
            return fn(*args, **kwargs)
        except errors.GpufleetError as exc:
            state.output.error(exc)
            raise typer.Exit(exit_code_for(exc)) from None
        except (ValueError, OSError) as exc:  # a bad model directory, an unreadable file
            state.output.error(exc)
            raise typer.Exit(EXIT_USAGE) from None
        finally:
            if state._client is not None:
                state._client.close()
                state._client = None

    return wrapper  # type: ignore[return-value]


def _print_version(value: bool) -> None:
    if value:
        print(f"gpufleet {__version__}")
        raise typer.Exit(0)


@app.callback()
def _global(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option(envvar="GPUFLEET_URL", help="Control plane URL.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="GPUFLEET_API_KEY", help="API key (gf_…).")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="GPUFLEET_TOKEN", help="Access token.")
    ] = None,
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", help="table or json (also after the command).", case_sensitive=False
        ),
    ] = "table",
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version."
        ),
    ] = False,
    ca_bundle: Annotated[
        Path | None,
        typer.Option(
            help="PEM file or directory of CA certificates trusted besides the system store "
            "(env GPUFLEET_CA_BUNDLE)."
        ),
    ] = None,
    tls_verify: Annotated[
        bool | None,
        typer.Option(
            "--tls-verify/--no-tls-verify",
            help="Verify the control plane's certificate (default on; off: loopback only "
            "unless GPUFLEET_TLS_INSECURE_REMOTE=true).",
            show_default=False,
        ),
    ] = None,
    client_cert: Annotated[
        Path | None, typer.Option(help="Client certificate (PEM) for mutual TLS.")
    ] = None,
    client_key: Annotated[Path | None, typer.Option(help="Key of --client-cert (PEM).")] = None,
) -> None:
    output = output.lower()
    if output not in ("table", "json"):
        raise typer.BadParameter("must be table or json", param_hint="--output")
    if api_key and token:
        raise typer.BadParameter("give --api-key or --token, not both")
    tls_flags = {
        "ca_bundle": ca_bundle,
        "verify": tls_verify,
        "client_cert": client_cert,
        "client_key": client_key,
    }
    ctx.obj = State(url, api_key, token, Output(output), tls_flags)


# --------------------------------------------------------------------------- login


@app.command()
@handled
def login(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="Control plane URL.")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key (prompted when absent).")] = None,
) -> None:
    """Check an API key and store it (with the URL) in the config directory, mode 0600."""
    state: State = ctx.obj
    url = url or state.url or typer.prompt("Control plane URL")
    key = api_key or state.api_key or typer.prompt("API key", hide_input=True)
    options = state.tls_options(url)
    with Client(url, api_key=key, tls=options) as client:
        client.authenticate()
    path = save_credentials(
        Credentials(
            url=url,
            api_key=key,
            ca_bundle=str(options.ca_bundle.expanduser().resolve()) if options.ca_bundle else None,
            tls_verify=False if not options.verify else None,
            tls_insecure_remote=True if options.insecure_remote else None,
            client_cert=str(options.client_cert.expanduser().resolve())
            if options.client_cert
            else None,
            client_key=str(options.client_key.expanduser().resolve())
            if options.client_key
            else None,
        )
    )
    if state.output.json:
        state.output.emit_json({"url": url, "path": str(path)})
    else:
        state.output.err.print(f"logged in to {url}; credentials saved to {path}")


@app.command()
@handled
def token(ctx: typer.Context) -> None:
    """Print an access token (for curl or tritonclient: `Authorization: Bearer <token>`;
    an API key works there directly too)."""
    state: State = ctx.obj
    value = state.client().access_token()
    if state.output.json:
        state.output.emit_json({"access_token": value})
    else:
        print(value)


# --------------------------------------------------------------------------- jobs

InputOpt = Annotated[
    list[str],
    typer.Option("--input", "-i", help="NAME=@file.npy, NAME=JSON or NAME:FP32=JSON (repeat)."),
]


def _model_datatypes(client: Client, model: str, version: str | None) -> dict[str, str]:
    """Declared input datatypes of a model (to cast JSON inputs); empty when unknown."""
    try:
        view = client.models.get(model)
    except errors.GpufleetError:
        return {}
    ready = [v for v in view.versions if v.state == "READY"]
    chosen = [v for v in ready if v.version == version] if version else ready[-1:]
    return {t.name: t.datatype for t in chosen[0].inputs} if chosen else {}


LIVE_POLL_S = 3.0  # how often the live line refreshes status and waiting_reason


def wait_line(job: JobView, elapsed: float) -> str:
    """The live line while waiting: ``job_… QUEUED 12s: cold start: …`` (fits one row)."""
    text = f"{job.id} {job.status} {elapsed:.0f}s"
    if job.waiting_reason:
        text += f": {job.waiting_reason}"
    return text if len(text) <= 76 else text[:75] + "…"


def _wait_with_spinner(state: State, job_id: str, timeout: float | None) -> JobView:
    if state.output.json:
        return state.client().wait(job_id, timeout=timeout)
    with state.output.err.status(f"{job_id} waiting…") as live:

        def progress(job: JobView, elapsed: float) -> None:
            live.update(wait_line(job, elapsed))

        return state.client().wait(job_id, timeout=timeout, poll=LIVE_POLL_S, progress=progress)


def _finish(state: State, job: JobView) -> None:
    state.output.record(job, title=job.id)
    if job.status != "SUCCEEDED" and job.status in ("FAILED", "CANCELLED", "TIMED_OUT"):
        raise typer.Exit(EXIT_FAILED)


@jobs_app.command("submit")
@handled
def jobs_submit(
    ctx: typer.Context,
    model: str,
    inputs: InputOpt,
    model_version: Annotated[str | None, typer.Option("--version")] = None,
    priority: Annotated[int, typer.Option(min=0, max=100)] = 0,
    timeout_s: Annotated[int | None, typer.Option(help="Run time limit.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="k=v (repeat).")] = None,
    idempotency_key: Annotated[str | None, typer.Option()] = None,
    webhook: Annotated[
        str | None, typer.Option(help="URL told when the job runs and finishes.")
    ] = None,
    ttl_s: Annotated[
        int | None, typer.Option(help="Seconds the job may wait queued before TIMED_OUT.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job finishes.")] = False,
    region: Annotated[str | None, typer.Option(help="Preferred region.")] = None,
    region_allowed: Annotated[
        list[str] | None,
        typer.Option("--region-allowed", help="A region it may run in, never others (repeat)."),
    ] = None,
    spill_after_s: Annotated[
        float | None,
        typer.Option(help="Seconds to wait for --region before the nearest other may take it."),
    ] = None,
) -> None:
    """Queue a job; with --wait, wait for it (exit 1 when it fails)."""
    state: State = ctx.obj
    client = state.client()
    arrays = parse_inputs(inputs, _model_datatypes(client, model, model_version))
    job = client.submit(
        model,
        arrays,
        model_version=model_version,
        priority=priority,
        timeout_s=timeout_s,
        tags=pairs(tag or [], "--tag"),
        idempotency_key=idempotency_key,
        webhook=webhook,
        ttl_s=ttl_s,
        region=region,
        regions_allowed=region_allowed or None,
        spill_after_s=spill_after_s,
    )
    if not wait:
        state.output.record(job, title=job.id)
        return
    _finish(state, _wait_with_spinner(state, job.id, None))


@jobs_app.command("get")
@handled
def jobs_get(ctx: typer.Context, job_id: str) -> None:
    """Show a job."""
    state: State = ctx.obj
    state.output.record(state.client().get(job_id), title=job_id)


@jobs_app.command("wait")
@handled
def jobs_wait(
    ctx: typer.Context,
    job_id: str,
    timeout: Annotated[float | None, typer.Option(help="Seconds.")] = None,
) -> None:
    """Wait for a job to finish (exit 1 when it did not succeed, 7 on --timeout)."""
    state: State = ctx.obj
    _finish(state, _wait_with_spinner(state, job_id, timeout))


@jobs_app.command("cancel")
@handled
def jobs_cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a job (exit 5 when it has already finished)."""
    state: State = ctx.obj
    state.output.record(state.client().cancel(job_id), title=job_id)


@jobs_app.command("logs")
@handled
def jobs_logs(ctx: typer.Context, job_id: str) -> None:
    """Show a job's logs: its runner's lines about it and what the model printed while it
    ran (kept with the job once it finished)."""
    state: State = ctx.obj
    found = state.client().logs(job_id)
    if state.output.json:
        state.output.emit_json(found)
        return
    if found.truncated:
        state.output.err.print("(the logs were longer: the oldest lines were dropped)")
    if not found.logs:
        state.output.err.print(f"no logs for {job_id} ({found.status})")
        return
    sys.stdout.write(found.logs if found.logs.endswith("\n") else found.logs + "\n")


@jobs_app.command("list")
@handled
def jobs_list(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option(help="One of " + ", ".join(JOB_STATUSES) + " (any case).")
    ] = None,
    model: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1)] = 20,
) -> None:
    """List jobs, newest first."""
    state: State = ctx.obj
    if status is not None:
        status = status.upper()
        if status not in JOB_STATUSES:
            raise typer.BadParameter(
                "must be one of " + ", ".join(JOB_STATUSES), param_hint="--status"
            )
    found = list(state.client().list(status=status, model=model, limit=limit))
    state.output.rows(found, JOB_COLUMNS, key="jobs")


@app.command("infer")
@handled
def infer(
    ctx: typer.Context,
    model: str,
    inputs: InputOpt,
    model_version: Annotated[str | None, typer.Option("--version")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 600.0,
    cancel_on_timeout: Annotated[
        bool,
        typer.Option(
            "--cancel-on-timeout", help="Cancel the job when --timeout passes (else it goes on)."
        ),
    ] = False,
    output_file: Annotated[
        Path | None,
        typer.Option(help="Write the outputs to this .npz (shapes and dtypes kept)."),
    ] = None,
) -> None:
    """Run a job and print its outputs (exit 1 when it fails, 7 when --timeout passes: the
    job then stays queued unless --cancel-on-timeout)."""
    state: State = ctx.obj
    client = state.client()
    arrays = parse_inputs(inputs, _model_datatypes(client, model, model_version))
    job = client.submit(model, arrays, model_version=model_version)
    try:
        done = _wait_with_spinner(state, job.id, timeout)
    except errors.WaitTimeoutError as exc:
        if cancel_on_timeout:
            with contextlib.suppress(errors.ConflictError):  # finished meanwhile
                client.cancel(job.id)
            msg = f"job {job.id} cancelled after {timeout:g}s (--cancel-on-timeout)"
        else:
            msg = (
                f"job {job.id} is still {exc.job.status}: `gpufleet jobs wait {job.id}` to "
                f"keep waiting, `gpufleet jobs cancel {job.id}` (or --cancel-on-timeout) to stop"
            )
        if not state.output.json:
            state.output.err.print(msg)
        raise
    outputs = client.outputs(done)
    if output_file is not None:
        np.savez(output_file, **outputs)  # type: ignore[arg-type]  # BYTES: allow_pickle
        if not state.output.json:
            state.output.err.print(f"outputs written to {output_file}")
    state.output.arrays(outputs)


# --------------------------------------------------------------------------- models


@models_app.command("push")
@handled
def models_push(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(exists=True, file_okay=False)],
    version: Annotated[
        str | None,
        typer.Option(
            help="Version directory to push, kept as that version number (default: the "
            "highest directory, numbered by the control plane)."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Model name (default: dir name).")] = None,
) -> None:
    """Upload a Triton model directory and commit it (the same content again: that version,
    nothing uploaded; other content: the next version). Servable at once: its first job
    cold-starts it (an implicit deployment; `models deploy` to choose replicas)."""
    state: State = ctx.obj
    client = state.client()
    columns = (*Progress.get_default_columns()[:1], BarColumn(), DownloadColumn())
    with Progress(
        *columns, TransferSpeedColumn(), console=state.output.err, disable=state.output.json
    ) as bar:
        task = bar.add_task(f"push {name or directory.resolve().name}", total=None)

        def progress(sent: int, total: int) -> None:
            bar.update(task, completed=sent, total=total)

        view = client.models.push(directory, version=version, name=name, progress=progress)
    state.output.record(view, title=f"{view.name} v{view.version}")


@models_app.command("list")
@handled
def models_list(ctx: typer.Context) -> None:
    """List models and their versions."""
    state: State = ctx.obj
    found = state.client().models.list()
    rows = [
        {"name": m.name, "versions": ", ".join(f"{v.version}:{v.state}" for v in m.versions)}
        for m in found
    ]
    if state.output.json:
        state.output.emit_json({"models": found})
    else:
        state.output.rows(rows, ["name", "versions"])


@models_app.command("get")
@handled
def models_get(ctx: typer.Context, name: str) -> None:
    """Show a model with its versions."""
    state: State = ctx.obj
    view = state.client().models.get(name)
    if state.output.json:
        state.output.emit_json(view)
        return
    columns = ["version", "state", "platform", "created_at", "inputs", "outputs", "loaded_on"]
    state.output.rows(view.versions, columns)


@models_app.command("delete")
@handled
def models_delete(
    ctx: typer.Context,
    name: str,
    version: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete one version of a model (asks first unless --yes)."""
    state: State = ctx.obj
    if not yes and not typer.confirm(f"delete {name} version {version} and its files?"):
        raise typer.Exit(EXIT_FAILED)
    state.output.record(state.client().models.delete(name, version))


@models_app.command("deployment")
@handled
def models_deployment(ctx: typer.Context, name: str) -> None:
    """Show a model's deployment: the spec, the placement and what runners report."""
    state: State = ctx.obj
    state.output.record(state.client().models.deployment(name), title=name)


@models_app.command("undeploy")
@handled
def models_undeploy(ctx: typer.Context, name: str) -> None:
    """Unload a model everywhere (its deployment becomes min 0, max 0; deploy to undo)."""
    state: State = ctx.obj
    view = state.client().models.deploy(name, min_replicas=0, max_replicas=0)
    state.output.record(view, title=name)


@models_app.command("deploy")
@handled
def models_deploy(
    ctx: typer.Context,
    name: str,
    min_replicas: Annotated[int, typer.Option("--min", min=0)] = 1,
    max_replicas: Annotated[int, typer.Option("--max", min=0)] = 1,
    region: Annotated[list[str] | None, typer.Option(help="Region (repeat).")] = None,
    gpu_memory_mb: Annotated[int | None, typer.Option(min=0)] = None,
) -> None:
    """Set where and how many replicas of a model run."""
    state: State = ctx.obj
    view = state.client().models.deploy(
        name,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        regions=region or [],
        gpu_memory_mb=gpu_memory_mb,
    )
    state.output.record(view, title=name)


# --------------------------------------------------------------------------- runners, admin


@runners_app.command("list")
@handled
def runners_list(ctx: typer.Context) -> None:
    """List runners with their status."""
    state: State = ctx.obj
    found = state.client().runners.list()
    if state.output.json:
        state.output.emit_json({"runners": found})
        return
    rows = [  # the backend shows (a mock runner answers zeros)
        {
            "id": r.id,
            "name": r.name,
            "region": r.region,
            "status": r.status,
            "backend": r.triton.get("backend"),
            "running_jobs": len(r.running_jobs),
        }
        for r in found
    ]
    state.output.rows(rows, ["id", "name", "region", "status", "backend", "running_jobs"])


@runners_app.command("get")
@handled
def runners_get(ctx: typer.Context, runner_id: str) -> None:
    """Show one runner."""
    state: State = ctx.obj
    state.output.record(state.client().runners.get(runner_id), title=runner_id)


@runners_app.command("drain")
@handled
def runners_drain(
    ctx: typer.Context,
    runner_id: str,
    undo: Annotated[bool, typer.Option("--undo", help="Resume leasing.")] = False,
) -> None:
    """Stop leasing jobs to a runner (it finishes what it runs); --undo resumes."""
    state: State = ctx.obj
    view = state.client().runners.drain(runner_id, drain=not undo)
    state.output.record(view, title=runner_id)


@runners_app.command("delete")
@handled
def runners_delete(
    ctx: typer.Context,
    runner_id: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Revoke a runner: its credentials stop working (asks first unless --yes)."""
    state: State = ctx.obj
    if not yes and not typer.confirm(f"revoke runner {runner_id}?"):
        raise typer.Exit(EXIT_FAILED)
    state.output.record(state.client().runners.delete(runner_id))


@webhooks_app.command("secret")
@handled
def webhooks_secret(ctx: typer.Context) -> None:
    """Print the tenant's webhook signing secret (whsec_…)."""
    state: State = ctx.obj
    secret = state.client().webhooks.secret()
    if state.output.json:
        state.output.emit_json({"secret": secret})
    else:
        print(secret)


@webhooks_app.command("rotate")
@handled
def webhooks_rotate(ctx: typer.Context) -> None:
    """Make a new signing secret (the old one stays valid for a while) and print it."""
    state: State = ctx.obj
    secret = state.client().webhooks.rotate_secret()
    if state.output.json:
        state.output.emit_json({"secret": secret})
    else:
        print(secret)


@keys_app.command("create")
@handled
def keys_create(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option()],
    role: Annotated[str, typer.Option(help="admin, user or viewer.")],
    name: Annotated[str, typer.Option()] = "",
) -> None:
    """Create an API key (the secret is printed only this once, whole, on its own line)."""
    state: State = ctx.obj
    created = state.client().admin.create_api_key(tenant, role, name)
    if state.output.json:
        state.output.emit_json(created)
        return
    state.output.err.print(f"API key {created.id} ({created.tenant}, {created.role}):")
    print(created.api_key)  # plain stdout: never wrapped, cut or styled


@keys_app.command("rotate")
@handled
def keys_rotate(
    ctx: typer.Context,
    key_id: str,
    old_valid_for: Annotated[
        int, typer.Option(help="Seconds the old secret keeps working (0: stop it now).", min=0)
    ] = 3600,
) -> None:
    """Give an API key a new secret (printed only this once); the old one keeps working for
    --old-valid-for seconds, time to roll the new one out."""
    state: State = ctx.obj
    rotated = state.client().admin.rotate_api_key(key_id, old_valid_for)
    if state.output.json:
        state.output.emit_json(rotated)
        return
    state.output.err.print(
        f"API key {rotated.id}: new secret; the old one works until {rotated.old_valid_until}:"
    )
    print(rotated.api_key)  # plain stdout: never wrapped, cut or styled


@keys_app.command("list")
@handled
def keys_list(ctx: typer.Context) -> None:
    """List API keys (never their secrets)."""
    state: State = ctx.obj
    columns = ["id", "tenant", "role", "name", "created_at", "revoked"]
    state.output.rows(state.client().admin.list_api_keys(), columns, key="keys")


@keys_app.command("revoke")
@handled
def keys_revoke(ctx: typer.Context, key_id: str) -> None:
    """Revoke an API key."""
    state: State = ctx.obj
    state.output.record(state.client().admin.revoke_api_key(key_id))


@admin_app.command("join-token")
@handled
def join_token(
    ctx: typer.Context,
    region: Annotated[str, typer.Option()] = "default",
    label: Annotated[list[str] | None, typer.Option(help="k=v (repeat).")] = None,
    expires_in: Annotated[int, typer.Option(help="Seconds.", min=60)] = 3600,
    max_uses: Annotated[
        int, typer.Option(help="Runners it may register (a pool's shared token: more).", min=1)
    ] = 1,
) -> None:
    """Create a join token for registering a runner (one, unless --max-uses)."""
    state: State = ctx.obj
    labels = pairs(label or [], "--label")
    admin = state.client().admin
    state.output.record(admin.create_join_token(region, labels, expires_in, max_uses))


@pools_app.command("put")
@handled
def pools_put(
    ctx: typer.Context,
    name: str,
    spec: Annotated[Path, typer.Argument(help="The pool spec, a JSON file.")],
) -> None:
    """Create or replace a capacity pool from a JSON spec."""
    import json

    state: State = ctx.obj
    try:
        body = json.loads(spec.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read a JSON spec: {exc}", param_hint="SPEC") from exc
    state.output.record(state.client().admin.put_pool(name, body))


@pools_app.command("get")
@handled
def pools_get(ctx: typer.Context, name: str) -> None:
    """A pool, its last decision and its decision log."""
    state: State = ctx.obj
    state.output.record(state.client().admin.get_pool(name))


@pools_app.command("list")
@handled
def pools_list(ctx: typer.Context) -> None:
    """Every capacity pool with its target and reason."""
    state: State = ctx.obj
    columns = ["name", "target", "hosts", "reason", "decided_at"]
    state.output.rows(state.client().admin.list_pools(), columns, key="pools")


@pools_app.command("join-token")
@handled
def pools_join_token(ctx: typer.Context, name: str) -> None:
    """A join token for every host of the pool (aws-asg: store it in the launch template's
    secret); it registers up to the control plane's pool use limit until it expires."""
    state: State = ctx.obj
    state.output.record(state.client().admin.pool_join_token(name))


@pools_app.command("delete")
@handled
def pools_delete(ctx: typer.Context, name: str) -> None:
    """Delete a pool that has no hosts left."""
    state: State = ctx.obj
    state.output.record(state.client().admin.delete_pool(name))


@quotas_app.command("set")
@handled
def quotas_set(
    ctx: typer.Context,
    tenant: str,
    max_queued: Annotated[int | None, typer.Option(help="Jobs queued at once (0: none).")] = None,
    max_running: Annotated[
        int | None, typer.Option(help="Jobs running at once (0: no limit).")
    ] = None,
    submit_rate: Annotated[
        float | None, typer.Option(help="Jobs per second, per replica (0: no limit).")
    ] = None,
    submit_burst: Annotated[int | None, typer.Option(help="Token bucket size.")] = None,
    weight: Annotated[float | None, typer.Option(help="Share of a shared model pool.")] = None,
) -> None:
    """Set some of a tenant's quotas; the others keep their value."""
    state: State = ctx.obj
    given = {
        "max_queued": max_queued,
        "max_running": max_running,
        "submit_rate": submit_rate,
        "submit_burst": submit_burst,
        "weight": weight,
    }
    fields = {k: v for k, v in given.items() if v is not None}
    if not fields:
        raise typer.BadParameter("give at least one quota to set", param_hint="--max-queued…")
    state.output.record(state.client().admin.set_quota(tenant, **fields))


@quotas_app.command("get")
@handled
def quotas_get(ctx: typer.Context, tenant: str) -> None:
    """A tenant's effective quotas and its queued and running jobs."""
    state: State = ctx.obj
    state.output.record(state.client().admin.get_quota(tenant))


@quotas_app.command("reset")
@handled
def quotas_reset(ctx: typer.Context, tenant: str) -> None:
    """Put a tenant back on the default quotas."""
    state: State = ctx.obj
    state.output.record(state.client().admin.reset_quota(tenant))


@quotas_app.command("list")
@handled
def quotas_list(ctx: typer.Context) -> None:
    """Every tenant with its own quotas or with jobs."""
    state: State = ctx.obj
    columns = ["tenant", "max_queued", "max_running", "submit_rate", "weight", "queued", "running"]
    state.output.rows(state.client().admin.list_quotas().tenants, columns, key="tenants")


TenantOpt = Annotated[str | None, typer.Option("--tenant", help="A tenant.")]
KeyOpt = Annotated[str | None, typer.Option("--key", help="An API key id (key_…).")]


def _one_target(tenant: str | None, key: str | None) -> dict[str, str | None]:
    if (tenant is None) == (key is None):
        raise typer.BadParameter("give exactly one of --tenant and --key", param_hint="--tenant")
    return {"tenant": tenant, "key_id": key}


@regions_app.command("set")
@handled
def regions_set(
    ctx: typer.Context,
    tenant: TenantOpt = None,
    key: KeyOpt = None,
    default_region: Annotated[
        str | None, typer.Option(help="Preferred region of requests that name none.")
    ] = None,
    region_allowed: Annotated[
        list[str] | None,
        typer.Option(
            "--region-allowed",
            help="A region its jobs may run in, never others (repeat; replaces the list).",
        ),
    ] = None,
    any_region: Annotated[
        bool, typer.Option("--any-region", help="Remove the regions_allowed limit.")
    ] = False,
    no_default_region: Annotated[
        bool, typer.Option("--no-default-region", help="Remove the default_region.")
    ] = False,
) -> None:
    """Set a tenant's or an API key's region defaults; what is not given keeps its value."""
    state: State = ctx.obj
    target = _one_target(tenant, key)
    if default_region is not None and no_default_region:
        raise typer.BadParameter(
            "--default-region and --no-default-region exclude each other",
            param_hint="--default-region",
        )
    if region_allowed and any_region:
        raise typer.BadParameter(
            "--region-allowed and --any-region exclude each other", param_hint="--any-region"
        )
    fields: dict[str, Any] = {}
    if default_region is not None or no_default_region:
        fields["default_region"] = default_region
    if region_allowed or any_region:
        fields["regions_allowed"] = list(region_allowed or [])
    if not fields:
        raise typer.BadParameter(
            "give --default-region, --region-allowed, --any-region or --no-default-region",
            param_hint="--default-region",
        )
    state.output.record(state.client().admin.set_region_defaults(**target, **fields))


@regions_app.command("get")
@handled
def regions_get(ctx: typer.Context, tenant: TenantOpt = None, key: KeyOpt = None) -> None:
    """A tenant's or an API key's region defaults, and the effective ones."""
    state: State = ctx.obj
    state.output.record(state.client().admin.get_region_defaults(**_one_target(tenant, key)))


@regions_app.command("reset")
@handled
def regions_reset(ctx: typer.Context, tenant: TenantOpt = None, key: KeyOpt = None) -> None:
    """Remove what was set: a key falls back on its tenant, a tenant on the settings."""
    state: State = ctx.obj
    state.output.record(state.client().admin.reset_region_defaults(**_one_target(tenant, key)))


@regions_app.command("list")
@handled
def regions_list(ctx: typer.Context) -> None:
    """Every tenant and API key with region defaults."""
    state: State = ctx.obj
    listing = state.client().admin.list_region_defaults()
    if state.output.json:
        state.output.record(listing)
        return
    columns = ["tenant", "key_id", "default_region", "regions_allowed", "source"]
    state.output.rows([*listing.tenants, *listing.keys], columns, key="defaults")


@keys_app.command("max-priority")
@handled
def keys_max_priority(
    ctx: typer.Context,
    key_id: str,
    priority: Annotated[
        int | None, typer.Argument(help="0-100; leave out to go back to the default.")
    ] = None,
) -> None:
    """Set the highest job priority an API key may submit at."""
    state: State = ctx.obj
    state.output.record(state.client().admin.set_key_max_priority(key_id, priority))


def hoist_output(args: list[str]) -> list[str]:
    """``-o json`` / ``--output json`` / ``--output=json`` anywhere on the line moved in front
    of the command, where the global option lives."""
    out: list[str] = []
    front: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out.extend(args[i:])
            break
        if arg in ("-o", "--output") and i + 1 < len(args):
            front += [arg, args[i + 1]]
            i += 2
            continue
        if arg.startswith("--output="):
            front.append(arg)
        else:
            out.append(arg)
        i += 1
    return front + out


def _wants_json(args: list[str]) -> bool:
    for i, arg in enumerate(args):
        if arg in ("-o", "--output") and i + 1 < len(args):
            return args[i + 1].lower() == "json"
        if arg.startswith("--output="):
            return arg.split("=", 1)[1].lower() == "json"
    return False


@join_tokens_app.command("list")
@handled
def join_tokens_list(ctx: typer.Context) -> None:
    """List unexpired join tokens (ids, never the tokens)."""
    state: State = ctx.obj
    columns = ["id", "region", "labels", "uses", "max_uses", "last_used_at", "expires_at"]
    state.output.rows(state.client().admin.list_join_tokens(), columns, key="tokens")


@join_tokens_app.command("revoke")
@handled
def join_tokens_revoke(ctx: typer.Context, token_id: str) -> None:
    """Revoke a join token (jt_…): it registers no more runners."""
    state: State = ctx.obj
    state.output.record(state.client().admin.revoke_join_token(token_id))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``gpufleet`` console script: usage errors too come as JSON on
    stderr when ``-o json`` is given (anywhere on the line)."""
    import sys

    args = hoist_output(list(sys.argv[1:] if argv is None else argv))
    as_json = _wants_json(args)
    try:
        code = app(args=args, prog_name="gpufleet", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)  # typer.Exit(n) comes back as n
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(EXIT_FAILED)
    except Exception as exc:
        # click's usage errors (typer may bundle its own click: matched by their API)
        if not (hasattr(exc, "format_message") and hasattr(exc, "show")):
            raise
        if as_json:
            body = {"code": "usage", "message": exc.format_message()}
            sys.stderr.write(json.dumps({"error": body}) + "\n")
            sys.exit(EXIT_USAGE)
        exc.show()
        sys.exit(getattr(exc, "exit_code", EXIT_USAGE))


if __name__ == "__main__":  # pragma: no cover
    main()
