#!/usr/bin/env bash
# Issue 9 on one GPU host, in one go (about 8 minutes expected; everything ends by 9.5):
#   1. which packages are there (a no-op stand-in for tqdm if it is missing);
#   2. python -m pytest -q -s tests/test_gpu_decode.py tests/test_engine.py  (nvJPEG vs
#      both libjpeg decodes, printed per file; GPU vs CPU batches in every feeder
#      arrangement, also with the GPU busy; the async loss read-back on CUDA);
#   3. benchmarks/throughput.py: (a) synthetic eager/compiled, (d) in-process GPU-decode
#      loader in six arrangements (feeder/crops/share decoded by PIL in the loader
#      workers/pin=0: packed batches not page-locked, as in runs 1-6) plus a profiler
#      trace of the fastest, (e) the loader alone (MODES=default,reduce-overhead adds (a)
#      and the fastest (d) compiled with CUDA graphs: slower in run 5), (c) Ray worker +
#      GPU decode as the fastest (d) with the loader's own pinning,
#      (b) Ray worker + CPU decode, on 32768 ID + 4096 OE synthetic 320px JPEGs built in
#      /tmp/edge-bench-shards (about 2 GB).
# Run from the repository root after the wheels are installed, e.g.
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD RAY_AUTH_MODE=disabled \
#     && bash benchmarks/device_run.sh
# PARTS=a,d,c skips (b); EXTRA=--smoke runs the whole flow tiny (a check on a CPU box). Results land in $OUT (default /tmp/edge-device-out): env.txt,
# pytest.txt, throughput.txt, throughput.json, trace_d.json.gz and profile_d.txt
# (torch.profiler, 8 steps of (d): open the trace in Perfetto), trace_summary.json (the
# trace in numbers: benchmarks/trace_summary.py); the Markdown table near the end of
# throughput.txt is the one benchmarks/README.md records.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/edge-device-out}
mkdir -p "$OUT"
export RAY_AUTH_MODE=disabled RAY_TRAIN_V2_ENABLED=1 PYTHONUNBUFFERED=1
# One inductor cache for (a) and the Ray worker: the worker's compile reuses (a)'s graphs.
export TORCHINDUCTOR_CACHE_DIR=/tmp/edge-inductor-cache TORCHINDUCTOR_FX_GRAPH_CACHE=1 \
       TORCHINDUCTOR_AUTOGRAD_CACHE=1
PY=${PYTHON:-python3}
start=$(date +%s)

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi: not found"
  nproc
  "$PY" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "torchvision", "numpy", "PIL", "yaml", "tqdm", "ray", "pytest"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as err:
        print(name, "MISSING", err)
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available())
EOF
} 2>&1 | tee "$OUT/env.txt"

# edge_ray.train.ray_worker imports tqdm for its progress bar; ray does not need it.
if ! "$PY" -c "import tqdm" 2>/dev/null; then
  mkdir -p /tmp/edge-shim/tqdm
  cat > /tmp/edge-shim/tqdm/__init__.py <<'EOF'
"""No-op stand-in for tqdm on a host without it (only a progress bar is lost)."""


class tqdm:
    def __init__(self, *args, **kwargs):
        pass

    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass
EOF
  export PYTHONPATH=/tmp/edge-shim${PYTHONPATH:+:$PYTHONPATH}
  echo "tqdm missing: using the no-op stand-in in /tmp/edge-shim" | tee -a "$OUT/env.txt"
fi

if "$PY" -c "import pytest" 2>/dev/null; then
  timeout 120 "$PY" -m pytest -q -s -p no:cacheprovider tests/test_gpu_decode.py tests/test_engine.py 2>&1 \
    | tee "$OUT/pytest.txt"
else
  echo "pytest missing: tests/test_gpu_decode.py not run (add the pytest, pluggy and iniconfig wheels)" \
    | tee "$OUT/pytest.txt"
fi
echo "tests done at $(( $(date +%s) - start ))s"

# (c) before (b): if time runs short, the target's number is the one to keep; all of it
# ends by 555 s after the start (the device's per-command limit is 600 s).
timeout $(( 555 - ($(date +%s) - start) )) "$PY" benchmarks/throughput.py --parts "${PARTS:-a,d,c,b}" \
  --compile-modes "${MODES:-default}" --synthetic-timeout 360 \
  --shards-dir /tmp/edge-bench-shards --profile-dir "$OUT" \
  --json "$OUT/throughput.json" ${EXTRA:-} 2>&1 | tee "$OUT/throughput.txt"
if [ -f "$OUT/trace_d.json.gz" ]; then  # where the training stream waited, from the trace
  "$PY" benchmarks/trace_summary.py "$OUT/trace_d.json.gz" --json "$OUT/trace_summary.json" 2>&1 \
    | tee -a "$OUT/throughput.txt"
fi
echo "device_run.sh finished in $(( $(date +%s) - start ))s"
