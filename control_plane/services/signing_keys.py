"""Asymmetric signing keys (EdDSA or ES256, each with a ``kid``), shared by every replica.

- The keys live in the store (``SigningKeyStore``): one is current and signs; rotated-out ones
  still verify for ``overlap_s`` after their ``retired_at``, then they are deleted.
- Rotation: on a schedule (``rotate_every_s`` after the current key was created, done by the
  first replica that signs after that time) and on demand (``rotate()``, the admin route).
  Both are a conditional write that names the key being replaced, so concurrent replicas
  rotate once: the losers adopt the winner's key.
- Each replica keeps the keys in memory and re-reads them every ``cache_s``, at once when it
  meets an unknown ``kid`` (at most once per ``MIN_REFRESH_S``, so tokens with made-up kids
  cannot make every request read the store).
- ``GET /v1/auth/jwks`` serves the public halves of every key that still verifies.

Verification pins the algorithm to the key's own (never the token's header), checks ``typ``.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from gpufleet.wire import SigningKeyList, SigningKeyView
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from control_plane import clock
from control_plane.errors import Unauthorized
from control_plane.services.principal import Principal
from control_plane.storage.protocols_keys import SigningKeyRecord, SigningKeyStore

ASYMMETRIC_ALGORITHMS = ("EdDSA", "ES256")
MIN_REFRESH_S = 1.0


def generate_key(alg: str, now: float) -> SigningKeyRecord:
    """A new key pair of ``alg`` with a fresh kid."""
    private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
    if alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        jwk: dict[str, Any] = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        raise ValueError(f"unsupported signing algorithm {alg!r}: use EdDSA or ES256")
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    kid = f"{alg.lower()}-{int(now)}-{secrets.token_hex(4)}"
    public = {k: str(v) for k, v in jwk.items()} | {"kid": kid, "alg": alg, "use": "sig"}
    return SigningKeyRecord(kid=kid, alg=alg, private_pem=pem, public_jwk=public, created_at=now)


@dataclass(frozen=True)
class _Loaded:
    rec: SigningKeyRecord
    public: Any  # a cryptography public key


class MemorySigningKeyStore:
    """``SigningKeyStore`` in this process only (stores built without one: a single replica)."""

    def __init__(self) -> None:
        self._keys: dict[str, SigningKeyRecord] = {}
        self._lock = threading.Lock()

    def list_signing_keys(self) -> list[SigningKeyRecord]:
        with self._lock:
            return sorted(self._keys.values(), key=lambda r: (r.created_at, r.kid))

    def add_signing_key(self, rec: SigningKeyRecord, replaces: str | None, at: float) -> bool:
        with self._lock:
            current = next((k for k, r in self._keys.items() if r.retired_at is None), None)
            if current != replaces or rec.kid in self._keys:
                return False
            if replaces is not None:
                self._keys[replaces] = replace(self._keys[replaces], retired_at=at)
            self._keys[rec.kid] = replace(rec, retired_at=None)
            return True

    def delete_signing_key(self, kid: str) -> bool:
        with self._lock:
            rec = self._keys.get(kid)
            if rec is None or rec.retired_at is None:
                return False
            del self._keys[kid]
            return True


class SigningKeys:
    """The shared asymmetric keys: sign with the current one, verify with any still valid."""

    def __init__(
        self,
        store: SigningKeyStore | None,
        *,
        alg: str = "EdDSA",
        rotate_every_s: float = 7 * 86400,
        overlap_s: float = 3600,
        cache_s: float = 30.0,
        now: Callable[[], float] = clock.now,
    ) -> None:
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise ValueError(f"unsupported signing algorithm {alg!r}: use EdDSA or ES256")
        self._store: SigningKeyStore = store if store is not None else MemorySigningKeyStore()
        self.alg = alg
        self._rotate_every_s = rotate_every_s
        self.overlap_s = overlap_s
        self._cache_s = cache_s
        self._now = now
        self._lock = threading.Lock()
        self._loaded_at = float("-inf")
        self._keys: dict[str, _Loaded] = {}
        self._current: tuple[SigningKeyRecord, Any] | None = None  # (record, private key)

    # ------------------------------------------------------------------ reading
    def _load(self) -> None:
        recs = self._store.list_signing_keys()
        t = self._now()
        keys: dict[str, _Loaded] = {}
        current = None
        for rec in recs:
            if rec.retired_at is not None and rec.retired_at + self.overlap_s < t:
                continue  # past its overlap window: verifies nothing any more
            keys[rec.kid] = _Loaded(rec, jwt.PyJWK(dict(rec.public_jwk), rec.alg).key)
            if rec.retired_at is None:
                current = rec
        self._keys = keys
        self._loaded_at = t
        if current is None:
            self._current = None
        elif self._current is None or self._current[0].kid != current.kid:
            private = serialization.load_pem_private_key(current.private_pem.encode(), None)
            self._current = (current, private)

    def _fresh(self) -> None:
        if self._now() - self._loaded_at >= self._cache_s:
            self._load()

    def _current_key(self) -> tuple[SigningKeyRecord, Any]:
        """The current key (created, or rotated when due, first)."""
        with self._lock:
            self._fresh()
            cur = self._current
            t = self._now()
            if cur is None:
                self._add(None)
            elif cur[0].alg != self.alg or (
                self._rotate_every_s > 0 and t - cur[0].created_at >= self._rotate_every_s
            ):
                self._add(cur[0].kid)  # scheduled (or the configured algorithm changed)
            if self._current is None:  # pragma: no cover - a key was just written
                raise RuntimeError("no current signing key after creating one")
            return self._current

    def _add(self, replaces: str | None) -> None:
        """Write a new current key replacing ``replaces``; whoever wins, reload."""
        t = self._now()
        self._store.add_signing_key(generate_key(self.alg, t), replaces, t)
        self._load()
        self._prune(t)

    def _prune(self, t: float) -> None:
        for rec in self._store.list_signing_keys():
            if rec.retired_at is not None and rec.retired_at + self.overlap_s < t:
                self._store.delete_signing_key(rec.kid)

    def rotate(self) -> SigningKeyRecord:
        """Rotate now (admin): a new current key; the old one verifies for the overlap."""
        with self._lock:
            self._load()
            cur = self._current
            self._add(cur[0].kid if cur is not None else None)
            if self._current is None:  # pragma: no cover
                raise RuntimeError("no current signing key after rotating")
            return self._current[0]

    def jwks(self) -> list[dict[str, str]]:
        """The public keys that verify now (current first)."""
        self._current_key()
        return [dict(rec.public_jwk) for rec in self.records()]

    def records(self) -> list[SigningKeyRecord]:
        """The keys that verify now, current first, newest retired next."""
        with self._lock:
            self._fresh()
            t = self._now()
            loaded = sorted(
                (
                    k
                    for k in self._keys.values()
                    if k.rec.retired_at is None or k.rec.retired_at + self.overlap_s >= t
                ),
                key=lambda k: (k.rec.retired_at is not None, -(k.rec.retired_at or 0.0)),
            )
        return [k.rec for k in loaded]

    def public_key(self, kid: str) -> _Loaded | None:
        """The key ``kid`` if it verifies now; an unknown kid re-reads the store (rate-limited)."""
        with self._lock:
            self._fresh()
            hit = self._keys.get(kid)
            if hit is None and self._now() - self._loaded_at >= MIN_REFRESH_S:
                self._load()
                hit = self._keys.get(kid)
        retired = None if hit is None else hit.rec.retired_at
        if retired is not None and retired + self.overlap_s < self._now():
            return None
        return hit

    # ------------------------------------------------------------------ tokens
    def sign(self, claims: dict[str, Any], typ: str) -> str:
        """``claims`` signed with the current key (header: alg, kid, typ)."""
        rec, private = self._current_key()
        return jwt.encode(claims, private, algorithm=rec.alg, headers={"typ": typ, "kid": rec.kid})

    def decode(
        self,
        token: str,
        *,
        typ: str,
        audience: str,
        issuer: str,
        required: list[str],
        leeway_s: float,
    ) -> dict[str, Any]:
        """The claims of a token signed by one of these keys; ``Unauthorized`` otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized("malformed token") from exc
        if header.get("typ") != typ:
            raise Unauthorized("wrong token type")
        kid = header.get("kid")
        key = self.public_key(kid) if isinstance(kid, str) and kid else None
        if key is None:
            raise Unauthorized("token signed by an unknown or retired key")
        if header.get("alg") != key.rec.alg:
            raise Unauthorized("unsupported token algorithm")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public,
                algorithms=[key.rec.alg],
                audience=audience,
                issuer=issuer,
                leeway=leeway_s,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("invalid token") from exc
        return claims


def key_views(keys: SigningKeys, p: Principal) -> SigningKeyList:
    """The keys that verify now, current first (admin)."""
    p.require("admin")
    keys.jwks()  # creates the first key when there is none
    views = []
    for rec in keys.records():
        until = None if rec.retired_at is None else rec.retired_at + keys.overlap_s
        views.append(
            SigningKeyView(
                kid=rec.kid,
                alg=rec.alg,
                created_at=clock.iso(rec.created_at) or "",
                retired_at=clock.iso(rec.retired_at),
                verifies_until=clock.iso(until),
                current=rec.retired_at is None,
            )
        )
    return SigningKeyList(keys=views)


def rotate_now(keys: SigningKeys, p: Principal) -> SigningKeyList:
    """Rotate the signing key (admin); the answer lists the keys after it."""
    p.require("admin")
    keys.rotate()
    return key_views(keys, p)
