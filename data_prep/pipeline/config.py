"""The phase-1 pipeline's YAML: sources, filters, deduplication, decontamination, grouping,
tokenizer and tokenization. Unknown keys and wrong types are errors naming the key."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from snowtrain.config import ConfigError, read_config, resolve_path

from ..sources.errors import check_languages, check_mapping


@dataclass
class SourceConfig:
    # tree: folders whose top-level subfolders are repositories; embedded: the standard library
    # and installed packages (the quickstart's corpus); parquet: The Stack v1-style shards;
    # jsonl: one object per line.
    type: Literal["tree", "embedded", "parquet", "jsonl"] = "tree"
    paths: list[str] = field(default_factory=list)
    # parquet: column names (The Stack v1 by default); jsonl: field names.
    columns: Optional[dict] = None
    # A stable hash-chosen share of the files (tree/embedded), for small runs.
    sample_fraction: float = 1.0


@dataclass
class DedupStageConfig:
    enabled: bool = True
    # For exact: {preference}; for near: NearDedupConfig's keys (ngram, num_perm, bands, rows,
    # threshold, verify, preference, ...).
    options: dict = field(default_factory=dict)


@dataclass
class DecontamStageConfig:
    enabled: bool = True
    # DecontamConfig's keys: humaneval, benchmarks (JSONL paths), mode, ngram, min_chars, ...
    options: dict = field(default_factory=dict)


@dataclass
class GroupingConfig:
    seed: int = 1234
    # A repository larger than this is split into several documents at file boundaries.
    max_doc_chars: int = 1 << 20


@dataclass
class TokenizerStageConfig:
    # An existing tokenizer.model to use; null: train one on a sample of the documents.
    model: Optional[str] = None
    vocab_size: int = 64000
    # Documents are sampled by a stable hash until about this much text is gathered.
    sample_mb: float = 1024.0
    seed: int = 0
    # Fixed so that the trained model does not depend on how many ranks ran.
    threads: int = 2


@dataclass
class Phase1Config:
    output: str = "data/phase1"
    # Intermediate results that make a killed run resumable; default <output>/.work.
    work_dir: Optional[str] = None
    sources: list[SourceConfig] = field(default_factory=list)
    # Keep only these languages (our names: python, java, cpp, ...); null: all.
    languages: Optional[list[str]] = None
    max_file_bytes: int = 1 << 20
    # Jupyter notebooks: "script" turns the .ipynb JSON into a percent-format script before the
    # filters (code cells, markdown as comments, no outputs; data_prep/notebooks.py); "raw"
    # keeps the JSON.
    notebooks: str = "script"
    # With notebooks: script, max_file_bytes applies to the script; the notebook's JSON (images
    # and outputs included) is read up to this size. Our choice.
    max_notebook_bytes: int = 32 << 20
    filters: dict = field(default_factory=dict)
    exact_dedup: DedupStageConfig = field(default_factory=DedupStageConfig)
    near_dedup: DedupStageConfig = field(default_factory=DedupStageConfig)
    decontamination: DecontamStageConfig = field(default_factory=DecontamStageConfig)
    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    tokenizer: TokenizerStageConfig = field(default_factory=TokenizerStageConfig)
    # Repositories are hashed into this many buckets, the unit of grouping and tokenization;
    # the output does not depend on the number of ranks.
    buckets: int = 64
    # Processes per rank for reading and filtering; null: the cores of the node / local ranks.
    workers: Optional[int] = None
    funnel_png: bool = True


# Keys that cannot change the outputs: a run may change them and resume from its work folder.
UNSTAMPED_KEYS = ("workers", "funnel_png")
# Keys added after runs were made, with their defaults: an older run's stamp without one reads as
# holding the default, so an upgrade does not refuse to resume a long run (the units it had
# already read keep the rule they were read with).
ADDED_KEYS = {"max_notebook_bytes": Phase1Config.max_notebook_bytes}


def load_phase1_config(path, overrides: list[str] | None = None) -> Phase1Config:
    path = Path(path)
    cfg = read_config(path, Phase1Config, overrides)
    if not cfg.sources:
        raise ConfigError("no sources", file=path, key="sources",
                          fix="list at least one source, e.g. - {type: parquet, paths: [shards/*.parquet]}")
    for i, s in enumerate(cfg.sources):
        if s.type != "embedded" and not s.paths:
            raise ConfigError("no paths", file=path, key=f"sources[{i}].paths",
                              fix="list the files, globs or folders to read")
        if not 0 < s.sample_fraction <= 1:
            raise ConfigError(f"sample_fraction must be in (0, 1], got {s.sample_fraction}",
                              file=path, key=f"sources[{i}].sample_fraction", fix="use e.g. 0.1")
    for key in ("max_file_bytes", "max_notebook_bytes"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"must be a whole number of bytes >= 1, got {value!r}", file=path, key=key,
                              fix=f"e.g. {key}: {getattr(Phase1Config, key)}")
    if cfg.notebooks not in ("script", "raw"):
        raise ConfigError(f"must be script or raw, got {cfg.notebooks!r}", file=path, key="notebooks",
                          fix="notebooks: script (code and markdown as a script) or raw (the JSON)")
    check_sources(cfg.sources, "sources", path)
    try:
        check_languages(cfg.languages)
    except ValueError as e:
        raise ConfigError(str(e), file=path, key="languages", fix="use our language names, or "
                          "null for all") from None
    cfg.output = resolve_path(cfg.output, "output", path)
    if cfg.work_dir:
        cfg.work_dir = resolve_path(cfg.work_dir, "work_dir", path)
    for i, s in enumerate(cfg.sources):
        s.paths = [resolve_path(p, f"sources[{i}].paths", path) for p in s.paths]
    if cfg.tokenizer.model:
        cfg.tokenizer.model = resolve_path(cfg.tokenizer.model, "tokenizer.model", path)
        from ..tokenizer import Tokenizer
        try:
            Tokenizer(cfg.tokenizer.model)
        except (OSError, ValueError) as e:
            raise ConfigError(str(e), file=path, key="tokenizer.model",
                              fix="give the tokenizer.model a data-prep run wrote (with "
                                  "special_tokens.json beside it), or null to train one") from None
    if cfg.buckets < 1:
        raise ConfigError("buckets must be >= 1", file=path, key="buckets", fix="use e.g. 64")
    _check_section(cfg, path)
    return cfg


def check_sources(sources: list[SourceConfig], key: str, path) -> None:
    """The columns / fields each parquet or JSONL source maps: unknown keys are errors."""
    from ..sources.jsonl import JSONL_FIELDS
    from ..sources.parquet import STACK_V1_COLUMNS
    for i, s in enumerate(sources):
        if s.type in ("parquet", "jsonl"):
            try:
                check_mapping(s.columns, STACK_V1_COLUMNS if s.type == "parquet" else JSONL_FIELDS,
                              "columns")
            except ValueError as e:
                raise ConfigError(str(e), file=path, key=f"{key}[{i}].columns",
                                  fix="map our keys to the input's column names, e.g. "
                                      "{content: text, path: file_path}") from None


def _check_section(cfg: Phase1Config, path) -> None:
    """The stage sections are checked by their own modules; report their errors with the file."""
    from ..decontam import DecontamConfig
    from ..dedup import ExactDedupConfig, NearDedupConfig
    from ..filters import FilterConfig
    for key, fn in (("filters", lambda: FilterConfig.from_dict(cfg.filters)),
                    ("exact_dedup.options", lambda: ExactDedupConfig.from_dict(cfg.exact_dedup.options)),
                    ("near_dedup.options", lambda: NearDedupConfig.from_dict(cfg.near_dedup.options)),
                    ("decontamination.options", lambda: DecontamConfig.from_dict(cfg.decontamination.options))):
        try:
            fn()
        except (ValueError, TypeError) as e:
            raise ConfigError(str(e), file=path, key=key, fix="fix or remove the key") from None
    if cfg.decontamination.enabled:      # read now, not after hours of reading and dedup
        from ..decontam import BenchmarkError, humaneval_path, load_benchmark_file
        dc = DecontamConfig.from_dict(cfg.decontamination.options)
        checks = [("decontamination.options.humaneval", humaneval_path)] if dc.humaneval else []
        checks += [(f"decontamination.options.benchmarks[{i}]", lambda b=b: load_benchmark_file(b))
                   for i, b in enumerate(dc.benchmarks)]
        for key, fn in checks:
            try:
                fn()
            except BenchmarkError as e:
                raise ConfigError(str(e), file=path, key=key,
                                  fix="fix the path or the file (JSON Lines with task_id and "
                                      "prompt/solution/test), or remove it") from None


def dump(cfg: Phase1Config) -> str:
    import dataclasses
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=True)
