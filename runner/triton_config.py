"""What the runner tells Triton when it loads a synced model.

- ``load_config``: the JSON config override passed to Triton's load call: the uploaded
  ``config.pbtxt`` with ``version_policy`` set to exactly the desired versions and, when the
  control plane chose GPUs, ``instance_group { kind: KIND_GPU gpus: [...] }``.
- ``triton_gpu_map``: host GPU index (what the control plane sees in heartbeats) to the index
  Triton sees (the docker backend hands Triton the runner's GPUs in settings order).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from gpufleet.wire import GpuInfo

CONFIG_FILE = "config.pbtxt"


def load_config(
    config_text: str, name: str, versions: Iterable[str], gpus: list[int] | None
) -> str:
    """The JSON config override for Triton's load call (see the module docstring)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = text_format.Parse(config_text, mc.ModelConfig())
    cfg.name = name
    cfg.version_policy.Clear()
    cfg.version_policy.specific.versions.extend(sorted(int(v) for v in versions))
    if gpus is not None:
        pinned = [g for g in cfg.instance_group if g.kind != mc.ModelInstanceGroup.KIND_CPU]
        if not cfg.instance_group:
            pinned = [cfg.instance_group.add(count=1)]
        for group in pinned:
            group.kind = mc.ModelInstanceGroup.KIND_GPU
            del group.gpus[:]
            group.gpus.extend(gpus)
    doc = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
    return json.dumps(doc, separators=(",", ":"))


def triton_gpu_map(configured: list[str] | None, detected: Sequence[GpuInfo]) -> dict[int, int]:
    """Host GPU index → the index Triton sees.

    ``configured`` is the runner's ``gpus`` setting (indexes or UUIDs; None = every GPU NVML
    finds, in NVML order): the container gets those devices in that order, numbered from 0."""
    if configured is None:
        return {g.index: i for i, g in enumerate(detected)}
    by_uuid = {g.uuid: g.index for g in detected}
    out: dict[int, int] = {}
    for i, item in enumerate(configured):
        host = int(item) if item.isdigit() else by_uuid.get(item)
        if host is not None:
            out[host] = i
    return out
