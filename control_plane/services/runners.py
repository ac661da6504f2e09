"""Runners: registration with a join token, HMAC verification of signed calls, heartbeats,
listing with a derived status, runtime config and revocation.

The runner's secret is stored retrievably (HMAC needs it): the runners table must be
protected by encryption at rest and narrow IAM. Signed calls are checked in this order:
headers present and well formed, runner header equals the runner id in the path, timestamp
within the window, runner known and not revoked, signature (constant time), then the nonce
is remembered once (replays are 401).

Secret rotation: every ``rotation_s`` (and on demand, ``rotate_secret``) a heartbeat answer
carries ``new_secret``, stored first as the runner's pending secret and sent again in every
answer until the runner signs a call with it: that call is the confirmation, and the new
secret becomes the current one while the old stays valid for ``overlap_s`` (calls in flight,
a long poll signed just before). Until the confirmation the current secret works as before.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gpufleet import signing
from gpufleet.wire import (
    DesiredModel,
    HeartbeatRequest,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
    RunnerConfig,
    RunnerConfigPatch,
    RunnerList,
    RunnerStatus,
    RunnerView,
)

from control_plane import clock
from control_plane.errors import NotFound, Unauthorized
from control_plane.services.auth import join_token_id
from control_plane.services.principal import Principal
from control_plane.storage.protocols_auth import (
    JoinTokenRecord,
    NonceStore,
    RunnerRecord,
    RunnerStore,
)

MAX_NONCE_LENGTH = 128
USABLE_FRESH_S = 0.5  # how long a lease long poll trusts that its runner may take jobs


class RunnerService:
    """Everything about runners except the job protocol (which is ``JobService``)."""

    def __init__(
        self,
        store: RunnerStore,
        nonces: NonceStore,
        redeem_join_token: Callable[[str, str | None], JoinTokenRecord],
        cancelled_among: Callable[[list[str]], list[str]],
        *,
        window_s: float,
        offline_after_s: float,
        rotation_s: float = 0.0,
        overlap_s: float = 900.0,
        now: Callable[[], float] = clock.now,
        desired_models: Callable[[RunnerRecord], list[DesiredModel] | None] | None = None,
        observe_rtt: Callable[[str, float], None] | None = None,
        region_rtt: Callable[[str], float | None] | None = None,
        models_of: Callable[[str], set[str]] = lambda _tenant: set(),
        jobs_of: Callable[[str, list[str]], list[str]] = lambda _tenant, _ids: [],
        on_ready: Sequence[Callable[[str, list[str]], None]] = (),
    ) -> None:
        self._rotation_s = rotation_s  # 0: secrets rotate on demand only
        self._overlap_s = overlap_s
        self._store = store
        self._nonces = nonces
        self._redeem = redeem_join_token
        self._cancelled_among = cancelled_among
        self._window_s = window_s
        self._offline_after_s = offline_after_s
        self._now = now
        # Placement (services/deployments.py): the heartbeat answer's desired_models.
        self.desired_models = desired_models
        # Regions (services/regions.py): a heartbeat's measured round trip, by region, and
        # the measured value a runner view shows.
        self.observe_rtt = observe_rtt
        self.region_rtt = region_rtt
        # Whose is whose in the runner view of a non-admin (the defaults show a non-admin
        # no model and no job).
        self.models_of = models_of
        self.jobs_of = jobs_of
        # Called with the model names a heartbeat newly reports READY (its lease long polls,
        # which offer only what the last heartbeat said is READY, look again at once).
        self.on_ready = tuple(on_ready)
        # runner id -> when ``usable`` last read it usable (monotonic)
        self._usable_at: dict[str, float] = {}

    # ------------------------------------------------------------------ registration
    def register(self, req: RegisterRequest, client: str | None = None) -> RegisterResponse:
        """A join token for a runner id and secret (shown once). The runner records the
        token's id (``join_token`` in its view), so admins see which token joined it."""
        token = self._redeem(req.join_token, client)
        region = token.region if token.region != "default" else (req.region or "default")
        rec = RunnerRecord(
            id=clock.new_id("run"),
            name=req.name,
            region=region,
            labels={**req.labels, **token.labels},
            join_token=join_token_id(token.token_hash),
            secret=secrets.token_urlsafe(32),
            registered_at=self._now(),
            gpus=[g.model_dump() for g in req.gpus],
            config=RunnerConfig().model_dump(),
        )
        self._store.create_runner(rec)
        return RegisterResponse(runner_id=rec.id, secret=rec.secret)

    # ------------------------------------------------------------------ signed calls
    def authenticate(
        self,
        path_runner_id: str,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> RunnerRecord:
        """The runner that signed this request; ``Unauthorized`` for anything else."""
        runner_id = headers.get(signing.HEADER_RUNNER.lower(), "")
        ts = headers.get(signing.HEADER_TIMESTAMP.lower(), "")
        nonce = headers.get(signing.HEADER_NONCE.lower(), "")
        signature = headers.get(signing.HEADER_SIGNATURE.lower(), "")
        if not (runner_id and ts and nonce and signature):
            raise Unauthorized("missing runner signature headers")
        if runner_id != path_runner_id:
            raise Unauthorized("runner header does not match the path")
        if not signature.startswith(signing.SIGNATURE_PREFIX):
            raise Unauthorized("unknown signature version")
        if not signing.MIN_NONCE_LENGTH <= len(nonce) <= MAX_NONCE_LENGTH:
            raise Unauthorized("bad nonce length")
        try:
            ts_value = int(ts)
        except ValueError as exc:
            raise Unauthorized("bad timestamp") from exc
        now = self._now()
        if abs(now - ts_value) > self._window_s:
            raise Unauthorized(
                f"timestamp outside the allowed window: is the runner's clock within "
                f"{self._window_s} s of the control plane's?"
            )
        rec = self._store.find_runner(runner_id)
        secret = rec.secret if rec is not None else "x" * 43
        expected = signing.compute_signature(secret, method, path, query, ts, nonce, body)
        if rec is None:  # the store does not know it (removed, or the store was reset)
            raise Unauthorized(
                f"credentials refused: runner {runner_id} is unknown to this control plane; "
                "re-register with a new join token"
            )
        if not signing.signature_matches(expected, signature):
            rec = self._other_secret(rec, signature, (method, path, query, ts, nonce, body), now)
        if rec.revoked:
            raise Unauthorized("runner revoked")
        expires_at = max(now, ts_value) + self._window_s + 1
        if not self._nonces.remember_nonce(f"{runner_id}#{nonce}", now, expires_at):
            raise Unauthorized("nonce already used")
        return rec

    def _other_secret(
        self,
        rec: RunnerRecord,
        signature: str,
        signed: tuple[str, str, str, str, str, bytes],
        now: float,
    ) -> RunnerRecord:
        """A signature by the pending secret (the runner confirms a rotation: promote it) or
        by the replaced one within its overlap window; ``Unauthorized`` otherwise."""
        if rec.pending_secret and signing.signature_matches(
            signing.compute_signature(rec.pending_secret, *signed), signature
        ):
            promoted = self._store.promote_secret(
                rec.id, rec.pending_secret, now, now + self._overlap_s
            )
            return promoted or self._store.find_runner(rec.id) or rec  # another replica did
        still = rec.previous_valid_until is not None and rec.previous_valid_until >= now
        if (
            rec.previous_secret
            and still
            and signing.signature_matches(
                signing.compute_signature(rec.previous_secret, *signed), signature
            )
        ):
            return rec
        raise Unauthorized("bad signature")

    def rotate_secret(self, p: Principal, runner_id: str) -> RunnerView:
        """Start a secret rotation now (admin): the next heartbeat answer carries the new
        secret (an offer already pending is kept)."""
        p.require("admin")
        rec = self._store.offer_secret(runner_id, secrets.token_urlsafe(32))
        if rec is None:
            raise NotFound(f"no active runner {runner_id!r}")
        return self.view(rec)

    def _secret_to_send(self, rec: RunnerRecord) -> str | None:
        """The pending secret to deliver in this heartbeat answer, offering a new one when
        the current secret is older than ``rotation_s``."""
        if rec.pending_secret:
            return rec.pending_secret
        if self._rotation_s <= 0:
            return None
        since = rec.secret_set_at if rec.secret_set_at is not None else rec.registered_at
        if self._now() - since < self._rotation_s:
            return None
        offered = self._store.offer_secret(rec.id, secrets.token_urlsafe(32))
        return offered.pending_secret if offered is not None else None

    def heartbeat(self, runner: RunnerRecord, req: HeartbeatRequest) -> HeartbeatResponse:
        """Store the heartbeat; answer config, desired models and jobs to cancel."""
        rec = self._store.record_heartbeat(
            runner.id,
            self._now(),
            [g.model_dump() for g in req.gpus],
            [m.model_dump() for m in req.models],
            req.triton,
            list(req.running_jobs),
        )
        if rec is None:
            raise Unauthorized("runner revoked")
        if req.rtt_ms is not None and self.observe_rtt is not None:
            self.observe_rtt(rec.region, req.rtt_ms)
        if self.on_ready:
            was = {(m.get("name"), m.get("version")) for m in runner.models if _ready(m)}
            new = {
                m.name for m in req.models if m.state == "READY" and (m.name, m.version) not in was
            }
            for hook in self.on_ready if new else ():
                hook(runner.id, sorted(new))
        cancel = self._cancelled_among(list(req.running_jobs)) if req.running_jobs else []
        # None (no deployment anywhere, or no placement wired): the runner keeps its models.
        desired = self.desired_models(rec) if self.desired_models is not None else None
        return HeartbeatResponse(
            config=self.config_of(rec),
            desired_models=desired,
            cancel_jobs=cancel,
            new_secret=self._secret_to_send(rec),
        )

    # ------------------------------------------------------------------ admin / read
    def list_runners(self, p: Principal, region: str | None = None) -> RunnerList:
        """Every runner with its status (needs ``runners:read``), or those of ``region``;
        ``by_region`` counts every runner by region and status. Runners are shared by every
        tenant, but what runs on them is not: an admin sees everything; anyone else sees only
        the models of their own tenant and the ids of their own running jobs, and no Triton
        details (``models_of`` and ``jobs_of`` say whose is whose)."""
        p.require("runners:read")
        records = self._store.list_runners()
        views = [self.view(r) for r in records]
        if not p.is_admin:
            mine = self.models_of(p.tenant)
            jobs = {j for r in records for j in r.running_jobs}
            own_jobs = set(self.jobs_of(p.tenant, sorted(jobs))) if jobs else set()
            for view in views:
                view.models = [m for m in view.models if m.name in mine]
                view.running_jobs = [j for j in view.running_jobs if j in own_jobs]
                view.triton = {}
        by_region: dict[str, dict[str, int]] = {}
        for v in views:
            counts = by_region.setdefault(v.region, {})
            counts[v.status] = counts.get(v.status, 0) + 1
        shown = [v for v in views if region is None or v.region == region]
        return RunnerList(runners=shown, by_region=dict(sorted(by_region.items())))

    def usable(self, runner_id: str) -> bool:
        """The runner is registered, not revoked and not draining (a long poll in flight when
        a drain is set ends empty: the capacity autoscaler stops drained hosts).

        Asked by every round of a lease long poll after the first (one per job leased on a
        busy runner): a "usable" answer read in the last ``USABLE_FRESH_S`` is trusted (as
        the runner's channel trusts its record for ``RECORD_FRESH_S``); a revocation or
        config change made through this service is seen at once, one made elsewhere (another
        replica, the capacity autoscaler's drain) within that time."""
        t = time.monotonic()
        hit = self._usable_at.get(runner_id)
        if hit is not None and t - hit < USABLE_FRESH_S:
            return True
        rec = self._store.find_runner(runner_id)
        ok = rec is not None and not rec.revoked and not rec.config.get("drain")
        if ok:
            if len(self._usable_at) > 10_000:
                self._usable_at.clear()
            self._usable_at[runner_id] = t
        else:
            self._usable_at.pop(runner_id, None)
        return ok

    def find(self, runner_id: str) -> RunnerRecord | None:
        """One runner's record (None when unknown)."""
        return self._store.find_runner(runner_id)

    def records(self) -> list[RunnerRecord]:
        """Raw records (for metrics collection at scrape time)."""
        return self._store.list_runners()

    def patch_config(self, p: Principal, runner_id: str, patch: RunnerConfigPatch) -> RunnerView:
        """Merge the set fields into the runner's stored config (admin)."""
        p.require("admin")
        fields: dict[str, Any] = patch.model_dump(exclude_unset=True, exclude={"api_version"})
        fields = {k: v for k, v in fields.items() if v is not None}
        self._usable_at.pop(runner_id, None)  # a drain is seen by the next lease round
        rec = self._store.merge_config(runner_id, fields)
        if rec is None:
            raise NotFound(f"no active runner {runner_id!r}")
        return self.view(rec)

    def revoke(self, p: Principal, runner_id: str) -> None:
        """Revoke a runner (admin): its signed calls get 401 from now on."""
        p.require("admin")
        self._usable_at.pop(runner_id, None)
        if not self._store.revoke_runner(runner_id):
            raise NotFound(f"no runner {runner_id!r}")

    @staticmethod
    def config_of(rec: RunnerRecord) -> RunnerConfig:
        return RunnerConfig.model_validate(rec.config)

    def status_of(self, rec: RunnerRecord) -> RunnerStatus:
        if rec.revoked:
            return "REVOKED"
        last = rec.last_heartbeat_at
        if last is None or self._now() - last > self._offline_after_s:
            return "OFFLINE"
        if rec.config.get("drain"):
            return "DRAINING"
        return "ONLINE"

    def view(self, rec: RunnerRecord) -> RunnerView:
        return RunnerView.model_validate(
            {
                "id": rec.id,
                "name": rec.name,
                "region": rec.region,
                "labels": rec.labels,
                "status": self.status_of(rec),
                "registered_at": clock.iso(rec.registered_at),
                "last_heartbeat_at": clock.iso(rec.last_heartbeat_at),
                "gpus": rec.gpus,
                "models": rec.models,
                "triton": rec.triton,
                "running_jobs": rec.running_jobs,
                "config": rec.config,
                "rtt_ms": self.region_rtt(rec.region) if self.region_rtt else None,
                "secret_set_at": clock.iso(
                    rec.secret_set_at if rec.secret_set_at is not None else rec.registered_at
                ),
                "secret_rotation_pending": rec.pending_secret is not None,
                "join_token": rec.join_token,
            }
        )

    def ping(self) -> None:
        self._store.ping()


MOCK_LABEL = "gpufleet.backend"  # a runner on the mock backend registers with it set to "mock"
MOCK_REFUSED = (
    "this runner runs the mock backend (made-up answers, no Triton): it takes no jobs from "
    "this fleet unless an admin allows mock runners (GPUFLEET_ALLOW_MOCK_RUNNERS=true on "
    "the control plane)"
)


def is_mock(rec: RunnerRecord) -> bool:
    """The runner runs the mock backend (its registration label, or its last heartbeat)."""
    return rec.labels.get(MOCK_LABEL) == "mock" or rec.triton.get("backend") == "mock"


def _ready(m: dict[str, object]) -> bool:
    state = m.get("state")
    return str(getattr(state, "value", state)) == "READY"
