"""Every tenant's jobs newest first on DynamoDB (an admin's listing): the ``by_time`` index.

A job item carries ``list_shard`` = ``all#<n>`` (``n`` = crc32 of the id mod ``LIST_SHARDS``)
next to ``created_key`` (``<created_ms>#<id>``). The KEYS_ONLY GSI ``by_time`` orders each
shard by ``created_key``. No transition changes these keys, so the index is written once per
job, spread over ``LIST_SHARDS`` partitions (a Scan, as before, comes back in hash order: a
``limit 2`` page held any two jobs).

A page merges the shards newest first. Each shard keeps a buffer of keys read from the index
(descending); the newest buffered key is taken only while every shard that may hold more has
a key buffered, so nothing newer can still be unread. Taken keys are read back with
consistent BatchGetItem and filtered by status and model; the page stops at ``limit``.

The cursor holds, per shard, the last key taken (``null``: from the newest) and whether the
shard is done. Keys read but not taken are read again by the next page (a cheap re-read, no
state). A page stops after ``MAX_REQUESTS`` reads and may then come back short, with a cursor.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any

from control_plane.errors import InvalidRequest
from control_plane.storage.aws import translate_errors
from control_plane.storage.dynamo_items import (
    read_str,
    str_attr,
)
from control_plane.storage.protocols import JobRecord

INDEX = "by_time"
LIST_SHARDS = 4
MAX_REQUESTS = 20  # index queries and item reads per page, however sparse the filters
FILTERED_READ = 100  # keys a filtered page reads from a shard at a time


def list_shard(job_id: str) -> str:
    """The ``by_time`` partition of a job."""
    return f"all#{zlib.crc32(job_id.encode()) % LIST_SHARDS}"


def _id_of(created_key: str) -> str:
    return created_key.split("#", 1)[1]


class _Shard:
    def __init__(self, n: int, after: str | None, done: bool) -> None:
        self.name = f"all#{n}"
        self.after = after  # the last key taken (the page resumes below it)
        self.done = done  # nothing below ``after``
        self.buffer: deque[str] = deque()
        self.start: dict[str, Any] | None = self._key(after) if after else None

    def _key(self, created_key: str) -> dict[str, Any]:
        return {
            "id": str_attr(_id_of(created_key)),
            "list_shard": str_attr(self.name),
            "created_key": str_attr(created_key),
        }

    @property
    def waiting(self) -> bool:
        """More keys may exist here and none is buffered: the merge must read first."""
        return not self.buffer and not self.done


def _decode(cursor: str | None) -> list[_Shard]:
    if not cursor:
        return [_Shard(n, None, False) for n in range(LIST_SHARDS)]
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        entries = raw["all"]
        if not isinstance(entries, list) or len(entries) != LIST_SHARDS:
            raise ValueError("not a listing cursor")
        shards = []
        for n, e in enumerate(entries):
            after = e["after"]
            if after is not None and (not isinstance(after, str) or "#" not in after):
                raise ValueError("not a listing cursor")
            shards.append(_Shard(n, after, bool(e["done"])))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest("cursor is not valid", field="cursor") from exc
    return shards


def _encode(shards: list[_Shard]) -> str | None:
    if all(sh.done and not sh.buffer for sh in shards):
        return None
    body = {"all": [{"after": sh.after, "done": sh.done and not sh.buffer} for sh in shards]}
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def list_every_tenant(
    db: Any,
    table: str,
    get_jobs: Callable[[list[str]], dict[str, JobRecord]],
    status: str | None,
    model: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[JobRecord], str | None]:
    """One page of every tenant's jobs, newest first (see the module docstring)."""
    shards = _decode(cursor)
    filtered = bool(status or model)
    read = max(limit, FILTERED_READ) if filtered else limit
    requests = 0
    out: list[JobRecord] = []

    def fill(sh: _Shard) -> None:
        kwargs: dict[str, Any] = {
            "TableName": table,
            "IndexName": INDEX,
            "KeyConditionExpression": "list_shard = :p",
            "ExpressionAttributeValues": {":p": str_attr(sh.name)},
            "ScanIndexForward": False,
            "Limit": read,
        }
        if sh.start:
            kwargs["ExclusiveStartKey"] = sh.start
        with translate_errors("list jobs"):
            page = db.query(**kwargs)
        sh.buffer.extend(str(read_str(it, "created_key")) for it in page.get("Items", []))
        sh.start = page.get("LastEvaluatedKey")
        if not sh.start:
            sh.done = True  # what is buffered is the rest of this shard

    while len(out) < limit and requests < MAX_REQUESTS:
        for sh in shards:
            if sh.waiting and requests < MAX_REQUESTS:
                fill(sh)
                requests += 1
        if any(sh.waiting for sh in shards):
            break  # out of reads: a short page with a cursor
        taken: list[tuple[_Shard, str]] = []
        while len(taken) < (read if filtered else limit - len(out)):
            if any(sh.waiting for sh in shards):
                break
            live = [sh for sh in shards if sh.buffer]
            if not live:
                break
            top = max(live, key=lambda sh: sh.buffer[0])
            taken.append((top, top.buffer.popleft()))
        if not taken:
            break  # every shard is done
        found = get_jobs([_id_of(k) for _, k in taken])
        requests += 1
        for i, (sh, key) in enumerate(taken):
            sh.after = key
            rec = found.get(_id_of(key))
            wanted = rec is not None and (not status or rec.status == status)
            if rec is not None and wanted and (not model or rec.model == model):
                out.append(rec)
            if len(out) >= limit:
                for other, rest in taken[i + 1 :]:
                    other.buffer.appendleft(rest)  # not taken after all: for the next page
                break
    # keys put back above belong in front of their buffers in descending order
    for sh in shards:
        sh.buffer = deque(sorted(sh.buffer, reverse=True))
    return out, _encode(shards)
