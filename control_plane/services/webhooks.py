"""Webhook service: tenant signing secrets, target checks, enqueueing events, the delivery log.

Job transitions become deliveries here (``on_transition``); the delivery worker
(``webhook_delivery.WebhookWorker``) sends them. Enqueueing is idempotent per job and event
(a conditional write), so a transition reported twice - by a retry, or by two replicas -
is delivered once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable
from secrets import token_bytes
from typing import Any, Final

from gpufleet.webhooks import SECRET_PREFIX
from gpufleet.wire import (
    TERMINAL_STATUSES,
    JobRequest,
    JobView,
    WebhookAttemptView,
    WebhookDeliveryList,
    WebhookDeliveryView,
    WebhookSecret,
    WebhookSpec,
)

from control_plane.clock import iso, new_id
from control_plane.errors import Conflict, Unavailable
from control_plane.services.principal import Principal
from control_plane.services.webhook_delivery import DeliveryPolicy, WebhookWorker
from control_plane.services.webhook_records import (
    Delivery,
    EventType,
    SecretRecord,
    SecretStore,
    WebhookStore,
)
from control_plane.services.webhook_sender import HttpxSender, Sender
from control_plane.services.webhook_targets import Resolver, check_target, system_resolver
from control_plane.storage.protocols import JobRecord

__all__ = [
    "EVENT_COMPLETED",
    "EVENT_RUNNING",
    "MAX_BODY_BYTES",
    "WebhookService",
    "events_for",
    "new_secret",
]

log = logging.getLogger(__name__)

EVENT_RUNNING: Final = "job.running"
EVENT_COMPLETED: Final = "job.completed"
MAX_BODY_BYTES = 350_000  # a DynamoDB item holds 400 KB; larger outputs are left out
_SECRET_SCOPE = "jobs:write"  # noqa: S105 - a scope name
_ROTATE_TRIES = 5
_SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh tenant signing secret: ``whsec_`` + base64 of 32 random bytes (the signature
    over a delivery is the SDK's ``gpufleet.webhooks.webhook_signature_header``)."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(_SECRET_BYTES)).decode()


def events_for(status: str, wanted: list[str]) -> EventType | None:
    """The event a job entering ``status`` raises, if the job's ``webhook.events`` wants it."""
    if status == "RUNNING" and "running" in wanted:
        return EVENT_RUNNING
    if status in TERMINAL_STATUSES and "completed" in wanted:
        return EVENT_COMPLETED
    return None


def event_body(event: str, view: JobView, at: float) -> str:
    """``{"type","timestamp","data":<JobView as GET returns it>}`` as compact JSON."""
    data: dict[str, Any] = json.loads(view.model_dump_json())
    body = json.dumps({"type": event, "timestamp": iso(at), "data": data}, separators=(",", ":"))
    if len(body.encode()) > MAX_BODY_BYTES:
        data["outputs"] = None
        body = json.dumps(
            {"type": event, "timestamp": iso(at), "data": data}, separators=(",", ":")
        )
    return body


def shard_of(job_id: str, shards: int) -> int:
    """The due-index shard of a job's deliveries (stable, spread evenly)."""
    return int(hashlib.sha256(job_id.encode()).hexdigest()[:8], 16) % shards


class WebhookService:
    """Secrets, submit-time target checks, enqueueing on job transitions and the delivery log.

    ``job_access(principal, job_id)`` must raise ``NotFound`` when the caller may not see the
    job (the jobs service's ``get``); the delivery log is scoped exactly like ``GET`` job.
    """

    def __init__(
        self,
        store: WebhookStore,
        secrets: SecretStore,
        job_access: Callable[[Principal, str], object],
        *,
        allow_loopback: bool,
        grace_s: float,
        shards: int,
        record_of: Callable[[str], JobRecord | None] | None = None,
        resolver: Resolver = system_resolver,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._record_of = record_of
        self._store = store
        self._secrets = secrets
        self._job_access = job_access
        self._allow_loopback = allow_loopback
        self._grace_s = grace_s
        self._shards = shards
        self._resolver = resolver
        self._clock = clock

    # ------------------------------------------------------------------ secrets
    def _record(self, tenant: str) -> SecretRecord:
        found = self._secrets.get(tenant)
        if found is not None:
            return found
        fresh = SecretRecord(
            tenant=tenant, current=new_secret(), version=1, created_at=self._clock()
        )
        if self._secrets.create(fresh):
            return fresh
        found = self._secrets.get(tenant)  # another replica created it first: use theirs
        if found is None:
            raise Unavailable("the webhook secret could not be read back")
        return found

    def secret(self, p: Principal) -> WebhookSecret:
        """The caller's tenant's current signing secret (created on first use)."""
        p.require(_SECRET_SCOPE)
        return WebhookSecret(secret=self._record(p.tenant).current)

    def rotate_secret(self, p: Principal) -> WebhookSecret:
        """A new secret for the caller's tenant; the old one keeps signing for the grace period."""
        p.require(_SECRET_SCOPE)
        for _ in range(_ROTATE_TRIES):
            old = self._record(p.tenant)
            now = self._clock()
            new = SecretRecord(
                tenant=p.tenant,
                current=new_secret(),
                version=old.version + 1,
                created_at=now,
                previous=old.current,
                previous_until=now + self._grace_s,
            )
            if self._secrets.replace(new, expected_version=old.version):
                return WebhookSecret(secret=new.current)
        raise Conflict("the webhook secret is being rotated concurrently; try again")

    def signing_secrets(self, tenant: str) -> list[str]:
        """Secrets a delivery for ``tenant`` is signed with now: current, then previous in grace."""
        rec = self._record(tenant)
        out = [rec.current]
        if rec.previous and rec.previous_until is not None and rec.previous_until > self._clock():
            out.append(rec.previous)
        return out

    # ------------------------------------------------------------------ targets
    def validate_url(self, url: str) -> None:
        """Submit-time check of a webhook URL; ``InvalidRequest`` naming ``webhook.url``."""
        check_target(url, allow_loopback=self._allow_loopback, resolver=self._resolver)

    def validate_request(self, req: JobRequest) -> None:
        """Check a job request's webhook (if any) before the job is stored."""
        if req.webhook is not None:
            self.validate_url(req.webhook.url)

    # ------------------------------------------------------------------ events
    def on_transition(
        self, view: JobView, tenant: str, webhook: WebhookSpec | None, at: float | None = None
    ) -> str | None:
        """Enqueue the event a job's transition to ``view.status`` raises, if it has a webhook.

        Returns the event type enqueued, or None (no webhook, event not wanted, or already
        enqueued by an earlier report of the same transition). Never raises for a job that
        simply has no webhook, so it is safe to call on every transition.
        """
        if webhook is None:
            return None
        event = events_for(view.status, list(webhook.events))
        if event is None:
            return None
        when = self._clock() if at is None else at
        delivery = Delivery(
            job_id=view.id,
            event=event,
            msg_id=new_id("msg"),
            tenant=tenant,
            url=webhook.url,
            body=event_body(event, view, when),
            state="pending",
            attempts=0,
            created_at=when,
            index_shard=shard_of(view.id, self._shards),
        )
        if not self._store.enqueue(delivery, due_at=self._clock()):
            return None
        log.info("webhook %s enqueued for %s", event, view.id)
        return event

    def job_transition(self, view: JobView, previous: str | None) -> None:
        """The jobs service's ``on_transition`` hook: enqueue the event ``view.status`` raises.

        ``view`` is the job after the transition (as ``GET`` returns it), ``previous`` the
        status it left (None for a new job). Only for a status that can raise an event
        (RUNNING, terminal) is the job's record read (``record_of``) for its tenant and
        webhook. Never raises: a failure is logged and must not undo the transition.
        """
        if view.status == previous or events_for(view.status, ["running", "completed"]) is None:
            return
        try:
            if self._record_of is None:
                raise RuntimeError("WebhookService was built without record_of")
            self._enqueue_for(view, self._record_of(view.id))
        except Exception:
            log.exception("could not enqueue the webhook of %s (%s)", view.id, view.status)

    def job_record_transition(
        self, rec: JobRecord, view: Callable[[], JobView], previous: str | None
    ) -> None:
        """``job_transition`` for a hook that also has the job's record (as just written):
        nothing is read back from the table, and the view is built only for a job with a
        webhook."""
        if rec.status == previous or events_for(rec.status, ["running", "completed"]) is None:
            return
        if not rec.request.get("webhook"):
            return
        try:
            self._enqueue_for(view(), rec)
        except Exception:
            log.exception("could not enqueue the webhook of %s (%s)", rec.id, rec.status)

    def _enqueue_for(self, view: JobView, rec: JobRecord | None) -> None:
        raw = rec.request.get("webhook") if rec is not None else None
        if rec is None or not raw:
            return
        webhook = WebhookSpec.model_validate(raw)
        at = rec.finished_at if view.status in TERMINAL_STATUSES else rec.started_at
        self.on_transition(view, rec.tenant, webhook, at)

    # ------------------------------------------------------------------ log
    def delivery_log(self, p: Principal, job_id: str) -> WebhookDeliveryList:
        """Every delivery of a job with its attempts (404 where ``GET`` job would be)."""
        self._job_access(p, job_id)
        attempts = self._store.attempts(job_id)
        views = []
        for d in sorted(self._store.deliveries(job_id), key=lambda d: d.created_at):
            mine = [a for a in attempts if a.event == d.event]
            views.append(
                WebhookDeliveryView(
                    id=d.msg_id,
                    type=d.event,
                    url=d.url,
                    status=d.state,
                    created_at=iso(d.created_at) or "",
                    next_attempt_at=iso(d.next_attempt_at) if d.state == "pending" else None,
                    attempts=[
                        WebhookAttemptView(
                            attempt=a.attempt,
                            at=iso(a.at) or "",
                            duration_ms=a.duration_ms,
                            status_code=a.status_code,
                            error=a.error,
                        )
                        for a in sorted(mine, key=lambda a: a.attempt)
                    ],
                )
            )
        return WebhookDeliveryList(job_id=job_id, deliveries=views)

    def worker(self, policy: DeliveryPolicy, sender: Sender | None = None) -> WebhookWorker:
        """A delivery worker on this service's store and secrets (one per replica).

        Run ``await worker.run_forever()`` as a background task (it closes its sender when
        cancelled), or ``await worker.run_once()`` from a scheduler.
        """
        return WebhookWorker(
            self._store,
            self.signing_secrets,
            sender if sender is not None else HttpxSender(),
            policy,
            resolver=self._resolver,
        )

    def ping(self) -> None:
        """Raise ``Unavailable`` when the webhooks table cannot be reached."""
        self._store.ping()
