"""Small datasets and recipes for trainer tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_prep.indexed import IndexedDatasetWriter
from snowtrain.config import (CheckpointConfig, DatasetConfig, LoggingConfig, ModelConfig,
                              PhaseConfig, RunConfig, ScheduleConfig)

VOCAB = 512


def make_datasets(root: Path, n: int = 3, docs: int = 40, seed: int = 0) -> list[str]:
    """Dataset d holds tokens from its own id range, so a sample's origin is visible."""
    rng = np.random.default_rng(seed)
    prefixes = []
    for d in range(n):
        prefix = str(root / f"ds{d}_text_document")
        lo = 1 + d * (VOCAB - 1) // n
        hi = 1 + (d + 1) * (VOCAB - 1) // n
        with IndexedDatasetWriter(prefix, vocab_size=VOCAB) as w:
            for _ in range(docs):
                w.add_document(rng.integers(lo, hi, size=int(rng.integers(20, 120))))
        prefixes.append(prefix)
    return prefixes


def recipe(root: Path, prefixes, *, steps=12, tp=1, zero1=False, save_interval=4, weights=None,
           phases=1) -> RunConfig:
    cfg = RunConfig(name="t", seed=3)
    cfg.model = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4,
                            num_kv_heads=2, vocab_size=VOCAB, max_seq_len=64)
    cfg.precision.compute_dtype = "fp32"
    cfg.parallel.tensor_parallel, cfg.parallel.zero1 = tp, zero1
    cfg.parallel.grad_bucket_mb = 0.05
    cfg.optim.lr = 3e-3
    cfg.data.num_workers = 0
    cfg.data.cache_dir = str(root / "cache")
    cfg.checkpoint = CheckpointConfig(dir=str(root / "ckpt"), save_interval=save_interval, keep_last=10,
                                      async_save=False)
    cfg.logging = LoggingConfig(dir=str(root / "logs"), log_interval=100)
    gbs, seq = 8, 32
    for i in range(phases):
        cfg.phases.append(PhaseConfig(
            name=f"p{i + 1}", tokens=steps * gbs * seq, global_batch_size=gbs, micro_batch_size=2,
            seq_len=seq, init_from=None if i == 0 else "previous",
            schedule=ScheduleConfig(kind="cosine", warmup_steps=2, min_lr=3e-4),
            datasets=[DatasetConfig(path=p, weight=None if weights is None else weights[j])
                      for j, p in enumerate(prefixes)]))
    return cfg


def losses(log_dir: Path, phase: str | None = None) -> dict[int, float]:
    """step -> loss from metrics.jsonl; a resumed run's later record of a step wins."""
    out = {}
    for line in (Path(log_dir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r and (phase is None or r["phase"] == phase):
            out[r["step"]] = r["loss"]
    return out


def events(log_dir: Path) -> list[str]:
    return [json.loads(line)["event"] for line in (Path(log_dir) / "metrics.jsonl").read_text().splitlines()
            if "event" in json.loads(line)]
