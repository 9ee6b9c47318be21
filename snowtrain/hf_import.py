"""Start a phase from a Hugging Face Llama folder (`init_from:` a folder with config.json, as
`snowtrain export` writes or `save_pretrained` does): its weights become the fp32 masters of any
tensor- and data-parallel layout. Each rank reads only its tensor-parallel slice of each tensor
from the safetensors files (one file, or several with model.safetensors.index.json; a
pytorch_model.bin is read whole). The folder's shape must be the run's model shape, and where
both have a sentencepiece tokenizer.model they must be the same file."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import ConfigError, ModelConfig
from .export import hf_names

INDEX = "model.safetensors.index.json"


def is_hf_folder(path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and not (p / "config.yaml").is_file()


def check_shape(folder: Path, m: ModelConfig, *, file=None, key: str) -> None:
    """The folder's config.json against the run's model: each difference is a ConfigError."""
    try:
        hf = json.loads((folder / "config.json").read_text())
    except ValueError as e:
        raise ConfigError(f"{folder}/config.json is not valid JSON ({e})", file=file, key=key,
                          fix="point init_from at a Hugging Face model folder") from None
    if hf.get("model_type") != "llama":
        raise ConfigError(f"{folder} holds a '{hf.get('model_type')}' model, not a Llama", file=file,
                          key=key, fix="init_from takes a Llama folder (LlamaForCausalLM)")
    heads = hf.get("num_attention_heads")
    # transformers 5 keeps RoPE's settings in rope_parameters, earlier versions in rope_theta and
    # rope_scaling
    rope = hf.get("rope_parameters") or {}
    theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
    # config.json key, its default in transformers' LlamaConfig, our key, our value
    pairs = [("hidden_size", None, "hidden_size", m.hidden_size),
             ("intermediate_size", None, "ffn_hidden_size", m.ffn_hidden_size),
             ("num_hidden_layers", None, "num_layers", m.num_layers),
             ("num_attention_heads", None, "num_attention_heads", m.num_attention_heads),
             ("num_key_value_heads", heads, "num_kv_heads", m.kv_heads),
             ("vocab_size", None, "vocab_size", m.vocab_size),
             ("tie_word_embeddings", False, "tie_embeddings", m.tie_embeddings),
             ("rope_theta", theta, "rope_theta", m.rope_theta),
             ("rms_norm_eps", 1e-6, "norm_eps", m.norm_eps)]
    for hf_key, default, ours, want in pairs:
        got = hf.get(hf_key, default) if hf_key != "rope_theta" else theta
        if got != want and not (isinstance(got, float) and isinstance(want, float) and abs(got - want) <= 1e-12 * abs(want)):
            raise ConfigError(f"{folder}/config.json has {hf_key}={got!r} but the run's model has "
                              f"{ours}={want!r}", file=file, key=f"model.{ours}",
                              fix=f"set model.{ours}: {got!r} to continue that model, or pick a "
                                  "folder of the run's shape")
    head_dim = hf.get("head_dim") or m.hidden_size // m.num_attention_heads
    if head_dim != m.head_dim:
        raise ConfigError(f"{folder}/config.json has head_dim={head_dim}, but the run's heads are "
                          f"hidden_size / num_attention_heads = {m.head_dim} wide", file=file,
                          key="model.num_attention_heads",
                          fix="start from a model whose head_dim is hidden_size / num_attention_heads")
    extras = {k: hf[k] for k in ("rope_scaling", "attention_bias", "mlp_bias") if hf.get(k)}
    if rope.get("rope_type", "default") != "default":
        extras["rope_parameters.rope_type"] = rope["rope_type"]
    if hf.get("hidden_act", "silu") != "silu":
        extras["hidden_act"] = hf["hidden_act"]
    for hf_key, value in extras.items():
        raise ConfigError(f"{folder}/config.json has {hf_key}={value!r}, which snowtrain's Llama "
                          "does not have", file=file, key=key,
                          fix="start from a plain Llama (SiLU, default RoPE, no biases)")


def check_tokenizer(folder: Path, run_tokenizer: str | None, *, file=None, key: str) -> None:
    ours = Path(run_tokenizer) if run_tokenizer else None
    theirs = folder / "tokenizer.model"
    if ours and ours.is_file() and theirs.is_file() and ours.read_bytes() != theirs.read_bytes():
        raise ConfigError(f"{theirs} is not the run's tokenizer ({ours}): the data's token ids "
                          "would mean other words to this model", file=file, key="tokenizer",
                          fix=f"tokenize the data with {theirs} (data-prep's tokenizer setting), or "
                              f"start from a model trained with {ours}")


class _Tensors:
    """Named tensors of a folder, read by slices where the format allows."""

    def __init__(self, folder: Path):
        self.folder, self._files, self._bin = folder, {}, None
        if (folder / INDEX).is_file():
            self.where = {k: folder / v for k, v in json.loads((folder / INDEX).read_text())["weight_map"].items()}
        elif (folder / "model.safetensors").is_file():
            from safetensors import safe_open
            with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
                self.where = {k: folder / "model.safetensors" for k in f.keys()}
        elif (folder / "pytorch_model.bin").is_file():
            self._bin = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
            self.where = {k: None for k in self._bin}
        else:
            raise FileNotFoundError(f"{folder} has no model.safetensors, {INDEX} or pytorch_model.bin")

    def shape(self, name: str) -> tuple[int, ...]:
        if self._bin is not None:
            return tuple(self._bin[name].shape)
        return tuple(self._slice(name).get_shape())

    def read(self, name: str, dim: int | None, start: int, stop: int) -> torch.Tensor:
        """The tensor, or its [start, stop) along dim."""
        if self._bin is not None:
            t = self._bin[name]
            return t if dim is None else t.narrow(dim, start, stop - start)
        sl = self._slice(name)
        if dim is None:
            return sl[:]
        return sl[start:stop] if dim == 0 else sl[:, start:stop]

    def _slice(self, name: str):
        from safetensors import safe_open
        path = self.where[name]
        if path not in self._files:
            self._files[path] = safe_open(str(path), framework="pt")
        return self._files[path].get_slice(name)


def load_hf_weights(folder, model, optimizer, tp_rank: int, tp_size: int, *, file=None, key: str) -> None:
    """The folder's weights into `optimizer`'s masters and `model`'s parameters (this rank's
    shards); a missing or misshapen tensor is a ConfigError naming it."""
    folder = Path(folder)
    try:
        tensors = _Tensors(folder)
    except FileNotFoundError as e:
        raise ConfigError(str(e), file=file, key=key, fix="point init_from at a folder with the "
                          "model's weights (as save_pretrained or snowtrain export writes them)") from None
    local, params = {}, dict(model.named_parameters())
    for ours, theirs in hf_names(model).items():
        p = params[ours]
        if theirs not in tensors.where:
            raise ConfigError(f"{folder} has no tensor {theirs} (snowtrain's {ours})", file=file, key=key,
                              fix="start from a complete LlamaForCausalLM folder")
        shape = tensors.shape(theirs)
        if shape != tuple(p.global_shape):
            raise ConfigError(f"{folder}: {theirs} has shape {list(shape)}, the run's model needs "
                              f"{list(p.global_shape)}", file=file, key=key,
                              fix="pick a folder of the run's model shape")
        dim = p.tp_dim
        size = shape[dim] // tp_size if dim is not None else 0
        local[ours] = tensors.read(theirs, dim, tp_rank * size, (tp_rank + 1) * size)
    optimizer.load_weights(local)
    optimizer.reset_moments()
