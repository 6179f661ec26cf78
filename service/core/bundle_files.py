"""Reading a bundle's files, each checked against the manifest's dimensions (service.core.bundle.load_bundle):
numpy arrays (never pickles), JSON id lists, per-item and per-user lists. Every failure is a `BundleError`
naming the file and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.core.bundle import Dimensions


class BundleError(Exception):
    """The bundle cannot be served; the message says which file or field and why."""


def load_array(path: Path, dtype: type, shape: tuple[int | None, ...]) -> np.ndarray:
    try:
        array: np.ndarray = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise BundleError(f"{path}: not a plain numpy array ({e})") from e
    if array.dtype != dtype:
        raise BundleError(f"{path}: dtype {array.dtype}, expected {np.dtype(dtype)}")
    if array.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape, strict=True)
    ):
        want_text = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise BundleError(f"{path}: shape {array.shape} does not match the manifest dimensions {want_text}")
    return array


def load_str_list(path: Path, length: int) -> list[str]:
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise BundleError(f"{path}: expected a JSON list of strings")
    if len(values) != length:
        raise BundleError(f"{path}: {len(values)} entries, manifest dimensions say {length}")
    return values


def index_of(ids: list[str], path: Path) -> dict[str, int]:
    index = {v: i for i, v in enumerate(ids)}
    if len(index) != len(ids):
        raise BundleError(f"{path}: ids are not unique")
    return index


def load_item_lists(
    path: Path, items_name: str, weights_name: str, width: int, dims: Dimensions
) -> tuple[np.ndarray, np.ndarray]:
    """Per-item lists of items (n_items, width) int32, -1 padded, and their weights (n_items, width) float32 >= 0."""
    items = load_array(path / items_name, np.int32, (dims.n_items, width))
    if items.size and (items.min() < -1 or items.max() >= dims.n_items):
        raise BundleError(f"{path / items_name}: item indices outside [-1, {dims.n_items})")
    weights = load_array(path / weights_name, np.float32, (dims.n_items, width))
    if weights.size and not weights.min() >= 0:  # NaN fails too
        raise BundleError(f"{path / weights_name}: weights must be non-negative (cosines, EASE's positive part)")
    return items, weights


def load_csr(path: Path, offsets_name: str, items_name: str, dims: Dimensions) -> tuple[np.ndarray, np.ndarray]:
    """Per-user item lists: (offsets (n_users + 1,), items (nnz,)), validated."""
    offsets = load_array(path / offsets_name, np.int64, (dims.n_users + 1,))
    items = load_array(path / items_name, np.int64, (None,))
    if offsets[0] != 0 or offsets[-1] != len(items) or np.any(np.diff(offsets) < 0):
        raise BundleError(f"{path / offsets_name}: offsets are not a valid CSR index into {items_name}")
    if len(items) and (items.min() < 0 or items.max() >= dims.n_items):
        raise BundleError(f"{path / items_name}: item indices outside [0, {dims.n_items})")
    return offsets, items
