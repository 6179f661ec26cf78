"""Write a model bundle: files into a temporary directory, then the manifest, then one atomic rename.

A reader therefore sees either no bundle or a complete one. `current` (a relative symlink beside the
bundles) is switched to the new version with an atomic rename too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from service.core.bundle import MANIFEST, SCHEMA_VERSION, FileEntry, Manifest, sha256_file


def code_version() -> str:
    """The git commit of this code (with `-dirty` for uncommitted changes), or the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("reco-service")
        except PackageNotFoundError:
            return "unknown"


class BundleWriter:
    """Collects files in `<out>/.tmp-*`, then `finish()` writes the manifest and renames the directory."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out_dir / f".tmp-{os.getpid()}-{os.urandom(4).hex()}"
        self.tmp.mkdir()

    def array(self, name: str, array: np.ndarray) -> None:
        with (self.tmp / name).open("wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)

    def json(self, name: str, value: Any) -> None:
        (self.tmp / name).write_text(json.dumps(value, ensure_ascii=False))

    def path(self, name: str) -> Path:
        return self.tmp / name

    def files(self) -> dict[str, FileEntry]:
        return {
            p.name: FileEntry(sha256=sha256_file(p), bytes=p.stat().st_size)
            for p in sorted(self.tmp.iterdir())
            if p.is_file() and p.name != MANIFEST
        }

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for name, entry in self.files().items():
            digest.update(f"{name}:{entry.sha256}\n".encode())
        return digest.hexdigest()[:8]

    def write_manifest(self, fields: dict[str, Any]) -> Manifest:
        """Validate and write the manifest (files and schema filled in) into the temporary directory."""
        manifest = Manifest.model_validate({**fields, "schema_version": SCHEMA_VERSION, "files": self.files()})
        (self.tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        return manifest

    def finish(self, version: str, make_current: bool = True) -> Path:
        final = self.out_dir / version
        if final.exists():
            raise FileExistsError(f"{final} already exists")
        os.replace(self.tmp, final)
        if make_current:
            point_current(self.out_dir, version)
        return final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def point_current(out_dir: Path, version: str) -> None:
    """Re-point `out_dir/current` at `out_dir/version`, atomically (a new link renamed over the old one)."""
    link = out_dir / f".current-{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(version, target_is_directory=True)
    os.replace(link, out_dir / "current")
