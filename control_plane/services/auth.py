"""Authentication of people and programs: API keys, access/refresh tokens, join tokens.

- API key ``gf_<key id>_<secret>``: only ``sha256(secret)`` is stored; compared in constant time.
- ``exchange_api_key`` -> access token (JWT, see ``tokens.py``) + refresh token
  ``rt_<id>.<secret>`` of a new family.
- ``refresh`` rotates: the presented token is flipped used=false->true by a conditional
  write; a second presentation of a used token revokes its whole family (401). A revoked
  API key stops working at the next refresh.
- Revocation of access tokens: every bearer's API key (``sub``) is looked up in the store at
  most every ``revocation_check_s`` per replica (default 5 s), and at once on admin routes
  (``authenticate(..., fresh=True)``): a revoked key's tokens stop within seconds everywhere.
- Join tokens ``gfj_<secret>`` let runners register: each may register ``max_uses`` runners
  (default 1) until it expires; every runner it registered records the token's id
  (``join_token`` in the runner listing), and the admin listing shows each token's uses.
- Failed API-key exchanges (and failed refresh, join-token and API-key bearer attempts) are
  throttled per key id and per client address (``throttle.py``): 429 with Retry-After.
- API key rotation: a new secret; the old one is accepted until a chosen time.
- Tokens of an external OpenID issuer (``oidc.py``), when configured, are bearer tokens too.
- Bearer: an access token, or an API key itself (``Authorization: Bearer gf_…``, for curl and
  tritonclient users): the key is checked against the store and its principal remembered for
  ``api_key_cache_s`` (its revocation is still seen within ``revocation_check_s``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import TypeVar, cast

from gpufleet.wire import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyRotate,
    ApiKeyRotated,
    ApiKeyView,
    JoinTokenCheck,
    JoinTokenCreate,
    JoinTokenCreated,
    JoinTokenList,
    JoinTokenView,
    Role,
    TokenPair,
)

from control_plane import clock
from control_plane.errors import Conflict, Forbidden, NotFound, Unauthorized
from control_plane.services.oidc import OidcVerifier
from control_plane.services.principal import ROLE_SCOPES, Principal
from control_plane.services.signing_keys import SigningKeys
from control_plane.services.throttle import FailureThrottle
from control_plane.services.tokens import VERIFIED_CACHE_SIZE, TokenSigner
from control_plane.storage.protocols_auth import (
    ApiKeyRecord,
    AuthStore,
    JoinTokenRecord,
    RefreshRecord,
)

T = TypeVar("T")

API_KEY_PREFIX = "gf_"
REFRESH_PREFIX = "rt_"
JOIN_PREFIX = "gfj_"


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def join_token_id(token_hash: str) -> str:
    """The public id of a join token: ``jt_`` + 16 hex of its sha256 (not the token)."""
    return f"jt_{token_hash[:16]}"


def _same_hash(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(sha256_hex(secret).encode(), stored_hash.encode())


class AuthService:
    """API keys, token exchange and rotation, bearer verification, join tokens."""

    def __init__(
        self,
        store: AuthStore,
        *,
        jwt_secret: str | None,
        issuer: str,
        audience: str,
        access_ttl_s: int,
        refresh_ttl_s: int,
        api_key_cache_s: int = 60,
        revocation_check_s: float = 5.0,
        max_token_lifetime_s: int | None = None,
        key_throttle: FailureThrottle | None = None,
        address_throttle: FailureThrottle | None = None,
        oidc: OidcVerifier | None = None,
        now: Callable[[], float] = clock.now,
        signing_keys: SigningKeys | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._oidc = oidc
        self._key_throttle = key_throttle or FailureThrottle(0, 1.0)
        self._addr_throttle = address_throttle or FailureThrottle(0, 1.0)
        self._api_key_cache_s = api_key_cache_s
        self._revocation_check_s = revocation_check_s
        # key id -> (monotonic() of the store read, the key as read; None: missing/revoked)
        self._monotonic = monotonic
        self._key_state: dict[str, tuple[float, ApiKeyRecord | None]] = {}
        self._secret = jwt_secret
        self._refresh_ttl_s = refresh_ttl_s
        self._now = now
        # signing_keys: access tokens signed with the asymmetric keys; None: HS256
        self.signer = TokenSigner(
            self._signing_key,
            issuer,
            audience,
            access_ttl_s,
            now,
            keys=signing_keys,
            max_lifetime_s=max_token_lifetime_s,
        )

    def _signing_key(self) -> str:
        """The configured key, else the one shared through the auth table (created once)."""
        if self._secret is None:
            self._secret = self._store.ensure_signing_key(secrets.token_urlsafe(48))
        return self._secret

    # ------------------------------------------------------------------ tokens
    def exchange_api_key(self, api_key: str, client: str | None = None) -> TokenPair:
        """An API key for a fresh token pair (new refresh family). Failures are throttled per
        key id and per ``client`` address (``RateLimited``)."""
        rec = self._check_api_key(api_key, client)
        return self._pair(rec, family=secrets.token_hex(12))

    def refresh(self, refresh_token: str, client: str | None = None) -> TokenPair:
        """Rotate a refresh token; reuse of a used one revokes its family. Failures are
        throttled per ``client`` address."""
        return self._guarded("refresh", None, client, lambda: self._refresh(refresh_token))

    def _guarded(self, what: str, key_id: str | None, client: str | None, fn: Callable[[], T]) -> T:
        """``fn()``, refused (429) while the key id or client address is throttled; an
        ``Unauthorized`` from it counts as a failure of both."""
        key_keys = [f"key:{key_id}"] if key_id else []
        addr_keys = [f"addr:{client}"] if client else []
        self._key_throttle.check(key_keys, what)
        self._addr_throttle.check(addr_keys, what)
        try:
            return fn()
        except Unauthorized:
            self._key_throttle.fail(key_keys)
            self._addr_throttle.fail(addr_keys)
            raise

    def _refresh(self, refresh_token: str) -> TokenPair:
        if not refresh_token.startswith(REFRESH_PREFIX) or "." not in refresh_token:
            raise Unauthorized("invalid refresh token")
        token_id, _, secret = refresh_token[len(REFRESH_PREFIX) :].partition(".")
        rec = self._store.find_refresh_token(token_id)
        if rec is None or not _same_hash(secret, rec.secret_hash):
            raise Unauthorized("invalid refresh token")
        if rec.expires_at < self._now():
            raise Unauthorized("refresh token expired")
        if self._store.family_revoked(rec.family):
            raise Unauthorized("refresh token revoked")
        # A family stays revoked until its newest possible token expires (the reused one
        # may be older than tokens rotated after it).
        family_until = self._now() + self._refresh_ttl_s
        if not self._store.mark_refresh_used(token_id):
            self._store.revoke_family(rec.family, family_until)
            raise Unauthorized("refresh token reused; its family is revoked")
        key = self._store.find_api_key(rec.key_id)
        if key is None or key.revoked:
            self._store.revoke_family(rec.family, family_until)
            raise Unauthorized("api key revoked")
        return self._pair(key, family=rec.family)

    def revoke_refresh_family(self, refresh_token: str) -> bool:
        """Revoke the family of a refresh token (sign-out): none of its tokens refreshes
        again. False (nothing revoked) when the token is not a valid one of this store."""
        if not refresh_token.startswith(REFRESH_PREFIX) or "." not in refresh_token:
            return False
        token_id, _, secret = refresh_token[len(REFRESH_PREFIX) :].partition(".")
        rec = self._store.find_refresh_token(token_id)
        if rec is None or not _same_hash(secret, rec.secret_hash):
            return False
        self._store.revoke_family(rec.family, self._now() + self._refresh_ttl_s)
        return True

    def mac(self, purpose: str, value: str) -> str:
        """HMAC-SHA256 of ``value`` under a key derived from the signing key for ``purpose``
        (the console's CSRF tokens): every replica computes the same, nobody else can."""
        key = hmac.new(self._signing_key().encode(), purpose.encode(), hashlib.sha256).digest()
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()

    def cached_principal(self, token: str) -> Principal | None:
        """The principal of a bearer seen before, from memory only (no I/O): its signature
        checked earlier and its key's state read within ``revocation_check_s``. None: call
        ``authenticate`` (off the event loop)."""
        p = self.signer.remembered(token)
        if p is None or self._live_from_memory(p, token) is not True:
            return None
        return p

    def authenticate(
        self, bearer: str, *, fresh: bool = False, client: str | None = None
    ) -> Principal:
        """The principal of a bearer access token, or of an API key used as one.

        The token's API key must not be revoked (and an API key used as the bearer must
        still be one of its valid secrets: a rotation retires the old one): the key is read
        from the store when the remembered state is older than ``revocation_check_s``, or
        always with ``fresh`` (admin routes)."""
        p = self._authenticate(bearer, client)
        if not self._key_live(p, bearer, fresh=fresh):
            raise Unauthorized("api key revoked")
        return p

    def _live_from_memory(self, p: Principal, bearer: str) -> bool | None:
        """Whether the bearer's key is live by a recent read (None: no recent read)."""
        if p.external:
            return True
        hit = self._key_state.get(p.sub)
        if hit is None or self._monotonic() - hit[0] >= self._revocation_check_s:
            return None
        return self._accepts(hit[1], bearer)

    def _key_live(self, p: Principal, bearer: str, *, fresh: bool) -> bool:
        if p.external:  # an OpenID issuer's token: no API key of ours behind it
            return True
        if not fresh:
            known = self._live_from_memory(p, bearer)
            if known is not None:
                return known
        rec = self._store.find_api_key(p.sub)
        self._note_key_state(p.sub, rec)
        return self._accepts(rec, bearer)

    def _accepts(self, rec: ApiKeyRecord | None, bearer: str) -> bool:
        """The key exists and is not revoked; for an API key used as the bearer, its secret
        is the key's current one or the rotated-out one within its window."""
        if rec is None or rec.revoked:
            return False
        if not bearer.startswith(API_KEY_PREFIX):
            return True
        secret = bearer.rpartition("_")[2]
        if _same_hash(secret, rec.secret_hash):
            return True
        return (
            rec.previous_secret_hash is not None
            and (rec.previous_valid_until or 0.0) > self._now()
            and _same_hash(secret, rec.previous_secret_hash)
        )

    def _note_key_state(self, key_id: str, rec: ApiKeyRecord | None) -> None:
        """Remember the key as read now (None: missing or known revoked)."""
        if len(self._key_state) >= VERIFIED_CACHE_SIZE:
            self._key_state.clear()
        self._key_state[key_id] = (self._monotonic(), rec)

    def _authenticate(self, bearer: str, client: str | None) -> Principal:
        if not bearer.startswith(API_KEY_PREFIX):
            if self._oidc is not None and self._oidc.handles(bearer):
                p, until = self._oidc.verify(bearer)  # the external issuer's (oidc.py)
                self.signer.remember(bearer, p, until)
                return p
            return self.signer.verify(bearer)
        rec = self._check_api_key(bearer, client)
        self._note_key_state(rec.id, rec)
        p = Principal(
            sub=rec.id, tenant=rec.tenant, role=rec.role, scopes=frozenset(ROLE_SCOPES[rec.role])
        )
        if self._api_key_cache_s > 0:  # its key's state is still checked (``_accepts``)
            self.signer.remember(bearer, p, time.time() + self._api_key_cache_s)
        return p

    def _pair(self, key: ApiKeyRecord, family: str) -> TokenPair:
        token_id, secret = secrets.token_hex(12), secrets.token_urlsafe(32)
        self._store.save_refresh_token(
            RefreshRecord(
                id=token_id,
                secret_hash=sha256_hex(secret),
                family=family,
                key_id=key.id,
                tenant=key.tenant,
                role=key.role,
                expires_at=self._now() + self._refresh_ttl_s,
            )
        )
        return TokenPair(
            access_token=self.signer.issue(key.id, key.tenant, key.role),
            refresh_token=f"{REFRESH_PREFIX}{token_id}.{secret}",
            expires_in=self.signer.ttl_s,
        )

    def _check_api_key(self, api_key: str, client: str | None = None) -> ApiKeyRecord:
        body = api_key[len(API_KEY_PREFIX) :] if api_key.startswith(API_KEY_PREFIX) else ""
        key_id, _, secret = body.rpartition("_")
        return self._guarded(
            "api key", key_id[:64] or None, client, lambda: self._match_api_key(key_id, secret)
        )

    def _match_api_key(self, key_id: str, secret: str) -> ApiKeyRecord:
        rec = self._store.find_api_key(key_id) if key_id and secret else None
        # Hash something even for unknown ids so timing does not tell ids apart.
        ok = _same_hash(secret, rec.secret_hash if rec else "0" * 64)
        if rec is not None and not ok and rec.previous_secret_hash is not None:
            # the secret a rotation replaced, until its chosen end
            still = (rec.previous_valid_until or 0.0) > self._now()
            ok = _same_hash(secret, rec.previous_secret_hash) and still
        if rec is None or not ok or rec.revoked:
            raise Unauthorized("invalid api key")
        return rec

    # ------------------------------------------------------------------ admin
    def create_api_key(self, p: Principal, req: ApiKeyCreate) -> ApiKeyCreated:
        """A new API key (admin); the secret is in the answer only."""
        p.require("admin")
        return self.issue_api_key(req.tenant, req.role, req.name)

    def list_api_keys(self, p: Principal) -> ApiKeyList:
        """Every API key, oldest first, without secrets (admin)."""
        p.require("admin")
        return ApiKeyList(
            keys=[
                ApiKeyView(
                    id=k.id,
                    tenant=k.tenant,
                    role=k.role,
                    name=k.name,
                    created_at=clock.iso(k.created_at) or "",
                    revoked=k.revoked,
                    previous_valid_until=clock.iso(k.previous_valid_until),
                )
                for k in self._store.list_api_keys()
            ]
        )

    def issue_api_key(self, tenant: str, role: str, name: str) -> ApiKeyCreated:
        """Create a key without a caller (bootstrap of the first admin key)."""
        if role not in ROLE_SCOPES:
            raise ValueError(f"unknown role {role!r}")
        known = cast(Role, role)  # one of ROLE_SCOPES' keys, which are the roles
        key_id, secret = clock.new_id("key"), secrets.token_hex(24)
        self._store.save_api_key(
            ApiKeyRecord(
                id=key_id,
                tenant=tenant,
                role=known,
                name=name,
                secret_hash=sha256_hex(secret),
                created_at=self._now(),
            )
        )
        return ApiKeyCreated(
            id=key_id,
            api_key=f"{API_KEY_PREFIX}{key_id}_{secret}",
            tenant=tenant,
            role=known,
        )

    def rotate_api_key(self, p: Principal, key_id: str, req: ApiKeyRotate) -> ApiKeyRotated:
        """A new secret for a key (admin, or the key's own holder); the old one is accepted
        for ``old_valid_for_s`` more (0: stops at once). Tokens minted from the key keep
        working: they are not the secret."""
        if not (p.is_admin or (p.sub == key_id and not p.external)):
            raise Forbidden("only an admin or the key itself may rotate an api key")
        rec = self._store.find_api_key(key_id)
        if rec is None or (rec.revoked and not p.is_admin):
            raise NotFound(f"no api key {key_id!r}")
        if rec.revoked:
            raise Conflict(f"api key {key_id!r} is revoked: create a new one")
        secret = secrets.token_hex(24)
        until = self._now() + req.old_valid_for_s
        if not self._store.rotate_api_key(key_id, rec.secret_hash, sha256_hex(secret), until):
            raise Conflict(f"api key {key_id!r} was rotated or revoked meanwhile: try again")
        self._key_state.pop(key_id, None)  # read again: the old secret's window applies
        return ApiKeyRotated(
            id=key_id,
            api_key=f"{API_KEY_PREFIX}{key_id}_{secret}",
            old_valid_until=clock.iso(until) or "",
        )

    def revoke_api_key(self, p: Principal, key_id: str) -> None:
        """Revoke a key (admin). Its refresh tokens stop working at their next use."""
        p.require("admin")
        if not self._store.revoke_api_key(key_id):
            raise NotFound(f"no api key {key_id!r}")
        self._note_key_state(key_id, None)  # this replica: at once; others: within seconds

    def create_join_token(self, p: Principal, req: JoinTokenCreate) -> JoinTokenCreated:
        """A runner join token (admin), stored hashed with its region and labels."""
        p.require("admin")
        token = JOIN_PREFIX + secrets.token_urlsafe(32)
        expires_at = self._now() + req.expires_in_s
        self._store.save_join_token(
            JoinTokenRecord(
                sha256_hex(token), req.region, dict(req.labels), expires_at, req.max_uses
            )
        )
        return JoinTokenCreated(
            join_token=token,
            expires_at=clock.iso(expires_at) or "",
            id=join_token_id(sha256_hex(token)),
            max_uses=req.max_uses,
        )

    def list_join_tokens(self, p: Principal) -> JoinTokenList:
        """Unexpired join tokens, soonest expiry first, without the tokens (admin)."""
        p.require("admin")
        t = self._now()
        return JoinTokenList(
            tokens=[
                JoinTokenView(
                    id=join_token_id(rec.token_hash),
                    region=rec.region,
                    labels=rec.labels,
                    expires_at=clock.iso(rec.expires_at) or "",
                    max_uses=rec.max_uses or None,
                    uses=rec.uses,
                    last_used_at=clock.iso(rec.last_used_at),
                )
                for rec in self._store.list_join_tokens()
                if rec.expires_at >= t
            ]
        )

    def revoke_join_token(self, p: Principal, token_id: str) -> None:
        """Delete a join token by its listed id (admin): it registers no more runners;
        runners that registered with it keep their own credentials."""
        p.require("admin")
        for rec in self._store.list_join_tokens():
            if join_token_id(rec.token_hash) == token_id:
                self._store.delete_join_token(rec.token_hash)
                return
        raise NotFound(f"join token {token_id!r} not found")

    def issue_join_token(
        self, region: str, labels: dict[str, str], ttl_s: int, max_uses: int = 1
    ) -> str:
        """A join token minted by the control plane itself (the capacity autoscaler: one
        single-use token per host it starts, or a pool token with a larger ``max_uses``);
        its labels tie the runner to the pool and host."""
        token = JOIN_PREFIX + secrets.token_urlsafe(32)
        self._store.save_join_token(
            JoinTokenRecord(sha256_hex(token), region, dict(labels), self._now() + ttl_s, max_uses)
        )
        return token

    def redeem_join_token(self, token: str, client: str | None = None) -> JoinTokenRecord:
        """Count one use of the join token; its record if it was valid, unexpired and had
        uses left, ``Unauthorized`` otherwise (throttled per ``client`` address)."""
        return self._guarded("join token", None, client, lambda: self._claim(token))

    def check_join_token(self, token: str, client: str | None = None) -> JoinTokenCheck:
        """Would ``token`` register a runner now? Counts no use (``gpufleet-runner
        configure`` asks before it writes a config); ``Unauthorized`` with the reason
        ``redeem_join_token`` would give otherwise (a failure is throttled like one)."""

        def check() -> JoinTokenCheck:
            rec = self._store.find_join_token(sha256_hex(token))
            if rec is None or rec.expires_at < self._now():
                raise Unauthorized("invalid or expired join token")
            if rec.max_uses and rec.uses >= rec.max_uses:
                raise Unauthorized(f"join token used up (it registers {rec.max_uses} runner(s))")
            return JoinTokenCheck(
                id=join_token_id(rec.token_hash),
                region=rec.region,
                expires_at=clock.iso(rec.expires_at) or "",
                uses_left=rec.max_uses - rec.uses if rec.max_uses else None,
            )

        return self._guarded("join token", None, client, check)

    def _claim(self, token: str) -> JoinTokenRecord:
        token_hash = sha256_hex(token)
        rec = self._store.claim_join_token(token_hash, self._now())
        if rec is not None:
            return rec
        known = self._store.find_join_token(token_hash)
        if known is not None and known.expires_at >= self._now():
            raise Unauthorized(f"join token used up (it registers {known.max_uses} runner(s))")
        raise Unauthorized("invalid or expired join token")

    def ping(self) -> None:
        self._store.ping()
