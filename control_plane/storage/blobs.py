"""S3 adapter of the bucket: presigned URLs, object sizes and hashes, JSON documents.

Hashes are computed from the bytes (streamed), never taken from the store: moto accepts a
presigned PUT whose body does not match the signed checksum and reports no checksum back.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from botocore.exceptions import ClientError

from control_plane.errors import NotFound
from control_plane.storage.aws import error_code, translate_errors

_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
_CHUNK = 1024 * 1024


class S3BlobStore:
    """``BlobStore`` on one bucket."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3 = s3
        self._bucket = bucket

    def presign_put(self, key: str, ttl_s: int) -> str:
        """A URL that PUTs one object (no extra headers needed)."""
        with translate_errors("presign put"):
            return str(
                self._s3.generate_presigned_url(
                    "put_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=ttl_s
                )
            )

    def presign_get(self, key: str, ttl_s: int) -> str:
        with translate_errors("presign get"):
            return str(
                self._s3.generate_presigned_url(
                    "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=ttl_s
                )
            )

    def copy_to(self, key: str, location: str) -> None:
        """Copy object ``key`` to the same key in bucket (or S3 access point) ``location``
        (a managed copy: multipart for large objects); NotFound when ``key`` is missing."""
        with translate_errors("copy object"):
            try:
                self._s3.copy({"Bucket": self._bucket, "Key": key}, location, key)
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    raise NotFound(f"object {key!r} not found") from exc
                raise

    def presign_get_at(self, location: str, key: str, ttl_s: int) -> str:
        """A URL that GETs ``key`` from bucket (or access point) ``location``."""
        with translate_errors("presign get"):
            return str(
                self._s3.generate_presigned_url(
                    "get_object", Params={"Bucket": location, "Key": key}, ExpiresIn=ttl_s
                )
            )

    def head(self, key: str) -> int | None:
        """The object's size, or None when it does not exist."""
        with translate_errors("head object"):
            try:
                resp = self._s3.head_object(Bucket=self._bucket, Key=key)
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    return None
                raise
        return int(resp["ContentLength"])

    def sha256_of(self, key: str) -> str | None:
        """sha256 (hex) of the object's bytes, streamed; None when it does not exist."""
        digest = hashlib.sha256()
        with translate_errors("hash object"):
            try:
                body = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"]
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    return None
                raise
            try:
                for chunk in iter(lambda: body.read(_CHUNK), b""):
                    digest.update(chunk)
            finally:
                body.close()
        return digest.hexdigest()

    def put_json(self, key: str, doc: Any) -> None:
        data = json.dumps(doc, separators=(",", ":")).encode()
        with translate_errors("put json"):
            self._s3.put_object(
                Bucket=self._bucket, Key=key, Body=data, ContentType="application/json"
            )

    def get_json(self, key: str) -> Any:
        with translate_errors("get json"):
            try:
                body = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"]
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    raise NotFound(f"object {key!r} not found") from exc
                raise
            try:
                return json.loads(body.read())
            finally:
                body.close()

    def get_bytes(self, key: str, limit: int = 16 * 1024 * 1024) -> bytes:
        """A small object's bytes (at most ``limit``); NotFound when missing."""
        with translate_errors("get object"):
            try:
                body = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"]
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    raise NotFound(f"object {key!r} not found") from exc
                raise
            try:
                return bytes(body.read(limit))
            finally:
                body.close()

    def create_multipart(self, key: str) -> str:
        """Start a multipart upload; its id."""
        with translate_errors("create multipart upload"):
            resp = self._s3.create_multipart_upload(Bucket=self._bucket, Key=key)
        return str(resp["UploadId"])

    def presign_upload_part(self, key: str, upload_id: str, number: int, ttl_s: int) -> str:
        with translate_errors("presign upload part"):
            return str(
                self._s3.generate_presigned_url(
                    "upload_part",
                    Params={
                        "Bucket": self._bucket,
                        "Key": key,
                        "UploadId": upload_id,
                        "PartNumber": number,
                    },
                    ExpiresIn=ttl_s,
                )
            )

    def complete_multipart(self, key: str, upload_id: str, etags: list[str]) -> None:
        """Assemble the parts (ETags in part order). NotFound when the upload is unknown."""
        parts = [{"ETag": tag, "PartNumber": i} for i, tag in enumerate(etags, start=1)]
        with translate_errors("complete multipart upload"):
            try:
                self._s3.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except ClientError as exc:
                if error_code(exc) in _MISSING | {"InvalidPart", "InvalidPartOrder"}:
                    raise NotFound(f"multipart upload of {key!r}: {error_code(exc)}") from exc
                raise

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix``."""
        self.delete_prefix_at(self._bucket, prefix)

    def delete_prefix_at(self, location: str, prefix: str) -> None:
        """Delete every object under ``prefix`` in bucket (or access point) ``location``."""
        with translate_errors("delete objects"):
            token: str | None = None
            while True:
                kwargs: dict[str, Any] = {"Bucket": location, "Prefix": prefix}
                if token:
                    kwargs["ContinuationToken"] = token
                page = self._s3.list_objects_v2(**kwargs)
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self._s3.delete_objects(Bucket=location, Delete={"Objects": keys})
                if not page.get("IsTruncated"):
                    return
                token = page.get("NextContinuationToken")

    def ping(self) -> None:
        """Raises Unavailable when the bucket cannot be reached."""
        with translate_errors("ping bucket"):
            self._s3.head_bucket(Bucket=self._bucket)
