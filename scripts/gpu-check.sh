#!/usr/bin/env bash
# On a lent GPU machine (see ../shared/gpu/README.md), after every .gpuwheels/part-NN has been copied to /tmp/gw:
# install the GPU wheels, run the whole test suite on the GPU path, and time the pipeline on CPU and GPU.
# Results go to $OUT (pytest.txt, pipeline.json, gpu.txt).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
bash .gpuwheels/install-on-device 2>&1 | tail -3 | tee "$OUT/install.txt"
# Further pure or small wheels (httpx2 for starlette's TestClient; scipy, implicit, threadpoolctl for training
# and the baselines), carried in .gpuwheels/extra or copied to /tmp/gwx by an earlier run.
for extra in .gpuwheels/extra /tmp/gwx; do
  if compgen -G "$extra/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpusite "$extra"/*.whl
  fi
done
export PYTHONPATH=/tmp/gpusite:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import faiss, onnxruntime as o; o.preload_dlls(); print('faiss gpus', faiss.get_num_gpus(), o.get_available_providers())" | tee -a "$OUT/gpu.txt"
timeout 300 python3 -m pytest -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/pytest.txt" | tail -25
rc=${PIPESTATUS[0]}
# The paths `auto` leaves off until they pass here (service.core.device.GPU_FAST_PATHS_VERIFIED): float16 models and
# IO binding, through the API and event tests and the float16 parity tests; benchmarks.pipeline times them all.
RECO_ONNX_PRECISION=fp16 RECO_ORT_IO_BINDING=on timeout 120 python3 -m pytest -q -p no:cacheprovider \
  tests/service/test_precision.py tests/service/test_api.py tests/service/test_events.py 2>&1 | tee "$OUT/pytest-fp16-iobinding.txt" | tail -5
rc_fast=${PIPESTATUS[0]}
timeout 180 python3 -m model_export --dataset synthetic --out /tmp/bundles --no-progress > "$OUT/export.txt" 2>&1 \
  && timeout 120 python3 -m benchmarks.pipeline --bundle /tmp/bundles/current --requests 500 --json "$OUT/pipeline.json" \
  | tee "$OUT/pipeline.txt"  # every precision x IO binding, on the CPU and the GPU
echo "suite rc=$rc, fp16 + IO binding rc=$rc_fast" | tee -a "$OUT/gpu.txt"
[ "$rc" -eq 0 ] && [ "$rc_fast" -eq 0 ]
