"""Registration and re-registration: the runner's identity at the control plane.

Credentials are loaded from ``state_dir/credentials.json`` when they were issued by the
same control plane; otherwise the runner registers with its join token. A 401 on a
signed call (revoked runner) makes the daemon call :meth:`Identity.invalidate`, which
deletes the file, and the next :meth:`Identity.ensure` registers again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from gpufleet._logs import bind_process
from gpufleet.wire import GpuInfo, RegisterRequest
from pydantic import ValidationError

from runner.cp_client import ControlPlaneClient, ControlPlaneError, Unauthorized
from runner.credentials import Credentials, delete_credentials, load_credentials, save_credentials
from runner.settings import RunnerSettings
from runner.state import wait_event

log = logging.getLogger(__name__)


class StartupError(Exception):
    """A problem retrying cannot fix (a refused join token, no token, no control plane at the
    URL): the runner says so in one line and exits non-zero."""


FRESH_CREDENTIALS_S = 60.0  # a rejection this soon after registering is not a revocation
MAX_REJOIN_DELAY_S = 300.0


def _clock_refusal(refusal: str) -> bool:
    """Whether a 401 says the signed call's timestamp was outside the control plane's window."""
    return "timestamp outside" in refusal


class Identity:
    """Owns ``client.credentials``; safe to call from several loops at once."""

    def __init__(
        self,
        settings: RunnerSettings,
        client: ControlPlaneClient,
        gpus: Callable[[], list[GpuInfo]] = list,
        *,
        wait: Callable[[asyncio.Event, float], Awaitable[bool]] = wait_event,
    ) -> None:
        self._settings = settings
        self._client = client
        self._gpus = gpus
        # Waits between tries: ``wait(shutdown, seconds)``, True when shut down (tests record it).
        self._wait = wait
        self._lock = asyncio.Lock()
        self._registered_at: float | None = None
        self._rejoin_delay = 0.0  # grows while fresh credentials keep being rejected

    @property
    def runner_id(self) -> str | None:
        creds = self._client.credentials
        return creds.runner_id if creds else None

    async def ensure(
        self, shutdown: asyncio.Event, *, first_try: bool = False
    ) -> Credentials | None:
        """Valid-looking credentials, registering (with backoff) when there are none.

        Returns None only when ``shutdown`` is set before registration succeeded.
        ``first_try`` (the daemon's start): one registration attempt only; a refused or
        missing join token, or no control plane at the URL, raises ``StartupError``; an
        unreachable control plane returns None (the heartbeat loop goes on trying).
        """
        async with self._lock:
            if self._client.credentials is not None:
                return self._client.credentials
            path = self._settings.credentials_file
            stored = load_credentials(path)
            if stored is not None and stored.control_plane_url == self._client.base_url:
                self._client.credentials = stored
                bind_process(runner=stored.runner_id)
                log.info("using stored credentials of runner %s", stored.runner_id)
                return stored
            if first_try:
                return await self._first_registration()
            return await self._register(shutdown)

    def _request(self) -> RegisterRequest | None:
        token = self._settings.join_token
        if token is None:
            return None
        return RegisterRequest(
            join_token=token.get_secret_value(),
            name=self._settings.name,
            region=self._settings.region,
            labels=self._labels(),
            gpus=self._gpus(),
        )

    def _labels(self) -> dict[str, str]:
        """The configured labels; a mock runner says so (the control plane gives it no work
        unless an admin allows mock runners)."""
        if self._settings.backend == "mock":
            return {**self._settings.labels, "gpufleet.backend": "mock"}
        return dict(self._settings.labels)

    def _registered(self, runner_id: str, secret: str) -> Credentials:
        creds = Credentials(runner_id, secret, self._client.base_url)
        save_credentials(self._settings.credentials_file, creds)
        self._client.credentials = creds
        bind_process(runner=runner_id)  # every line from now on, of every loop, names it
        self._registered_at = time.monotonic()
        log.info("registered as runner %s (%s)", runner_id, self._settings.name)
        return creds

    async def _first_registration(self) -> Credentials | None:
        url = self._client.base_url
        try:
            req = await asyncio.to_thread(self._request)
        except ValidationError as exc:
            where = ".".join(str(x) for x in exc.errors()[0]["loc"])
            raise StartupError(
                f"the registration request is not valid ({where}: {exc.errors()[0]['msg']}): "
                "check the join token (`gpufleet admin join-token` prints a new one), name, "
                "region and labels"
            ) from None
        if req is None:
            raise StartupError(
                "no join token and no stored credentials for "
                f"{url}: create one with `gpufleet admin join-token`, then pass --join-token "
                "or set GPUFLEET_RUNNER_JOIN_TOKEN"
            )
        try:
            out = await self._client.register(req)
        except Unauthorized as exc:
            raise StartupError(
                f"the control plane at {url} refused the join token ({exc}): it is "
                "wrong, expired or revoked; create a new one with `gpufleet admin join-token`"
            ) from exc
        except ControlPlaneError as exc:
            status = exc.status or 0
            foreign = status in (404, 405, 501) or (
                400 <= status < 500 and status not in (408, 429) and exc.code is None
            )  # an HTTP server answered, but not with a gpufleet error: not a control plane
            if foreign:
                raise StartupError(
                    f"no gpufleet control plane at {url} (HTTP {exc.status} on "
                    "/v1/runners/register): check --control-plane-url"
                ) from exc
            log.warning(
                "control plane %s not reachable (%s): retrying in the background; "
                "check that it runs (curl %s/v1/health)",
                url,
                exc,
                url,
            )
            return None
        return self._registered(out.runner_id, out.secret)

    async def _register(self, shutdown: asyncio.Event) -> Credentials | None:
        token = self._settings.join_token
        delay = 1.0
        attempts = 0
        if self._rejoin_delay > 0:
            # Credentials issued moments ago were rejected again: re-registering at once
            # would loop (a host clock outside the signature window does this).
            refusal = self._client.last_refusal or "401"
            if _clock_refusal(refusal):
                log.error(
                    "fresh credentials were rejected (%s): is this host's clock within %d s of "
                    "the control plane's? re-registering in ~%.0fs",
                    refusal,
                    300,
                    self._rejoin_delay,
                )
            else:
                log.error(
                    "credentials refused again right after registering (%s): the control "
                    "plane does not keep this runner (was its store reset?); re-register with "
                    "a new join token. Retrying in ~%.0fs",
                    refusal,
                    self._rejoin_delay,
                )
            await self._wait(shutdown, self._rejoin_delay * (0.8 + 0.4 * random.random()))
        while not shutdown.is_set():
            if token is None:
                log.error(
                    "no credentials and no join token: set GPUFLEET_RUNNER_JOIN_TOKEN or pass "
                    "--join-token (retrying every %.0fs)",
                    self._settings.register_retry_s,
                )
                wait = self._settings.register_retry_s
            else:
                req = RegisterRequest(
                    join_token=token.get_secret_value(),
                    name=self._settings.name,
                    region=self._settings.region,
                    labels=self._settings.labels,
                    gpus=await asyncio.to_thread(self._gpus),
                )
                try:
                    out = await self._client.register(req)
                except Unauthorized as exc:
                    log.error(
                        "the control plane refused the join token (%s): create a new one with "
                        "POST /v1/admin/join-tokens; retrying every %.0fs",
                        exc,
                        self._settings.register_retry_s,
                    )
                    wait = self._settings.register_retry_s
                except ControlPlaneError as exc:
                    attempts += 1
                    log.warning(
                        "control plane %s not reachable (attempt %d: %s); retrying in ~%.0fs",
                        self._client.base_url,
                        attempts,
                        exc,
                        delay,
                    )
                    wait, delay = delay, min(delay * 2, 30.0)
                else:
                    return self._registered(out.runner_id, out.secret)
            await self._wait(shutdown, wait * (0.8 + 0.4 * random.random()))
        return None

    def adopt_secret(self, secret: str) -> None:
        """Sign with ``secret`` from now on (a rotation the control plane started in a
        heartbeat answer): stored in the credentials file first, so that a restart keeps it.
        The control plane takes the first call signed with it as the confirmation; calls
        signed with the old one and still in flight stay valid for its overlap window."""
        creds = self._client.credentials
        if creds is None or creds.secret == secret:
            return
        rotated = Credentials(creds.runner_id, secret, creds.control_plane_url)
        save_credentials(self._settings.credentials_file, rotated)
        self._client.credentials = rotated
        log.info("runner %s: new HMAC secret from the control plane (rotation)", creds.runner_id)

    async def invalidate(self, seen: Credentials | None) -> None:
        """Forget ``seen`` (the credentials a call was rejected with) and delete the file."""
        async with self._lock:
            if seen is not None and self._client.credentials is not seen:
                return  # someone already re-registered
            if self._client.credentials is not None:
                refusal = self._client.last_refusal or "401"
                if _clock_refusal(refusal):
                    log.warning(
                        "credentials of runner %s were rejected (%s): re-registering",
                        self._client.credentials.runner_id,
                        refusal,
                    )
                else:
                    log.error(
                        "credentials refused: re-register with a new join token (runner %s: "
                        "%s). Trying the configured join token now.",
                        self._client.credentials.runner_id,
                        refusal,
                    )
            fresh = (
                self._registered_at is not None
                and time.monotonic() - self._registered_at < FRESH_CREDENTIALS_S
            )
            if fresh:
                self._rejoin_delay = min(max(2 * self._rejoin_delay, 1.0), MAX_REJOIN_DELAY_S)
            else:
                self._rejoin_delay = 0.0
            self._client.credentials = None
            delete_credentials(self._settings.credentials_file)
