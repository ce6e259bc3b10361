#!/usr/bin/env bash
# One device call: GPU test suite, then the benchmark. Usage (repository root):
#   bash benchmarks/device_run.sh [quick|full|tests|bench-quick] [OUT_DIR]
set -uo pipefail
mode=${1:-quick}
out=${2:-${OUT:-/tmp/out}}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
status=0
if [ "$mode" != bench-quick ]; then
  python3 -m pytest -q -x tests 2>&1 | tee "$out/tests.log" | tail -15
  status=${PIPESTATUS[0]}
fi
case "$mode" in
  quick|bench-quick) python3 -m fused_swiglu.bench --quick --out "$out/results" 2>&1 | tee "$out/bench.log" ;;
  full) python3 -m fused_swiglu.bench --out "$out/results" 2>&1 | tee "$out/bench.log" ;;
esac
exit $status
