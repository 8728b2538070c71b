#!/usr/bin/env bash
# The GPU acceptance run: one call on a lent GPU, under 8 minutes (everything ends by 470 s).
#
#   (a) the compiled ResNet-50 EDGE step on one batch resident in GPU memory: the limit;
#   (c) end-to-end EDGE ResNet-50 at 256 px from JPEG shards inside Ray Train, GPU decode
#       (nvJPEG, data.decode=gpu, the default serial/batched arrangement);
#   (b) the same with CPU decode (PIL in the DataLoader workers);
#   (f) the CPU input path alone: CPU ms per image, and the feed that many loader workers
#       predict (workers x 1000 / ms);
# each with its ratio to (a), in one table (benchmarks/throughput.py prints it) and one JSON.
#
#   bash benchmarks/device_run.sh            # on the GPU host, from the repository root
#   bash benchmarks/device_run.sh --smoke    # the same flow tiny on a CPU (tests/test_benchmarks.py)
#
# On a host without a package index install the wheels first (../shared/device/README.md):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/device_run.sh
# OUT (default /tmp/edge-device-out) gets env.txt, acceptance.json and acceptance.txt; the
# synthetic shards (16384 ID + 4096 OE JPEGs of 320 px, ~1 GB) go to /tmp/edge-bench-shards
# and are reused by a second call. TESTS=1 also runs the GPU-decode tests first (~2 min).
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=""
[ "${1:-}" = "--smoke" ] && SMOKE="--smoke"
OUT=${OUT:-/tmp/edge-device-out}
mkdir -p "$OUT"
export RAY_AUTH_MODE=disabled RAY_TRAIN_V2_ENABLED=1 PYTHONUNBUFFERED=1
# One inductor cache for (a) and the Ray workers: the workers' compile reuses (a)'s graphs.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/edge-inductor-cache} TORCHINDUCTOR_FX_GRAPH_CACHE=1 \
       TORCHINDUCTOR_AUTOGRAD_CACHE=1
PY=${PYTHON:-python3}
start=$(date +%s)

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi: not found"
  echo "cpus $(nproc)"
  "$PY" - <<'PYEOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "torchvision", "numpy", "PIL", "yaml", "tqdm", "ray", "webdataset", "pyarrow"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as err:
        print(name, "MISSING", err)
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available())
PYEOF
} 2>&1 | tee "$OUT/env.txt"

if [ "${TESTS:-0}" = "1" ]; then
  timeout 150 "$PY" -m pytest -q -s -p no:cacheprovider tests/test_gpu_decode.py tests/test_engine.py 2>&1 \
    | tee "$OUT/pytest.txt"
fi

if [ -n "$SMOKE" ]; then
  SIZES=(--smoke --shards-dir "$OUT/shards")
else
  SIZES=(--id-images 16384 --oe-images 4096 --source-size 320 --image-size 256 --loader-workers 14
         --shards-dir /tmp/edge-bench-shards --synthetic-timeout 200)
fi
timeout $(( 470 - ($(date +%s) - start) )) "$PY" benchmarks/throughput.py --parts a,c,b,f \
  --c-variant serial/batched "${SIZES[@]}" --json "$OUT/acceptance.json" 2>&1 | tee "$OUT/acceptance.txt"
status=${PIPESTATUS[0]}
echo "device_run.sh finished in $(( $(date +%s) - start ))s (throughput.py exit $status)"
exit "$status"
