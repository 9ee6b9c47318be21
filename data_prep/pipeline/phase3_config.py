"""The phase-3 pipeline's YAML: seeds, endpoint, prompts, answer checks, and the same filter,
dedup and decontamination sections as phase 1. Unknown keys and wrong types are errors naming
the key."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from snowtrain.config import ConfigError, read_config, resolve_path, suggest

from ..synth.answers import CODE_BLOCK_MODES
from ..synth.prompts import DEFAULT_COMPLETION, DEFAULT_SYSTEM, DEFAULT_USER, template_problem
from .config import DecontamStageConfig, DedupStageConfig, _check_section


@dataclass
class EndpointConfig:
    # The server's OpenAI-compatible root, e.g. vLLM's http://host:8000/v1.
    base_url: str = "http://localhost:8000/v1"
    # chat: /chat/completions with the prompt's system and user messages (instruction models);
    # completions: /completions with the completion template (base models).
    api: Literal["chat", "completions"] = "chat"
    model: str = "meta-llama/Llama-3.1-70B-Instruct"
    # The NAME of an environment variable holding the API key (sent as a Bearer token); the key
    # itself is never written anywhere. null: no key.
    api_key_env: Optional[str] = None
    # Requests in flight per rank.
    concurrency: int = 64
    timeout_s: float = 600.0
    # Retries of connection errors, timeouts, 429 and 5xx, with exponential backoff + jitter.
    retries: int = 6
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0


@dataclass
class GenerationConfig:
    temperature: float = 0.0
    max_tokens: int = 2048
    # More request fields passed as they are (top_p, stop, seed, ...).
    extra: dict = field(default_factory=dict)


@dataclass
class PromptConfig:
    # chat: placeholders {seed} {language} {lang} {fence} {ext} {path} {repo}.
    system: Optional[str] = DEFAULT_SYSTEM
    user: str = DEFAULT_USER
    # completions: the prompt; the file is the seed followed by the completion.
    completion: str = DEFAULT_COMPLETION


@dataclass
class AnswersConfig:
    # Answers that ended for another reason are dropped ("length": truncated).
    finish_reasons: list[str] = field(default_factory=lambda: ["stop"])
    # chat: which fenced block is the file: language (the first tagged with the language, or
    # untagged), first, longest.
    code_block: str = "language"


@dataclass
class Phase3Config:
    # A finished phase-2 (or any data-prep) output: the seed files and the tokenizer.
    input: str = "data/phase2"
    output: str = "data/phase3"
    work_dir: Optional[str] = None
    # How many seeds (= requests); or target_tokens / tokens_per_seed of them.
    num_seeds: Optional[int] = None
    target_tokens: Optional[int] = None
    # Kept tokens per requested seed, for target_tokens (check a small run's manifest).
    tokens_per_seed: float = 500.0
    # Fixed shares; the other languages split the rest by their input token counts.
    language_shares: dict = field(default_factory=lambda: {"python": 0.5})
    # Only these input languages; null: all of them.
    languages: Optional[list[str]] = None
    seed: int = 1234
    seed_lines: list[int] = field(default_factory=lambda: [1, 15])
    # Longest seed in characters (lines past it are left out); null: no limit. For teachers
    # with a short context window.
    max_seed_chars: Optional[int] = None
    # Seeds per unit: the unit of work, of resuming and of MPI distribution.
    unit_size: int = 64
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    answers: AnswersConfig = field(default_factory=AnswersConfig)
    # The run fails when more than this share of the seeds' requests failed (after retries);
    # the failed ones are requested again by the next run.
    max_error_fraction: float = 0.05
    # Stop early when this many requests in a row failed: the endpoint is down.
    max_consecutive_errors: int = 200
    filters: dict = field(default_factory=dict)
    exact_dedup: DedupStageConfig = field(default_factory=DedupStageConfig)
    near_dedup: DedupStageConfig = field(default_factory=DedupStageConfig)
    decontamination: DecontamStageConfig = field(default_factory=DecontamStageConfig)
    # Units per tokenization shard (merged in order at the end).
    shard_units: int = 64

    def api_key(self) -> str | None:
        return os.environ.get(self.endpoint.api_key_env) if self.endpoint.api_key_env else None


def load_phase3_config(path, overrides: list[str] | None = None) -> Phase3Config:
    path = Path(path)
    cfg = read_config(path, Phase3Config, overrides)
    cfg.input = resolve_path(cfg.input, "input", path)
    cfg.output = resolve_path(cfg.output, "output", path)
    cfg.endpoint.base_url = resolve_path(cfg.endpoint.base_url, "endpoint.base_url", path)
    if cfg.work_dir:
        cfg.work_dir = resolve_path(cfg.work_dir, "work_dir", path)
    _check(cfg, path)
    _check_section(cfg, path)
    _check_input(cfg, path)
    return cfg


def _check_input(cfg: Phase3Config, path: Path) -> None:
    """The input must be a finished output holding the languages the config names."""
    from ..dataset_files import PhaseOutput
    try:
        langs = PhaseOutput(cfg.input).languages
    except (OSError, ValueError) as e:
        raise ConfigError(str(e), file=path, key="input",
                          fix="run data-prep phase2 first, or point input at a finished "
                              "data-prep output folder") from None
    for lang in cfg.languages or []:
        if lang not in langs:
            raise ConfigError(f"{cfg.input} has no {lang!r} dataset; it has {langs}", file=path,
                              key="languages", fix="name only languages the input holds"
                              + suggest(lang, langs))
    used = cfg.languages or langs
    for lang in cfg.language_shares:
        if lang not in used:
            raise ConfigError(f"{lang!r} is not among the languages used ({used})", file=path,
                              key=f"language_shares.{lang}",
                              fix="give shares only to languages of the input (and of languages)"
                              + suggest(lang, used))


def _check(cfg: Phase3Config, path: Path) -> None:
    def bad(key, message, fix):
        raise ConfigError(message, file=path, key=key, fix=fix)

    if (cfg.num_seeds is None) == (cfg.target_tokens is None):
        bad("num_seeds", "give exactly one of num_seeds and target_tokens",
            "e.g. num_seeds: 4000000, or target_tokens: 2B (with tokens_per_seed)")
    if cfg.num_seeds is not None and cfg.num_seeds < 1:
        bad("num_seeds", f"must be >= 1, got {cfg.num_seeds}", "use e.g. 48")
    if cfg.target_tokens is not None and cfg.target_tokens < 1:
        bad("target_tokens", f"must be >= 1, got {cfg.target_tokens}", "use e.g. 2B")
    if cfg.tokens_per_seed <= 0:
        bad("tokens_per_seed", "must be > 0", "use e.g. 500")
    for lang, share in cfg.language_shares.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            bad(f"language_shares.{lang}", f"a share must be a number in [0, 1], got {share!r}",
                "use e.g. python: 0.5")
    if sum(cfg.language_shares.values()) > 1 + 1e-9:
        bad("language_shares", f"the shares add up to {sum(cfg.language_shares.values())} > 1",
            "lower them; the languages not listed share what is left")
    if cfg.seed < 0:
        bad("seed", f"must be >= 0, got {cfg.seed}", "use e.g. 1234")
    if len(cfg.seed_lines) != 2 or not 1 <= cfg.seed_lines[0] <= cfg.seed_lines[1]:
        bad("seed_lines", f"expected [min, max] lines with 1 <= min <= max, got {cfg.seed_lines}",
            "use e.g. [1, 15]")
    if cfg.max_seed_chars is not None and cfg.max_seed_chars < 2:
        bad("max_seed_chars", f"must be >= 2, got {cfg.max_seed_chars}", "use e.g. 300, or null")
    for key in ("unit_size", "shard_units", "endpoint.concurrency", "generation.max_tokens",
                "max_consecutive_errors"):
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        if obj < 1:
            bad(key, f"must be >= 1, got {obj}", "use a positive number")
    if cfg.endpoint.retries < 0 or cfg.endpoint.timeout_s <= 0:
        bad("endpoint.retries" if cfg.endpoint.retries < 0 else "endpoint.timeout_s",
            "must be positive", "use e.g. retries: 6, timeout_s: 600")
    if not 0 <= cfg.max_error_fraction <= 1:
        bad("max_error_fraction", f"must be in [0, 1], got {cfg.max_error_fraction}", "use e.g. 0.05")
    if not cfg.endpoint.base_url.startswith(("http://", "https://")):
        bad("endpoint.base_url", f"{cfg.endpoint.base_url!r} is not an http(s) URL",
            "use e.g. http://localhost:8000/v1")
    if cfg.answers.code_block not in CODE_BLOCK_MODES:
        bad("answers.code_block", f"{cfg.answers.code_block!r} is not one of {list(CODE_BLOCK_MODES)}"
            + suggest(cfg.answers.code_block, CODE_BLOCK_MODES), f"use one of {list(CODE_BLOCK_MODES)}")
    if not cfg.answers.finish_reasons:
        bad("answers.finish_reasons", "empty: every answer would be dropped", "use [stop]")
    templates = [("prompt.completion", cfg.prompt.completion)] if cfg.endpoint.api == "completions" \
        else [("prompt.user", cfg.prompt.user), ("prompt.system", cfg.prompt.system)]
    for key, text in templates:
        if text is None:
            continue
        problem = template_problem(text, ("seed",) if key != "prompt.system" else ())
        if problem:
            bad(key, problem, "fix the template (see configs/data_prep/phase3.yaml)")
    env = cfg.endpoint.api_key_env
    if env and not os.environ.get(env):
        bad("endpoint.api_key_env", f"the environment variable {env} is not set (or empty)",
            f"export {env}=<your key>, or set api_key_env: null for a server without keys")


# What changes the answers: a run with other values needs --restart. The endpoint's address,
# key, concurrency and retry settings may change between runs (the server moved, say).
_GENERATION_KEYS = ("input", "num_seeds", "target_tokens", "tokens_per_seed", "language_shares",
                    "languages", "seed", "seed_lines", "max_seed_chars", "unit_size", "generation",
                    "prompt")
# What changes only the checks after generation: redone without --restart.
_POST_KEYS = ("answers", "filters", "exact_dedup", "near_dedup", "decontamination", "shard_units")


def generation_stamp(cfg: Phase3Config) -> str:
    d = dataclasses.asdict(cfg)
    stamp = {k: d[k] for k in _GENERATION_KEYS}
    stamp["endpoint"] = {"api": cfg.endpoint.api, "model": cfg.endpoint.model}
    return yaml.safe_dump(stamp, sort_keys=True)


def post_stamp(cfg: Phase3Config) -> str:
    d = dataclasses.asdict(cfg)
    return yaml.safe_dump({k: d[k] for k in _POST_KEYS}, sort_keys=True)


def dump(cfg: Phase3Config) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=True)
