"""Is this still the store the control plane started on?

A store that lost its data (DynamoDB tables deleted and created again empty, a moto or
SQLite store restarted without its file, a restore of the wrong backup) would otherwise
look healthy: every ping answers, and the control plane serves an empty store while the
keys, runners and join tokens everyone holds are gone. The marker is the stored signing key
(the auth table's ``meta#jwt`` item, written once when the store is first used, kept for
as long as the store is): the control plane remembers a digest of it at start, and the
``store`` health check compares the stored one with it. Missing or different, the check
fails with a plain reason (``/v1/health`` answers 503 ``degraded``) and the control plane
logs it once, at ERROR. A missing table says so too (``storage/aws.py``).

What to do (docs/failure_modes.md, "The store lost its data"): restore the store, or, if an
empty store is what you want, restart the control plane so it adopts it; runners then need a
new join token.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading

from control_plane.errors import Unavailable
from control_plane.storage.protocols_auth import AuthStore

log = logging.getLogger(__name__)

ADVICE = (
    "every job, API key, runner and join token stored before is gone: restore the store, or "
    "restart the control plane to adopt the empty one (runners then need a new join token)"
)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class StoreMarker:
    """The store's marker as seen at start, and the health check that compares it."""

    def __init__(self, auth: AuthStore) -> None:
        self._auth = auth
        self._seen: str | None = None
        self._lock = threading.Lock()
        self._reported: str | None = None

    def adopt(self) -> None:
        """Remember the store's marker (writing it on a new store). ``Unavailable`` when the
        store cannot be reached: the first health check that reaches it adopts it then."""
        digest = _digest(self._auth.ensure_signing_key(secrets.token_urlsafe(48)))
        with self._lock:
            if self._seen is None:
                self._seen = digest
                log.info("store marker %s", digest)

    def check(self) -> None:
        """Raise ``Unavailable`` with the reason when the store is not the one adopted."""
        if self._seen is None:
            self.adopt()
            return
        key = self._auth.stored_signing_key()
        if key is None:
            problem = (
                "the store lost its data: its marker (written when the store was first used) "
                "is gone; it was wiped or its tables were created again"
            )
        elif _digest(key) != self._seen:
            problem = (
                "the store was replaced: its marker is not the one this control plane started with"
            )
        else:
            if self._reported is not None:
                log.warning("the store's marker is back: the store is the one adopted at start")
                self._reported = None
            return
        if self._reported != problem:
            log.error("%s; %s", problem, ADVICE)
            self._reported = problem
        raise Unavailable(f"{problem}; {ADVICE}")
