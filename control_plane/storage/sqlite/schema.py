"""Schema of the embedded store: created and migrated on open, versioned.

``MIGRATIONS[n]`` lists the statements that take a file from version ``n - 1`` to ``n``.
Version 1 is every adapter module's ``DDL``. A later change appends a new entry (never edits
an old one): files written by an older release are upgraded on open, in one transaction per
step; a file written by a newer release (a higher version than this code knows) is refused
with :class:`SchemaTooNew` so an old binary never writes a layout it does not understand.
"""

from __future__ import annotations

from control_plane.storage.sqlite import (
    auth,
    capacity,
    idempotency,
    jobs,
    keys,
    limits,
    models,
    queue,
    rollups,
    runners,
    streams,
    webhooks,
)
from control_plane.storage.sqlite.db import Database, translate

MIGRATIONS: dict[int, list[str]] = {
    1: [
        *jobs.DDL,
        *queue.DDL,
        *idempotency.DDL,
        *models.DDL,
        *auth.DDL,
        *runners.DDL,
        *webhooks.DDL,
    ],
    2: [*rollups.DDL],  # the console's per-minute rollups
    3: [*capacity.DDL],  # the capacity autoscaler (pools, decision, log)
    4: [*jobs.DDL_4],  # jobs.commits: how many times a running attempt was finished
    5: [*streams.DDL],  # streamed partial outputs of durable jobs
    6: [*keys.DDL],  # asymmetric signing keys (services/signing_keys.py)
    # tenant quotas and fair leasing: limits and load counters, the tenant of queue entries
    7: [*limits.DDL, "ALTER TABLE queue_entries ADD COLUMN tenant TEXT NOT NULL DEFAULT ''"],
    8: [*auth.MIGRATION, *runners.MIGRATION],  # join-token limits, key and secret rotation
    9: [*jobs.DDL_RUN_INFO],  # jobs.run_info (cold start, load and runner times)
    10: [*limits.DDL_REGIONS],  # region defaults of tenants and API keys (admin API)
}
SCHEMA_VERSION = max(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The file was written by a newer gpufleet (its schema version is unknown here)."""


def stored_version(db: Database) -> int:
    """The schema version recorded in the file (0 for a new, empty file)."""
    conn = db.read()
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(db: Database, migrations: dict[int, list[str]] | None = None) -> int:
    """Bring the file to the newest version; returns it. Raises ``SchemaTooNew``."""
    steps = MIGRATIONS if migrations is None else migrations
    newest = max(steps)
    with translate("schema migration"):
        current = stored_version(db)
        if current > newest:
            raise SchemaTooNew(
                f"{db.path} has schema version {current}, but this gpufleet knows only up to "
                f"{newest}: upgrade gpufleet (or restore a backup made by this version)"
            )
        for version in range(current + 1, newest + 1):
            with db.write() as conn:
                for statement in steps.get(version, []):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    return newest
