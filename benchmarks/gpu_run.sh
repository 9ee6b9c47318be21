#!/usr/bin/env bash
# The kernel benchmark on a GPU machine without network access, in two steps:
#
#   bash benchmarks/gpu_run.sh prepare        # here, with PyPI: megatron-core's wheel -> build/wheels
#   bash benchmarks/gpu_run.sh run [OUT]      # there (copy build/wheels along): the benchmark and
#                                             # the gpu-marked tests; reports go to OUT (default $OUT)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="$ROOT/build/wheels"
case "${1:-}" in
prepare)
    mkdir -p "$WHEELS"
    # The GPU image runs Python 3.12; megatron-core's other needs (numpy, packaging) are there.
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 -d "$WHEELS" megatron-core==0.16.1
    ls "$WHEELS" ;;
run)
    OUT="${2:-${OUT:-$ROOT/benchmarks/results}}"
    mkdir -p "$OUT"
    export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" OUT
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/snowtrain-site "$WHEELS"/*.whl
        export PYTHONPATH="/tmp/snowtrain-site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    cd "$ROOT"
    python3 benchmarks/bench_kernels_gpu.py --budget-s "${BUDGET_S:-380}" --out-dir "$OUT" 2>&1 | tee "$OUT/bench.log"
    timeout -k 5 100 python3 -m pytest -q -p no:cacheprovider --maxfail=5 -m gpu tests/test_kernels.py 2>&1 \
        | tee "$OUT/pytest_gpu.log" ;;
*)
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
