"""A tiny random-init model written as `snowtrain export` writes it, with a real sentencepiece
tokenizer trained on snowtrain's own sources (serve, eval and SLURM tests)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_texts() -> list[str]:
    return [p.read_text() for p in sorted((ROOT / "snowtrain").rglob("*.py"))]


def train_code_tokenizer(out_dir: Path) -> Path:
    from data_prep.tokenizer import train_tokenizer
    return train_tokenizer(code_texts(), out_dir, vocab_size=512, threads=1)


def write_tiny_hf_model(out: Path, tokenizer_path: Path, context: int) -> Path:
    from safetensors.torch import save_file

    from data_prep.tokenizer import Tokenizer
    from snowtrain.config import ModelConfig
    from snowtrain.export import hf_config, hf_state_dict
    from snowtrain.model import Llama
    cfg = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                      num_kv_heads=2, vocab_size=Tokenizer(tokenizer_path).vocab_size,
                      max_seq_len=context, init_std=0.1)
    save_file(hf_state_dict(Llama(cfg, seed=7)), str(out / "model.safetensors"), metadata={"format": "pt"})
    special = json.loads((Path(tokenizer_path).parent / "special_tokens.json").read_text())
    (out / "config.json").write_text(json.dumps(hf_config(cfg, special, "float32")))
    shutil.copyfile(tokenizer_path, out / "tokenizer.model")
    return out
