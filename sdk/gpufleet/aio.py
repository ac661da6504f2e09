"""The asyncio client: the same API as :class:`gpufleet.Client`, every call awaited.

>>> async with AsyncClient("http://127.0.0.1:8080", api_key="gf_...") as fleet:  # doctest: +SKIP
...     out = await fleet.infer("add_sub", {"INPUT0": a, "INPUT1": b})
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import numpy as np

from gpufleet import _ops, models
from gpufleet._lean import LeanTransport, takes, usable
from gpufleet._transport import POOL_LIMITS, Authenticate, Core, Op, Send, Sleep, seg
from gpufleet.config import region_setting
from gpufleet.config import resolve as resolve_credentials
from gpufleet.direct import DirectTickets, infer_direct
from gpufleet.errors import ConnectionError, NotFoundError
from gpufleet.models import ProgressCallback
from gpufleet.streaming import (
    JobStreamState,
    SSEDecoder,
    StreamChunk,
    generate_body,
    generate_chunk,
    generate_stream_path,
    stream_error,
)
from gpufleet.tls import TlsOptions, check_url, client_context, resolve
from gpufleet.wire import (
    ApiKeyCreated,
    ApiKeyRotated,
    ApiKeyView,
    DeploymentView,
    JobLogs,
    JobRequest,
    JobView,
    JoinTokenCheck,
    JoinTokenCreated,
    JoinTokenView,
    KeyLimits,
    ModelVersionView,
    ModelView,
    PoolSpec,
    PoolView,
    QuotaList,
    QuotaSpec,
    QuotaView,
    RegionDefaultsList,
    RegionDefaultsView,
    RunnerConfigPatch,
    RunnerView,
)

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient:
    """An asyncio client of the gpufleet API (same arguments and methods as ``Client``).

    Args:
        url: base URL of the control plane (``http://127.0.0.1:8080``); default
            ``GPUFLEET_URL``, else the URL ``gpufleet login`` stored.
        api_key: an API key (``gf_…``), exchanged for tokens and refreshed before expiry.
        token: an access token to use as is (when no API key is given). With neither:
            ``GPUFLEET_API_KEY`` / ``GPUFLEET_TOKEN``, else what ``gpufleet login`` stored
            for that URL (``gpufleet.config.resolve``).
        timeout: seconds per HTTP request (long polls add their wait on top).
        max_retries: retries on 429, 503 and connection errors (exponential backoff with
            full jitter; ``Retry-After`` honoured).
        transport: an ``httpx.AsyncBaseTransport`` for the API calls (tests); presigned bucket
            URLs always go through a plain transport.
        ca_bundle: a PEM file or directory of CA certificates trusted in addition to the
            system store (a control plane with a private CA); default ``GPUFLEET_CA_BUNDLE``.
        tls_verify: ``False`` turns certificate verification off (loopback hosts only,
            unless ``tls_insecure_remote=True`` too); default ``GPUFLEET_TLS_VERIFY``, else on.
        tls_insecure_remote: allow ``tls_verify=False`` for a non-loopback host.
        client_cert, client_key: a client certificate (PEM) for mutual TLS.
        tls: a ready :class:`~gpufleet.tls.TlsOptions` (instead of the five above).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_bundle: str | Path | None = None,
        tls_verify: bool | None = None,
        tls_insecure_remote: bool | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        tls: TlsOptions | None = None,
        region: str | None = None,
        regions_allowed: Iterable[str] | None = None,
    ) -> None:
        creds = resolve_credentials(url, api_key, token)
        self._core = Core(
            creds.url,
            api_key=creds.api_key,
            token=creds.token,
            timeout=timeout,
            max_retries=max_retries,
        )
        # Region setting: the preferred region and limit of jobs and calls that name none
        # (the arguments, else GPUFLEET_REGION / GPUFLEET_REGIONS_ALLOWED).
        self._core.region, self._core.regions_allowed = region_setting(region, regions_allowed)
        options = tls or resolve(
            ca_bundle=ca_bundle,
            verify=tls_verify,
            insecure_remote=tls_insecure_remote,
            client_cert=client_cert,
            client_key=client_key,
            stored=creds.tls(),  # what `gpufleet login` saved for this control plane
        )
        check_url(self._core.base_url, options)
        self._core.tls_names = options.names
        verify = client_context(options)
        api_transport: httpx.AsyncBaseTransport | None = transport
        self._lean: LeanTransport | None = None
        if transport is None and usable(self._core.base_url):
            # plain HTTP, no proxy: the lean transport (httpx's default one for the rest)
            api_transport = self._lean = LeanTransport(
                httpx.AsyncHTTPTransport(verify=verify, limits=POOL_LIMITS),
                max_connections=POOL_LIMITS.max_connections or 0,
                max_keepalive=POOL_LIMITS.max_keepalive_connections or 0,
            )
        self._http = httpx.AsyncClient(
            transport=api_transport, timeout=timeout, verify=verify, limits=POOL_LIMITS
        )
        self._bucket = self._http
        if transport is not None:  # presigned bucket URLs: a real transport
            self._bucket = httpx.AsyncClient(timeout=timeout, verify=verify)
        self._auth_lock = asyncio.Lock()
        self.models = AsyncModels(self)
        self.runners = AsyncRunners(self)
        self.admin = AsyncAdmin(self)
        self.webhooks = AsyncWebhooks(self)
        self.direct_tickets = DirectTickets()  # infer(direct=True)

    # ------------------------------------------------------------------ driver

    async def _run(self, op: Op[T]) -> T:
        """Drive an effect generator to completion with asyncio I/O."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = op.throw(error) if error is not None else op.send(value)
            except StopIteration as stop:
                return cast(T, stop.value)
            value, error = None, None
            try:
                if isinstance(effect, Send):
                    lean = self._lean
                    if lean is not None and not effect.external and takes(effect.request):
                        if self._http.is_closed:  # as httpx says it
                            raise RuntimeError(
                                "Cannot send a request, as the client has been closed."
                            )
                        value = await lean.send(effect.request, self._http.timeout)
                    else:
                        http = self._bucket if effect.external else self._http
                        value = await http.send(effect.request)
                elif isinstance(effect, Sleep):
                    await asyncio.sleep(effect.seconds)
                elif isinstance(effect, Authenticate):
                    async with self._auth_lock:
                        value = await self._run(self._core.authenticate(effect.stale))
            except httpx.TransportError as exc:
                error = exc

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()
        if self._bucket is not self._http:
            await self._bucket.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def authenticate(self) -> None:
        """Obtain an access token now (exchanging the API key); raises
        :class:`~gpufleet.errors.AuthError` when the credentials are refused."""
        await self._run(self._core.authenticate())

    async def access_token(self) -> str:
        """A valid access token (exchanged from the API key, or refreshed, when needed):
        for tools that call the HTTP API or tritonclient directly."""
        return await self._run(self._core.authenticate())

    # ------------------------------------------------------------------ jobs

    async def submit(
        self,
        model: str,
        inputs: _ops.Inputs,
        *,
        model_version: str | None = None,
        outputs: Iterable[str] | None = None,
        priority: int = 0,
        timeout_s: int | None = None,
        ttl_s: int | None = None,
        max_attempts: int | None = None,
        region: str | None = None,
        webhook: str | Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        parameters: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
        regions_allowed: Iterable[str] | None = None,
        spill_after_s: float | None = None,
    ) -> JobView:
        """Queue a job. ``inputs`` is ``{"NAME": array_or_list}`` or a list of wire
        ``Tensor``; large arrays are uploaded to the bucket. The request always carries an
        Idempotency-Key (a fresh UUID unless given), so retries never make a second job; an
        error with ``err.may_exist`` (no answer, 5xx) may have stored the job: submit again
        with ``idempotency_key=err.idempotency_key`` to get it instead of a second one.
        Returns the job as queued (``status == "QUEUED"``); with ``wait=N`` the server
        holds the answer until the job is terminal or N seconds (≤ 30) pass and returns the
        job as it is then (``Prefer: wait``): one call instead of a submit and a wait.
        ``region`` (preferred), ``regions_allowed`` (never elsewhere) and ``spill_after_s``
        steer where it runs (docs/regions.md); the first two default to the client's."""
        req = await self._run(
            _ops.job_request(
                self._core, model, inputs, model_version=model_version, outputs=outputs,
                priority=priority, timeout_s=timeout_s, ttl_s=ttl_s,
                max_attempts=max_attempts, region=region, webhook=webhook, tags=tags,
                parameters=parameters, regions_allowed=regions_allowed,
                spill_after_s=spill_after_s,
            )
        )  # fmt: skip
        return await self._run(_ops.submit(self._core, req, idempotency_key, wait))

    async def submit_batch(
        self, jobs: Iterable[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> list[str]:
        """Queue up to 100 jobs in one call; each item holds :meth:`submit`'s arguments
        (``{"model": …, "inputs": …, "priority": …}``). Returns the job ids in order. The
        call carries an Idempotency-Key (a fresh UUID unless given): retries return the same
        ids. On an error with ``err.may_exist`` the batch may be stored: call again with
        ``idempotency_key=err.idempotency_key`` to get its ids (and complete it)."""
        reqs: list[JobRequest] = []
        for item in jobs:
            args = dict(item)
            model, inputs = args.pop("model"), args.pop("inputs")
            reqs.append(await self._run(_ops.job_request(self._core, model, inputs, **args)))
        return await self._run(_ops.submit_batch(self._core, reqs, idempotency_key))

    async def get(self, job_id: str) -> JobView:
        """The job's current state."""
        return await self._run(_ops.get(self._core, job_id))

    async def logs(self, job_id: str) -> JobLogs:
        """The job's logs (see ``Client.logs``)."""
        return await self._run(_ops.logs(self._core, job_id))

    async def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll: float = 20.0,
        progress: _ops.WaitProgress | None = None,
    ) -> JobView:
        """Block until the job is terminal (long polls of ``poll`` ≤ 30 s each).

        ``progress(job, elapsed_s)`` is called after every poll while the job is not done
        (its ``status`` and ``waiting_reason``); changes are also logged on the ``gpufleet``
        logger at INFO. Raises :class:`~gpufleet.errors.WaitTimeoutError` after ``timeout``
        seconds (the job goes on: wait again or cancel it)."""
        return await self._run(_ops.wait(self._core, job_id, timeout, poll, progress))

    async def cancel(self, job_id: str) -> JobView:
        """Cancel a job (``ConflictError`` when it has already finished)."""
        return await self._run(_ops.cancel(self._core, job_id))

    async def quota(self) -> QuotaView:
        """Your tenant's quotas and its queued and running jobs (docs/quotas.md)."""
        return await self._run(_ops.my_quota(self._core))

    async def list(
        self,
        status: str | None = None,
        model: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[JobView]:
        """Iterate over the caller's jobs, newest first, following ``next_cursor``;
        at most ``limit`` jobs when given."""
        cursor: str | None = None
        seen = 0
        while True:
            size = page_size if limit is None else max(1, min(page_size, limit - seen))
            page = await self._run(_ops.list_page(self._core, status, model, size, cursor))
            for job in page.jobs:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield job
            cursor = page.next_cursor
            if cursor is None or (limit is not None and seen >= limit):
                return

    async def outputs(self, job: JobView) -> dict[str, np.ndarray[Any, Any]]:
        """A finished job's outputs as arrays (``JobFailedError`` unless SUCCEEDED)."""
        return await self._run(_ops.outputs_of(self._core, job))

    async def infer(
        self,
        model: str,
        inputs: _ops.Inputs,
        version: str | None = None,
        timeout: float | None = 600.0,
        *,
        direct: bool = False,
        progress: _ops.WaitProgress | None = None,
        **submit_args: Any,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Synchronous inference: ``{"OUTPUT0": array, …}``.

        Without job options this is ``POST /v1/models/{model}/infer``: answered in memory
        by a runner connected to the control plane (milliseconds), else run as a job that
        the call waits for; retried on 503 (a runner lost mid-request). A failed inference
        raises :class:`~gpufleet.errors.APIError` (400 inputs refused, 500 model error, 504
        ``timeout``). With job options (``priority``, ``webhook``, ``tags``, ``ttl_s``, …)
        it submits a durable job and waits for it; then :class:`JobFailedError` (with the
        job's error) reports a FAILED, TIMED_OUT or CANCELLED job.

        ``direct=True`` (docs/direct.md): sent straight to a runner serving the model with a
        ticket from the control plane (cached, renewed before it expires; ``region``
        prefers a runner there), falling back to the control plane when no runner offers
        direct mode, the runner is unreachable or it refuses the ticket.

        ``progress(job, elapsed_s)`` (as :meth:`wait` takes it) makes the call a job too, so
        that its wait can be reported: status and ``waiting_reason`` (a cold start, no
        runner, …) after each poll, and changes logged on the ``gpufleet`` logger."""
        if direct:  # straight to a runner with a ticket (docs/direct.md)
            if not set(submit_args) <= {"outputs", "parameters", "region"}:
                extra = sorted(set(submit_args) - {"outputs", "parameters", "region"})
                raise ValueError(f"direct=True takes no job options (got {extra})")
            return await self._run(
                infer_direct(self._core, self.direct_tickets, model, inputs, version, timeout,
                             submit_args.get("outputs"), submit_args.get("parameters"),
                             submit_args.get("region"))
            )  # fmt: skip
        if progress is None and set(submit_args) <= {
            "outputs",
            "parameters",
            "region",
            "regions_allowed",
        }:
            return await self._run(
                _ops.infer(self._core, model, inputs, version, timeout,
                           submit_args.get("outputs"), submit_args.get("parameters"),
                           submit_args.get("region"), submit_args.get("regions_allowed"))
            )  # fmt: skip
        job = await self.submit(model, inputs, model_version=version, **submit_args)
        return await self.outputs(await self.wait(job.id, timeout=timeout, progress=progress))

    # ------------------------------------------------------------------ streaming

    async def stream(
        self,
        model: str,
        inputs: Mapping[str, Any],
        version: str | None = None,
        *,
        parameters: Mapping[str, Any] | None = None,
        timeout: float = 600.0,
    ) -> AsyncIterator[StreamChunk]:
        """Each response of a (decoupled) model as it is produced: ``async for chunk in
        fleet.stream("token_stream", {"PROMPT": "a b c"}): chunk.outputs["TOKEN"]``.

        Triton's generate extension, streamed (``POST /v2/models/{model}/generate_stream``):
        ``inputs`` maps input names to values (arrays, lists, scalars, text). The control
        plane runs it on a runner connected to it, else as a durable job it follows.
        Leaving the loop early (``break``, an exception) hangs up, which cancels the request
        in Triton. Not retried once started (a model's output may differ); errors raise
        :class:`~gpufleet.errors.APIError`. ``timeout``: seconds to wait for each response."""
        path = generate_stream_path(model, version)
        body = generate_body(inputs, parameters)
        async with self._open_stream("POST", path, json=body, timeout=timeout) as resp:
            decoder = SSEDecoder()
            index = 0
            async for line in resp.aiter_lines():
                event = decoder.feed(line)
                if event is not None:
                    yield generate_chunk(event, index)
                    index += 1

    async def stream_job(
        self, job_id: str, after: str | None = None, *, timeout: float = 120.0
    ) -> AsyncIterator[StreamChunk]:
        """A durable job's partial outputs (``GET /v1/jobs/{id}/stream``): every chunk once,
        in order, also the ones produced before the call (chunks are kept), until the job
        ends; then :class:`JobFailedError` unless it SUCCEEDED. ``after``: a chunk's
        ``event_id``, to resume after it. A dropped connection is reopened with
        ``Last-Event-ID`` (``max_retries`` times in a row)."""
        state = JobStreamState(job_id, after)
        failures = 0
        while not state.done:
            headers = {"Last-Event-ID": state.after} if state.after else None
            try:
                async with self._open_stream(
                    "GET", f"/v1/jobs/{seg(job_id)}/stream", headers=headers, timeout=timeout
                ) as resp:
                    decoder = SSEDecoder()
                    async for line in resp.aiter_lines():
                        event = decoder.feed(line)
                        chunk = state.on_event(event) if event is not None else None
                        if chunk is not None:
                            failures = 0
                            yield chunk
                        if state.done:
                            return
            except httpx.TransportError as exc:
                if failures >= self._core.retry.max_retries:
                    raise ConnectionError(f"job stream of {job_id}: {exc!r}") from exc
            else:
                if failures >= self._core.retry.max_retries:
                    raise ConnectionError(f"job stream of {job_id} kept closing before its end")
            await asyncio.sleep(self._core.retry.delay(failures))
            failures += 1

    @contextlib.asynccontextmanager
    async def _open_stream(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """An event-stream response (its body not read yet); an error answer raises."""
        renewed = False
        while True:
            token = await self.access_token()
            hdrs = {"Accept": "text/event-stream", **(headers or {})}
            req = self._core.build(method, path, json=json, headers=hdrs, token=token,
                                   timeout=timeout)  # fmt: skip
            resp = await self._http.send(req, stream=True)
            if resp.status_code == 401 and not renewed and self._core.tokens.can_renew:
                await resp.aclose()
                self._core.tokens.invalidate(token)
                renewed = True
                continue
            break
        try:
            if resp.status_code >= 400:
                await resp.aread()
                raise stream_error(resp.status_code, resp.content)
            yield resp
        finally:
            await resp.aclose()


class AsyncModels:
    """``client.models``: the model repository."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def push(
        self,
        path: str | Path,
        *,
        version: str | None = None,
        name: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> ModelVersionView:
        """Upload a Triton model directory (``config.pbtxt`` + the highest numeric
        version directory, or ``version``) and commit it. ``name`` defaults to the
        directory's name; ``progress(sent, total)`` is called as bytes go out."""
        return await self._c._run(models.push(self._c._core, path, version, name, progress))

    async def list(self) -> list[ModelView]:
        """Every model of the caller's tenant."""
        return await self._c._run(models.list_models(self._c._core))

    async def get(self, name: str) -> ModelView:
        """A model with its versions."""
        return await self._c._run(models.get_model(self._c._core, name))

    async def delete(self, name: str, version: str) -> dict[str, Any]:
        """Delete one version."""
        return await self._c._run(models.delete_version(self._c._core, name, version))

    async def deploy(
        self,
        name: str,
        *,
        min_replicas: int = 1,
        max_replicas: int = 1,
        regions: Sequence[str] | None = None,
        gpu_memory_mb: int | None = None,
    ) -> DeploymentView:
        """Set the desired placement of a model."""
        return await self._c._run(
            models.deploy(self._c._core, name, min_replicas, max_replicas, regions, gpu_memory_mb)
        )

    async def deployment(self, name: str) -> DeploymentView:
        """Desired and observed placement of a model."""
        return await self._c._run(models.get_deployment(self._c._core, name))


class AsyncRunners:
    """``client.runners``."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def list(self) -> list[RunnerView]:
        """Every registered runner with its status."""
        return (await self._c._run(_ops.list_runners(self._c._core))).runners

    async def get(self, runner_id: str) -> RunnerView:
        """One runner (``NotFoundError`` when no runner has that id)."""
        for runner in await self.list():
            if runner.id == runner_id:
                return runner
        raise NotFoundError(f"runner {runner_id!r} not found")

    async def configure(self, runner_id: str, **settings: Any) -> RunnerView:
        """Merge runtime settings into a runner's config (admin): ``max_concurrency``,
        ``acceptance_rate``, ``drain``, ``heartbeat_interval_s``, ``lease_wait_s``."""
        patch = RunnerConfigPatch(**settings)
        return await self._c._run(_ops.configure_runner(self._c._core, runner_id, patch))

    async def drain(self, runner_id: str, drain: bool = True) -> RunnerView:
        """Stop (or with ``drain=False`` resume) leasing jobs to a runner (admin)."""
        return await self.configure(runner_id, drain=drain)

    async def delete(self, runner_id: str) -> dict[str, Any]:
        """Revoke a runner (admin): its credentials stop working."""
        return await self._c._run(_ops.revoke_runner(self._c._core, runner_id))


class AsyncAdmin:
    """``client.admin``: API keys and runner join tokens (admin role)."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create_api_key(self, tenant: str, role: str, name: str = "") -> ApiKeyCreated:
        """A new API key; ``.api_key`` is shown only this once."""
        return await self._c._run(_ops.create_api_key(self._c._core, tenant, role, name))

    async def list_join_tokens(self) -> list[JoinTokenView]:
        """Unexpired join tokens (ids, regions, labels, expiry; never the tokens)."""
        return (await self._c._run(_ops.list_join_tokens(self._c._core))).tokens

    async def revoke_join_token(self, token_id: str) -> dict[str, Any]:
        """Revoke a join token by its listed id (``jt_…``): it registers no more runners."""
        return await self._c._run(_ops.revoke_join_token(self._c._core, token_id))

    async def list_api_keys(self) -> list[ApiKeyView]:
        """Every API key, oldest first, without secrets."""
        return (await self._c._run(_ops.list_api_keys(self._c._core))).keys

    async def revoke_api_key(self, key_id: str) -> dict[str, Any]:
        """Revoke an API key by id (``key_…``)."""
        return await self._c._run(_ops.revoke_api_key(self._c._core, key_id))

    async def check_join_token(self, join_token: str) -> JoinTokenCheck:
        """Would ``join_token`` register a runner now? Uses none of it; ``AuthError``
        (401) with the reason when not (no credentials needed)."""
        return await self._c._run(_ops.check_join_token(self._c._core, join_token))

    async def create_join_token(
        self,
        region: str = "default",
        labels: Mapping[str, str] | None = None,
        expires_in_s: int = 3600,
        max_uses: int = 1,
    ) -> JoinTokenCreated:
        """A token that registers up to ``max_uses`` runners (default one) until it expires."""
        return await self._c._run(
            _ops.create_join_token(self._c._core, region, labels, expires_in_s, max_uses)
        )

    async def rotate_api_key(self, key_id: str, old_valid_for_s: int = 3600) -> ApiKeyRotated:
        """A new secret for an API key (admin, or the key itself); the old one keeps working
        for ``old_valid_for_s`` more seconds (0: it stops at once)."""
        return await self._c._run(_ops.rotate_api_key(self._c._core, key_id, old_valid_for_s))

    async def put_pool(self, name: str, spec: PoolSpec | Mapping[str, Any]) -> PoolView:
        """Create or replace a capacity pool (docs/capacity.md)."""
        return await self._c._run(_ops.put_pool(self._c._core, name, spec))

    async def get_pool(self, name: str) -> PoolView:
        """A pool with its last capacity decision and decision log."""
        return await self._c._run(_ops.get_pool(self._c._core, name))

    async def list_pools(self) -> list[PoolView]:
        """Every capacity pool."""
        return (await self._c._run(_ops.list_pools(self._c._core))).pools

    async def pool_join_token(self, name: str) -> JoinTokenCreated:
        """A join token shared by the pool's hosts (the aws-asg launch template's), with the
        control plane's pool use limit and lifetime."""
        return await self._c._run(_ops.pool_join_token(self._c._core, name))

    async def delete_pool(self, name: str) -> dict[str, Any]:
        """Delete a pool that has no hosts left."""
        return await self._c._run(_ops.delete_pool(self._c._core, name))

    async def get_quota(self, tenant: str) -> QuotaView:
        """A tenant's effective quotas (``.own``: what was set for it) and usage."""
        return await self._c._run(_ops.get_quota(self._c._core, tenant))

    async def set_quota(self, tenant: str, **fields: Any) -> QuotaView:
        """Set some of a tenant's quotas (``max_queued``, ``max_running``, ``submit_rate``,
        ``submit_burst``, ``weight``; None: the default); the others keep their own value."""
        own = (await self.get_quota(tenant)).own or QuotaSpec()
        spec = QuotaSpec.model_validate({**own.model_dump(exclude={"api_version"}), **fields})
        return await self._c._run(_ops.put_quota(self._c._core, tenant, spec))

    async def reset_quota(self, tenant: str) -> QuotaView:
        """Put a tenant back on the default quotas."""
        return await self._c._run(_ops.delete_quota(self._c._core, tenant))

    async def list_quotas(self) -> QuotaList:
        """The default quotas and every tenant with its own quotas or jobs."""
        return await self._c._run(_ops.list_quotas(self._c._core))

    async def get_region_defaults(
        self, *, tenant: str | None = None, key_id: str | None = None
    ) -> RegionDefaultsView:
        """The region defaults of a tenant or (``key_id=``) an API key, and the effective
        ones (docs/regions.md)."""
        return await self._c._run(_ops.get_region_defaults(self._c._core, tenant, key_id))

    async def set_region_defaults(
        self,
        *,
        tenant: str | None = None,
        key_id: str | None = None,
        default_region: Any = _ops.KEEP,
        regions_allowed: Any = _ops.KEEP,
    ) -> RegionDefaultsView:
        """Set a tenant's or an API key's ``default_region`` / ``regions_allowed`` (a hard
        limit; empty or None: any region); a field not given keeps what applies now."""
        current = await self.get_region_defaults(tenant=tenant, key_id=key_id)
        spec = _ops.region_spec(current, default_region, regions_allowed, _ops.KEEP)
        return await self._c._run(_ops.put_region_defaults(self._c._core, tenant, key_id, spec))

    async def reset_region_defaults(
        self, *, tenant: str | None = None, key_id: str | None = None
    ) -> RegionDefaultsView:
        """Remove what an admin set: a key falls back on its tenant, a tenant on the
        ``tenant_regions`` setting."""
        return await self._c._run(_ops.delete_region_defaults(self._c._core, tenant, key_id))

    async def list_region_defaults(self) -> RegionDefaultsList:
        """Every tenant and API key with region defaults."""
        return await self._c._run(_ops.list_region_defaults(self._c._core))

    async def set_key_max_priority(self, key_id: str, max_priority: int | None) -> KeyLimits:
        """The highest priority an API key may submit at (None: the default, 100)."""
        return await self._c._run(_ops.set_key_limits(self._c._core, key_id, max_priority))


class AsyncWebhooks:
    """``client.webhooks``: the tenant's signing secret."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def secret(self) -> str:
        """The tenant's webhook signing secret (``whsec_…``)."""
        return await self._c._run(_ops.webhook_secret(self._c._core))

    async def rotate_secret(self) -> str:
        """A new signing secret (the old one stays valid for a while)."""
        return await self._c._run(_ops.rotate_webhook_secret(self._c._core))
