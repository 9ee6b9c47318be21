#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole recipe at toy scale on the embedded corpus, on CPU.
# Outputs go to ${SNOWTRAIN_QUICKSTART:-runs/quickstart}.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
VENV="${SNOWTRAIN_VENV:-$ROOT/.venv}"
export PATH="$VENV/bin:$PATH"
OUT="${SNOWTRAIN_QUICKSTART:-$ROOT/runs/quickstart}"
cd "$ROOT"

export SNOWTRAIN_QUICKSTART="$OUT"
echo "== data: phase 1 on the embedded corpus: filter, dedup, decontaminate, group, tokenize"
data-prep phase1 --config configs/data_prep/quickstart.yaml
data-prep inspect "$OUT/data/phase1/python_text_document" \
    --tokenizer "$OUT/data/phase1/tokenizer/tokenizer.model" --max-tokens 40

echo "== data: phase 2: train the quality annotator, keep each language's top-scored files"
data-prep phase2 --config configs/data_prep/quickstart_phase2.yaml

check_datasets() {  # megatron-core reads back every dataset a data-prep output lists
    PYTHONWARNINGS=ignore python - "$1" <<'PY'
import json, sys
from megatron.core.datasets.indexed_dataset import IndexedDataset
from data_prep.indexed import read_index
folder = sys.argv[1]
for lang in sorted(json.load(open(f"{folder}/manifest.json"))["datasets"]):
    prefix = f"{folder}/{lang}_text_document"
    ds, ours = IndexedDataset(prefix), read_index(prefix)
    assert len(ds) == len(ours.sequence_lengths) and (ds.sequence_lengths == ours.sequence_lengths).all()
    print(f"  {folder.rsplit('/', 1)[-1]}/{lang}: {len(ds)} documents, "
          f"{int(ds.sequence_lengths.sum())} tokens, read by megatron-core")
PY
}
echo "== check: megatron-core reads what was written"
check_datasets "$OUT/data/phase1"
check_datasets "$OUT/data/phase2"

RECIPE=configs/recipe/quickstart.yaml
echo "== plan: what each phase costs"
snowtrain plan --config "$RECIPE" --phase phase1 --gpus 1
echo "== samples: what step 1 of phase 1 trains on"
snowtrain samples --config "$RECIPE" --phase phase1 --step 1 --count 3 --chars 90

echo "== train: the tiny model through phases 1 and 2 (resumes if run again)"
snowtrain train --config "$RECIPE" --phase phase1
snowtrain train --config "$RECIPE" --phase phase2

echo "== data: phase 3: the phase-2 model, served over an OpenAI-compatible API, writes files from phase-2 seeds"
P2="$(ls -d "$OUT"/checkpoints/phase2/step_* | tail -1)"
snowtrain serve "$P2" --port 0 --name quickstart > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do
    URL="$(grep -o 'http://[0-9.:]*' "$OUT/serve.log" | head -1 || true)"
    [[ -n $URL ]] || { kill -0 $SERVER 2>/dev/null || { cat "$OUT/serve.log"; exit 1; }; sleep 0.5; continue; }
    break
done
[[ -n $URL ]] || { echo "the server did not start; see $OUT/serve.log" >&2; exit 1; }
SNOWTRAIN_SYNTH_URL="$URL/v1" data-prep phase3 --config configs/data_prep/quickstart_phase3.yaml
kill $SERVER; wait $SERVER 2>/dev/null || true
trap - EXIT
check_datasets "$OUT/data/phase3"

echo "== train: phase 3 on the synthetic files beside the phase-2 files, each block compiled"
# model.compile (torch.compile with inductor) needs a C++ compiler on a CPU
COMPILE=()
if command -v g++ >/dev/null || command -v c++ >/dev/null; then COMPILE=(--set model.compile=true); fi
snowtrain train --config "$RECIPE" --phase phase3 "${COMPILE[@]}"

echo "== plot: loss across phases"
snowtrain plot "$OUT/logs" --out "$OUT/loss.png"
echo "== export: the phase-3 model in the Hugging Face Llama format, and a sample from it"
FINAL="$(ls -d "$OUT"/checkpoints/phase3/step_* | tail -1)"
snowtrain export "$FINAL" --out "$OUT/hf"
python - "$OUT/hf" <<'PY'
import sys, torch, sentencepiece as spm, transformers
model = transformers.LlamaForCausalLM.from_pretrained(sys.argv[1]).eval()
sp = spm.SentencePieceProcessor(model_file=f"{sys.argv[1]}/tokenizer.model")
ids = torch.tensor([sp.encode("<repo_name>demo\n<file_sep>main.py\nimport ")])
out = model.generate(ids, max_new_tokens=24, do_sample=False)
print("  sample:", repr(sp.decode(out[0].tolist())))
PY
echo "== continue: two steps of phase 3 from the exported Hugging Face folder (init_from: a HF Llama)"
snowtrain train --config "$RECIPE" --phase phase3 --max-steps 2 --set "phases.phase3.init_from=$OUT/hf" \
    --set "checkpoint.dir=$OUT/from-hf/checkpoints" --set "logging.dir=$OUT/from-hf/logs" --set profile.enabled=false
echo "== eval: HumanEval pass@1 (greedy) on its first 20 problems (a toy model scores 0)"
snowtrain eval "$OUT/hf" --benchmark humaneval --limit 20 --max-new-tokens 64 --out "$OUT/eval/phase3" --quiet
echo "== eval: BigCodeBench's format (calibrated, sanitized, unittest classes, canonical solutions checked)"
snowtrain eval "$OUT/hf" --problems "$ROOT/snowtrain/evaluation/smoke/BigCodeBench-format-smoke.jsonl" \
    --max-new-tokens 64 --out "$OUT/eval/phase3-bigcodebench-format" --quiet
echo "== eval: EvoEval's format (inputs, expected outputs from the canonical solution, EvoEval's comparison)"
snowtrain eval "$OUT/hf" --problems "$ROOT/snowtrain/evaluation/smoke/EvoEval-format-smoke.jsonl" \
    --max-new-tokens 64 --out "$OUT/eval/phase3-evoeval-format" --quiet
echo "== eval: the phase-2 checkpoint too, and the report of both beside the paper's numbers"
snowtrain eval "$P2" --benchmark humaneval --limit 20 --max-new-tokens 64 --out "$OUT/eval/phase2" --quiet
snowtrain eval-report "$OUT/eval" --out "$OUT/eval/report.md" --plot "$OUT/eval/report.png"
echo "quickstart done: $OUT"
