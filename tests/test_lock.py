"""The lock (constraints.txt, written by `make lock` with pip-tools): it pins every dependency pyproject.toml
names, the environment the tests run in was installed from it, and every install path uses it."""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKED_EXTRAS = ("cpu", "train", "bench", "dev")  # the Makefile's EXTRAS; torch comes from TORCH, not the lock


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        found = re.match(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)==(\S+)", line)
        if found:
            out[canonical(found.group(1))] = found.group(2)
    return out


def requirement_name(spec: str) -> str:
    found = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9_.\-]*)", spec)
    assert found, spec
    return canonical(found.group(1))


def test_the_lock_pins_every_dependency_of_the_locked_extras() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {requirement_name(s) for s in project["dependencies"]}
    for extra in LOCKED_EXTRAS:
        wanted |= {requirement_name(s) for s in project["optional-dependencies"][extra]}
    locked = pins()
    assert wanted - {"torch"} <= set(locked), wanted - set(locked)
    assert "torch" not in locked  # the CPU build on disk (Makefile TORCH), not a PyPI CUDA build


def test_this_environment_was_installed_from_the_lock() -> None:
    drift = {}
    for name, version in pins().items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            continue  # pinned for another platform or an extra not installed here
        if installed != version:
            drift[name] = (installed, version)
    assert not drift, f"installed vs locked: {drift} (make install uses constraints.txt; make lock re-resolves)"


def test_every_install_path_uses_the_lock() -> None:
    assert "-c $(LOCK)" in (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if "pip install" in line and '".[' in line]
    assert installs
    assert all("-c constraints.txt" in line for line in installs), installs
    assert "constraints.txt" in (ROOT / ".dockerignore").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()  # CI installs through the Makefile
