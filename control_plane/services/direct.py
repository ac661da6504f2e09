"""Direct mode: tickets that let a caller send KServe v2 requests straight to a runner.

``ticket(p, model, req)`` resolves the READY version the caller may use (as a synchronous
inference does: tenant checks included), picks an online, non-draining runner that reports a
``direct_url`` and has that version READY (in ``region`` when one is given and such a runner
exists there; else any, least busy first), and signs a ticket with the shared asymmetric key:

    header  {"alg": "EdDSA"|"ES256", "kid": …, "typ": "gf-ticket+jwt"}
    claims  iss, aud = "runner:<id>", sub, tenant, model, version, iat, nbf, exp (<= 5 min), jti

The runner verifies it offline with the keys of ``GET /v1/auth/jwks`` (``runner/direct.py``).
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Callable

from gpufleet.wire import DirectRequest, DirectTicket, RunnerStatus

from control_plane import clock
from control_plane.errors import NotFound, Unavailable
from control_plane.services.principal import Principal
from control_plane.services.signing_keys import SigningKeys
from control_plane.storage.protocols import ModelVersionRecord
from control_plane.storage.protocols_auth import RunnerRecord

TICKET_TYPE = "gf-ticket+jwt"
RUNNERS_CACHE_S = 2.0
MAX_TICKET_TTL_S = 300


def ticket_audience(runner_id: str) -> str:
    """The ``aud`` of tickets for one runner."""
    return f"runner:{runner_id}"


class DirectService:
    """Issues direct-mode tickets."""

    def __init__(
        self,
        keys: SigningKeys,
        target: Callable[[Principal, str, str | None], ModelVersionRecord | None],
        runners: Callable[[], list[RunnerRecord]],
        status_of: Callable[[RunnerRecord], RunnerStatus],
        *,
        issuer: str,
        ttl_s: int = MAX_TICKET_TTL_S,
        now: Callable[[], float] = clock.now,
    ) -> None:
        self._keys = keys
        self._target = target
        self._runners = runners
        self._status_of = status_of
        self._issuer = issuer
        self._ttl_s = min(ttl_s, MAX_TICKET_TTL_S)
        self._now = now
        self._lock = threading.Lock()
        self._cache: tuple[float, list[RunnerRecord]] | None = None

    def _records(self, fresh: bool) -> list[RunnerRecord]:
        with self._lock:
            hit = self._cache
            if not fresh and hit is not None and time.monotonic() - hit[0] < RUNNERS_CACHE_S:
                return hit[1]
        recs = self._runners()
        with self._lock:
            self._cache = (time.monotonic(), recs)
        return recs

    def candidates(self, model: str, version: str, *, fresh: bool = False) -> list[RunnerRecord]:
        """Online runners with a direct URL that have ``model`` ``version`` READY (from a
        list at most ``RUNNERS_CACHE_S`` old; ``fresh``: read now)."""
        out = []
        for rec in self._records(fresh):
            url = rec.triton.get("direct_url")
            if not isinstance(url, str) or not url or self._status_of(rec) != "ONLINE":
                continue
            if any(
                m.get("name") == model
                and str(m.get("version")) == version
                and m.get("state") == "READY"
                for m in rec.models
            ):
                out.append(rec)
        return out

    def ticket(self, p: Principal, model: str, req: DirectRequest) -> DirectTicket:
        """A ticket for a runner serving ``model`` (the caller must be allowed to infer)."""
        target = self._target(p, model, req.version)
        if target is None:
            raise NotFound(f"model {model!r} has no READY version")
        found = self.candidates(model, target.version) or self.candidates(
            model, target.version, fresh=True
        )
        if not found:
            raise Unavailable(
                f"no runner with direct mode serves {model!r} version {target.version} now; "
                "call it through the control plane"
            )
        if req.region is not None:
            local = [r for r in found if r.region == req.region]
            found = local or found
        # least busy first, ties at random (spreads callers over equal runners)
        found.sort(key=lambda r: (len(r.running_jobs), random.random()))
        runner = found[0]
        iat = int(self._now())
        exp = iat + self._ttl_s
        claims = {
            "iss": self._issuer,
            "aud": ticket_audience(runner.id),
            "sub": p.sub,
            "tenant": p.tenant,
            "model": model,
            "version": target.version,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": secrets.token_urlsafe(12),
        }
        return DirectTicket(
            url=str(runner.triton["direct_url"]).rstrip("/"),
            ticket=self._keys.sign(claims, TICKET_TYPE),
            expires_at=clock.iso(exp) or "",
            expires_in=self._ttl_s,
            runner_id=runner.id,
            grpc_url=_str_or_none(runner.triton.get("direct_grpc_url")),
            model=model,
            version=target.version,
            region=runner.region,
        )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
