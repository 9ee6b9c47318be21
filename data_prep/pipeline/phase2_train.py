"""The annotator's training set and head: positives from the configured sources, negatives a
stable-hash sample of the input's files, each embedded on its first window.

Rank 0 reads the positives once and stores them in chunks under <work>/positives/ (no rank holds
them all); the samples (positives, then negatives) are cut into fixed chunks, the same whatever
the number of ranks; each rank embeds chunks i % size into <work>/train/, atomically; rank 0
fits the head on all but a stable-hash holdout, whose metrics it reports.
"""
from __future__ import annotations

import hashlib
import heapq
import io
import json
from pathlib import Path

import numpy as np

from snowtrain.config import ConfigError

from ..annotator import classification_metrics, load_head, save_head, train_head
from ..sources import JsonlSource, ParquetSource, TreeSource, embedded_roots
from ..store import load_pickle, write_bytes, write_pickle, write_text
from .phase2_config import AnnotatorConfig, PositiveSourceConfig, training_settings

CHUNK = 512  # samples per unit of embedding work


def stable_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def _content_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"),
                                          digest_size=8).digest(), "little")


def _records(s: PositiveSourceConfig, languages, max_bytes: int, seed: int):
    if s.type in ("tree", "embedded"):
        roots = [Path(p) for p in s.paths]
        if s.type == "embedded":
            # embedded_roots() lists the standard library first, then site-packages.
            roots = [r for i, r in enumerate(embedded_roots())
                     if s.roots is None or ("stdlib" if i == 0 else "packages") in s.roots]
        yield from TreeSource(roots, languages=languages, max_file_bytes=max_bytes,
                              sample_fraction=s.sample_fraction)
        return
    cls, key = (ParquetSource, "columns") if s.type == "parquet" else (JsonlSource, "fields")
    for r in cls(s.paths, **{key: s.columns}, languages=languages, max_file_bytes=max_bytes):
        if s.sample_fraction >= 1 or stable_hash(f"{seed}\0sample\0{r.id}") < s.sample_fraction * 2**64:
            yield r


def read_positives(a: AnnotatorConfig, languages):
    """(key, text) of every positive, source by source; max_files keeps the lowest hashes."""
    for i, s in enumerate(a.positives):
        recs = ((f"pos{i}:{r.id}", r.content)
                for r in _records(s, languages, a.max_file_bytes, a.seed))
        if s.max_files is not None:
            recs = heapq.nsmallest(s.max_files, recs,
                                   key=lambda kv: stable_hash(f"{a.seed}\0pos\0{kv[0]}"))
        yield from recs


def stage_positives(run) -> int:
    """Rank 0 writes the positives in chunks of CHUNK; every rank gets their number."""
    count = run.work / "positives" / "count.json"
    if run.rank == 0 and not count.exists():
        n, chunk = 0, []
        for sample in read_positives(run.cfg.annotator, run.input.languages):
            chunk.append(sample)
            n += 1
            if len(chunk) == CHUNK:
                write_pickle(run.work / "positives" / f"c{n // CHUNK - 1:06d}.pkl", chunk)
                chunk = []
        if chunk:
            write_pickle(run.work / "positives" / f"c{n // CHUNK:06d}.pkl", chunk)
        write_text(count, json.dumps({"positives": n}))
    run.comm.barrier()
    return json.loads(count.read_text())["positives"]


def sample_negatives(run, units, k: int) -> list[tuple[str, int, int]]:
    """The k input files with the lowest stable hash of their id, as (lang, doc, index)."""
    seed = run.cfg.annotator.seed
    local = heapq.nsmallest(k, ((stable_hash(f"{seed}\0neg\0{f.id}"), f.lang, f.doc, f.index)
                                for u in run.mine(len(units))
                                for f in run.input.files(*units[u])))
    parts = run.comm.gather(local, root=0)
    chosen = None
    if run.rank == 0:
        chosen = sorted((lang, doc, index) for _, lang, doc, index in
                        heapq.nsmallest(k, (c for p in parts for c in p)))
    return run.comm.bcast(chosen, root=0)


def _chunk_path(run, c: int) -> Path:
    return run.work / "train" / f"c{c:06d}.npz"


def _chunk_samples(run, c: int, n_pos: int, negatives) -> tuple[list[str], list[str]]:
    """(keys, texts) of chunk c: samples [c * CHUNK, (c + 1) * CHUNK) of positives + negatives."""
    lo, hi = c * CHUNK, min((c + 1) * CHUNK, n_pos + len(negatives))
    pos = load_pickle(run.work / "positives" / f"c{c:06d}.pkl") if lo < n_pos else []
    keys, texts = [k for k, _ in pos], [t for _, t in pos]
    files: dict = {}
    for lang, doc, index in negatives[max(lo, n_pos) - n_pos:max(hi, n_pos) - n_pos]:
        if (lang, doc) not in files:
            files = {(lang, doc): list(run.input.files(lang, doc, doc + 1))}
        keys.append(f"neg:{lang}/{doc}/{index}")
        texts.append(files[(lang, doc)][index].content)
    return keys, texts


def embed_samples(run, n_pos: int, negatives) -> int:
    """Each rank embeds its chunks (first window of each sample) into <work>/train/."""
    n_chunks = -(-(n_pos + len(negatives)) // CHUNK)
    todo = [c for c in run.mine(n_chunks) if not _chunk_path(run, c).exists()]
    with run.bar(len(todo), "annotator: embed training samples", unit="chunk") as bar:
        for c in todo:
            keys, texts = _chunk_samples(run, c, n_pos, negatives)
            buf = io.BytesIO()
            # consecutive batches: the same for any chunk size that batch_size divides
            x = run.encoder.embed_batched(run.encoder.first_windows(texts), run.cfg.batch_size,
                                          by_length=False)
            np.savez(buf, x=x,
                     key=np.array(keys), positive=np.array([k.startswith("pos") for k in keys]),
                     content=np.array([_content_hash(t) for t in texts], dtype=np.uint64))
            write_bytes(_chunk_path(run, c), buf.getvalue())
            bar.update()
    return n_chunks


def prepare_head(run, units):
    """The head: given, trained earlier (reused), or trained now. Every rank returns it."""
    a = run.cfg.annotator
    folder = run.out / "annotator"
    head_path, metrics_path = folder / "head.pt", folder / "metrics.json"
    if not metrics_path.exists():   # metrics.json is written last: it marks the head done
        if a.head:
            if run.rank == 0:
                save_head(load_head(a.head, run.encoder.dim), head_path)
                write_text(metrics_path, json.dumps({"trained": False, "head": a.head}, indent=2))
        else:
            _train(run, units, head_path, metrics_path)
    run.comm.barrier()
    return load_head(head_path, run.encoder.dim), json.loads(metrics_path.read_text())


def _train(run, units, head_path: Path, metrics_path: Path) -> None:
    a = run.cfg.annotator
    n_pos = stage_positives(run)
    if not n_pos:
        raise ConfigError(f"the positive sources gave no files in the input's languages "
                          f"{run.input.languages}", key="annotator.positives",
                          fix="check the paths, sample_fraction and the files' languages")
    k = a.negatives if a.negatives is not None else max(1, round(a.negative_ratio * n_pos))
    negatives = sample_negatives(run, units, k)
    run.log(f"annotator: {n_pos} positives, {len(negatives)} negatives")
    n_chunks = embed_samples(run, n_pos, negatives)
    run.comm.barrier()
    if run.rank != 0:
        return
    parts = [dict(np.load(_chunk_path(run, c))) for c in range(n_chunks)]
    x, keys, y, content = (np.concatenate([p[f] for p in parts])
                           for f in ("x", "key", "positive", "content"))
    y = y.astype(np.int64)
    # A phase-1 file that is also a positive is not used as a negative.
    use = (y == 1) | ~np.isin(content, content[y == 1])
    hold = np.array([stable_hash(f"{a.seed}\0holdout\0{k}") < a.holdout_fraction * 2**64
                     for k in keys.tolist()], dtype=bool) & use
    train = use & ~hold
    settings = training_settings(a)
    head = train_head(x[train], y[train], **settings, info={
        "encoder": run.encoder.folder, "pooling": run.encoder.pooling,
        "window_tokens": run.cfg.window_tokens, "encoder_layers": a.encoder_layers,
        "dtype": a.dtype, "dim": run.encoder.dim})
    holdout = classification_metrics(y[hold], head.probabilities(x[hold])) if hold.any() else None
    metrics = {
        "trained": True, "positives": int(y.sum()), "negatives": int(((y == 0) & use).sum()),
        "negatives_dropped_as_positive": int(((y == 0) & ~use).sum()),
        "train": classification_metrics(y[train], head.probabilities(x[train])),
        "holdout": holdout, "settings": settings, **head.info,
    }
    save_head(head, head_path)
    write_text(metrics_path, json.dumps(metrics, indent=2, sort_keys=True))
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    h = holdout or {}
    run.log(f"annotator: holdout accuracy {fmt(h.get('accuracy'))}, F1 {fmt(h.get('f1'))}, "
            f"ROC-AUC {fmt(h.get('roc_auc'))}")
