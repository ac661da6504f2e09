"""Blob routes: the presigned URLs of the local blob store (``LocalBlobStore``), served by the
control plane itself when it runs without S3.

``GET /v1/blobs/{key}?op=get&exp=&sig=`` streams an object (``Range: bytes=a-b``, ``a-``
or ``-n`` → 206 with ``Content-Range``; 416 when unsatisfiable; several ranges or a
malformed header → the whole object, 200). ``PUT /v1/blobs/{key}?op=put|part&…`` streams
the body to a temp file (never whole in memory) and answers 200 with the ETag.

Authenticated by the URL's signature alone, like a bucket's presigned URLs: no bearer token
is needed and a stray ``Authorization`` header is ignored. Statuses follow S3 in the api-v1
error shape: 403 ``forbidden`` (expired, tampered, another method/op/key), 404
``not_found``, 413 ``payload_too_large`` (nothing stored), 400 ``bad_digest`` (the body does
not match ``x-amz-checksum-sha256`` / ``Content-MD5``; nothing stored), 416
``range_not_satisfiable``, 422 ``invalid_request`` (a key that is not a safe path).

The store is ``request.app.state.blobs``.
"""

from __future__ import annotations

import email.utils

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from control_plane.api.errors import STATUS_BY_CODE, error_response
from control_plane.api.spec import DocumentedRoute, route
from control_plane.errors import GpufleetError, PayloadTooLarge, Unavailable
from control_plane.storage.local_blobs import BadDigest, BlobWriter, LocalBlobStore, OpenedBlob

__all__ = ["ROUTES", "parse_range"]

CHUNK = 1024 * 1024
_QUERY = {
    "op": "get, put or part (signed)",
    "exp": "Expiry, unix seconds (signed)",
    "sig": "hex HMAC-SHA256 over method, op, key, exp, upload_id, part",
    "upload_id": "Multipart upload id (op=part)",
    "part": "Part number, 1..10000 (op=part)",
}


class Unsatisfiable(Exception):
    """The Range header asks for bytes the object does not have."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) of a single ``bytes=`` range; None to send it all.

    Raises Unsatisfiable when the range starts past the object's end."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units or several ranges: ignored (RFC 9110 allows it)
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or (not first and last.isdigit())):
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - n), size
    start = int(first)
    if last and not last.isdigit():
        return None
    if last and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable
    end = min(int(last) + 1, size) if last else size
    return start, end


def _store(request: Request) -> LocalBlobStore:
    store = getattr(request.app.state, "blobs", None)
    if not isinstance(store, LocalBlobStore):
        raise Unavailable("this control plane serves no local blob store")
    return store


def _error(exc: GpufleetError, headers: dict[str, str] | None = None) -> Response:
    if isinstance(exc, BadDigest):
        return error_response("bad_digest", exc.message, exc.details, 400, headers)
    status = STATUS_BY_CODE.get(exc.code, 500)
    return error_response(exc.code, exc.message, exc.details, status, headers)


class BlobResponse(Response):
    """Bytes ``[start, end)`` of an opened object, read 1 MiB at a time in a thread."""

    def __init__(self, blob: OpenedBlob, span: tuple[int, int] | None, *, head_only: bool) -> None:
        self.blob = blob
        self.start, self.end = span if span is not None else (0, blob.size)
        self.head_only = head_only
        headers = {
            "content-length": str(self.end - self.start),
            "accept-ranges": "bytes",
            "last-modified": email.utils.formatdate(blob.mtime, usegmt=True),
            "cache-control": "private, no-store",
        }
        if span is not None:
            headers["content-range"] = f"bytes {self.start}-{self.end - 1}/{blob.size}"
        super().__init__(
            None,
            status_code=206 if span is not None else 200,
            headers=headers,
            media_type="application/octet-stream",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            pos = self.start
            while not self.head_only and pos < self.end:
                data = await run_in_threadpool(self.blob.read_at, pos, min(CHUNK, self.end - pos))
                if not data:  # cannot happen to a file that is only ever replaced
                    break
                pos += len(data)
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.blob.close()


async def get_blob(request: Request) -> Response:
    key = request.path_params["key"]
    try:
        store = _store(request)
        store.authorize(request.method, key, request.query_params)
        blob = await run_in_threadpool(store.open_blob, key)
    except GpufleetError as exc:
        return _error(exc)
    try:
        span = parse_range(request.headers.get("range"), blob.size)
    except Unsatisfiable:
        blob.close()
        return error_response(
            "range_not_satisfiable",
            f"the object has {blob.size} bytes",
            status=416,
            headers={"content-range": f"bytes */{blob.size}"},
        )
    return BlobResponse(blob, span, head_only=request.method == "HEAD")


async def _stream_into(request: Request, writer: BlobWriter) -> str:
    """Copy the request body into ``writer`` (1 MiB per write) and commit; the ETag."""
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) >= CHUNK:
            await run_in_threadpool(writer.write, bytes(buf))
            buf.clear()
    if buf:
        await run_in_threadpool(writer.write, bytes(buf))
    return await run_in_threadpool(writer.commit)


async def put_blob(request: Request) -> Response:
    key = request.path_params["key"]
    try:
        store = _store(request)
        grant = store.authorize(request.method, key, request.query_params)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > store.max_object_bytes:
            raise PayloadTooLarge(f"object over {store.max_object_bytes} bytes")
        writer = await run_in_threadpool(
            store.open_writer,
            grant,
            sha256_b64=request.headers.get("x-amz-checksum-sha256"),
            md5_b64=request.headers.get("content-md5"),
        )
        try:
            etag = await _stream_into(request, writer)
        except ClientDisconnect:
            writer.abort()
            return Response(status_code=400)  # nobody is there to read it
        except BaseException:
            writer.abort()  # quick (close + unlink): done even when cancelled
            raise
    except GpufleetError as exc:
        return _error(exc, {"connection": "close"} if isinstance(exc, PayloadTooLarge) else None)
    return Response(status_code=200, headers={"etag": etag})


ROUTES: list[DocumentedRoute] = [
    route(
        "GET",
        "/v1/blobs/{key:path}",
        get_blob,
        "Download an object of the local blob store by its presigned URL (Range supported)",
        None,
        security="none",
        query=_QUERY,
        headers={"Range": "bytes=a-b, bytes=a- or bytes=-n (one range)"},
        content_type="application/octet-stream",
    ),
    route(
        "PUT",
        "/v1/blobs/{key:path}",
        put_blob,
        "Upload an object or a multipart part by its presigned URL; answers its ETag",
        None,
        security="none",
        query=_QUERY,
        headers={
            "x-amz-checksum-sha256": "base64 sha256 of the body; a mismatch is 400, not stored",
            "Content-MD5": "base64 md5 of the body; a mismatch is 400, not stored",
        },
    ),
]
