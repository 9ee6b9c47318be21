"""The datasets of a phase on disk: paths, sizes, split ranges and start-up checks.

Everything here is cheap (it reads the .idx and, once per file version, scans the .bin for its
largest token id) and raises ConfigError naming the YAML key, the file and the fix.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from snowtrain.config import ConfigError, DatasetConfig, expand_dataset_folders, resolve_path

logger = logging.getLogger("snowtrain.data")

__all__ = ["DatasetSource", "open_sources", "split_string", "split_ranges", "scan_token_range",
           "check_token_ids"]

_SCAN_CHUNK = 1 << 24  # elements per np.max pass over the .bin


def split_string(valid_fraction: float) -> str:
    """Megatron's split string for a train/valid split (no test split)."""
    v = float(valid_fraction)
    if not 0.0 <= v < 1.0:
        raise ConfigError(f"valid_fraction must be in [0, 1), got {v}", key="data.valid_fraction",
                          fix="use e.g. 0.0 (no validation data) or 0.001")
    if v == 0.0:
        return "100,0,0"
    # Megatron parses the split with the regex [.0-9]+: no exponents.
    return f"{1.0 - v:.12f},{v:.12f},0"


def split_ranges(num_sequences: int, split: str) -> list[Optional[tuple[int, int]]]:
    """(begin, end) sequence index per split (train, valid, test), exactly as megatron-core's
    BlendedMegatronDatasetBuilder computes them; None for an empty split."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix, parse_and_normalize_split)

    out: list[Optional[tuple[int, int]]] = []
    for bookends in convert_split_vector_to_split_matrix(parse_and_normalize_split(split)):
        if bookends is None:
            out.append(None)
        else:
            out.append((int(round(bookends[0] * float(num_sequences))),
                        int(round(bookends[1] * float(num_sequences)))))
    return out


@dataclass
class DatasetSource:
    """One dataset prefix of a phase, checked and measured."""
    name: str
    prefix: str
    key: str                       # YAML key of its path, e.g. phases[1].datasets[0].path
    weight: Optional[float]
    repeat: float
    dtype: np.dtype
    num_sequences: int
    total_tokens: int              # every sequence
    train_range: tuple[int, int]   # sequence indices of the training split
    valid_range: Optional[tuple[int, int]]
    train_tokens: int
    valid_tokens: int
    bin_bytes: int

    def samples_per_epoch(self, seq_len: int) -> int:
        """Samples of one epoch of the training split (megatron's formula: the last label is the
        token after a sample, so one token is never an input)."""
        return (self.train_tokens - 1) // seq_len

    @property
    def fingerprint(self) -> dict:
        """Identifies this version of the data (goes into megatron's index cache key)."""
        return {"num_sequences": self.num_sequences, "num_tokens": self.total_tokens,
                "bin_bytes": self.bin_bytes, "dtype": self.dtype.name}


def blend_weights(sources: Sequence[DatasetSource]) -> tuple[list[float], str]:
    """The phase's normalised weights and where they come from: every dataset's `weight`, or
    none given and each dataset's training tokens x its `repeat`."""
    from .blend import normalize_weights, weights_from_tokens
    if all(s.weight is not None for s in sources):
        return normalize_weights([s.weight for s in sources]), "explicit"
    return (weights_from_tokens([s.train_tokens for s in sources], [s.repeat for s in sources]),
            "tokens x repeat")


def _dataset_name(d: DatasetConfig, prefix: str) -> str:
    return d.name or os.path.basename(prefix.rstrip("/"))


def open_sources(datasets: Sequence[DatasetConfig], *, seq_len: int, valid_fraction: float = 0.0,
                 key_prefix: str = "phases[0]", file=None) -> list[DatasetSource]:
    """Resolves, checks and measures every dataset of a phase (no collective calls)."""
    from data_prep.indexed import read_index

    if not datasets:
        raise ConfigError("no datasets", file=file, key=f"{key_prefix}.datasets",
                          fix="list at least one dataset prefix under datasets:")
    split = split_string(valid_fraction)
    sources: list[DatasetSource] = []
    seen: dict[str, str] = {}
    for d, j in expand_dataset_folders(list(datasets), key_prefix, file):
        key = f"{key_prefix}.datasets[{j}].path"
        if not d.path:
            raise ConfigError("empty dataset path", file=file, key=key,
                              fix="give the prefix of a .bin/.idx pair")
        prefix = resolve_path(d.path, key, file)
        for suffix in (".bin", ".idx"):
            if prefix.endswith(suffix) and os.path.isfile(prefix) and not os.path.isfile(
                    prefix + ".idx"):
                raise ConfigError(f"'{prefix}' is a file; the path must be the prefix without "
                                  f"{suffix}", file=file, key=key,
                                  fix=f"write '{prefix[:-len(suffix)]}'")
        missing = [prefix + s for s in (".bin", ".idx") if not os.path.isfile(prefix + s)]
        if missing:
            raise ConfigError(
                f"dataset '{prefix}' is missing {' and '.join(missing)}", file=file, key=key,
                fix="run data-prep for this phase, or point the path at an existing prefix "
                    "(without .bin/.idx)")
        name = _dataset_name(d, prefix)
        if name in seen:
            raise ConfigError(f"two datasets are both named '{name}' ({seen[name]} and {prefix})",
                              file=file, key=f"{key_prefix}.datasets[{j}].name",
                              fix="give each dataset its own name: (used in checkpoints)")
        seen[name] = prefix
        try:
            info = read_index(prefix)
        except (OSError, ValueError) as e:
            raise ConfigError(f"dataset '{name}': unreadable index: {e}", file=file, key=key,
                              fix="re-run data-prep for this dataset") from None
        lengths = info.sequence_lengths
        n = int(lengths.shape[0])
        total = int(lengths.sum(dtype=np.int64))
        bin_bytes = os.path.getsize(prefix + ".bin")
        if bin_bytes != total * info.dtype.itemsize:
            raise ConfigError(
                f"dataset '{name}': {prefix}.bin has {bin_bytes} bytes but its index describes "
                f"{total} tokens of {info.dtype} ({total * info.dtype.itemsize} bytes)",
                file=file, key=key, fix="the pair is truncated or mismatched: re-run data-prep")
        ranges = split_ranges(n, split)
        train, valid = ranges[0], ranges[1]
        if train is None or train[1] <= train[0]:
            raise ConfigError(f"dataset '{name}' ({prefix}) has {n} documents, none left for "
                              f"training with valid_fraction={valid_fraction}", file=file,
                              key="data.valid_fraction", fix="lower data.valid_fraction")
        train_tokens = int(lengths[train[0]:train[1]].sum(dtype=np.int64))
        valid_tokens = int(lengths[valid[0]:valid[1]].sum(dtype=np.int64)) if valid else 0
        if train_tokens < seq_len + 1:
            where = " in its training split" if valid else ""
            raise ConfigError(
                f"seq_len={seq_len} needs {seq_len + 1} tokens per sample, but dataset '{name}' "
                f"({prefix}) has only {train_tokens} tokens{where}", file=file,
                key=f"{key_prefix}.seq_len",
                fix=f"lower seq_len to at most {max(train_tokens - 1, 0)}, or give this dataset "
                    "more data (or drop it from the phase)")
        validated = bool(valid and valid[1] > valid[0])
        if validated and valid_tokens < seq_len + 1:
            # its documents stay out of training, but make no validation sample
            logger.warning(f"dataset '{name}' ({prefix}): its validation split holds {valid_tokens} "
                           f"tokens, fewer than one sample of seq_len={seq_len}: not validated "
                           "(raise data.valid_fraction to validate it)")
            validated = False
        if d.repeat <= 0 or (d.weight is not None and d.weight < 0):
            raise ConfigError("weight must be >= 0 and repeat > 0", file=file,
                              key=f"{key_prefix}.datasets[{j}]", fix="fix the weight or repeat")
        sources.append(DatasetSource(
            name=name, prefix=prefix, key=key, weight=d.weight, repeat=float(d.repeat),
            dtype=np.dtype(info.dtype), num_sequences=n, total_tokens=total,
            train_range=train, valid_range=valid if validated else None,
            train_tokens=train_tokens, valid_tokens=valid_tokens, bin_bytes=bin_bytes))
    weights = [s.weight for s in sources]
    if any(w is None for w in weights) and any(w is not None for w in weights):
        raise ConfigError("some datasets have a weight and some do not", file=file,
                          key=f"{key_prefix}.datasets",
                          fix="give every dataset a weight, or none (weights then come from "
                              "tokens x repeat)")
    if all(w is not None for w in weights) and sum(weights) <= 0:
        raise ConfigError("all blend weights are zero", file=file, key=f"{key_prefix}.datasets",
                          fix="give at least one dataset a positive weight")
    return sources


# ----------------------------------------------------------------------------- token-id check

def _cache_file(bin_path: str, cache_dir: Optional[str]) -> Optional[str]:
    if not cache_dir:
        return None
    digest = hashlib.md5(os.path.realpath(bin_path).encode(), usedforsecurity=False).hexdigest()
    return os.path.join(cache_dir, "token_ranges", f"{digest}.json")


def _version(bin_path: str, dtype) -> dict:
    st = os.stat(bin_path)
    return {"path": os.path.realpath(bin_path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
            "dtype": np.dtype(dtype).name}


def _read_cached(bin_path: str, dtype, cache_dir: Optional[str]) -> Optional[tuple[int, int]]:
    cache_file = _cache_file(bin_path, cache_dir)
    if cache_file is None:
        return None
    try:
        with open(cache_file) as f:
            c = json.load(f)
        if all(c.get(k) == v for k, v in _version(bin_path, dtype).items()):
            return int(c["min"]), int(c["max"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write_cached(bin_path: str, dtype, cache_dir: Optional[str], lo: int, hi: int) -> None:
    cache_file = _cache_file(bin_path, cache_dir)
    if cache_file is None:
        return
    try:
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        tmp = f"{cache_file}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({**_version(bin_path, dtype), "min": int(lo), "max": int(hi)}, f)
        os.replace(tmp, cache_file)
    except OSError:
        pass


def _scan_share(bin_path: str, dtype, part: int = 0, parts: int = 1) -> Optional[tuple[int, int]]:
    """(min, max) over chunks part, part + parts, ... of the .bin; None if it has none."""
    n = os.path.getsize(bin_path) // np.dtype(dtype).itemsize
    if n == 0 or part * _SCAN_CHUNK >= n:
        return None
    mm = np.memmap(bin_path, dtype=dtype, mode="r", shape=(n,))
    lo = hi = None
    for beg in range(part * _SCAN_CHUNK, n, parts * _SCAN_CHUNK):
        chunk = mm[beg:beg + _SCAN_CHUNK]
        cmin, cmax = int(chunk.min()), int(chunk.max())
        lo = cmin if lo is None else min(lo, cmin)
        hi = cmax if hi is None else max(hi, cmax)
    del mm
    return lo, hi


def scan_token_range(bin_path: str, dtype: np.dtype, cache_dir: Optional[str] = None
                     ) -> tuple[int, int]:
    """(min, max) token id in a .bin ((0, -1) if empty), by chunked np.min/np.max over its
    mmap; cached in ``cache_dir`` per file version (path, size, mtime)."""
    cached = _read_cached(bin_path, dtype, cache_dir)
    if cached is not None:
        return cached
    lo, hi = _scan_share(bin_path, dtype) or (0, -1)
    _write_cached(bin_path, dtype, cache_dir, lo, hi)
    return lo, hi


def check_token_ids(sources: Sequence[DatasetSource], vocab_size: Optional[int],
                    cache_dir: Optional[str] = None, file=None) -> list[tuple[int, int]]:
    """ConfigError if any dataset holds a token id outside [0, vocab_size); returns the
    (min, max) id of each.

    In a distributed run every rank scans its share of each .bin's chunks and the results are
    gathered, so all ranks raise the same error (or none): call it on every rank. Results are
    cached per file version in ``cache_dir`` (rank 0 reads and writes the cache).
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    bins = [(s.prefix + ".bin", s.dtype) for s in sources]
    cached = [_read_cached(b, t, cache_dir) for b, t in bins] if rank == 0 else None
    if distributed:
        box = [cached]
        dist.broadcast_object_list(box, src=0)
        cached = box[0]
    local: list = []
    error = None
    try:
        for (b, t), c in zip(bins, cached):
            local.append(None if c is not None else _scan_share(b, t, rank, world))
    except Exception as e:  # reported on every rank rather than hanging the others
        error = f"rank {rank}: {type(e).__name__}: {e}"
    gathered = [(local, error)]
    if distributed:
        gathered = [None] * world
        dist.all_gather_object(gathered, (local, error))
    errors = [e for _, e in gathered if e]
    if errors:
        raise RuntimeError("scanning the datasets' token ids failed: " + "; ".join(errors))
    ranges: list[tuple[int, int]] = []
    for i, ((b, t), c) in enumerate(zip(bins, cached)):
        if c is not None:
            ranges.append((int(c[0]), int(c[1])))
            continue
        parts = [g[0][i] for g in gathered if g[0][i] is not None]
        lo, hi = (min(p[0] for p in parts), max(p[1] for p in parts)) if parts else (0, -1)
        ranges.append((lo, hi))
        if rank == 0:
            _write_cached(b, t, cache_dir, lo, hi)
    if vocab_size is not None:
        for s, (lo, hi) in zip(sources, ranges):
            if lo < 0:
                raise ConfigError(f"dataset '{s.name}' ({s.prefix}.bin) holds the negative token "
                                  f"id {lo}", file=file, key=s.key,
                                  fix="the data is corrupt: re-run data-prep for it")
            if hi >= vocab_size:
                raise ConfigError(
                    f"dataset '{s.name}' ({s.prefix}.bin) holds token id {hi}, but the model's "
                    f"vocabulary has {vocab_size} entries (ids 0..{vocab_size - 1})",
                    file=file, key=s.key,
                    fix=f"tokenize this data with the model's tokenizer, or set model.vocab_size "
                        f"to at least {hi + 1}")
    return ranges
