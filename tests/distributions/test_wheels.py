"""The distributions built from this repository (distributions/*/pyproject.toml): `gpufleet`
is the SDK and CLI only, `gpufleet-control-plane` and `gpufleet-runner` carry one package
each and pin `gpufleet` of the same version; every console script imports from its own
wheel. Built for real (``pip wheel``, as `make wheels` does); the install from a fresh
virtual environment is tests/e2e/test_first_hour_venv.py."""

from __future__ import annotations

import configparser
import email.parser
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.helpers.wheels import DISTRIBUTIONS, ROOT, build_wheels

PACKAGES = {
    "gpufleet": ("gpufleet", "sdk/gpufleet"),
    "gpufleet-control-plane": ("control_plane", "control_plane"),
    "gpufleet-runner": ("runner", "runner"),
}
SCRIPTS = {
    "gpufleet": {"gpufleet"},
    "gpufleet-control-plane": {"gpufleet-control-plane"},
    "gpufleet-runner": {"gpufleet-runner"},
}


def version() -> str:
    text = (ROOT / "sdk" / "gpufleet" / "_version.py").read_text()
    found = re.search(r'__version__ = "([^"]+)"', text)
    assert found is not None
    return found[1]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_wheels(tmp_path_factory.mktemp("dist"))


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(zf.read(name).decode())


def console_scripts(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(zf.read(name).decode())
    return dict(parser["console_scripts"])


@pytest.mark.slow
@pytest.mark.parametrize("dist", list(DISTRIBUTIONS))
def test_each_wheel_holds_its_package_and_nothing_else(wheels: dict[str, Path], dist: str) -> None:
    package, source = PACKAGES[dist]
    v = version()
    wheel = wheels[dist]
    assert wheel.name == f"{dist.replace('-', '_')}-{v}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    info = f"{dist.replace('-', '_')}-{v}.dist-info"
    assert {n.split("/")[0] for n in names} == {package, info}, sorted(names)[:20]
    # every tracked file of the package (templates, static assets, py.typed), nothing else
    tracked = subprocess.run(
        ["git", "ls-files", source], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    expected = {package + t[len(source) :] for t in tracked}
    assert {n for n in names if not n.startswith(info)} == expected
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


@pytest.mark.slow
def test_pins_between_the_distributions(wheels: dict[str, Path]) -> None:
    v = version()
    sdk = metadata(wheels["gpufleet"])
    assert sdk["Version"] == v
    requires = sdk.get_all("Requires-Dist") or []
    assert f"gpufleet-runner=={v}; extra == 'runner'" in requires
    assert f"gpufleet-control-plane=={v}; extra == 'control-plane'" in requires
    assert {e for e in sdk.get_all("Provides-Extra") or []} == {"runner", "control-plane", "all"}
    assert not [r for r in requires if "extra" not in r and r.startswith("gpufleet")]
    for dist in ("gpufleet-control-plane", "gpufleet-runner"):
        meta = metadata(wheels[dist])
        assert meta["Version"] == v
        assert f"gpufleet=={v}" in (meta.get_all("Requires-Dist") or []), dist


@pytest.mark.slow
def test_console_scripts_live_with_the_package_they_run(
    wheels: dict[str, Path], tmp_path: Path
) -> None:
    """Each console script names a module of its own wheel, and that module (extracted from
    the wheels, not the checkout) has the function."""
    site = tmp_path / "site"
    for wheel in wheels.values():
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
    for dist, wheel in wheels.items():
        scripts = console_scripts(wheel)
        assert set(scripts) == SCRIPTS[dist], scripts
        for target in scripts.values():
            module, _, attr = target.partition(":")
            assert module.split(".")[0] == PACKAGES[dist][0], target
            code = (
                f"import importlib; m = importlib.import_module({module!r}); "
                f"assert m.__file__.startswith({str(site)!r}), m.__file__; "
                f"assert callable(getattr(m, {attr!r}))"
            )
            env = {**os.environ, "PYTHONPATH": str(site)}  # the wheels' code, not the checkout's
            r = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path
            )
            assert r.returncode == 0, f"{dist}: {target}\n{r.stderr}"


def _hook(project: str) -> dict[str, list[str]]:
    data = tomllib.loads((ROOT / "distributions" / project / "pyproject.toml").read_text())
    return dict(data["tool"]["hatch"]["metadata"]["hooks"]["custom"])


def test_dependency_lists_match_the_development_project() -> None:
    """The development project (pyproject.toml, `make dev`) installs what the three
    distributions need: the lists are kept in both places and must not drift."""
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(root["dependencies"]) == sorted(_hook("gpufleet")["dependencies"])
    extras = root["optional-dependencies"]
    assert sorted(extras["control-plane"]) == sorted(_hook("control-plane")["dependencies"])
    assert sorted(extras["runner"]) == sorted(_hook("runner")["dependencies"])
    assert _hook("control-plane")["pinned"] == ["gpufleet"] == _hook("runner")["pinned"]
