"""Stage 1: user encoding. Builds the user tower's inputs from the bundle and runs the ONNX user tower."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from service.core.bundle import Bundle, BundleError
from service.core.device import io_binding_device, run_onnx, session_signature
from service.recommend.features import PAD, history_windows

UNKNOWN_USER = -1


class UserEncoder:
    """numpy in (user indices, -1 = unknown), numpy out ((B, E) float32 L2-normalised embeddings)."""

    bundle: Bundle  # replaced (never mutated) when items are added live

    def __init__(self, bundle: Bundle, session: ort.InferenceSession, io_binding: str = "auto") -> None:
        dims = bundle.manifest.dims
        expected = {
            "user_idx": 1,
            "history": dims.history_length,
            "user_categorical": len(dims.user_categorical_cardinalities),
        }
        self._feeds = check_inputs(session, expected, bundle, "user_tower.onnx")
        output = session.get_outputs()[0]
        if output.shape[-1] != dims.embedding_dim:
            raise BundleError(
                f"{bundle.path / 'user_tower.onnx'}: output dimension {output.shape[-1]} "
                f"!= manifest embedding_dim {dims.embedding_dim}"
            )
        self.bundle = bundle
        self._session = session
        self._output = output.name
        self._bind = io_binding_device(session, io_binding)
        self.history_length = dims.history_length
        self._oov = dims.n_users
        self._trained_items = dims.n_items
        self._n_cat = len(dims.user_categorical_cardinalities)

    def inputs(self, users: np.ndarray, histories: Sequence[np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """`histories`: each user's item indices, oldest first; default: the bundle's training history."""
        b = self.bundle
        known = users >= 0
        if histories is None:
            histories = [b.history(int(u)) for u in users]
        categorical = np.zeros((len(users), self._n_cat), dtype=np.int64)
        categorical[known] = b.user_categorical[users[known]]
        windows = history_windows(histories, self.history_length)
        windows[windows >= self._trained_items] = PAD  # items added live have no history embedding: skipped
        return {
            "user_idx": np.where(known, users, self._oov).astype(np.int64),  # (B,)
            "history": windows,  # (B, L)
            "user_categorical": categorical,  # (B, U)
        }

    def encode(self, users: np.ndarray, histories: Sequence[np.ndarray] | None = None) -> np.ndarray:
        out = run_onnx(self._session, self._output, feed(self.inputs(users, histories), self._feeds), self._bind)
        return np.ascontiguousarray(out, dtype=np.float32)  # (B, E)


def check_inputs(
    session: ort.InferenceSession, expected: dict[str, int], bundle: Bundle, name: str
) -> frozenset[str] | None:
    """Each expected input exists and its last dimension (1 = a vector input) matches the manifest. An input of
    width 0 (no user features in the data) may be absent: the ONNX exporter drops an input the graph never reads.
    Returns the inputs to feed when that happened (`feed`), else None (feed them all)."""
    signature = session_signature(session)
    absent = set(expected) - set(signature)
    if set(signature) - set(expected) or any(expected[n] for n in absent):
        raise BundleError(f"{bundle.path / name}: inputs {sorted(signature)} != expected {sorted(expected)}")
    for input_name, width in expected.items():
        if input_name in absent:
            continue
        shape = signature[input_name]
        declared = shape[-1] if len(shape) > 1 else 1
        if isinstance(declared, int) and declared != width:
            raise BundleError(
                f"{bundle.path / name}: input {input_name!r} has width {declared}, the manifest implies {width}"
            )
    return frozenset(signature) if absent else None


def feed(inputs: dict[str, np.ndarray], names: frozenset[str] | None) -> dict[str, np.ndarray]:
    """`inputs` restricted to `names` (what `check_inputs` returned; None: all)."""
    return inputs if names is None else {k: v for k, v in inputs.items() if k in names}
