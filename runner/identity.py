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
from collections.abc import Callable

from gpufleet.wire import GpuInfo, RegisterRequest

from runner.cp_client import ControlPlaneClient, ControlPlaneError, Unauthorized
from runner.credentials import Credentials, delete_credentials, load_credentials, save_credentials
from runner.settings import RunnerSettings
from runner.state import wait_event

log = logging.getLogger(__name__)

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
    ) -> None:
        self._settings = settings
        self._client = client
        self._gpus = gpus
        self._lock = asyncio.Lock()
        self._registered_at: float | None = None
        self._rejoin_delay = 0.0  # grows while fresh credentials keep being rejected

    @property
    def runner_id(self) -> str | None:
        creds = self._client.credentials
        return creds.runner_id if creds else None

    async def ensure(self, shutdown: asyncio.Event) -> Credentials | None:
        """Valid-looking credentials, registering (with backoff) when there are none.

        Returns None only when ``shutdown`` is set before registration succeeded.
        """
        async with self._lock:
            if self._client.credentials is not None:
                return self._client.credentials
            path = self._settings.credentials_file
            stored = load_credentials(path)
            if stored is not None and stored.control_plane_url == self._client.base_url:
                self._client.credentials = stored
                log.info("using stored credentials of runner %s", stored.runner_id)
                return stored
            return await self._register(shutdown)

    async def _register(self, shutdown: asyncio.Event) -> Credentials | None:
        token = self._settings.join_token
        delay = 1.0
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
            await wait_event(shutdown, self._rejoin_delay * (0.8 + 0.4 * random.random()))
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
                    log.warning("registration failed: %s; retrying in ~%.0fs", exc, delay)
                    wait, delay = delay, min(delay * 2, 30.0)
                else:
                    creds = Credentials(out.runner_id, out.secret, self._client.base_url)
                    save_credentials(self._settings.credentials_file, creds)
                    self._client.credentials = creds
                    self._registered_at = time.monotonic()
                    log.info("registered as runner %s (%s)", out.runner_id, self._settings.name)
                    return creds
            await wait_event(shutdown, wait * (0.8 + 0.4 * random.random()))
        return None

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
