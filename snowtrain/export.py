"""Export a checkpoint, written with any parallel layout, to the Hugging Face Llama format
(config.json + model.safetensors + the tokenizer), for evaluation harnesses and serving."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .config import ModelConfig, RunConfig, config_from_dict


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """Our (TP=1) Llama's weights under Hugging Face LlamaForCausalLM's names."""
    sd = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight}
    for i, b in enumerate(model.layers):
        p = f"model.layers.{i}."
        sd.update({p + "input_layernorm.weight": b.attn_norm.weight,
                   p + "post_attention_layernorm.weight": b.mlp_norm.weight,
                   p + "self_attn.q_proj.weight": b.attn.q.weight,
                   p + "self_attn.k_proj.weight": b.attn.k.weight,
                   p + "self_attn.v_proj.weight": b.attn.v.weight,
                   p + "self_attn.o_proj.weight": b.attn.o.weight,
                   p + "mlp.gate_proj.weight": b.mlp.gate.weight,
                   p + "mlp.up_proj.weight": b.mlp.up.weight,
                   p + "mlp.down_proj.weight": b.mlp.down.weight})
    if model.lm_head is not None:
        sd["lm_head.weight"] = model.lm_head.weight
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def hf_config(m: ModelConfig, special: dict | None = None, dtype: str = "bfloat16") -> dict:
    special = special or {}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": m.vocab_size, "hidden_size": m.hidden_size,
        "intermediate_size": m.ffn_hidden_size, "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_attention_heads, "num_key_value_heads": m.kv_heads,
        "head_dim": m.head_dim, "max_position_embeddings": m.max_seq_len,
        "rms_norm_eps": m.norm_eps, "rope_theta": m.rope_theta, "hidden_act": "silu",
        "tie_word_embeddings": m.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "initializer_range": m.init_std, "torch_dtype": dtype,
        "bos_token_id": None, "eos_token_id": special.get("eod"), "pad_token_id": special.get("pad"),
    }


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *,
                      dtype: torch.dtype = torch.bfloat16, tokenizer: str | None = None) -> Path:
    """Reads the checkpoint's fp32 master weights in one process (DCP reshards whatever layout
    wrote them) and writes a Hugging Face model folder atomically."""
    import yaml
    from safetensors.torch import save_file

    from .checkpoint import CheckpointManager
    from .config import CheckpointConfig
    from .model import Llama
    from .optim import DistributedOptimizer
    from .train import checkpoint_state

    ckpt = Path(checkpoint)
    cfg_file = ckpt / "config.yaml"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} not found: give a checkpoint folder written by "
                                "snowtrain train (it holds config.yaml)")
    cfg: RunConfig = config_from_dict(yaml.safe_load(cfg_file.read_text()), RunConfig, file=cfg_file)
    cfg.precision.compute_dtype = "fp32"
    cfg.parallel.tensor_parallel, cfg.parallel.zero1 = 1, False
    model = Llama(cfg.model, seed=cfg.seed)
    opt = DistributedOptimizer(model, cfg)
    template = {"optim": {n: {"master": d["master"]} for n, d in
                          checkpoint_state(model, opt, None)["optim"].items()}}
    manager = CheckpointManager(CheckpointConfig(dir=str(ckpt.parent)))
    manager.load(ckpt, template)
    opt.reload_params_from_masters()
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.to(dtype) for k, v in hf_state_dict(model).items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt"})
    special = None
    tok = tokenizer or cfg.tokenizer
    if tok:
        from .config import resolve_path
        tok_path = Path(resolve_path(tok, "tokenizer"))
        if tok_path.is_file():
            shutil.copyfile(tok_path, tmp / "tokenizer.model")
            st = tok_path.parent / "special_tokens.json"
            if st.is_file():
                special = json.loads(st.read_text())
                shutil.copyfile(st, tmp / "special_tokens.json")
    (tmp / "config.json").write_text(json.dumps(hf_config(cfg.model, special, str(dtype).split(".")[-1]), indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
