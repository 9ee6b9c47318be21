"""Phase 1: raw code -> filtered, deduplicated, decontaminated, repository-grouped, tokenized
Megatron datasets, one per language, on one process or many MPI ranks with the same bytes out.

Work is cut into units that do not depend on the number of ranks: input units (a repository
folder, a parquet or JSONL file) for reading, filtering and decontamination, and repository
buckets (hash of language and repository) for grouping and tokenization. Every unit's result is
written atomically under the work folder, so a killed run started again redoes only what had not
finished, and the outputs are byte-identical to an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from snowtrain.config import ConfigError

from ..comm import local_size
from ..grouping import repository_documents
from ..indexed import merge_datasets
from ..tokenize import DatasetEncoder
from ..records import Record
from ..sources import JsonlSource, ParquetSource, TreeSource, embedded_roots
from ..sources.errors import resolve_inputs
from ..sources.parquet import content_too_large
from ..store import load_pickle, write_pickle, write_text
from ..tokenizer import Tokenizer, copy_tokenizer, train_tokenizer
from .config import ADDED_KEYS, UNSTAMPED_KEYS, Phase1Config, dump
from .run import PipelineRun, changed_keys
from .manifest import build_manifest, phase1_funnel, render_funnel

# The config key behind a drop reason, for the error when nothing is kept.
KEPT_KEYS = {"unknown_language": "sources[i].columns.lang", "other_language": "languages",
             "too_large": "max_file_bytes"}

STAGES = ("read", "filter", "exact_dedup", "near_dedup", "decontaminate", "group", "tokenize")


def bucket_of(lang: str, repo: str, buckets: int) -> int:
    h = hashlib.blake2b(f"{lang}\0{repo}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % buckets


def _stable_fraction(key: str) -> float:
    h = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


# ----------------------------------------------------------------------------- sources -> units

def _source(cfg: Phase1Config, i: int, files=None):
    s = cfg.sources[i]
    notebook_bytes = cfg.max_notebook_bytes if cfg.notebooks == "script" else None
    if s.type in ("tree", "embedded"):
        roots = embedded_roots() if s.type == "embedded" else [Path(p) for p in s.paths]
        return TreeSource(roots, languages=cfg.languages, max_file_bytes=cfg.max_file_bytes,
                          max_notebook_bytes=notebook_bytes, sample_fraction=s.sample_fraction)
    cls, key = (ParquetSource, "columns") if s.type == "parquet" else (JsonlSource, "fields")
    return cls(files or s.paths, **{key: s.columns}, languages=cfg.languages,
               max_file_bytes=cfg.max_file_bytes, max_notebook_bytes=notebook_bytes)


def list_units(cfg: Phase1Config) -> list[tuple[int, object]]:
    """(source index, unit) for every input unit, in a fixed order."""
    units = []
    for i, s in enumerate(cfg.sources):
        if s.type in ("tree", "embedded"):
            units += [(i, u) for u in _source(cfg, i).units()]
        else:
            exts = (".parquet", ".parq") if s.type == "parquet" else (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")
            units += [(i, str(f)) for f in resolve_inputs(s.paths, exts, s.type)]
    return units


def _read_filter_unit(cfg: Phase1Config, index: int, source_index: int, unit, out: Path) -> None:
    """Reads one unit and applies the filters; writes kept records and the unit's counts."""
    from ..filters import FilterChain
    from ..notebooks import notebook_to_script
    src = _source(cfg, source_index, [unit] if isinstance(unit, str) else None)
    chain = FilterChain(cfg.filters)
    records = src.iter_unit(unit) if isinstance(src, TreeSource) else iter(src)
    kept: list[Record] = []
    per_lang: dict[str, dict] = defaultdict(lambda: {"in": 0, "kept": 0, "dropped": Counter()})
    for rec in records:
        c = per_lang[rec.lang]
        c["in"] += 1
        reason = None
        if rec.lang == "jupyter" and cfg.notebooks == "script":
            try:
                script, reason = notebook_to_script(rec.content)
            except Exception:  # noqa: BLE001 - a notebook too odd to read is one counted drop
                script, reason = None, "notebook_unreadable"
            if script is not None:
                rec.content = script
                if content_too_large(script, cfg.max_file_bytes):
                    reason = "too_large"
        reason = reason or chain.reason(rec)
        if reason is None:
            c["kept"] += 1
            kept.append(rec)
        else:
            c["dropped"][reason] += 1
    write_pickle(out, kept)
    # The counts are written last: their presence marks the unit as done.
    write_text(out.with_suffix(".json"), json.dumps({
        "unit": index, "read": src.read, "source_dropped": dict(src.dropped),
        "problems": [p._asdict() for p in getattr(src, "problems", [])][:20],
        "filter": {k: {"in": v["in"], "kept": v["kept"], "dropped": dict(v["dropped"])}
                   for k, v in sorted(per_lang.items())},
    }, sort_keys=True))


# ----------------------------------------------------------------------------- the run

class Phase1(PipelineRun):
    name = "phase1"

    def __init__(self, cfg: Phase1Config, *, comm=None, restart: bool = False, progress: bool = True,
                 config_file=None):
        super().__init__(cfg, comm=comm, progress=progress, config_file=config_file)
        self.check_work_dir(restart)

    def _check_work_dir(self, restart: bool) -> None:
        stamp = self.work / "config.yaml"
        if not restart:
            changed = changed_keys(stamp, dump(self.cfg), ADDED_KEYS) - set(UNSTAMPED_KEYS)
            if changed == {"tokenizer"}:
                # only the tokenizer changed: what came before it (reading to grouping) stands
                for name in ("tokenizer", "tok"):
                    shutil.rmtree(self.work / name, ignore_errors=True)
                write_text(stamp, dump(self.cfg))
                self.log("the tokenizer settings changed: training the tokenizer and tokenizing again "
                         "from the grouped documents")
                if (self.out / "manifest.json").exists():
                    self.log(f"warning: {self.out} was finished; its tokenizer and datasets are "
                             "replaced, so redo the later phases and training built on them")
        self.write_stamp(stamp, dump(self.cfg), restart, ignore=UNSTAMPED_KEYS, added=ADDED_KEYS)

    # ------------------------------------------------------------------ stages
    def run(self) -> dict | None:
        units = self.timed("list", lambda: list_units(self.cfg))
        self.log(f"{len(units)} input units on {self.size} rank(s)")
        self.timed("read_filter", lambda: self.read_filter(units))
        self.comm.barrier()
        self.check_kept(len(units))
        self.timed("dedup", lambda: self.dedup(len(units)))
        self.timed("decontaminate", lambda: self.decontaminate(len(units)))
        self.comm.barrier()
        self.timed("group", lambda: self.group(len(units)))
        self.comm.barrier()
        model = self.timed("tokenizer", self.tokenizer)
        self.timed("tokenize", lambda: self.tokenize(model))
        self.comm.barrier()
        manifest = None
        if self.rank == 0:
            manifest = self.timed("merge", lambda: self.merge(len(units), model))
            write_text(self.out / "timings.json", json.dumps(self.timings, indent=2))
        self.comm.barrier()
        return manifest

    def _unit_path(self, stage: str, i: int) -> Path:
        return self.work / stage / f"u{i:06d}.pkl"

    def read_filter(self, units) -> None:
        todo = [i for i in self.mine(len(units))
                if not self._unit_path("read", i).with_suffix(".json").exists()]
        workers = self.cfg.workers or max(1, (os.cpu_count() or 1) // local_size())
        with self.bar(len(todo), "read+filter") as bar:
            if workers <= 1 or len(todo) <= 1:
                for i in todo:
                    _read_filter_unit(self.cfg, i, *units[i], self._unit_path("read", i))
                    bar.update()
            else:
                with ProcessPoolExecutor(workers) as pool:
                    futures = [pool.submit(_read_filter_unit, self.cfg, i, *units[i], self._unit_path("read", i))
                               for i in todo]
                    for f in futures:
                        f.result()
                        bar.update()

    def check_kept(self, n_units: int) -> None:
        """Nothing kept by reading and filtering is a ConfigError naming the drop reasons; the
        unit results, all empty, go, so that the corrected config runs without --restart."""
        def check():
            units = [json.loads(self._unit_path("read", i).with_suffix(".json").read_text())
                     for i in range(n_units)]
            if any(c["kept"] for u in units for c in u["filter"].values()):
                return
            dropped = Counter()
            for u in units:
                dropped.update(u["source_dropped"])
                for c in u["filter"].values():
                    dropped.update(c["dropped"])
            shutil.rmtree(self.work / "read")
            top = dropped.most_common(1)[0][0] if dropped else ""
            raise ConfigError(
                f"nothing kept of the {sum(u['read'] for u in units)} records read; dropped: "
                + (", ".join(f"{k} {v}" for k, v in dropped.most_common()) or "none"),
                file=self.config_file, key=KEPT_KEYS.get(top, "filters"),
                fix="check sources[i].columns.lang / ext / path (a record's language comes from "
                    "them: unknown_language), languages (other_language), filters and "
                    "max_file_bytes; the drop reasons above say which")
        self.on_rank0(check)

    def _my_records(self, n_units: int) -> list[Record]:
        recs = []
        for i in self.mine(n_units):
            recs += load_pickle(self._unit_path("read", i))
        return recs

    def dedup(self, n_units: int) -> None:
        done = self.work / "dedup.pkl"
        if not done.exists():
            records = self._my_records(n_units)
            self.deduplicate(records, {r.id: r.lang for r in records}, lambda r: r.id, done)

    def decontaminate(self, n_units: int) -> None:
        from ..decontam import DecontamConfig, Decontaminator
        dropped = load_pickle(self.work / "dedup.pkl")
        gone = set(dropped["exact"]) | set(dropped["near"])
        dec = Decontaminator(DecontamConfig.from_dict(self.cfg.decontamination.options)) \
            if self.cfg.decontamination.enabled else None
        todo = [i for i in self.mine(n_units) if not self._unit_path("decontam", i).exists()]
        with self.bar(len(todo), "decontaminate") as bar:
            for i in todo:
                removed = {}
                if dec is not None:
                    for r in load_pickle(self._unit_path("read", i)):
                        if r.id not in gone and (m := dec.match(r.content)) is not None:
                            removed[r.id] = {"benchmark": m.benchmark, "task_id": m.task_id,
                                             "field": m.field, "lang": r.lang}
                write_pickle(self._unit_path("decontam", i), removed)
                bar.update()

    def _bucket_path(self, stage: str, b: int) -> Path:
        return self.work / stage / f"b{b:05d}.pkl"

    def group(self, n_units: int) -> None:
        mine = [b for b in self.mine(self.cfg.buckets)
                if not self._bucket_path("group", b).with_suffix(".json").exists()]
        if not mine:
            return
        mine_set = set(mine)
        dropped = load_pickle(self.work / "dedup.pkl")
        gone = set(dropped["exact"]) | set(dropped["near"])
        for i in range(n_units):
            gone |= set(load_pickle(self._unit_path("decontam", i)))
        per_bucket: dict[int, list[Record]] = defaultdict(list)
        with self.bar(n_units, "group: collect") as bar:
            for i in range(n_units):
                for r in load_pickle(self._unit_path("read", i)):
                    b = bucket_of(r.lang, r.repo, self.cfg.buckets)
                    if b in mine_set and r.id not in gone:
                        per_bucket[b].append(r)
                bar.update()
        g = self.cfg.grouping
        for b in mine:
            files = per_bucket.get(b, [])
            docs = list(repository_documents(files, seed=g.seed, max_chars=g.max_doc_chars))
            counts: dict = defaultdict(lambda: {"files": 0, "documents": 0, "repositories": 0, "chars": 0})
            for r in files:
                counts[r.lang]["files"] += 1
            for d in docs:
                counts[d.lang]["documents"] += 1
                counts[d.lang]["repositories"] += d.part == 0
                counts[d.lang]["chars"] += len(d.text)
            write_pickle(self._bucket_path("group", b), docs)
            write_text(self._bucket_path("group", b).with_suffix(".json"),
                         json.dumps(dict(sorted(counts.items())), sort_keys=True))

    def tokenizer(self) -> str:
        tcfg = self.cfg.tokenizer
        if tcfg.model:
            Tokenizer(tcfg.model)  # fails early with a clear message if unusable
            return tcfg.model
        model = self.work / "tokenizer" / "tokenizer.model"
        self.on_rank0(lambda: model.exists() or self._train_tokenizer(model))
        return str(model)

    def _train_tokenizer(self, model: Path) -> None:
        tcfg = self.cfg.tokenizer
        if not tcfg.sample_mb > 0:
            raise ConfigError(f"must be positive, got {tcfg.sample_mb}", file=self.config_file,
                              key="tokenizer.sample_mb", fix="train the tokenizer on e.g. 1000 MB of text")
        self.log(f"training a {tcfg.vocab_size}-piece tokenizer")
        total = sum(c["chars"] for b in range(self.cfg.buckets) for c in json.loads(
            self._bucket_path("group", b).with_suffix(".json").read_text()).values())
        share = min(1.0, tcfg.sample_mb * 2**20 / max(1, total))

        def sample():
            for b in range(self.cfg.buckets):
                for d in load_pickle(self._bucket_path("group", b)):
                    if _stable_fraction(f"{tcfg.seed}\0{d.lang}\0{d.repo}\0{d.part}") < share:
                        yield d.text
        try:
            train_tokenizer(sample(), model.parent, tcfg.vocab_size, seed=tcfg.seed, threads=tcfg.threads)
        except ValueError as e:
            if "vocab_size" not in str(e):
                raise
            raise ConfigError(str(e), file=self.config_file, key="tokenizer.vocab_size",
                              fix="change tokenizer.vocab_size as the message says") from None

    def tokenize(self, model: str) -> None:
        tok = Tokenizer(model)
        workers = max(1, (os.cpu_count() or 1) // local_size())  # ranks on this node share its cores
        mine = [b for b in self.mine(self.cfg.buckets)
                if not (self.work / "tok" / f"b{b:05d}" / "done.json").exists()]
        if not mine:
            return
        with self.bar(len(mine), "tokenize", unit="bucket") as bar, \
                DatasetEncoder(tok, workers=workers) as encoder:
            for b in mine:
                folder = self.work / "tok" / f"b{b:05d}"
                by_lang = defaultdict(list)
                for d in load_pickle(self._bucket_path("group", b)):
                    by_lang[d.lang].append(d.text)
                counts = {}
                for lang in sorted(by_lang):
                    docs, tokens = encoder.write(by_lang[lang], folder / f"{lang}_text_document")
                    counts[lang] = {"documents": docs, "tokens": tokens}
                write_text(folder / "done.json", json.dumps(counts, sort_keys=True))
                bar.update()

    def merge(self, n_units: int, model: str) -> dict:
        per_lang_prefixes = defaultdict(list)
        for b in range(self.cfg.buckets):
            folder = self.work / "tok" / f"b{b:05d}"
            for lang in json.loads((folder / "done.json").read_text()):
                per_lang_prefixes[lang].append(str(folder / f"{lang}_text_document"))
        self.out.mkdir(parents=True, exist_ok=True)
        datasets = {}
        for lang in sorted(per_lang_prefixes):
            prefix = str(self.out / f"{lang}_text_document")
            merge_datasets(per_lang_prefixes[lang], prefix)
            datasets[lang] = prefix
        copy_tokenizer(model, self.out)
        manifest = build_manifest(self, n_units, datasets)
        write_text(self.out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
        png = False
        if self.cfg.funnel_png:
            try:
                t = manifest["totals"]
                png = render_funnel(phase1_funnel(manifest), f"phase-1 funnel: {t['read']} read, "
                                    f"{t['kept']} kept, {t['tokens']:,} tokens", self.out / "funnel.png")
            except ImportError:
                self.log("matplotlib is not installed: no funnel.png")
        self.log(f"wrote {len(datasets)} datasets to {self.out}; manifest.json"
                 + (", funnel.png" if png else ""))
        return manifest
