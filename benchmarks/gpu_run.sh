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
    # the baseline is optional: nothing here may stop the benchmark or the tests
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        if python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/snowtrain-site "$WHEELS"/*.whl; then
            export PYTHONPATH="/tmp/snowtrain-site${PYTHONPATH:+:$PYTHONPATH}"
        else
            echo "WARNING: the megatron-core wheel did not install: no baseline" >&2
        fi
    else
        echo "WARNING: no wheel in $WHEELS (run '$0 prepare' where PyPI is reachable and copy" \
             "build/wheels along): no megatron-core baseline" >&2
    fi
    cd "$ROOT"
    { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
      python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])' || true
      nvcc --version | tail -n 2 || true; } 2>&1 | tee "$OUT/gpu.txt"
    set +e
    python3 benchmarks/bench_kernels_gpu.py --budget-s "${BUDGET_S:-420}" --out-dir "$OUT" 2>&1 | tee "$OUT/bench.log"
    bench_rc=${PIPESTATUS[0]}
    timeout -k 5 70 python3 -m pytest -q -p no:cacheprovider --maxfail=5 -m gpu tests/test_kernels.py 2>&1 \
        | tee "$OUT/pytest_gpu.log"
    tests_rc=${PIPESTATUS[0]}
    echo "benchmark exit status $bench_rc, GPU tests exit status $tests_rc"
    [ "$bench_rc" -eq 0 ] && [ "$tests_rc" -eq 0 ] ;;
*)
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
