"""Local blob store: the bucket as files under one directory, for the embedded control plane.

``LocalBlobStore`` implements ``BlobStore`` with the behaviour of ``S3BlobStore``; its
presigned URLs point at the control plane itself, whose ``/v1/blobs/{key}`` routes
(``control_plane.api.routes_blobs``) check the signature and call ``authorize``,
``open_blob`` and ``open_writer`` here. Nothing in this module knows HTTP.

Layout (every directory 0700, every file 0600)::

    <root>/objects/<key>                   one file per object; key segments are directories
    <root>/objects/<dir>/.gf-tmp-<hex>     a write in progress, next to its target
    <root>/.uploads/<upload_id>/key        the key a multipart upload belongs to
    <root>/.uploads/<upload_id>/<n>.part   part n (1..10000)

One write, start to end: a temp file is created in the target's directory (O_EXCL, 0600),
the bytes stream into it (counted against ``max_object_bytes``, hashed as they come),
the checksums the client sent are compared, the file is fsynced, ``os.replace``d over the
target and the directory fsynced. Readers see the old object or the new one, never a mix;
concurrent PUTs of one key each write their own temp file and the last rename wins; a
refused or interrupted PUT removes its temp file and leaves the old object as it was.

Presigned URLs::

    {base_url}/v1/blobs/{key}?op=get|put&exp=<unix s>&sig=<hex>
    {base_url}/v1/blobs/{key}?op=part&upload_id=<id>&part=<n>&exp=<unix s>&sig=<hex>

``sig`` = hex HMAC-SHA256(signing_key, "gpufleet-blob-v1\\n" METHOD "\\n" op "\\n" key "\\n"
exp "\\n" upload_id "\\n" part), compared in constant time; METHOD is the op's (GET for
``get``, also accepted for HEAD; PUT for ``put`` and ``part``). A URL used after ``exp``,
with another method, op, key, upload or part, or with a changed signature is ``Forbidden``.

As on S3: a PUT may carry ``x-amz-checksum-sha256`` (base64) and/or ``Content-MD5``; a
body that does not match is ``BadDigest`` and nothing is stored. A part's ETag is the quoted
hex md5 of its bytes, and ``complete_multipart`` refuses (``NotFound``, like S3's
``InvalidPart`` / ``NoSuchUpload``) an unknown upload, a missing part or an ETag that does
not match. Differences from S3, on purpose: keys must be safe paths (no empty, ``.`` or
``..`` segment, no leading ``/``, no backslash or control character, no ``.gf-`` segment,
at most 1024 bytes; else ``InvalidRequest``), a key cannot be both an object and the
"directory" of others (``a/b`` and ``a/b/c``: ``Conflict``), parts have no 5 MiB minimum,
and objects keep no content type. ``sweep`` plays the bucket's lifecycle rules.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast
from urllib.parse import quote, urlencode

from control_plane.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from control_plane.storage.definitions import BUCKET_LIFECYCLE_DAYS

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["BadDigest", "BlobWriter", "Grant", "LocalBlobStore", "OpenedBlob"]

ROUTE_PREFIX = "/v1/blobs/"
REGION_PREFIX = "regions/"  # copies of objects for region "buckets" (copy_to)
MAX_KEY_BYTES = 1024
MAX_PARTS = 10_000
DEFAULT_MAX_OBJECT_BYTES = 5 * 1024**3  # S3's largest single PUT (object or part)
UPLOAD_MAX_AGE_S = 7 * 86_400  # unfinished multipart uploads are dropped after this
TEMP_MAX_AGE_S = 86_400  # temp files of writes that never finished (a crash)
_TMP = ".gf-tmp-"
_RESERVED = ".gf-"
_CONTROL = re.compile("[\x00-\x1f\x7f]")  # control characters, refused in keys
_CHUNK = 1024 * 1024
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_SIG = re.compile(r"^[0-9a-f]{64}$")
_METHOD_OF_OP = {"get": "GET", "put": "PUT", "part": "PUT"}


class BadDigest(InvalidRequest):
    """The body does not match the checksum the client sent with it (S3's ``BadDigest``)."""


@dataclass(frozen=True)
class Grant:
    """What a verified presigned URL allows: one op on one key (and one part)."""

    op: str
    key: str
    upload_id: str = ""
    part: int = 0


@dataclass
class OpenedBlob:
    """An object opened for reading: a consistent snapshot even if it is replaced meanwhile."""

    file: BinaryIO
    size: int
    mtime: float

    def read_at(self, offset: int, n: int) -> bytes:
        return os.pread(self.file.fileno(), n, offset)

    def close(self) -> None:
        self.file.close()


def _check_key(key: str, what: str = "key") -> list[str]:
    """The key's path segments; InvalidRequest unless it maps to a path under the root."""
    problem = None
    if not isinstance(key, str) or not key:
        problem = "empty"
    elif len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        problem = f"longer than {MAX_KEY_BYTES} bytes"
    elif key.startswith("/"):
        problem = "absolute"
    elif "\\" in key:
        problem = "contains a backslash"
    elif _CONTROL.search(key):
        problem = "contains a control character"
    else:
        for seg in key.split("/"):
            if seg in ("", ".", ".."):
                problem = "has an empty, '.' or '..' segment"
            elif seg.startswith(_RESERVED):
                problem = f"has a segment starting with {_RESERVED!r} (reserved)"
            elif len(seg.encode("utf-8", "surrogatepass")) > 255:
                problem = "has a segment longer than 255 bytes"
            if problem:
                break
    if problem:
        raise InvalidRequest(f"invalid object {what} {key!r}: {problem}", field=what)
    return key.split("/")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir(path: Path) -> None:
    """Create one directory 0700 (whatever the umask); FileExistsError when something is there."""
    os.mkdir(path, 0o700)
    os.chmod(path, 0o700)


def _etag(tag: str) -> str:
    return tag.strip().strip('"').lower()


def _decode_b64(value: str | None, size: int, header: str) -> bytes | None:
    if value is None:
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{header} is not base64", field=header) from exc
    if len(raw) != size:
        raise InvalidRequest(f"{header} has the wrong length", field=header)
    return raw


def _disk(method: F) -> F:
    """Disk failures (full, read-only, I/O error) escape as ``Unavailable`` (503), as the
    BlobStore contract says, never as a raw ``OSError``. Missing objects are handled inside."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except OSError as exc:
            raise Unavailable(f"blob store: {method.__name__}: {exc}") from exc

    return cast(F, wrapper)


class BlobWriter:
    """One PUT body on its way to ``target``: ``write`` chunks, then ``commit`` or ``abort``.

    Blocking (call it from a thread). ``commit`` returns the ETag (quoted hex md5)."""

    def __init__(
        self,
        target: Path,
        limit: int,
        *,
        sha256: bytes | None = None,
        md5: bytes | None = None,
        make_temp: Callable[[], tuple[Path, int]],
    ) -> None:
        self._target = target
        self._limit = limit
        self._want_sha256 = sha256
        self._want_md5 = md5
        self._tmp, fd = make_temp()
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5()  # noqa: S324 - S3's ETag, not a security check
        self.size = 0
        self._done = False

    @_disk
    def write(self, data: bytes) -> None:
        if self._done:
            raise RuntimeError("write after commit/abort")
        if self.size + len(data) > self._limit:
            self.abort()
            raise PayloadTooLarge(f"object over {self._limit} bytes")
        self._file.write(data)
        self._sha256.update(data)
        self._md5.update(data)
        self.size += len(data)

    @_disk
    def commit(self) -> str:
        """Check the checksums, make the bytes durable and visible at ``target``; the ETag."""
        if self._done:
            raise RuntimeError("commit after commit/abort")
        md5 = self._md5.digest()
        if self._want_sha256 is not None and self._sha256.digest() != self._want_sha256:
            self.abort()
            raise BadDigest("the body does not match x-amz-checksum-sha256")
        if self._want_md5 is not None and md5 != self._want_md5:
            self.abort()
            raise BadDigest("the body does not match Content-MD5")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self._target)
        except IsADirectoryError as exc:
            self.abort()
            raise Conflict(f"{self._target.name!r} is a prefix of other objects") from exc
        except BaseException:
            self.abort()
            raise
        self._done = True
        _fsync_dir(self._target.parent)
        return f'"{md5.hex()}"'

    def abort(self) -> None:
        """Drop the temp file (idempotent); the target is left as it was."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)


class LocalBlobStore:
    """``BlobStore`` on a local directory; URLs served by ``routes_blobs``."""

    def __init__(
        self,
        root: Path,
        base_url: str,
        signing_key: bytes,
        *,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(signing_key) < 16:
            raise ValueError("signing_key must be at least 16 bytes")
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._uploads = self.root / ".uploads"
        self._key = bytes(signing_key)
        self.max_object_bytes = max_object_bytes
        self._clock = clock
        self._base_url = ""
        self.base_url = base_url
        for d in (self.root, self._objects, self._uploads):
            with contextlib.suppress(FileExistsError):
                _mkdir(d)
            if not d.is_dir():
                raise NotADirectoryError(str(d))

    # ------------------------------------------------------------------ URLs
    @property
    def base_url(self) -> str:
        """The control plane's public URL; settable once a ``--port 0`` server knows it."""
        return self._base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        value = value.rstrip("/")
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, not {value!r}")
        self._base_url = value

    def _sign(self, method: str, op: str, key: str, exp: int, upload_id: str, part: int) -> str:
        msg = "\n".join(
            ["gpufleet-blob-v1", method, op, key, str(exp), upload_id, str(part) if part else ""]
        )
        # (``hmac.digest``: one C call, the same MAC as ``hmac.new(…).hexdigest()``)
        return hmac.digest(self._key, msg.encode("utf-8", "surrogatepass"), "sha256").hex()

    def _url(self, op: str, key: str, ttl_s: int, upload_id: str = "", part: int = 0) -> str:
        _check_key(key)
        if not self._base_url:
            raise Unavailable("the blob store's base URL is not known yet (server not started)")
        exp = int(self._clock()) + int(ttl_s)
        sig = self._sign(_METHOD_OF_OP[op], op, key, exp, upload_id, part)
        path = quote(key, safe="/-._~")
        if op == "part":
            query = urlencode(
                {"op": op, "upload_id": upload_id, "part": part, "exp": exp, "sig": sig}
            )
        else:  # what urlencode gives for these (a word, digits, hex), without its cost
            query = f"op={op}&exp={exp}&sig={sig}"
        return f"{self._base_url}{ROUTE_PREFIX}{path}?{query}"

    def presign_put(self, key: str, ttl_s: int) -> str:
        """A URL that PUTs one object (no extra headers needed)."""
        return self._url("put", key, ttl_s)

    def presign_get(self, key: str, ttl_s: int) -> str:
        """A URL that GETs one object (``Range`` supported)."""
        return self._url("get", key, ttl_s)

    def presign_upload_part(self, key: str, upload_id: str, number: int, ttl_s: int) -> str:
        if not 1 <= number <= MAX_PARTS:
            raise InvalidRequest(f"part number {number} not in 1..{MAX_PARTS}", field="part")
        return self._url("part", key, ttl_s, upload_id, number)

    def authorize(self, method: str, key: str, params: Mapping[str, str]) -> Grant:
        """What the presigned URL ``key?params`` lets ``method`` do; Forbidden otherwise.

        InvalidRequest when the key itself is not a valid one (checked first)."""
        _check_key(key)
        op = params.get("op", "")
        want = _METHOD_OF_OP.get(op)
        if want is None:
            raise Forbidden("not a presigned blob URL (op must be get, put or part)")
        if method != want and not (method == "HEAD" and want == "GET"):
            raise Forbidden(f"this URL is for {want}, not {method}")
        exp_s, sig = params.get("exp", ""), params.get("sig", "")
        upload_id, part_s = "", ""
        if op == "part":
            upload_id, part_s = params.get("upload_id", ""), params.get("part", "")
            if not (_UPLOAD_ID.fullmatch(upload_id) and part_s.isdigit()):
                raise Forbidden("upload_id and part are required on a part URL")
        if not (exp_s.isdigit() and _SIG.fullmatch(sig)):
            raise Forbidden("exp and sig are required on a presigned URL")
        exp, part = int(exp_s), int(part_s) if part_s else 0
        expected = self._sign(want, op, key, exp, upload_id, part)
        if not hmac.compare_digest(expected, sig):
            raise Forbidden("the URL's signature does not match")
        if self._clock() > exp:
            raise Forbidden("the presigned URL has expired")
        return Grant(op=op, key=key, upload_id=upload_id, part=part)

    # ------------------------------------------------------------------ paths
    def _path(self, key: str) -> Path:
        path = self._objects.joinpath(*_check_key(key))
        # belt and braces: the checked segments cannot leave the root
        if os.path.commonpath([self._objects, path]) != str(self._objects):
            raise InvalidRequest(f"invalid object key {key!r}", field="key")
        return path

    def _ensure_parent(self, path: Path) -> None:
        """Create the directories between the objects root and ``path`` (0700 each)."""
        rel = path.parent.relative_to(self._objects)
        current = self._objects
        for seg in rel.parts:
            current = current / seg
            try:
                _mkdir(current)
            except FileExistsError:
                if not current.is_dir():
                    raise Conflict(
                        f"{str(rel)!r}: an object exists where a prefix is needed"
                    ) from None
            except NotADirectoryError:
                raise Conflict(f"{str(rel)!r}: an object exists where a prefix is needed") from None

    def _temp_in(self, directory: Path, ensure: Path | None = None) -> tuple[Path, int]:
        """A fresh 0600 temp file in ``directory`` (re-creating the directories of ``ensure``
        when a concurrent ``delete_prefix`` pruned them)."""
        for attempt in range(3):
            if ensure is not None:
                self._ensure_parent(ensure)
            tmp = directory / f"{_TMP}{secrets.token_hex(8)}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            try:
                return tmp, os.open(tmp, flags, 0o600)
            except FileNotFoundError:
                if ensure is None or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _upload_dir(self, key: str, upload_id: str) -> Path:
        """The directory of an unfinished multipart upload of ``key``; NotFound otherwise."""
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise NotFound(f"no multipart upload {upload_id!r} of {key!r}")
        d = self._uploads / upload_id
        try:
            owner = (d / "key").read_text("utf-8")
        except (FileNotFoundError, NotADirectoryError):
            owner = None
        if owner != key:
            raise NotFound(f"no multipart upload {upload_id!r} of {key!r}")
        return d

    # ------------------------------------------------------------------ serving
    @_disk
    def open_writer(
        self, grant: Grant, *, sha256_b64: str | None = None, md5_b64: str | None = None
    ) -> BlobWriter:
        """A writer for the object (op ``put``) or part (op ``part``) of ``grant``.

        ``sha256_b64`` / ``md5_b64``: the ``x-amz-checksum-sha256`` / ``Content-MD5`` the
        client sent, checked at commit."""
        sha256 = _decode_b64(sha256_b64, 32, "x-amz-checksum-sha256")
        md5 = _decode_b64(md5_b64, 16, "Content-MD5")
        if grant.op == "put":
            target = self._path(grant.key)
            directory, ensure = target.parent, target
        elif grant.op == "part":
            directory = self._upload_dir(grant.key, grant.upload_id)
            target, ensure = directory / f"{grant.part:05d}.part", None
        else:
            raise Forbidden(f"op {grant.op!r} does not write")

        def make_temp() -> tuple[Path, int]:
            try:
                return self._temp_in(directory, ensure=ensure)
            except FileNotFoundError as exc:  # a part: the upload completed or went meanwhile
                raise NotFound(f"no multipart upload {grant.upload_id!r} of {grant.key!r}") from exc

        return BlobWriter(
            target, self.max_object_bytes, sha256=sha256, md5=md5, make_temp=make_temp
        )

    @_disk
    def open_blob(self, key: str) -> OpenedBlob:
        """The object opened for reading; NotFound when it does not exist."""
        path = self._path(key)
        try:
            f = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(f"object {key!r} not found") from exc
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            f.close()
            raise NotFound(f"object {key!r} not found")
        return OpenedBlob(file=f, size=st.st_size, mtime=st.st_mtime)

    # ------------------------------------------------------------------ BlobStore
    @staticmethod
    def region_key(location: str, key: str) -> str:
        """Where the copy of ``key`` for ``location`` lives: the local store has one root, so
        a region's "bucket" is the prefix ``regions/<location>/``."""
        _check_key(location, "location")
        return f"{REGION_PREFIX}{location}/{key}"

    @_disk
    def copy_to(self, key: str, location: str) -> None:
        """Copy object ``key`` to ``regions/<location>/<key>`` (atomically, like a put);
        NotFound when ``key`` is missing."""
        blob = self.open_blob(key)
        try:
            writer = self.open_writer(Grant(op="put", key=self.region_key(location, key)))
            try:
                offset = 0
                while chunk := blob.read_at(offset, _CHUNK):
                    writer.write(chunk)
                    offset += len(chunk)
            except BaseException:
                writer.abort()
                raise
            writer.commit()
        finally:
            blob.close()

    def presign_get_at(self, location: str, key: str, ttl_s: int) -> str:
        """A URL that GETs the copy of ``key`` for ``location``."""
        return self.presign_get(self.region_key(location, key), ttl_s)

    def delete_prefix_at(self, location: str, prefix: str) -> None:
        """Delete the copies under ``prefix`` for ``location``."""
        self.delete_prefix(self.region_key(location, prefix))

    @_disk
    def head(self, key: str) -> int | None:
        """The object's size, or None when it does not exist."""
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    @_disk
    def sha256_of(self, key: str) -> str | None:
        """sha256 (hex) of the object's bytes, streamed; None when it does not exist."""
        try:
            blob = self.open_blob(key)
        except NotFound:
            return None
        digest = hashlib.sha256()
        with blob.file as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest()

    @_disk
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store a small object atomically."""
        writer = self.open_writer(Grant(op="put", key=key))
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        writer.commit()

    def put_json(self, key: str, doc: Any) -> None:
        self.put_bytes(key, json.dumps(doc, separators=(",", ":")).encode())

    @_disk
    def get_json(self, key: str) -> Any:
        """The JSON document at ``key``; NotFound when missing."""
        blob = self.open_blob(key)
        with blob.file as f:
            return json.loads(f.read())

    @_disk
    def get_bytes(self, key: str, limit: int = 16 * 1024 * 1024) -> bytes:
        """A small object's bytes (at most ``limit``); NotFound when missing."""
        blob = self.open_blob(key)
        with blob.file as f:
            return f.read(limit)

    @_disk
    def create_multipart(self, key: str) -> str:
        """Start a multipart upload; its id."""
        _check_key(key)
        upload_id = secrets.token_hex(16)
        d = self._uploads / upload_id
        _mkdir(d)
        tmp, fd = self._temp_in(d)
        with os.fdopen(fd, "wb") as f:
            f.write(key.encode("utf-8", "surrogatepass"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / "key")
        _fsync_dir(d)
        return upload_id

    @_disk
    def complete_multipart(self, key: str, upload_id: str, etags: list[str]) -> None:
        """Assemble the parts (ETags in part order). NotFound when the upload is unknown, a
        part is missing or an ETag does not match its part; the upload then stays open."""
        d = self._upload_dir(key, upload_id)
        if not etags:
            raise NotFound(f"multipart upload of {key!r}: no parts listed")
        target = self._path(key)
        tmp, fd = self._temp_in(target.parent, ensure=target)
        try:
            with os.fdopen(fd, "wb") as out:
                for number, tag in enumerate(etags, start=1):
                    md5 = hashlib.md5()  # noqa: S324 - S3's ETag, not a security check
                    try:
                        part = open(d / f"{number:05d}.part", "rb")  # noqa: SIM115
                    except FileNotFoundError as exc:
                        raise NotFound(f"multipart upload of {key!r}: no part {number}") from exc
                    with part:
                        while chunk := part.read(_CHUNK):
                            md5.update(chunk)
                            out.write(chunk)
                    if md5.hexdigest() != _etag(tag):
                        raise NotFound(f"multipart upload of {key!r}: part {number} ETag differs")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except IsADirectoryError as exc:
            os.unlink(tmp)
            raise Conflict(f"{key!r} is a prefix of other objects") from exc
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(target.parent)
        shutil.rmtree(d, ignore_errors=True)

    @_disk
    def delete_prefix(self, prefix: str) -> None:
        """Delete every object whose key starts with ``prefix`` ("" = all of them)."""
        dir_part, _, name_prefix = prefix.rpartition("/")
        base = self._objects.joinpath(*_check_key(dir_part, "prefix")) if dir_part else None
        if any(ord(c) < 32 or c == "\\" for c in name_prefix):
            raise InvalidRequest(f"invalid prefix {prefix!r}", field="prefix")
        base = base or self._objects
        try:
            entries = list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith(_TMP) or not entry.name.startswith(name_prefix):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        self._prune(base)

    def _prune(self, directory: Path) -> None:
        """Remove ``directory`` and its parents while empty (never the objects root)."""
        while directory != self._objects and self._objects in directory.parents:
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = directory.parent

    @_disk
    def ping(self) -> None:
        """Raises Unavailable when the store's directory cannot be used."""
        for d in (self._objects, self._uploads):
            if not (d.is_dir() and os.access(d, os.R_OK | os.W_OK | os.X_OK)):
                raise Unavailable(f"blob store directory {d} is not usable")

    # ------------------------------------------------------------------ lifecycle
    def sweep(
        self, now: float | None = None, lifecycle_days: Mapping[str, int] = BUCKET_LIFECYCLE_DAYS
    ) -> int:
        """Play the bucket's lifecycle rules: objects under each prefix older than its days,
        multipart uploads older than 7 days and temp files older than a day go. Returns
        how many files were removed. Call it now and then (the sweep loop)."""
        now = self._clock() if now is None else now
        removed = 0
        for prefix, days in lifecycle_days.items():
            top = self._objects.joinpath(*_check_key(prefix.rstrip("/"), "prefix"))
            removed += self._remove_older(top, now - days * 86_400, only_temp=False)
        removed += self._remove_older(self._objects, now - TEMP_MAX_AGE_S, only_temp=True)
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._uploads):
                if entry.stat(follow_symlinks=False).st_mtime < now - UPLOAD_MAX_AGE_S:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
        return removed

    def _remove_older(self, top: Path, cutoff: float, *, only_temp: bool) -> int:
        removed = 0
        for dirpath, _dirs, files in os.walk(top, topdown=False):
            for name in files:
                if only_temp != name.startswith(_TMP):
                    continue
                path = os.path.join(dirpath, name)
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
            self._prune(Path(dirpath))
        return removed
