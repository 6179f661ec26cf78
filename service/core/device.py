"""Choosing the device: ONNX Runtime execution providers and the FAISS GPU, picked once at start-up.

`device="auto"` uses the GPU when this process can (onnxruntime-gpu with a working CUDA, faiss built with
GPU support and a visible GPU) and falls back to the CPU otherwise; `cpu` forces the CPU; `cuda` requires
the GPU and fails loudly without one.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
from pathlib import Path
from typing import Any

import faiss
import onnxruntime as ort
from threadpoolctl import threadpool_limits

from service.core.bundle import FP16_MODELS, Bundle, BundleError

log = logging.getLogger(__name__)
_dlls_preloaded = False


def onnx_providers(device: str) -> list[str]:
    """Execution providers in preference order for `device` (auto | cpu | cuda)."""
    global _dlls_preloaded
    if device == "cpu":
        return ["CPUExecutionProvider"]
    # onnxruntime-gpu >= 1.21 can load the CUDA/cuDNN libraries from pip-installed nvidia-* wheels.
    if (
        not _dlls_preloaded
        and hasattr(ort, "preload_dlls")
        and "CUDAExecutionProvider" in ort.get_available_providers()
    ):
        try:
            ort.preload_dlls()
        except Exception as e:  # a missing CUDA library must not stop a CPU fallback
            log.warning("onnxruntime.preload_dlls() failed: %s", e)
        _dlls_preloaded = True
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise RuntimeError("device=cuda but ONNX Runtime has no CUDAExecutionProvider (install the `gpu` extra)")
    return ["CPUExecutionProvider"]


def open_session(path: Path, providers: list[str], intra_op_threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    # The service runs several sessions from a thread pool; spinning threads would steal those cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    active = session.get_providers()
    if providers[0] not in active:
        log.warning("%s: asked for %s, running on %s", path.name, providers[0], active)
    return session


# Whether float16 models and IO binding have passed `scripts/gpu-check.sh` on a GPU (RECO_ONNX_PRECISION=fp16,
# RECO_ORT_IO_BINDING=on). Until then `auto` means the path that did run on one: float32, no IO binding. Flip it
# with the check's numbers in docs/performance.md.
GPU_FAST_PATHS_VERIFIED = False


def io_binding_device(session: ort.InferenceSession, io_binding: str) -> str | None:
    """Where `run_onnx` binds `session`'s outputs with IO binding (auto: on CUDA once GPU_FAST_PATHS_VERIFIED,
    else off; on: on whatever device the session runs, the CPU included; off), or None: no IO binding."""
    on_cuda = session.get_providers()[0] == "CUDAExecutionProvider"
    if io_binding == "off" or (io_binding == "auto" and not (on_cuda and GPU_FAST_PATHS_VERIFIED)):
        return None
    return "cuda" if on_cuda else "cpu"


def run_onnx(session: ort.InferenceSession, output: str, inputs: dict[str, Any], bind_device: str | None) -> Any:
    """`session`'s `output` for `inputs` (numpy arrays). With `bind_device` (io_binding_device), through IO
    binding: each input copied to the session's device once, before the run, rather than by copy nodes inside
    it, and the output allocated on `bind_device`, then copied out. A binding per call: calls from several
    threads do not share one."""
    if bind_device is None:
        return session.run([output], inputs)[0]
    binding = session.io_binding()
    for name, value in inputs.items():
        binding.bind_cpu_input(name, value)
    binding.bind_output(output, bind_device)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]


def model_precisions(bundle: Bundle, providers: list[str], precision: str) -> dict[str, str]:
    """The precision (fp32, fp16, int8) each per-request model (FP16_MODELS) runs in: auto: float16 on CUDA where
    the bundle has the model's float16 variant, once GPU_FAST_PATHS_VERIFIED (until then float32); on the CPU int8
    for the models whose int8 variant held validation quality at export (manifest onnx_int8_served), float32 for
    the others (ONNX Runtime's float16 kernels there are no faster, and the casts cost); fp16: float16 everywhere,
    refused if the bundle lacks a variant; int8: int8 weights (dynamic quantisation, a CPU provider's kernels; on
    CUDA they fall back to the CPU), refused likewise; fp32: float32."""
    if precision == "int8":
        missing = [m for m in FP16_MODELS if m not in bundle.manifest.onnx_int8_parity]
        if missing:
            raise BundleError(
                f"{bundle.path}: onnx_precision=int8 but the bundle has no int8 {', '.join(missing)} (built before "
                "int8 variants; see onnx_int8_parity)"
            )
        return dict.fromkeys(FP16_MODELS, "int8")
    has_fp16 = bundle.manifest.onnx_fp16_parity_max_abs_diff
    if precision == "fp16":
        missing = [m for m in FP16_MODELS if m not in has_fp16]
        if missing:
            raise BundleError(
                f"{bundle.path}: onnx_precision=fp16 but the bundle has no float16 {', '.join(missing)} (built before "
                "float16 variants, or their parity with float32 failed at export; see onnx_fp16_parity_max_abs_diff)"
            )
    cuda = providers[0] == "CUDAExecutionProvider"
    if precision == "auto" and not cuda:
        served = bundle.manifest.onnx_int8_served
        return {m: "int8" if m in served and m in bundle.manifest.onnx_int8_parity else "fp32" for m in FP16_MODELS}
    fast = cuda and GPU_FAST_PATHS_VERIFIED
    return {
        m: "fp16" if precision == "fp16" or (precision == "auto" and fast and m in has_fp16) else "fp32"
        for m in FP16_MODELS
    }


def limit_native_threads(faiss_omp_threads: int) -> None:
    """Process-wide thread pools of the native libraries. numpy's BLAS runs single-threaded: requests already run
    in parallel, and OpenBLAS's worker threads spin between calls (measured: a 2-core server at concurrency 1
    used both cores for one request at a time, the spinning thread taking most). FAISS's OpenMP the same,
    unless `faiss_omp_threads` is 0 (FAISS's own choice); OpenMP's setting belongs to the calling thread, so
    this runs in every thread that searches."""
    threadpool_limits(limits=1, user_api="blas")
    if faiss_omp_threads:
        faiss.omp_set_num_threads(faiss_omp_threads)


def faiss_gpus(device: str) -> int:
    if device == "cpu":
        return 0
    count = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    if device == "cuda" and count == 0:
        raise RuntimeError("device=cuda but FAISS sees no GPU (install faiss-gpu, check the driver)")
    return count


def session_signature(session: ort.InferenceSession) -> dict[str, list[Any]]:
    """Input name -> shape as ONNX declares it (symbolic batch dims are strings)."""
    return {i.name: list(i.shape) for i in session.get_inputs()}


def release_free_memory() -> None:
    """Hand the heap memory freed since start-up back to the OS. glibc keeps what large temporaries (checksums,
    the neighbour index's inversion, ONNX Runtime's graph optimisation) leave free in its heap, where it counts as
    resident memory of every worker: measured at 100K items, ~60 MB per process. A no-op where libc is not glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def freeze_heap() -> int:
    """Collect, then leave every object alive now out of the cyclic garbage collector's later passes; the
    number frozen. Loaded, the service holds about 140,000 tracked objects (its libraries, the bundle's ids; the
    ml-100k bundle), and a full collection walks every one: measured 90-120 ms on the 2-core VM, a pause of every
    request in the process (under event ingestion at 200/s, one in a 20 s run: the p99). Frozen objects are
    still freed by reference counting; only cycles among them are never collected. So a reload thaws the heap
    (`gc.unfreeze`) for the bundle it replaces to be collected, and freezes it again once that one is gone."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
