"""Export the towers and the ranker to ONNX (dynamic batch axis) and check ONNX Runtime against PyTorch.

The models the service runs per request (the user tower, the ranker) are also exported in float16 (`HalfPrecision`:
the same inputs and outputs, float32, computing in float16 inside), for the GPU, where float16 halves the memory
traffic and uses the tensor cores. A float16 model is written only where its answers stay within `FP16_TOLERANCE` of
the float32 PyTorch model's on real inputs ("where parity holds"); the service picks it on CUDA.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

PARITY_TOLERANCE = 1e-4
# float16 keeps 11 significant bits (a relative step of 1e-3); after a few layers the outputs (probabilities,
# unit-norm embeddings) of the models here differ from float32 by a few 1e-3.
FP16_TOLERANCE = 1e-2
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
    # The exporter drops an input the graph never reads (user features of width 0): feed what the model takes.
    declared = {i.name for i in session.get_inputs()}
    actual = session.run(None, {k: v for k, v in inputs.items() if k in declared})[0]
    if actual.shape != expected.shape:
        raise ParityError(f"{path.name}: ONNX output shape {actual.shape} != PyTorch {expected.shape}")
    diff = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    if not diff <= tolerance:
        raise ParityError(f"{path.name}: ONNX Runtime differs from PyTorch by {diff:.3g} (> {tolerance:g})")
    return diff


class HalfPrecision(nn.Module):
    """`module` computing in float16 with its float32 signature: each layer with parameters (its weights now
    float16) casts its floating inputs to float16, and the output is cast back to float32. Layers of `keep_fp32`
    types keep float32 weights and inputs, their outputs cast to float16: a BatchNorm over raw features (a count of
    1,000 is 1000.0 +- 0.5 in float16, which its normalisation would magnify). Integer inputs (ids) pass as they are."""

    def __init__(self, module: nn.Module, keep_fp32: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm,)):
        super().__init__()
        self.module = copy.deepcopy(module).eval()
        for layer in self.module.modules():
            if isinstance(layer, keep_fp32):  # its weights and statistics as they are (no round trip to float16)
                layer.register_forward_pre_hook(lambda _, args: tuple(_cast(a, torch.float32) for a in args))
                layer.register_forward_hook(lambda _, __, out: _cast(out, torch.float16))
                continue
            tensors = [*layer.parameters(recurse=False), *layer.buffers(recurse=False)]
            for tensor in tensors:  # this layer's own, not its children's (a child may be kept float32)
                tensor.data = _cast(tensor.data, torch.float16)
            if tensors:
                layer.register_forward_pre_hook(lambda _, args: tuple(_cast(a, torch.float16) for a in args))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.module(*inputs)
        return out.float()


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype) if x.is_floating_point() else x


def export_int8(fp32_path: Path, path: Path, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """`fp32_path`'s model with its weights quantised to int8 (ONNX Runtime's dynamic quantisation: activations
    quantised per batch as it runs, on the CPU provider) at `path`, and how far its answers on `inputs` are from
    the float32 model's: max abs diff, and the Pearson correlation of the outputs (for the ranker, what orders the
    candidates). No tolerance here: whether quality holds is measured on validation through the pipeline
    (model_export.evaluate.choose_int8), which decides what RECO_ONNX_PRECISION=auto serves in int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # it logs a "pre-process first" advice on the root logger: quiet while it runs only
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(fp32_path, path, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    outputs = []
    for model in (fp32_path, path):
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        declared = {i.name for i in session.get_inputs()}
        outputs.append(session.run(None, {k: v for k, v in inputs.items() if k in declared})[0].ravel())
    full, quantised = outputs
    correlation = float(np.corrcoef(full, quantised)[0, 1]) if full.size > 1 and full.std() > 0 else 1.0
    return {"max_abs_diff": float(np.max(np.abs(full - quantised))), "pearson": correlation}


def export_fp16(
    module: nn.Module, inputs: dict[str, np.ndarray], output_name: str, path: Path, tolerance: float = FP16_TOLERANCE
) -> float:
    """Export `module` in float16 (HalfPrecision) to `path` and check ONNX Runtime's float16 answers against the
    float32 PyTorch module's on `inputs`: the max abs diff. Above `tolerance` the file is removed (the float32
    model serves everywhere) and ParityError raised."""
    export(HalfPrecision(module), inputs, output_name, path)
    try:
        return parity(module, path, inputs, tolerance)
    except ParityError:
        path.unlink()
        raise
