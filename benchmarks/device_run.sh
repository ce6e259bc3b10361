#!/usr/bin/env bash
# One device call: GPU test suite and/or the benchmark. Usage (repository root):
#   bash benchmarks/device_run.sh MODE OUT_DIR [benchmark arguments...]
# MODE: tests | bench | both. Arguments after OUT_DIR go to python -m fused_swiglu.bench
# (python -m fused_swiglu.bench --help lists them); its CSV, plots and log land in
# OUT_DIR/results/<card>/ and OUT_DIR/bench.log unless they include their own --out.
# The whole benchmark takes longer than one 10-minute device command: split it by
# --dtypes, --tokens, --shapes or --layouts (with a --tag each, so that the CSVs can share a
# folder); summarize.py reads the CSVs together.
# The GPU test suite runs in WORKERS pytest-xdist processes (default 8; WORKERS=1 runs it in
# one process, as it took about 9 minutes on an H200); TESTS picks what pytest runs, e.g.
# TESTS=tests/test_swiglu.py.
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
  workers=${WORKERS:-8}
  parallel=()
  if [ "$workers" -gt 1 ]; then
    if python3 -c "import xdist" 2>/dev/null; then
      parallel=(-n "$workers")
    else
      echo "pytest-xdist is not installed: the tests run in one process"
    fi
  fi
  python3 -m pytest -q "${parallel[@]}" ${TESTS:-tests} 2>&1 | tee "$out/tests.log" | tail -15
  status=${PIPESTATUS[0]}
fi
if [ "$mode" != tests ]; then
  python3 -m fused_swiglu.bench --out "$out/results" "$@" 2>&1 | tee "$out/bench.log"
  bench_status=${PIPESTATUS[0]}
  [ "$status" -eq 0 ] && status=$bench_status
fi
exit $status
