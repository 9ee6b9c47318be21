"""Typed run configuration: dataclasses <-> YAML, dotted overrides, validation with clear errors.

A recipe YAML holds a whole run (model, parallelism, optimizer, phases, checkpointing, logging).
Any mapping may say `include: path.yaml` to start from another file (relative to the including
file); its own keys then override the included ones. `save_config` writes the fully resolved
config, and `load_config(save_config(c)) == c`.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A config problem, located by file and dotted key, with what to do about it."""

    def __init__(self, message: str, *, file: str | os.PathLike | None = None, key: str = "",
                 fix: str = ""):
        self.file, self.key, self.fix = (str(file) if file else None), key, fix
        where = ", ".join(p for p in (str(file) if file else "", f"key '{key}'" if key else "") if p)
        text = f"{where}: {message}" if where else message
        super().__init__(f"{text}\n  fix: {fix}" if fix else text)


# ----------------------------------------------------------------------------- the dataclasses

@dataclass
class KernelsConfig:
    """Which implementation each fusable op uses: torch (reference, runs anywhere), fused
    (snowtrain's CUDA kernels, csrc/), te / apex where those packages are installed. fused on a
    CPU falls back to torch with a warning, or fails when strict."""
    rmsnorm: Literal["torch", "fused", "te", "apex"] = "torch"
    swiglu: Literal["torch", "fused"] = "torch"
    rope: Literal["torch", "fused", "te", "apex"] = "torch"
    cross_entropy: Literal["torch", "fused", "te"] = "torch"
    strict: bool = False

    def backends(self) -> dict[str, str]:
        return {op: getattr(self, op) for op in KERNEL_OPS}


KERNEL_OPS = ("rmsnorm", "swiglu", "rope", "cross_entropy")


@dataclass
class ModelConfig:
    """Llama architecture. Defaults are the recipe's 1.3B model."""
    num_layers: int = 24
    hidden_size: int = 2048
    ffn_hidden_size: int = 5632
    num_attention_heads: int = 16
    # Key/value heads; equal to num_attention_heads is plain multi-head attention, fewer is GQA.
    num_kv_heads: Optional[int] = None
    vocab_size: int = 64000
    max_seq_len: int = 8192
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile each transformer block (inductor); see docs/training.md
    kernels: KernelsConfig = field(default_factory=KernelsConfig)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class ParallelConfig:
    tensor_parallel: int = 1
    # None: whatever the world size leaves after tensor parallelism.
    data_parallel: Optional[int] = None
    zero1: bool = False
    # Data-parallel gradient buckets, reduced while the backward pass still runs.
    grad_bucket_mb: float = 25.0
    backend: Literal["auto", "nccl", "gloo"] = "auto"


@dataclass
class PrecisionConfig:
    # bf16 compute with fp32 master weights; fp32 runs everything in fp32 (CPU tests).
    compute_dtype: Literal["bf16", "fp32"] = "bf16"
    grad_reduce_dtype: Literal["fp32", "bf16"] = "fp32"


@dataclass
class OptimizerConfig:
    name: Literal["adamw"] = "adamw"
    # Peak learning rate; schedules scale it.
    lr: float = 5.3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # auto: torch's fused AdamW on GPU, foreach on CPU; apex: apex's FusedAdam.
    impl: Literal["auto", "torch", "fused", "apex"] = "auto"


@dataclass
class ScheduleConfig:
    """Learning-rate schedule of one phase, in optimizer steps.

    cosine: warmup from `start_lr` to peak, cosine to `min_lr` at the phase end (or decay_steps).
    linear: warmup, then linear to `min_lr`. constant: warmup, then peak.
    wsd: warmup, stable at peak, then linear to `min_lr` over the last `decay_fraction`.
    """
    kind: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    warmup_steps: int = 0
    # None: the optimizer's lr.
    peak_lr: Optional[float] = None
    start_lr: float = 0.0
    min_lr: float = 0.0
    # None: decay until the end of the phase.
    decay_steps: Optional[int] = None
    decay_fraction: float = 0.2


@dataclass
class DatasetConfig:
    """One Megatron indexed dataset (`path` is the prefix of .bin/.idx) in a phase's blend."""
    path: str = ""
    # Explicit blend weight; when every weight is None they come from tokens x repeat.
    weight: Optional[float] = None
    # How many times the dataset's tokens are seen in the phase (the recipe repeats phase 2 x4).
    repeat: float = 1.0
    name: Optional[str] = None
    # When `path` is a data-prep output folder (it holds manifest.json), it stands for every
    # dataset the manifest lists, or only these languages; a weight is split by their tokens.
    languages: Optional[list[str]] = None


@dataclass
class PhaseConfig:
    name: str = "phase1"
    # Token budget; the phase ends (with a checkpoint) when it is reached.
    tokens: int = 0
    global_batch_size: int = 512
    micro_batch_size: int = 1
    seq_len: int = 8192
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    datasets: list[DatasetConfig] = field(default_factory=list)
    # Checkpoint to start from: "previous" (the previous phase's final one; nothing for the first
    # phase), a path, or null (from scratch).
    init_from: Optional[str] = "previous"


@dataclass
class CheckpointConfig:
    dir: str = "checkpoints"
    save_interval: int = 1000
    keep_last: int = 2
    keep_phase_ends: bool = True
    async_save: bool = False
    resume: bool = True


@dataclass
class LoggingConfig:
    dir: str = "logs"
    log_interval: int = 1
    jsonl: bool = True
    tensorboard: bool = False


@dataclass
class DataConfig:
    # Where megatron-core caches its sample indices; None: beside the checkpoints.
    cache_dir: Optional[str] = None
    # Fraction of each dataset held out for validation.
    valid_fraction: float = 0.0
    num_workers: int = 2


@dataclass
class ValidationConfig:
    # Validation loss on each dataset's held-out split (needs data.valid_fraction > 0): every
    # `interval` steps (0: only at the end of each phase), on the first `sequences` sequences
    # of each dataset's split (all of them when it has fewer).
    interval: int = 0
    sequences: int = 64


@dataclass
class ProfileConfig:
    # torch.profiler on steps start_step .. start_step + steps - 1 of each phase (the step before
    # them warms the profiler up), on the listed ranks (null: every rank); traces and operator
    # tables go to `dir` (null: <logging.dir>/profile). See docs/training.md, "Profiling".
    enabled: bool = False
    start_step: int = 10
    steps: int = 3
    ranks: Optional[list[int]] = field(default_factory=lambda: [0])
    dir: Optional[str] = None
    record_shapes: bool = False
    memory: bool = False


@dataclass
class TrainingConfig:
    # A non-finite loss or gradient norm: "stop" saves the last good state and stops with a
    # message; "skip" drops the batch and goes on (at most max_skips times in a row).
    on_nonfinite: Literal["stop", "skip"] = "stop"
    max_skips: int = 10
    # GPU memory used by the fit check before training (`snowtrain plan` shows the estimate);
    # null: the device's own.
    gpu_memory_gib: Optional[float] = None
    # Peak dense bf16 FLOP/s of one accelerator, for MFU (989 TFLOP/s: H100 SXM datasheet).
    peak_tflops: float = 989.0
    # A rank that finishes no step, validation or save for this long after its first step is
    # hung: it prints every thread's stack and exits 4, which the SLURM scripts requeue (our
    # choice: 30 minutes, well above a step plus a save of the 1.3B model). null: never.
    hang_timeout_s: Optional[float] = 1800.0


@dataclass
class RunConfig:
    name: str = "snowtrain"
    seed: int = 1234
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    phases: list[PhaseConfig] = field(default_factory=list)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    # Tokenizer model the datasets were written with (for decoding and vocab checks).
    tokenizer: Optional[str] = None

    def phase(self, name: str) -> PhaseConfig:
        for p in self.phases:
            if p.name == name:
                return p
        names = [p.name for p in self.phases]
        raise ConfigError(f"no phase named '{name}'", key="phases",
                          fix=f"choose one of {names}" + suggest(name, names))


# ----------------------------------------------------------------------------- YAML loading

def suggest(word: str, choices) -> str:
    """' (did you mean X?)' for the closest of `choices`, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMBT])\s*$", re.I)
_SIZE_FACTOR = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def _plain(value: Any) -> Any:
    """Plain dicts and lists all the way down (for free-form sections, which are dumped as YAML)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class _Mapping(dict):
    """A YAML mapping that remembers which file each of its keys came from."""

    def __init__(self, items=(), origins=None):
        super().__init__(items)
        self.origins: dict = dict(origins or {})


def _tag(node: Any, origin: str) -> Any:
    if isinstance(node, list):
        return [_tag(v, origin) for v in node]
    if isinstance(node, dict):
        return _Mapping({k: _tag(v, origin) for k, v in node.items()}, {k: origin for k in node})
    return node


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML keeps the last silently,
    so a second `optim:` section would quietly replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"key {key!r} is given twice (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1}): keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"include cycle: {chain}", file=path, fix="remove one of the includes")
    if not path.is_file():
        raise ConfigError("file not found", file=path, fix="check the path (includes are "
                          "relative to the file that includes them)")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=path, fix="fix the YAML syntax") from None
    return _expand_includes(_tag(data, str(path)), path, (*seen, path))


def _expand_includes(node: Any, path: Path, seen: tuple[Path, ...]) -> Any:
    if isinstance(node, list):
        return [_expand_includes(v, path, seen) for v in node]
    if not isinstance(node, dict):
        return node
    node = _Mapping({k: _expand_includes(v, path, seen) for k, v in node.items()},
                    getattr(node, "origins", {}))
    inc = node.pop("include", None)
    if inc is None:
        return node
    merged: dict = _Mapping()
    for rel in [inc] if isinstance(inc, str) else inc:
        base = _read_yaml(path.parent / rel, seen)
        if not isinstance(base, dict):
            raise ConfigError("an included file must hold a mapping", file=path.parent / rel)
        merged = _deep_merge(merged, base)
    return _deep_merge(merged, node)


def _deep_merge(base: dict, over: dict) -> dict:
    out = _Mapping(base, getattr(base, "origins", {}))
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        if k in getattr(over, "origins", {}):
            out.origins[k] = over.origins[k]
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp)).replace("NoneType", "null")
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is dict or origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, file) -> Any:
    """Checks `value` against the annotation `tp` and builds dataclasses; ConfigError if wrong."""
    origin = typing.get_origin(tp)
    bad = lambda: ConfigError(  # noqa: E731
        f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}", file=file, key=key,
        fix=f"give a value of type {_type_name(tp)}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key, file)
            except ConfigError:
                pass
        raise bad()
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{value!r} is not one of {list(choices)}", file=file, key=key,
                              fix=f"use one of {list(choices)}" + suggest(str(value), map(str, choices)))
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise bad()
        return _plain(value)  # free-form: its own section checks its keys
    if origin is list:
        if not isinstance(value, list):
            raise bad()
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]", file) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad()
        return _build(tp, value, key, file)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, str) and (m := _SIZE.match(value)):
            n = float(m.group(1)) * _SIZE_FACTOR[m.group(2).upper()]
            if n != int(n):
                raise bad()
            return int(n)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad()
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string
            except ValueError:
                raise bad() from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")


def _build(cls, data: dict, prefix: str, file):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        file = getattr(data, "origins", {}).get(k, file)
        if k not in names:
            raise ConfigError(f"unknown key '{k}' in {cls.__name__}", file=file, key=key,
                              fix=f"remove it or use a known key{suggest(str(k), names)}; "
                                  f"known: {', '.join(names)}")
        kwargs[k] = _convert(v, hints[k], key, file)
    return cls(**kwargs)


def config_from_dict(data: dict, cls=RunConfig, file=None):
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping", file=file)
    return _build(cls, data, "", file)


def read_config(path: str | os.PathLike, cls, overrides: list[str] | None = None):
    """A YAML file (with includes) plus `key.path=value` overrides, as the dataclass `cls`;
    unknown keys and wrong types are ConfigErrors naming the file and the key."""
    path = Path(path)
    data = _read_yaml(path) or {}
    for ov in overrides or []:
        apply_override(data, ov)
    return config_from_dict(data, cls, file=path)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None,
                validate: bool = True) -> RunConfig:
    """Loads a recipe YAML (with includes), applies `key.path=value` overrides, validates."""
    path = Path(path)
    cfg = read_config(path, RunConfig, overrides)
    if validate:
        validate_config(cfg, file=path)
    return cfg


def apply_override(data: dict, override: str) -> None:
    """`optim.lr=3e-4`, `phases.phase2.tokens=50B` (a list item by its name or index)."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' is not key=value",
                          fix="write it as --set section.key=value, e.g. --set optim.lr=3e-4")
    dotted, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    parts = dotted.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            idx = _list_index(node, part, where)
            if last:
                node[idx] = _tag(value, f"--set {override}")
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if hasattr(node, "origins"):
                node.origins[part] = f"--set {override}"
            if last:
                node[part] = _tag(value, f"--set {override}")
            else:
                node = node.setdefault(part, _Mapping())
        else:
            raise ConfigError(f"cannot descend into a {type(node).__name__}", key=where,
                              fix="check the override's key path")


def _list_index(items: list, part: str, where: str) -> int:
    if part.isdigit() and int(part) < len(items):
        return int(part)
    names = [it.get("name") for it in items if isinstance(it, dict)]
    if part in names:
        return names.index(part)
    raise ConfigError(f"no list item '{part}'", key=where,
                      fix=f"use an index 0..{len(items) - 1} or a name among {names}"
                          + suggest(part, [n for n in names if n]))


# ----------------------------------------------------------------------------- saving

def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg, path: str | os.PathLike) -> Path:
    """Writes the resolved config atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(dump_config(cfg))
    os.replace(tmp, path)
    return path


def diff_configs(old, new, prefix: str = "") -> list[str]:
    """Human-readable differences between two configs (`key: old -> new`)."""
    a, b = (config_to_dict(old), config_to_dict(new)) if not isinstance(old, dict) else (old, new)
    out = []
    for k in list(a) + [k for k in b if k not in a]:
        key = f"{prefix}.{k}" if prefix else str(k)
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, key)
        elif isinstance(va, list) and isinstance(vb, list) and len(va) == len(vb) and any(
                isinstance(x, dict) for x in va):
            for i, (x, y) in enumerate(zip(va, vb)):
                sub = f"{key}[{i}]"
                out += diff_configs(x, y, sub) if isinstance(x, dict) else (
                    [f"{sub}: {x!r} -> {y!r}"] if x != y else [])
        elif va != vb:
            out.append(f"{key}: {va!r} -> {vb!r}")
    return out


# ----------------------------------------------------------------------------- validation

def check_batch_layout(global_batch_size: int, micro_batch_size: int, data_parallel: int, *,
                       key: str, fix: str, file=None) -> None:
    """Every data-parallel rank must take whole micro-batches of the global batch (the rule
    `snowtrain train` enforces at start and `snowtrain plan` for a GPU count)."""
    if global_batch_size % (data_parallel * micro_batch_size):
        raise ConfigError(f"global_batch_size={global_batch_size} over {data_parallel} data-parallel "
                          f"ranks is not a whole number of micro-batches of {micro_batch_size} per rank",
                          file=file, key=key, fix=fix)


def validate_config(cfg: RunConfig, file=None) -> RunConfig:
    """Checks values that depend on each other; raises the first problem as ConfigError."""
    m, par = cfg.model, cfg.parallel
    err = lambda msg, key, fix: ConfigError(msg, file=file, key=key, fix=fix)  # noqa: E731
    for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                "vocab_size", "max_seq_len"):
        if getattr(m, key) <= 0:
            raise err(f"must be positive, got {getattr(m, key)}", f"model.{key}", "set a positive value")
    if m.hidden_size % m.num_attention_heads:
        raise err(f"num_attention_heads={m.num_attention_heads} does not divide "
                  f"hidden_size={m.hidden_size}", "model.num_attention_heads",
                  f"choose a head count dividing {m.hidden_size}, e.g. {_divisor_near(m.hidden_size, m.num_attention_heads)}")
    if m.num_kv_heads is not None and m.num_kv_heads < 1:
        raise err(f"must be >= 1 or null, got {m.num_kv_heads}", "model.num_kv_heads",
                  "leave it null for multi-head attention, or give a divisor of num_attention_heads")
    if m.num_attention_heads % m.kv_heads:
        raise err(f"num_kv_heads={m.kv_heads} does not divide num_attention_heads="
                  f"{m.num_attention_heads}", "model.num_kv_heads",
                  "use a divisor of num_attention_heads (or leave it null for multi-head attention)")
    if (m.head_dim % 2):
        raise err(f"head dimension {m.head_dim} is odd; rotary embeddings need an even one",
                  "model.hidden_size", "make hidden_size / num_attention_heads even")
    tp = par.tensor_parallel
    if tp < 1:
        raise err(f"must be >= 1, got {tp}", "parallel.tensor_parallel", "use 1 for no tensor parallelism")
    for key, value in (("num_attention_heads", m.num_attention_heads), ("num_kv_heads", m.kv_heads),
                       ("vocab_size", m.vocab_size), ("ffn_hidden_size", m.ffn_hidden_size)):
        if value % tp:
            raise err(f"tensor_parallel={tp} does not divide model.{key}={value}",
                      "parallel.tensor_parallel",
                      f"use a tensor-parallel size dividing {value} (e.g. {_divisor_near(value, tp)}), "
                      f"or change model.{key}")
    if par.data_parallel is not None and par.data_parallel < 1:
        raise err("must be >= 1 or null", "parallel.data_parallel", "leave it null to use every rank")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise err(f"betas must be two numbers in [0, 1), got {cfg.optim.betas}", "optim.betas",
                  "use e.g. [0.9, 0.95]")
    if not cfg.optim.lr > 0 or not math.isfinite(cfg.optim.lr):
        raise err(f"must be a positive number, got {cfg.optim.lr}", "optim.lr", "set a positive learning rate")
    if not 0 <= cfg.data.valid_fraction < 1:
        raise err(f"must be in [0, 1), got {cfg.data.valid_fraction}", "data.valid_fraction",
                  "use e.g. 0.0 (nothing held out) or 0.001")
    seen = set()
    for i, ph in enumerate(cfg.phases):
        key = f"phases[{i}]"
        if ph.name in seen:
            raise err(f"duplicate phase name '{ph.name}'", f"{key}.name", "give every phase its own name")
        seen.add(ph.name)
        if ph.tokens <= 0:
            raise err(f"token budget must be positive, got {ph.tokens}", f"{key}.tokens",
                      "set e.g. tokens: 500B")
        if ph.micro_batch_size < 1 or ph.global_batch_size < ph.micro_batch_size:
            raise err(f"micro_batch_size={ph.micro_batch_size} must be >= 1 and <= global_batch_size="
                      f"{ph.global_batch_size}", f"{key}.micro_batch_size", "lower micro_batch_size")
        if ph.global_batch_size % ph.micro_batch_size:
            raise err(f"micro_batch_size={ph.micro_batch_size} does not divide global_batch_size="
                      f"{ph.global_batch_size}", f"{key}.global_batch_size",
                      "make the global batch a multiple of the micro batch")
        if ph.seq_len < 1:
            raise err(f"must be positive, got {ph.seq_len}", f"{key}.seq_len", "set e.g. seq_len: 8192")
        if ph.seq_len > m.max_seq_len:
            raise err(f"seq_len={ph.seq_len} exceeds model.max_seq_len={m.max_seq_len}",
                      f"{key}.seq_len", f"use seq_len <= {m.max_seq_len} or raise model.max_seq_len")
        if not ph.datasets:
            raise err("no datasets", f"{key}.datasets", "list at least one dataset prefix under datasets:")
        weights = [d.weight for d in ph.datasets]
        if any(w is None for w in weights) and any(w is not None for w in weights):
            raise err("some datasets have a weight and some do not", f"{key}.datasets",
                      "give every dataset a weight, or none (weights then come from tokens x repeat)")
        for j, d in enumerate(ph.datasets):
            if not d.path:
                raise err("empty dataset path", f"{key}.datasets[{j}].path",
                          "give the prefix of a .bin/.idx pair")
            if (d.weight is not None and d.weight < 0) or d.repeat <= 0:
                raise err("weight must be >= 0 and repeat > 0", f"{key}.datasets[{j}]",
                          "fix the weight or repeat")
        sch = ph.schedule
        if sch.warmup_steps < 0 or sch.min_lr < 0 or sch.start_lr < 0:
            raise err("warmup_steps, min_lr and start_lr must be >= 0", f"{key}.schedule",
                      "fix the negative value")
        if not 0 < sch.decay_fraction <= 1:
            raise err(f"decay_fraction must be in (0, 1], got {sch.decay_fraction}",
                      f"{key}.schedule.decay_fraction", "use e.g. 0.2")
    if cfg.validation.interval < 0 or cfg.validation.sequences < 1:
        raise err(f"interval must be >= 0 and sequences >= 1, got {cfg.validation.interval} and "
                  f"{cfg.validation.sequences}", "validation",
                  "use e.g. interval: 1000 (0: at the end of each phase only), sequences: 64")
    if cfg.training.hang_timeout_s is not None and not cfg.training.hang_timeout_s > 0:
        raise err(f"must be positive or null, got {cfg.training.hang_timeout_s}", "training.hang_timeout_s",
                  "use e.g. 1800 (longer than a step plus a checkpoint save), or null to never time out")
    prof = cfg.profile
    if prof.start_step < 1 or prof.steps < 1 or any(r < 0 for r in prof.ranks or []):
        raise err(f"start_step and steps must be >= 1 and ranks >= 0, got start_step={prof.start_step}, "
                  f"steps={prof.steps}, ranks={prof.ranks}", "profile",
                  "use e.g. start_step: 10, steps: 3, ranks: [0] (null: every rank)")
    if cfg.validation.interval > 0 and cfg.data.valid_fraction <= 0:
        raise err(f"validation every {cfg.validation.interval} steps, but data.valid_fraction is "
                  f"{cfg.data.valid_fraction}: nothing is held out", "validation.interval",
                  "set data.valid_fraction (e.g. 0.001), or validation.interval: 0")
    if cfg.checkpoint.save_interval < 1 or cfg.checkpoint.keep_last < 1:
        raise err("save_interval and keep_last must be >= 1", "checkpoint",
                  "use e.g. save_interval: 1000, keep_last: 2")
    return cfg


def _divisor_near(n: int, target: int) -> int:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return min(divs, key=lambda d: (abs(d - target), d))


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def resolve_path(path: str, key: str = "", file=None) -> str:
    """Expands ${VAR} and ${VAR:-default} in a path; an unset variable is a ConfigError."""
    def sub(m):
        if m.group(1) in os.environ:
            return os.environ[m.group(1)]
        if m.group(2) is not None:
            return m.group(2)
        raise ConfigError(f"environment variable {m.group(1)} is not set", file=file, key=key,
                          fix=f"export {m.group(1)}=... or write the path out in the YAML")
    return os.path.expanduser(_ENV.sub(sub, path))


def expand_dataset_folders(datasets: list[DatasetConfig], key_prefix: str = "phases[0]",
                           file=None) -> list[tuple[DatasetConfig, int]]:
    """Each dataset with its index in the YAML list; a data-prep output folder becomes one
    dataset per language its manifest lists, named '<folder or name>/<lang>'."""
    out = []
    for j, d in enumerate(datasets):
        key = f"{key_prefix}.datasets[{j}].path"
        path = resolve_path(d.path, key, file) if d.path else d.path
        if not (path and os.path.isdir(path)):
            if d.languages is not None:
                raise ConfigError("languages is only for a data-prep output folder, and "
                                  f"'{path}' is not a folder", file=file,
                                  key=f"{key_prefix}.datasets[{j}].languages",
                                  fix="remove languages, or point path at the output folder")
            out.append((d, j))
            continue
        manifest = os.path.join(path, "manifest.json")
        if not os.path.isfile(manifest):
            raise ConfigError(f"'{path}' is a folder without manifest.json", file=file, key=key,
                              fix="name a dataset prefix (without .bin/.idx) or a finished "
                                  "data-prep output folder")
        try:
            with open(manifest) as f:
                langs = sorted(json.load(f).get("datasets") or {})
        except (ValueError, AttributeError) as e:
            raise ConfigError(f"{manifest} is not a readable data-prep manifest ({e})", file=file,
                              key=key, fix="re-run the data-prep phase that wrote this folder") from None
        if d.languages is not None:
            unknown = sorted(set(d.languages) - set(langs))
            if unknown:
                raise ConfigError(f"{manifest} has no datasets for {unknown}; it has {langs}",
                                  file=file, key=f"{key_prefix}.datasets[{j}].languages",
                                  fix="list only languages the output holds")
            langs = [lang for lang in langs if lang in d.languages]
        if not langs:
            raise ConfigError(f"{manifest} lists no datasets", file=file, key=key,
                              fix="re-run the data-prep phase that writes it")
        prefixes = [os.path.join(path, f"{lang}_text_document") for lang in langs]
        weights: list[Optional[float]] = [None] * len(langs)
        if d.weight is not None:
            tokens = [_dataset_tokens(p, key, file) for p in prefixes]
            weights = [d.weight * t / max(1, sum(tokens)) for t in tokens]
        base = d.name or os.path.basename(path.rstrip("/"))
        for lang, prefix, w in zip(langs, prefixes, weights):
            out.append((DatasetConfig(path=prefix, weight=w, repeat=d.repeat, name=f"{base}/{lang}"), j))
    return out


def _dataset_tokens(prefix: str, key: str, file=None) -> int:
    from data_prep.indexed import read_index
    try:
        return int(read_index(prefix).sequence_lengths.sum(dtype="int64"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read dataset '{prefix}': {e}", file=file, key=key,
                          fix="re-run data-prep for this folder") from None


def check_dataset_paths(cfg: RunConfig, phase: str | None = None, file=None) -> None:
    """Every dataset prefix of the phase(s) to run must have both its .bin and .idx."""
    for i, ph in enumerate(cfg.phases):
        if phase is not None and ph.name != phase:
            continue
        for d, j in expand_dataset_folders(ph.datasets, f"phases[{i}]", file):
            key = f"phases[{i}].datasets[{j}].path"
            prefix = resolve_path(d.path, key, file)
            missing = [s for s in (".bin", ".idx") if not os.path.isfile(prefix + s)]
            if missing:
                raise ConfigError(
                    f"dataset '{prefix}' is missing {' and '.join(prefix + s for s in missing)}",
                    file=file, key=key,
                    fix="run data-prep for this phase, or point the path at an existing prefix "
                        "(without .bin/.idx), or at a data-prep output folder")
