"""Shared fixtures: one real tiny bundle per test session (trained, exported, indexed), apps through their lifespan."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings


def _find_ml100k() -> Path:
    """MovieLens 100K is never copied into the project: $ML100K_DIR, else `shared/data/ml-100k` beside the
    checkout or any folder above it (../shared/data/ml-100k on the development and CI machines)."""
    if os.environ.get("ML100K_DIR"):
        return Path(os.environ["ML100K_DIR"])
    for parent in Path(__file__).resolve().parents[1:]:
        candidate = parent / "shared" / "data" / "ml-100k"
        if (candidate / "u.data").is_file():
            return candidate
    return Path("ml-100k-not-found")


ML100K = _find_ml100k()
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_export.build import build_bundle
    from model_export.config import preset
    from model_export.data import generate_synthetic

    config = preset("tiny")
    out = tmp_path_factory.mktemp("bundles")
    return build_bundle(generate_synthetic(config.synthetic, seed=config.seed), config, out, progress=False).path


@pytest.fixture
def settings(tiny_bundle: Path, tmp_path: Path) -> Settings:
    # A generous deadline: a shared CI machine may be slow; the deadline itself is tested in test_overload.
    return Settings(
        bundle_path=tiny_bundle,
        redis_url=None,
        warmup_requests=1,
        max_k=50,
        num_candidates=100,
        dev_mode=True,
        request_timeout_s=30.0,
        live_items_path=tmp_path / "live_items.jsonl",  # never beside the session's shared bundle
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def redis_available() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A local TCP port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
