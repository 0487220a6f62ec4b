#!/usr/bin/env bash
# The GPU check: minilora on CuPy, on a machine with a CUDA GPU -- about 8 minutes, no network.
#
#   make gpu-check                    # or: bash benchmarks/gpu_check.sh
#   PY=/path/to/python OUT=gpu-check bash benchmarks/gpu_check.sh
#
# Needs: CuPy 14+ (cupy-cuda12x or cupy-cuda13x), a CUDA build of torch (for the comparison;
# without one the bench's GPU section times minilora alone and says so), transformers, peft,
# pytest, hypothesis. Runs, each under its own time limit, and keeps every log in $OUT:
#   1. the tests of the CuPy path on the GPU (must pass): the op table against torch, a training
#      step, the claims at tiny sizes, the bench's GPU section at tiny sizes;
#   2. the rest of the suite with MINILORA_BACKEND=cupy (notebooks aside), for the record: a test
#      that reads arrays with numpy.asarray fails there by its own doing (docs/performance.md);
#   3. `minilora verify --quick` on the GPU, the claims that need no fine-tuning runs (CLAIMS=all
#      for every claim, which takes longer): the report names the device of each figure;
#   4. `make bench`'s GPU section: a GPT-2-small-sized (124M, random init) training step, full and
#      LoRA, CuPy against torch CUDA eager, and full vs LoRA peak device memory at GPT-2 medium.
# Record the figures of 3 and 4 in docs/performance.md ("On a GPU").
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

step environment 30 "$PY" -c '
import cupy, numpy, torch, minilora
from minilora import backend
backend.set_backend("cupy")
print("minilora on the", backend.device_name(), "| numpy", numpy.__version__, "| torch", torch.__version__,
      "CUDA" if torch.cuda.is_available() else "without CUDA")'

# 1. the CuPy path's own tests, on the GPU
step cupy-path 150 env MINILORA_BACKEND=cupy "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_backend.py tests/test_cupy_path.py tests/test_bench.py -k "cupy or gpu or seam or standin or backend"

# 2. the rest of the suite on CuPy (torch's references run on the CPU, as everywhere)
required=$status  # for the record: its failures are triaged by reading suite.log, they do not fail the check
step suite 90 env MINILORA_BACKEND=cupy "$PY" -m pytest -q -p no:cacheprovider --ignore=tests/test_notebooks.py \
    --ignore=tests/test_backend.py --ignore=tests/test_cupy_path.py --ignore=tests/test_bench.py --junitxml="$OUT/suite.xml"
status=$required

# 3. the claims on the GPU, quick mode
CLAIMS=${CLAIMS:-params,memory,time,inference,depth_latency}
only=()
[ "$CLAIMS" = all ] || only=(--only "$CLAIMS")
step verify 100 env MINILORA_BACKEND=cupy "$PY" -m minilora verify --quick --no-progress ${only[@]+"${only[@]}"} \
    --out "$OUT/verify-report"

# 4. the bench's GPU section
step bench 130 "$PY" benchmarks/bench.py --only gpu --json "$OUT/bench-gpu.json"

echo "logs, report and bench results in $OUT/; exit $status"
exit $status
