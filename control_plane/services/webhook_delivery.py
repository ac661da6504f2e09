"""The webhook delivery worker: one per control-plane replica, all sharing the tables.

Each pass (``run_once``) reads the due entries of every index shard, claims each delivery
with a conditional write (so no two workers send the same attempt), checks the target again
and pins its address, signs and POSTs the frozen body, and records the attempt:

- 2xx                 -> ``delivered``
- 410 Gone            -> ``disabled`` (no more attempts)
- refused target      -> ``failed`` (no more attempts)
- anything else (3xx included: redirects are not followed), errors, timeouts
                      -> retried after ``uniform(0, min(max, initial * 2**(n-1)))`` seconds
                         (exponential backoff, full jitter) until ``max_attempts``.

Every retry carries the same ``webhook-id``; ``webhook-timestamp`` and the signatures are
fresh per attempt, under every secret that is valid at that moment.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from gpufleet._logs import bind
from gpufleet.webhooks import webhook_signature_header

from control_plane.clock import new_id
from control_plane.services.webhook_records import AttemptRecord, Claim, DueRef, WebhookStore
from control_plane.services.webhook_sender import Sender, SendError
from control_plane.services.webhook_targets import (
    Resolver,
    TargetRefused,
    Unresolvable,
    resolve_target,
    system_resolver,
)
from control_plane.settings import Settings

__all__ = ["DeliveryPolicy", "WebhookWorker"]

log = logging.getLogger(__name__)
USER_AGENT = "gpufleet-webhooks/1"


@dataclass(frozen=True)
class DeliveryPolicy:
    """How deliveries are attempted (from the ``webhook_*`` settings)."""

    max_attempts: int = 8
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 600.0
    timeout_s: float = 10.0
    shards: int = 4
    poll_interval_s: float = 1.0
    allow_loopback: bool = False
    lease_margin_s: float = 30.0
    batch: int = 25
    concurrency: int = 16

    @classmethod
    def from_settings(cls, s: Settings) -> DeliveryPolicy:
        """The policy the settings describe."""
        return cls(
            max_attempts=s.webhook_max_attempts,
            initial_backoff_s=s.webhook_initial_backoff_s,
            max_backoff_s=s.webhook_max_backoff_s,
            timeout_s=s.webhook_timeout_s,
            shards=s.webhook_shards,
            poll_interval_s=s.webhook_poll_interval_s,
            allow_loopback=s.webhooks_allow_loopback,
        )

    def backoff(self, attempt: int, rnd: float) -> float:
        """Delay after failed attempt ``attempt`` (1-based); ``rnd`` is uniform in [0, 1)."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2 ** min(attempt - 1, 62))
        return float(ceiling * rnd)


@dataclass(frozen=True)
class _Outcome:
    state: str
    status_code: int | None = None
    error: str | None = None


class WebhookWorker:
    """Claims and sends due deliveries; ``run_forever`` is the replica's background task."""

    def __init__(
        self,
        store: WebhookStore,
        signing_secrets: Callable[[str], list[str]],
        sender: Sender,
        policy: DeliveryPolicy,
        *,
        resolver: Resolver = system_resolver,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._secrets = signing_secrets
        self._sender = sender
        self._policy = policy
        self._resolver = resolver
        self._clock = clock
        self._rng = rng

    # ------------------------------------------------------------------ claiming
    def _claim(self, ref: DueRef, now: float) -> Claim | None:
        seen = self._store.get(ref.job_id, ref.event)
        if seen is None or seen.index_sk != ref.sk:
            self._store.drop_stale(ref)  # its delivery moved on; no one needs this entry
            return None
        lease_until = now + self._policy.timeout_s + self._policy.lease_margin_s
        return self._store.claim(ref, seen, new_id("wcl", 8), lease_until)

    def claim_due(self) -> list[Claim]:
        """Claim every due delivery this worker wins (blocking storage calls)."""
        now = self._clock()
        claims: list[Claim] = []
        for shard in range(self._policy.shards):
            for ref in self._store.due(shard, now, self._policy.batch):
                claim = self._claim(ref, now)
                if claim is not None:
                    claims.append(claim)
        return claims

    # ------------------------------------------------------------------ sending
    async def _send(self, claim: Claim) -> _Outcome:
        d = claim.delivery
        if d.attempts > self._policy.max_attempts:  # earlier claims died mid-attempt
            return _Outcome("failed", error="attempts exhausted")
        try:
            async with asyncio.timeout(self._policy.timeout_s):
                target = await asyncio.to_thread(
                    resolve_target,
                    d.url,
                    allow_loopback=self._policy.allow_loopback,
                    resolver=self._resolver,
                )
        except TimeoutError:
            return self._retry_or_fail(d.attempts, error="timed out resolving the host")
        except Unresolvable as exc:
            return self._retry_or_fail(d.attempts, error=exc.message)
        except TargetRefused as exc:
            return _Outcome("failed", error=f"refused: {exc.message}")
        secrets = await asyncio.to_thread(self._secrets, d.tenant)
        body = d.body.encode()
        ts = int(self._clock())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": d.msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": webhook_signature_header(d.msg_id, ts, body, secrets),
        }
        try:
            code = await self._sender.post(target, headers, body, self._policy.timeout_s)
        except SendError as exc:
            return self._retry_or_fail(d.attempts, error=str(exc))
        if 200 <= code < 300:
            return _Outcome("delivered", status_code=code)
        if code == 410:
            return _Outcome("disabled", status_code=code)
        return self._retry_or_fail(d.attempts, status_code=code)

    def _retry_or_fail(
        self, attempt: int, *, status_code: int | None = None, error: str | None = None
    ) -> _Outcome:
        state = "failed" if attempt >= self._policy.max_attempts else "pending"
        return _Outcome(state, status_code=status_code, error=error)

    async def attempt(self, claim: Claim) -> str:
        """Make one claimed attempt and record it; returns the delivery's new state."""
        d = claim.delivery
        bind(job=d.job_id)  # this attempt's log lines name the job (its own task)
        started = self._clock()
        outcome = await self._send(claim)
        ended = self._clock()
        next_at = None
        if outcome.state == "pending":
            next_at = ended + self._policy.backoff(d.attempts, self._rng())
        record = AttemptRecord(
            job_id=d.job_id,
            event=d.event,
            msg_id=d.msg_id,
            attempt=d.attempts,
            at=started,
            duration_ms=int((ended - started) * 1000),
            status_code=outcome.status_code,
            error=outcome.error,
        )
        if not await asyncio.to_thread(self._store.finish, claim, record, outcome.state, next_at):
            log.warning("webhook %s of %s: claim lost before recording", d.event, d.job_id)
        elif outcome.state != "delivered":
            log.info(
                "webhook %s of %s attempt %d: %s (%s)",
                d.event,
                d.job_id,
                d.attempts,
                outcome.state,
                outcome.status_code or outcome.error,
            )
        return outcome.state

    async def run_once(self) -> int:
        """One pass: claim what is due, send it (bounded concurrency); the attempts made."""
        claims = await asyncio.to_thread(self.claim_due)
        if not claims:
            return 0
        gate = asyncio.Semaphore(self._policy.concurrency)

        async def one(claim: Claim) -> None:
            async with gate:
                try:
                    await self.attempt(claim)
                except asyncio.CancelledError:
                    raise
                except Exception:  # its lease runs out and another pass retries it
                    log.warning("webhook attempt failed to run", exc_info=True)

        await asyncio.gather(*(one(c) for c in claims))
        return len(claims)

    async def aclose(self) -> None:
        """Close the sender (``run_forever`` does this itself when it is cancelled)."""
        await self._sender.aclose()

    async def run_forever(self) -> None:
        """Poll until cancelled; storage errors are logged and backed off with jitter."""
        delay = self._policy.poll_interval_s
        try:
            while True:
                try:
                    made = await self.run_once()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    delay = min(delay * 2, max(self._policy.poll_interval_s, 30.0))
                    log.warning("webhook pass failed; next in ~%.1fs", delay, exc_info=True)
                else:
                    delay = self._policy.poll_interval_s
                    if made:
                        continue
                await asyncio.sleep(delay * (0.8 + 0.4 * self._rng()))
        finally:
            await self.aclose()
