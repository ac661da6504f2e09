"""DynamoDB adapter of streamed chunks (table ``streams``, PK ``job_id``, SK ``sk``, TTL
``expires_at``).

``sk`` = ``<attempt:05d>#<seq:09d>``, so a Query in key order is the ``(attempt, seq)``
order and "after a position" is ``sk > :after``.

Timeline of one append (one ``TransactWriteItems``)::

    ConditionCheck  jobs[id]: status = RUNNING AND lease_token = :t   (the fencing token)
    Put             streams[job_id, sk] for each chunk                (no condition: a retry
                                                                       rewrites the same item)

A lost condition cancels the whole transaction: nothing is stored and the answer is False.
"""

from __future__ import annotations

import json
from typing import Any

from control_plane.storage.aws import conditional_write, translate_errors
from control_plane.storage.dynamo_items import (
    num_attr,
    read_num,
    read_str,
    str_attr,
)
from control_plane.storage.protocols_streams import ChunkRecord, Position

__all__ = ["DynamoStreamStore", "chunk_sk"]


def chunk_sk(attempt: int, seq: int) -> str:
    return f"{attempt:05d}#{seq:09d}"


class DynamoStreamStore:
    """``StreamStore`` on the ``streams`` table; ``jobs_table`` fences appends."""

    def __init__(self, dynamodb: Any, table: str, jobs_table: str) -> None:
        self._db = dynamodb
        self._table = table
        self._jobs = jobs_table

    def append_chunks(
        self,
        job_id: str,
        lease_token: str,
        attempt: int,
        chunks: list[tuple[int, list[dict[str, Any]]]],
        now: float,
        expires_at: float,
    ) -> bool:
        items: list[dict[str, Any]] = [
            {
                "ConditionCheck": {
                    "TableName": self._jobs,
                    "Key": {"id": str_attr(job_id)},
                    "ConditionExpression": "#st = :running AND lease_token = :t",
                    "ExpressionAttributeNames": {"#st": "status"},
                    "ExpressionAttributeValues": {
                        ":running": str_attr("RUNNING"),
                        ":t": str_attr(lease_token),
                    },
                }
            }
        ]
        for seq, outputs in chunks:
            item = {
                "job_id": str_attr(job_id),
                "sk": str_attr(chunk_sk(attempt, seq)),
                "outputs": str_attr(json.dumps(outputs, separators=(",", ":"))),
                "created_at": num_attr(now),
                "expires_at": num_attr(int(expires_at)),
            }
            items.append({"Put": {"TableName": self._table, "Item": item}})
        done = conditional_write(
            "append chunks", self._db.transact_write_items, TransactItems=items
        )
        return done is not None

    def read_chunks(self, job_id: str, after: Position | None, limit: int) -> list[ChunkRecord]:
        cond = "job_id = :j"
        values: dict[str, Any] = {":j": str_attr(job_id)}
        if after is not None:
            cond += " AND sk > :after"
            values[":after"] = str_attr(chunk_sk(*after))
        out: list[ChunkRecord] = []
        start: dict[str, Any] | None = None
        with translate_errors("read chunks"):
            while len(out) < limit:
                kwargs: dict[str, Any] = {
                    "TableName": self._table,
                    "KeyConditionExpression": cond,
                    "ExpressionAttributeValues": values,
                    "ConsistentRead": True,
                    "Limit": limit - len(out),
                }
                if start is not None:
                    kwargs["ExclusiveStartKey"] = start
                resp = self._db.query(**kwargs)
                for it in resp.get("Items", []):
                    attempt, seq = str(read_str(it, "sk")).split("#")
                    out.append(
                        ChunkRecord(
                            job_id,
                            int(attempt),
                            int(seq),
                            json.loads(str(read_str(it, "outputs"))),
                            float(read_num(it, "created_at") or 0.0),
                        )
                    )
                start = resp.get("LastEvaluatedKey")
                if not start:
                    break
        return out

    def ping(self) -> None:
        with translate_errors("ping chunks"):
            self._db.describe_table(TableName=self._table)
