"""Operating the bundle: `POST /admin/reload` (a bundle swapped in without dropping a request), `/admin/rollback`."""

from __future__ import annotations

import pathlib

from service.api.auth import admin_router
from service.api.schemas import (
    ERRORS,
    RELOAD_ERRORS,
    Reloaded,
    ReloadRequest,
)
from service.core.bundle import BundleError
from service.core.errors import Conflict, Forbidden
from service.serving.state import AppState, StateDep

router = admin_router()  # RECO_ADMIN_TOKEN


@router.post("/admin/reload", response_model=Reloaded, responses=ERRORS | RELOAD_ERRORS)
async def reload_bundle(state: StateDep, body: ReloadRequest | None = None) -> Reloaded:
    """Load a bundle beside the one serving (default: RECO_BUNDLE_PATH again, e.g. a re-pointed `current`
    symlink), warm it up and swap it in atomically; in-flight requests finish on the old one. A bundle that does
    not validate is refused (422, with the reason) and the old one keeps serving."""
    path = body.bundle_path if body and body.bundle_path else None
    if path is not None and not _under(pathlib.Path(path), state.settings.reload_root):
        state.metrics.reloads.labels("refused").inc()
        # Nothing about the path itself (whether it exists, what it holds): only where bundles may come from.
        raise Forbidden("body.bundle_path: bundles are loaded from under the bundles root (RECO_BUNDLES_ROOT) only")
    return await _reload(state, path)


@router.post("/admin/rollback", response_model=Reloaded, responses=ERRORS | RELOAD_ERRORS)
async def rollback_bundle(state: StateDep) -> Reloaded:
    """Go back to the bundle served before the last reload (a reload of that bundle)."""
    if state.previous_bundle is None:
        raise Conflict("nothing to roll back to: no reload has happened")
    return await _reload(state, state.previous_bundle)


async def _reload(state: AppState, path: str | pathlib.Path | None) -> Reloaded:
    try:
        old, new = await state.reload(None if path is None else pathlib.Path(path))
    except (BundleError, OSError, ValueError) as e:  # a path that cannot be opened, or holds a NUL byte
        state.metrics.reloads.labels("refused").inc()
        raise Conflict(f"body.bundle_path: bundle refused, still serving {state.bundle.version}: {e}") from e
    return Reloaded(previous_version=old, bundle_version=new)


def _under(path: pathlib.Path, root: pathlib.Path) -> bool:
    """Whether `path`, symlinks followed, lies under `root` (resolved). A path that cannot be resolved is not."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop
        return False
