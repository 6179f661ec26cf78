"""Export the towers and the ranker to ONNX (dynamic batch axis) and check ONNX Runtime against PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

PARITY_TOLERANCE = 1e-4
OPSET = 17


class ParityError(Exception):
    """ONNX Runtime's output differs from PyTorch's by more than the tolerance."""


def export(module: nn.Module, inputs: dict[str, np.ndarray], output_name: str, path: Path) -> None:
    """Trace `module` on real `inputs` (their names are the ONNX input names) with every axis 0 dynamic."""
    module.eval()
    args = tuple(torch.from_numpy(v) for v in inputs.values())
    dynamic_axes = {name: {0: "batch"} for name in inputs} | {output_name: {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        # dynamo=False is a deliberate choice (see below); the TorchScript exporter announces its own deprecation
        # and calls deprecated torch internals, which is not news at every export.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(inputs),
            output_names=[output_name],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: no onnxscript dependency, stable graphs for these models
        )
    onnx.checker.check_model(onnx.load(str(path)))


def parity(module: nn.Module, path: Path, inputs: dict[str, np.ndarray], tolerance: float = PARITY_TOLERANCE) -> float:
    """Max |ONNX Runtime - PyTorch| on `inputs`; raises ParityError above `tolerance`."""
    module.eval()
    with torch.no_grad():
        expected = module(*(torch.from_numpy(v) for v in inputs.values())).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, inputs)[0]
    if actual.shape != expected.shape:
        raise ParityError(f"{path.name}: ONNX output shape {actual.shape} != PyTorch {expected.shape}")
    diff = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    if not diff <= tolerance:
        raise ParityError(f"{path.name}: ONNX Runtime differs from PyTorch by {diff:.3g} (> {tolerance:g})")
    return diff
