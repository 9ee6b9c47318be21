"""Export a checkpoint, written with any parallel layout, to the Hugging Face Llama format
(config.json + model.safetensors + the tokenizer), for evaluation harnesses and serving."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .config import ConfigError, ModelConfig, RunConfig, config_from_dict, resolve_path


# Our block's modules -> Hugging Face LlamaDecoderLayer's.
_HF_LAYER = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
             "attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj", "attn.v": "self_attn.v_proj",
             "attn.o": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj",
             "mlp.down": "mlp.down_proj"}
_HF_TOP = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
           "lm_head.weight": "lm_head.weight"}


def hf_names(model) -> dict[str, str]:
    """Our parameter names -> Hugging Face LlamaForCausalLM's."""
    out = {}
    for name, _ in model.named_parameters():
        if name in _HF_TOP:
            out[name] = _HF_TOP[name]
        else:
            _, i, rest = name.split(".", 2)          # layers.<i>.<module>.weight
            out[name] = f"model.layers.{i}.{_HF_LAYER[rest.rsplit('.', 1)[0]]}.weight"
    return out


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """Our (TP=1) Llama's weights under Hugging Face LlamaForCausalLM's names."""
    names = hf_names(model)
    return {names[n]: p.detach().clone().contiguous() for n, p in model.named_parameters()}


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
    cfg_file = _checkpoint_config(ckpt)
    cfg: RunConfig = config_from_dict(yaml.safe_load(cfg_file.read_text()), RunConfig, file=cfg_file)
    out = _check_out_dir(Path(out_dir))
    tok_path = _find_tokenizer(tokenizer, cfg, ckpt, cfg_file)
    cfg.precision.compute_dtype = "fp32"
    cfg.parallel.tensor_parallel, cfg.parallel.zero1 = 1, False
    model = Llama(cfg.model, seed=cfg.seed)
    opt = DistributedOptimizer(model, cfg)
    template = {"optim": {n: {"master": d["master"]} for n, d in
                          checkpoint_state(model, opt, None)["optim"].items()}}
    manager = CheckpointManager(CheckpointConfig(dir=str(ckpt.parent)))
    manager.load(ckpt, template)
    opt.reload_params_from_masters()
    tmp = out.with_name(f".{out.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.to(dtype) for k, v in hf_state_dict(model).items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        special = None
        if tok_path is not None:
            shutil.copyfile(tok_path, tmp / "tokenizer.model")
            st = tok_path.parent / "special_tokens.json"
            if st.is_file():
                special = json.loads(st.read_text())
                shutil.copyfile(st, tmp / "special_tokens.json")
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg.model, special, str(dtype).split(".")[-1]), indent=2))
        (tmp / EXPORT_MARKER).write_text(json.dumps({"checkpoint": str(ckpt.resolve()), "dtype": str(dtype)}) + "\n")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left behind
        raise
    return out


EXPORT_MARKER = "snowtrain_export.json"
# What export writes: a folder holding these files only (and config.json) is an earlier export.
EXPORT_FILES = {"config.json", "model.safetensors", "tokenizer.model", "special_tokens.json", EXPORT_MARKER}


def _checkpoint_config(ckpt: Path) -> Path:
    """The checkpoint's config.yaml, or a ConfigError saying what the folder is instead."""
    cfg_file = ckpt / "config.yaml"
    if cfg_file.is_file():
        return cfg_file
    fix = "give a checkpoint folder written by snowtrain train, e.g. CHECKPOINT_DIR/phase1/step_00000100"
    if not ckpt.exists():
        raise ConfigError("no such checkpoint folder", file=ckpt, fix=fix)
    if (ckpt / "config.json").is_file():
        raise ConfigError("is a Hugging Face model folder (what export writes), not a checkpoint",
                          file=ckpt, fix=f"{fix}; serve and eval take this folder as it is")
    steps = _steps_under(ckpt)
    if steps:
        shown = ", ".join(str(s) for s in steps[:5]) + (f" (and {len(steps) - 5} more)" if len(steps) > 5 else "")
        raise ConfigError(f"is not one checkpoint but holds checkpoints, newest first: {shown}",
                          file=ckpt, fix=f"export one of them, e.g. snowtrain export {steps[0]} --out ...")
    raise ConfigError("is not a checkpoint (it has no config.yaml) and holds no step_* checkpoints",
                      file=ckpt, fix=fix)


def _steps_under(folder: Path) -> list[Path]:
    """Committed step_* checkpoints in a checkpoint root or one phase folder, newest first."""
    from .checkpoint import CheckpointManager
    from .config import CheckpointConfig
    if any(folder.glob("step_*")):
        found = CheckpointManager(CheckpointConfig(dir=str(folder.parent))).list_checkpoints(phase=folder.name)
    else:
        found = CheckpointManager(CheckpointConfig(dir=str(folder))).list_checkpoints()
    paths = [i.path for i in reversed(found)]
    if not paths:  # uncommitted or unreadable markers: still show what is there
        paths = sorted((d for d in [*folder.glob("step_*"), *folder.glob("*/step_*")] if d.is_dir()),
                       key=lambda d: d.stat().st_mtime, reverse=True)
    return paths


def _check_out_dir(out: Path) -> Path:
    """--out as an absolute path, when it is new, empty or an earlier export; else ConfigError.
    Export replaces the folder as a whole, so a folder holding anything else is refused."""
    target = Path(os.path.abspath(out))
    cwd = Path.cwd()
    if target == cwd or target in cwd.parents:
        raise ConfigError("is the current folder (or holds it); export writes a new folder and "
                          "replaces --out as a whole", file=out, key="--out",
                          fix="give a folder to create, e.g. --out hf_model")
    if not target.exists():
        return target
    if not target.is_dir():
        raise ConfigError("exists and is not a folder", file=out, key="--out",
                          fix="give a new folder, or remove that file")
    entries = list(target.iterdir())
    foreign = sorted(e.name + ("/" if e.is_dir() else "") for e in entries
                     if e.name not in EXPORT_FILES or not e.is_file())
    if entries and (foreign or not (target / "config.json").is_file()):
        shown = ", ".join(foreign[:5]) + (f" (and {len(foreign) - 5} more)" if len(foreign) > 5 else "")
        raise ConfigError(f"is not empty and not an earlier snowtrain export (it holds {shown or 'no config.json'}); "
                          "export replaces --out as a whole", file=out, key="--out",
                          fix="give a new or empty folder, or move those files away")
    return target


def _replace_dir(tmp: Path, out: Path) -> None:
    """Moves the finished `tmp` to `out`; an earlier export there is kept until `tmp` is in place."""
    _check_out_dir(out)  # again: the folder may have changed while the weights were loading
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old.{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _find_tokenizer(tokenizer: str | None, cfg: RunConfig, ckpt: Path, cfg_file: Path) -> Path | None:
    """The tokenizer file to copy: --tokenizer, else the run config's (tried relative to the cwd,
    then to the checkpoint's own run root); None when neither names one. Named but not found
    is a ConfigError."""
    if tokenizer:
        p = Path(resolve_path(tokenizer, "--tokenizer"))
        if p.is_dir() and (p / "tokenizer.model").is_file():
            p = p / "tokenizer.model"
        if p.is_file():
            return p
        raise ConfigError(f"tokenizer {p} not found", key="--tokenizer",
                          fix="give the tokenizer.model the run trained with (data prep writes it to "
                              "OUTPUT/tokenizer/tokenizer.model)")
    if not cfg.tokenizer:
        return None
    fix = ("pass --tokenizer PATH/tokenizer.model (the one the run trained with); a relative path "
           "in the config is read from the folder training ran in")
    try:
        p = Path(resolve_path(cfg.tokenizer, "tokenizer", cfg_file))
    except ConfigError as e:
        raise ConfigError(f"the checkpoint's tokenizer {cfg.tokenizer} cannot be resolved: {e.args[0]}",
                          file=cfg_file, key="tokenizer", fix=fix) from None
    tried = [p]
    try:
        root_guess = _under_run_root(p, Path(resolve_path(cfg.checkpoint.dir)), ckpt)
    except ConfigError:
        root_guess = None
    if root_guess is not None and root_guess not in tried:
        tried.append(root_guess)
    for cand in tried:
        if cand.is_file():
            return cand
    raise ConfigError(f"the checkpoint's tokenizer was not found (tried {', '.join(map(str, tried))})",
                      file=cfg_file, key="tokenizer", fix=fix)


def _under_run_root(path: Path, recorded_ckpt_dir: Path, ckpt: Path) -> Path | None:
    """`path` moved along with the checkpoint: the recorded tokenizer and checkpoint.dir share a
    prefix (the run root, e.g. ${SNOWTRAIN_QUICKSTART}); the same path below the root the
    checkpoint now lies in (checkpoint.dir/PHASE/step_N)."""
    if path.is_absolute() != recorded_ckpt_dir.is_absolute():
        return None
    common = 0
    for a, b in zip(path.parts, recorded_ckpt_dir.parts):
        if a != b:
            break
        common += 1
    rest = path.parts[common:]
    strip = len(recorded_ckpt_dir.parts) - common
    root = Path(os.path.abspath(ckpt)).parent.parent
    if not rest or strip >= len(root.parts):
        return None
    for _ in range(strip):
        root = root.parent
    return root.joinpath(*rest)
