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

echo "== check: megatron-core reads what was written"
PYTHONWARNINGS=ignore python - "$OUT/data/phase1" <<'PY'
import json, sys
from megatron.core.datasets.indexed_dataset import IndexedDataset
manifest = json.load(open(f"{sys.argv[1]}/manifest.json"))
for lang, s in manifest["languages"].items():
    t = s["tokenize"]
    ds = IndexedDataset(t["dataset"])
    assert len(ds) == t["documents"] and int(ds.sequence_lengths.sum()) == t["tokens"], lang
    print(f"  {lang}: {len(ds)} documents, {t['tokens']} tokens, read by megatron-core")
PY
RECIPE=configs/recipe/quickstart.yaml
echo "== plan: what each phase costs"
snowtrain plan --config "$RECIPE" --phase phase1 --gpus 1

echo "== train: the tiny model through all three phases (resumes if run again)"
snowtrain train --config "$RECIPE" --phase all

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
echo "quickstart done: $OUT"
