#!/usr/bin/env bash
# The GPU check: minilora on CuPy, on a machine with a CUDA GPU -- about 8 minutes, no network.
#
#   make gpu-check                    # or: bash benchmarks/gpu_check.sh
#   PY=/path/to/python OUT=gpu-check bash benchmarks/gpu_check.sh
#
# Needs: CuPy 14+ (cupy-cuda12x or cupy-cuda13x), a CUDA build of torch (for the comparison;
# without one the bench's GPU section times minilora alone and says so), transformers, peft,
# pytest, hypothesis. Runs, each under its own time limit, and keeps every log in $OUT:
#   1. the test suite with MINILORA_BACKEND=cupy (the op table on the GPU against torch, a
#      training step, every claim and notebook on device arrays);
#   2. `minilora verify --quick` on the GPU: the report, with the device each figure was measured on;
#   3. `make bench`'s GPU section: a GPT-2-small-sized (124M, random init) training step, full and
#      LoRA, CuPy against torch CUDA eager, and full vs LoRA peak device memory at GPT-2 medium.
# Record the figures of 2 and 3 in docs/performance.md ("On a GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "== $name: exit $rc after $((SECONDS - start))s"
    [ "$rc" -eq 0 ] || status=1
}

step environment 60 "$PY" -c '
import cupy, numpy, torch, minilora
from minilora import backend
backend.set_backend("cupy")
print("minilora on the", backend.device_name(), "| numpy", numpy.__version__, "| torch", torch.__version__,
      "CUDA" if torch.cuda.is_available() else "without CUDA")'

# 1. the suite on CuPy (torch's reference runs on the CPU, as everywhere)
step tests 270 env MINILORA_BACKEND=cupy "$PY" -m pytest -q -p no:cacheprovider --durations=15 \
    --junitxml="$OUT/tests.xml"

# 2. the claims on the GPU, quick mode
step verify 150 env MINILORA_BACKEND=cupy "$PY" -m minilora verify --quick --no-progress --out "$OUT/verify-report"

# 3. the bench's GPU section
step bench 150 "$PY" benchmarks/bench.py --only gpu --json "$OUT/bench-gpu.json"

echo "logs, report and bench results in $OUT/; exit $status"
exit $status
