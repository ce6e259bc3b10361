#!/usr/bin/env bash
# One device call: GPU test suite and/or the benchmark. Usage (repository root):
#   bash benchmarks/device_run.sh MODE OUT_DIR [benchmark arguments...]
# MODE: tests | bench | both. The whole benchmark takes longer than one 10-minute device
# command: split it, e.g. "bench OUT --dtypes bfloat16 --tokens 4096,8192,16384", then
# "--dtypes float16 ...", then "--tokens 512,1,8,32"; summarize.py reads the CSVs together.
# The GPU test suite takes about 9 minutes on an H200: TESTS picks what pytest runs, e.g.
# TESTS=tests/test_swiglu.py, then TESTS="tests/test_mlp.py tests/test_tuning.py
# tests/test_seed_examples.py".
set -uo pipefail
mode=${1:-both}
out=${2:-${OUT:-/tmp/out}}
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
status=0
if [ "$mode" != bench ]; then
  python3 -m pytest -q ${TESTS:-tests} 2>&1 | tee "$out/tests.log" | tail -15
  status=${PIPESTATUS[0]}
fi
if [ "$mode" != tests ]; then
  python3 -m fused_swiglu.bench --out "$out/results" "$@" 2>&1 | tee "$out/bench.log"
fi
exit $status
