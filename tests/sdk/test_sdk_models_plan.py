"""plan_push: Triton layout walk, version choice, sizes and hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from gpufleet.models import plan_push


def _model(tmp_path: Path) -> Path:
    root = tmp_path / "add_sub"
    (root / "1").mkdir(parents=True)
    (root / "2" / "sub").mkdir(parents=True)
    (root / "config.pbtxt").write_text('name: "add_sub"\nbackend: "python"\n')
    (root / "1" / "model.py").write_text("# v1\n")
    (root / "2" / "model.py").write_text("# v2\n")
    (root / "2" / "sub" / "w.bin").write_bytes(b"\x00" * 10)
    (root / "notes").mkdir()  # not a version directory
    (root / "notes" / "x.txt").write_text("ignored")
    return root


def test_highest_version_by_number_with_posix_paths_and_hashes(tmp_path: Path) -> None:
    root = _model(tmp_path)
    (root / "10").mkdir()
    (root / "10" / "model.py").write_text("# v10\n")
    plan = plan_push(root)
    assert (plan.name, plan.version) == ("add_sub", "10")
    assert [f.path for f in plan.files] == ["config.pbtxt", "10/model.py"]
    first = plan.files[0]
    assert first.size == len((root / "config.pbtxt").read_bytes())
    assert first.sha256 == hashlib.sha256((root / "config.pbtxt").read_bytes()).hexdigest()


def test_chosen_version_and_name(tmp_path: Path) -> None:
    root = _model(tmp_path)
    (root / "config.pbtxt").write_text('backend: "python"\n')  # no name: any name fits
    plan = plan_push(root, version="2", name="other")
    assert plan.name == "other" and plan.version == "2" and plan.pinned
    assert not plan_push(root).pinned  # no version asked: the control plane numbers it
    assert [f.path for f in plan.files] == ["config.pbtxt", "2/model.py", "2/sub/w.bin"]
    assert plan.total_bytes == sum(f.size for f in plan.files)


@pytest.mark.parametrize("broken", ["no_config", "no_version", "missing_version", "file"])
def test_bad_directories(tmp_path: Path, broken: str) -> None:
    root = _model(tmp_path)
    kwargs = {}
    if broken == "no_config":
        (root / "config.pbtxt").unlink()
    elif broken == "no_version":
        for d in ("1", "2"):
            for p in sorted((root / d).rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
            (root / d).rmdir()
    elif broken == "missing_version":
        kwargs["version"] = "7"
    else:
        root = root / "config.pbtxt"
    with pytest.raises(ValueError):
        plan_push(root, **kwargs)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('name: "add_sub"\nbackend: "python"\nnonsense {', "does not parse"),
        ('name: "other"\nbackend: "python"\n', "names the model 'other'"),
    ],
)
def test_broken_config_is_refused_before_any_upload(
    tmp_path: Path, config: str, message: str
) -> None:
    root = _model(tmp_path)
    (root / "config.pbtxt").write_text(config)
    with pytest.raises(ValueError, match=message):
        plan_push(root)
