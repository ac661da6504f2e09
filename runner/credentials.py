"""The runner's identity ``{runner_id, secret, control_plane_url}`` in a 0600 JSON file."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Credentials:
    """What registration returned, and where it is valid."""

    runner_id: str
    secret: str
    control_plane_url: str


def load_credentials(path: Path) -> Credentials | None:
    """The stored credentials, or None when there are none (or they are unreadable)."""
    try:
        raw = json.loads(path.read_text())
        return Credentials(
            runner_id=str(raw["runner_id"]),
            secret=str(raw["secret"]),
            control_plane_url=str(raw["control_plane_url"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_credentials(path: Path, creds: Credentials) -> None:
    """Write atomically with mode 0600 (the file is created 0600, never widened)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps(asdict(creds), indent=2).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def delete_credentials(path: Path) -> None:
    """Forget the identity (after revocation)."""
    path.unlink(missing_ok=True)


def load_or_create_secret(path: Path, nbytes: int = 24) -> str:
    """A random secret kept in a 0600 file (created on first use, stable across restarts)."""
    import secrets

    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(nbytes)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
    return value
