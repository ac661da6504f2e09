"""The embedded store: one SQLite file and a local blob directory under a data directory.

Layout of ``data_dir`` (0700; files 0600)::

    gpufleet.db (+ -wal, -shm)   every table (storage/sqlite/), WAL mode
    blobs/                       model files, payloads, results (storage/local_blobs.py)
    blob-signing.key             HMAC key of the blob URLs the control plane serves
    lock                         held (flock) by the one control-plane process using the dir

One process per data directory: a second ``serve --embedded`` on the same directory refuses
to start with :class:`DataDirInUse` (it never touches the file). The lock is an OS file lock,
released by the kernel when the holder exits, also on ``kill -9``. Several replicas need the
DynamoDB + S3 store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path
from typing import IO

from control_plane.settings import Settings
from control_plane.storage.protocols import JobServiceStores
from control_plane.storage.stores import Stores

DB_FILE = "gpufleet.db"


class DataDirInUse(RuntimeError):
    """Another control-plane process holds this data directory."""


def default_data_dir() -> Path:
    """The user's data directory for gpufleet (e.g. ~/.local/share/gpufleet on Linux)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("gpufleet", appauthor=False))


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _lock(data_dir: Path) -> IO[str]:
    fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    handle = os.fdopen(fd, "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        holder = handle.read().strip() or "another process"
        handle.close()
        raise DataDirInUse(
            f"{data_dir} is in use by {holder}: one control plane per data directory "
            "(stop it, or give this one another --data-dir; several replicas need DynamoDB + S3)"
        ) from exc
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def _secret_file(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes().strip()
    key = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return key


def open_embedded_store(settings: Settings, data_dir: Path | None = None) -> Stores:
    """Open (creating or migrating) the embedded store; the caller must ``stores.close()``."""
    from control_plane.storage.local_blobs import LocalBlobStore
    from control_plane.storage.sqlite.auth import SqliteAuthStore
    from control_plane.storage.sqlite.capacity import SqliteCapacityStore
    from control_plane.storage.sqlite.db import Database
    from control_plane.storage.sqlite.idempotency import SqliteIdempotencyStore
    from control_plane.storage.sqlite.jobs import SqliteJobRecordStore
    from control_plane.storage.sqlite.keys import SqliteSigningKeyStore
    from control_plane.storage.sqlite.limits import SqliteLimitsStore
    from control_plane.storage.sqlite.models import SqliteModelStore
    from control_plane.storage.sqlite.queue import SqliteQueueStore
    from control_plane.storage.sqlite.rollups import SqliteRollupStore
    from control_plane.storage.sqlite.runners import SqliteNonceStore, SqliteRunnerStore
    from control_plane.storage.sqlite.schema import migrate
    from control_plane.storage.sqlite.streams import SqliteStreamStore
    from control_plane.storage.sqlite.webhooks import (
        SqliteWebhookSecretStore,
        SqliteWebhookStore,
    )

    root = _private_dir(Path(data_dir or settings.data_dir or default_data_dir()))
    lock = _lock(root)
    db: Database | None = None
    try:
        old_umask = os.umask(0o077)  # the SQLite files (db, -wal, -shm) are created 0600
        try:
            db = Database(
                root / DB_FILE,
                synchronous=settings.sqlite_synchronous,
                busy_timeout_ms=int(settings.storage_read_timeout_s * 1000),
            )
            migrate(db)
        finally:
            os.umask(old_umask)
        blobs = LocalBlobStore(
            _private_dir(root / "blobs"),
            settings.public_url or "http://127.0.0.1",
            _secret_file(root / "blob-signing.key"),
        )
    except BaseException:
        # A refused file (SchemaTooNew) is closed before the lock goes: SQLite removes the
        # -wal/-shm it opened, so the file stays as the newer release left it.
        if db is not None:
            db.close()
        lock.close()
        raise
    models = SqliteModelStore(db)

    def close() -> None:
        db.close()
        with contextlib.suppress(OSError):
            lock.close()

    return Stores(
        kind="sqlite",
        jobs=JobServiceStores(
            jobs=SqliteJobRecordStore(db),
            queue=SqliteQueueStore(db),
            idempotency=SqliteIdempotencyStore(db),
        ),
        models=models,
        deployments=models,
        blobs=blobs,
        auth=SqliteAuthStore(db),
        runners=SqliteRunnerStore(db),
        nonces=SqliteNonceStore(db),
        webhooks=SqliteWebhookStore(db),
        webhook_secrets=SqliteWebhookSecretStore(db),
        close=close,
        rollups=SqliteRollupStore(db),
        capacity=SqliteCapacityStore(db),
        streams=SqliteStreamStore(db),
        signing_keys=SqliteSigningKeyStore(db),
        limits=SqliteLimitsStore(db),
        extra={"database": db, "data_dir": root},
    )
