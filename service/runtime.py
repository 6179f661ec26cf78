"""Choosing the device: ONNX Runtime execution providers and the FAISS GPU, picked once at start-up.

`device="auto"` uses the GPU when this process can (onnxruntime-gpu with a working CUDA, faiss built with
GPU support and a visible GPU) and falls back to the CPU otherwise; `cpu` forces the CPU; `cuda` requires
the GPU and fails loudly without one.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from pathlib import Path
from typing import Any

import faiss
import onnxruntime as ort
from threadpoolctl import threadpool_limits

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
