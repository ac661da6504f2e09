"""The embedded store's data directory, in process: permissions, the one-process lock, schema
versions and the backup command.

The same properties on real ``python -m control_plane serve`` processes (a second server,
the ports it listens on, ``--ephemeral``, exit codes) are in
tests/reliability/test_embedded_crash.py.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.__main__ import main
from control_plane.settings import Settings
from control_plane.storage.embedded_store import DB_FILE, DataDirInUse, open_embedded_store
from control_plane.storage.protocols import JobRecord
from control_plane.storage.sqlite import schema
from control_plane.storage.sqlite.db import Database
from control_plane.storage.stores import Stores

JWT = "test-signing-key-0123456789abcdef0123456789"


def settings(data_dir: Path) -> Settings:
    return Settings(embedded=True, data_dir=data_dir, jwt_secret=JWT)  # type: ignore[arg-type]


def record(i: int) -> JobRecord:
    return JobRecord(
        id=f"job_unit{i:06d}",
        tenant="default",
        model="add_sub",
        model_version="1",
        pinned=False,
        status="QUEUED",
        priority=0,
        created_at=time.time(),
        timeout_s=60,
        ttl_s=3600,
        max_attempts=3,
        region=None,
        request={"inputs": [], "tags": {}},
    )


@pytest.fixture
def umask_0() -> Iterator[None]:
    """The loosest umask: what the store creates is private because it says so."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Stores]:
    st = open_embedded_store(settings(tmp_path / "data"))
    try:
        yield st
    finally:
        st.close()


def modes(root: Path) -> dict[str, int]:
    """Relative path -> permission bits of ``root`` and everything under it."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath, name)
            out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- permissions


@pytest.mark.usefixtures("umask_0")
def test_data_dir_is_0700_and_every_file_0600_whatever_the_umask(tmp_path: Path) -> None:
    root = tmp_path / "data"
    st = open_embedded_store(settings(root))
    try:
        st.jobs.jobs.create_job(record(1))  # a write: the -wal and -shm files exist now
        blobs = st.blobs
        blobs.put_json("results/job_unit000001/outputs.json", [{"name": "OUTPUT0"}])
        blobs.put_bytes("models/add_sub/1/config.pbtxt", b'name: "add_sub"\n')  # type: ignore[attr-defined]
        upload = blobs.create_multipart("models/add_sub/1/1/model.py")
        seen = modes(root)
    finally:
        st.close()
    for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", "lock", "blob-signing.key"):
        assert name in seen, (name, sorted(seen))
    assert f"blobs/.uploads/{upload}/key" in seen
    assert "blobs/objects/models/add_sub/1/config.pbtxt" in seen
    for rel, mode in seen.items():
        path = root / rel
        expected = 0o700 if path.is_dir() else 0o600
        assert mode == expected, f"{rel}: {oct(mode)} != {oct(expected)}"


def test_an_existing_loose_data_dir_is_made_private(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)  # noqa: S103 - the loose directory under test
    st = open_embedded_store(settings(root))
    st.close()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


# --------------------------------------------------------------------------- one process


def test_a_second_open_of_the_same_dir_is_refused_until_the_first_closes(
    tmp_path: Path, store: Stores
) -> None:
    root = tmp_path / "data"
    assert (root / "lock").read_text().strip() == f"pid {os.getpid()}"
    with pytest.raises(DataDirInUse) as info:
        open_embedded_store(settings(root))
    message = str(info.value)
    assert str(root) in message and f"pid {os.getpid()}" in message
    assert "one control plane per data directory" in message
    # the refused open touched nothing: the first store still works
    store.jobs.jobs.create_job(record(2))
    assert store.jobs.jobs.get_job("job_unit000002") is not None
    store.close()
    again = open_embedded_store(settings(root))  # the lock went with the first store
    try:
        assert again.jobs.jobs.get_job("job_unit000002") is not None
    finally:
        again.close()


# --------------------------------------------------------------------------- schema


def test_a_new_file_gets_the_current_schema_version(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db")
    try:
        assert schema.stored_version(db) == 0
        assert schema.migrate(db) == schema.SCHEMA_VERSION
        assert schema.stored_version(db) == schema.SCHEMA_VERSION
        assert schema.migrate(db) == schema.SCHEMA_VERSION  # idempotent
        rows = db.read().execute("SELECT version FROM schema_version").fetchall()
        assert [r[0] for r in rows] == list(range(1, schema.SCHEMA_VERSION + 1))
    finally:
        db.close()


def test_an_older_file_is_migrated_step_by_step(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db")
    try:
        schema.migrate(db)
        newer = dict(schema.MIGRATIONS)
        top = schema.SCHEMA_VERSION
        newer[top + 1] = ["CREATE TABLE probe_a (x INTEGER)"]
        newer[top + 2] = ["INSERT INTO probe_a (x) VALUES (42)"]
        assert schema.migrate(db, newer) == top + 2
        assert db.read().execute("SELECT x FROM probe_a").fetchall() == [(42,)]
        assert schema.stored_version(db) == top + 2
    finally:
        db.close()


def test_a_failed_migration_step_leaves_the_previous_version(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db")
    try:
        schema.migrate(db)
        top = schema.SCHEMA_VERSION
        broken = {**schema.MIGRATIONS, top + 1: ["CREATE TABLE probe_b (x)", "NOT SQL"]}
        with pytest.raises(Exception, match="schema migration"):
            schema.migrate(db, broken)
        assert schema.stored_version(db) == top
        tables = {r[0] for r in db.read().execute("SELECT name FROM sqlite_master")}
        assert "probe_b" not in tables  # the step's transaction rolled back as a whole
    finally:
        db.close()


def newer_file(root: Path) -> Path:
    """A data directory whose database says a newer gpufleet wrote it (version + 1)."""
    st = open_embedded_store(settings(root))
    st.jobs.jobs.create_job(record(7))
    st.close()
    path = root / DB_FILE
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO schema_version (version) VALUES (?)", (schema.SCHEMA_VERSION + 1,)
        )
    conn.close()
    return path


def test_a_newer_file_is_refused_untouched_and_the_dir_left_unlocked(tmp_path: Path) -> None:
    root = tmp_path / "data"
    path = newer_file(root)
    before = (file_digest(path), sorted(p.name for p in root.iterdir()))
    with pytest.raises(schema.SchemaTooNew) as info:
        open_embedded_store(settings(root))
    message = str(info.value)
    assert f"schema version {schema.SCHEMA_VERSION + 1}" in message
    assert f"only up to {schema.SCHEMA_VERSION}" in message and "upgrade gpufleet" in message
    assert (file_digest(path), sorted(p.name for p in root.iterdir())) == before
    # refused, not held: the next try gets the same answer (not DataDirInUse)
    with pytest.raises(schema.SchemaTooNew):
        open_embedded_store(settings(root))


def test_serve_on_a_newer_file_exits_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    path = newer_file(root)
    digest = file_digest(path)
    rc = main(["serve", "--embedded", "--data-dir", str(root), "--port", "0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "upgrade gpufleet" in err, err
    assert file_digest(path) == digest


# --------------------------------------------------------------------------- backup


def test_backup_copies_the_live_database_0600(
    tmp_path: Path, store: Stores, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(20):
        store.jobs.jobs.create_job(record(i))
    dest = tmp_path / "backup" / "copy.db"
    dest.parent.mkdir()
    rc = main(["backup", str(dest), "--data-dir", str(tmp_path / "data")])
    assert rc == 0, capsys.readouterr().err
    assert "backed up" in capsys.readouterr().out
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    conn = sqlite3.connect(f"file:{dest}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (20,)
        version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        assert version == (schema.SCHEMA_VERSION,)
    finally:
        conn.close()
    store.jobs.jobs.create_job(record(99))  # the server's store is still writable
    # a second backup to the same file is refused (never overwrites)
    assert main(["backup", str(dest), "--data-dir", str(tmp_path / "data")]) == 2
    assert "exists" in capsys.readouterr().err


def test_backup_of_a_missing_store_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["backup", str(tmp_path / "copy.db"), "--data-dir", str(tmp_path / "none")])
    assert rc == 2
    assert "no embedded store" in capsys.readouterr().err
    assert not (tmp_path / "copy.db").exists()
    assert not (tmp_path / "none").exists()


def test_request_cache_hands_back_the_decoded_request_only_for_the_same_text() -> None:
    from control_plane.storage.sqlite.jobs import RequestCache

    cache = RequestCache(most=2, most_bytes=64 * 1024)
    first = cache.decode("job_a", '{"inputs":[1]}')
    assert first == {"inputs": [1]}
    assert cache.decode("job_a", '{"inputs":[1]}') is first  # the same text: no decode
    assert cache.text_length("job_a", first) == len('{"inputs":[1]}')
    assert cache.text_length("job_a", {"inputs": [1]}) is None  # another object: unknown
    other = cache.decode("job_a", '{"inputs":[2]}')  # another text: decoded, replaces
    assert other == {"inputs": [2]} and cache.decode("job_a", '{"inputs":[2]}') is other
    cache.decode("job_b", "{}")
    cache.decode("job_c", "{}")  # over ``most``: the oldest goes
    assert cache.text_length("job_a", other) is None
    big = "[" + ",".join(["1"] * 600) + "]"  # over most_bytes/64: decoded, never kept
    assert cache.decode("job_d", big) == [1] * 600
    assert cache.text_length("job_d", cache.decode("job_d", big)) is None
