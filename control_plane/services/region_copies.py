"""Copies of model files near the runners of each region (docs/regions.md).

A deployment may map regions to buckets (or S3 access points): ``region_buckets``
``{"eu-west-1": "models-eu-west-1", ...}``; the local blob store treats each as a prefix
``regions/<bucket>/`` of its one root. When a version becomes READY (commit) and when a
deployment is stored, every READY version's files are copied to each mapped bucket, and a
marker ``replicas/<name>/<version>/<sha256(bucket)[:32]>.json`` in the home bucket records a
complete copy. ``desired_models`` then points a runner of a mapped region at its region's
copy, and at the home bucket while no complete copy is recorded (a copy that failed or is
still under way never sends a runner to a missing object).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from control_plane import clock
from control_plane.services.models import object_key
from control_plane.storage.protocols import BlobStore

log = logging.getLogger(__name__)

MARKER_PREFIX = "replicas/"
NEGATIVE_CACHE_S = 10.0  # a missing marker is read again after this long


def marker_key(name: str, version: str, location: str) -> str:
    digest = hashlib.sha256(location.encode()).hexdigest()[:32]
    return f"{MARKER_PREFIX}{name}/{version}/{digest}.json"


class RegionCopies:
    """Copies model versions to region buckets and answers where a runner fetches a file."""

    def __init__(
        self,
        blobs: BlobStore,
        region_buckets: Callable[[str], dict[str, str]],
        presign_ttl_s: int,
        now: Callable[[], float] = clock.now,
    ) -> None:
        self._blobs = blobs
        self._now = now
        self._buckets = region_buckets  # model name -> {region: bucket}
        self._ttl = presign_ttl_s
        self._copied: dict[tuple[str, str, str], float] = {}  # True: forever; False: until

    def copy_version(self, name: str, version: str, files: list[dict[str, Any]]) -> list[str]:
        """Copy every file of ``name`` ``version`` to each bucket its deployment maps; the
        buckets now holding a complete copy. A bucket that fails is logged and left without
        a marker (runners of its region keep fetching from the home bucket)."""
        done: list[str] = []
        for region, location in sorted(self._buckets(name).items()):
            if self.copied(name, version, location):
                done.append(location)
                continue
            try:
                for f in files:
                    self._blobs.copy_to(object_key(name, version, f["path"]), location)
                self._blobs.put_json(
                    marker_key(name, version, location),
                    {
                        "location": location,
                        "region": region,
                        "files": len(files),
                        "at": self._now(),
                    },
                )
            except Exception:
                log.warning(
                    "copying %s version %s to %s (%s) failed; runners there fetch from the "
                    "home bucket",
                    name,
                    version,
                    location,
                    region,
                    exc_info=True,
                )
                continue
            self._copied[(name, version, location)] = float("inf")
            done.append(location)
        return done

    def delete_version(self, name: str, version: str) -> None:
        """Remove the copies of a deleted version from every mapped bucket, and its markers
        (runners are no longer sent to them)."""
        for location in self._buckets(name).values():
            self._copied.pop((name, version, location), None)
            self._blobs.delete_prefix(marker_key(name, version, location))
            self._blobs.delete_prefix_at(location, object_key(name, version, ""))

    def copied(self, name: str, version: str, location: str) -> bool:
        """A complete copy of the version is recorded at ``location`` (cached)."""
        key = (name, version, location)
        until = self._copied.get(key)
        t = time.monotonic()
        if until is not None and (until == float("inf") or t < until):
            return until == float("inf")
        found = self._blobs.head(marker_key(name, version, location)) is not None
        if len(self._copied) > 100_000:
            self._copied.clear()
        self._copied[key] = float("inf") if found else t + NEGATIVE_CACHE_S
        return found

    def url(self, region: str, name: str, version: str, path: str) -> str:
        """Where a runner in ``region`` fetches one file: its region's copy when complete,
        else the home bucket."""
        location = self._buckets(name).get(region)
        key = object_key(name, version, path)
        if location is not None and self.copied(name, version, location):
            return self._blobs.presign_get_at(location, key, self._ttl)
        return self._blobs.presign_get(key, self._ttl)
