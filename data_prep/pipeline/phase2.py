"""Phase 2: the recipe's quality annotator and per-language top-file selection.

Reads a finished phase-1 output, trains (or loads) the annotator, scores every file, keeps per
language the best-scored files until the token target is met (keeping the phase-1 language
mix), and writes each kept file as its own document: its exact phase-1 tokens plus <eod>.

Units are (language, range of phase-1 documents), independent of the number of ranks; rank i
takes units i % size; every unit's scores and output are written atomically under the work
folder, so a killed run redoes only unfinished units and the outputs are byte-identical to an
uninterrupted run, on one process or many MPI ranks.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from ..comm import local_rank, local_size
from ..dataset_files import PhaseOutput
from ..indexed import IndexedDatasetWriter, read_index
from ..store import load_pickle, write_bytes, write_pickle, write_text
from .phase2_config import RESUMABLE_KEYS, Phase2Config, dump, encoder_folder
from .phase2_output import finish
from .phase2_select import language_targets, select_top
from .phase2_train import prepare_head
from .run import PipelineRun

Unit = tuple  # (lang, first document, end document)


def list_units(phase_output: PhaseOutput, docs_per_unit: int) -> list[Unit]:
    units = []
    for lang in phase_output.languages:
        n = phase_output.num_documents(lang)
        units += [(lang, s, min(s + docs_per_unit, n)) for s in range(0, n, docs_per_unit)]
    return units


class Phase2(PipelineRun):
    name = "phase2"

    def __init__(self, cfg: Phase2Config, *, comm=None, restart: bool = False, progress: bool = True,
                 config_file=None):
        super().__init__(cfg, comm=comm, progress=progress, config_file=config_file)
        self.input = PhaseOutput(cfg.input)
        self.encoder = None
        self.check_work_dir(restart)

    def _check_work_dir(self, restart: bool) -> None:
        # The stamp leaves out what does not change the scores (the target, threads): a run may
        # change those and re-select from its saved scores.
        self.write_stamp(self.work / "config.yaml", dump(self.cfg, scoring_only=True), restart,
                         ignore=RESUMABLE_KEYS, clear=[self.out / "annotator"],
                         discards="the scores and the trained head; the targets may change "
                                  "without a restart")

    # ------------------------------------------------------------------ helpers
    def _load_encoder(self):
        import torch
        from ..annotator import Encoder
        cfg = self.cfg
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // local_size()))
        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            device = f"cuda:{local_rank() % torch.cuda.device_count()}"
        self.encoder = Encoder(encoder_folder(cfg), window_tokens=cfg.window_tokens,
                               pooling=cfg.annotator.pooling, layers=cfg.annotator.encoder_layers,
                               device=device, dtype=cfg.annotator.dtype)

    # ------------------------------------------------------------------ stages
    def run(self) -> dict | None:
        units = list_units(self.input, self.cfg.docs_per_unit)
        self.log(f"{len(units)} units ({', '.join(self.input.languages)}) on {self.size} rank(s)")
        self.timed("load_encoder", self._load_encoder)
        head, metrics = self.timed("annotator", lambda: prepare_head(self, units))
        self.timed("score", lambda: self.score(units, head))
        self.comm.barrier()
        if self.rank == 0:
            self.timed("select", lambda: self.select(units))
        self.comm.barrier()
        self.timed("write", lambda: self.write(units))
        self.comm.barrier()
        manifest = None
        if self.rank == 0:
            manifest = self.timed("merge", lambda: finish(self, units, metrics))
            write_text(self.out / "timings.json", json.dumps(self.timings, indent=2))
        self.comm.barrier()
        return manifest

    def _scores_path(self, u: int) -> Path:
        return self.work / "scores" / f"u{u:06d}.npz"

    def load_scores(self, u: int) -> dict[str, np.ndarray]:
        with np.load(self._scores_path(u)) as z:
            return {k: z[k] for k in z.files}

    def score(self, units, head) -> None:
        todo = [u for u in self.mine(len(units)) if not self._scores_path(u).exists()]
        docs = sum(units[u][2] - units[u][1] for u in todo)
        with self.bar(docs, "score", unit="doc") as bar:
            for u in todo:
                self.score_unit(units[u], u, head)
                bar.update(units[u][2] - units[u][1])

    def score_unit(self, unit: Unit, u: int, head) -> None:
        from ..annotator import score_texts
        files = list(self.input.files(*unit))
        scores, windows = score_texts(self.encoder, head, [f.content for f in files],
                                      self.cfg.batch_size)
        buf = io.BytesIO()
        np.savez(buf, doc=np.array([f.doc for f in files], dtype=np.int64),
                 index=np.array([f.index for f in files], dtype=np.int64),
                 score=np.asarray(scores, dtype=np.float64),
                 # tokens as written: the file's slice plus <eod>
                 tokens=np.array([len(f.tokens) + 1 for f in files], dtype=np.int64),
                 windows=np.asarray(windows, dtype=np.int64))
        write_bytes(self._scores_path(u), buf.getvalue())

    def select(self, units) -> None:
        """Rank 0: the kept files of every unit, into <work>/selection.pkl."""
        by_lang: dict[str, list[int]] = {}
        for u, (lang, _, _) in enumerate(units):
            by_lang.setdefault(lang, []).append(u)
        parts = {lang: [self.load_scores(u) for u in us] for lang, us in by_lang.items()}
        tokens_in = {lang: int(sum(p["tokens"].sum() for p in ps)) for lang, ps in parts.items()}
        total = self.cfg.target_tokens if self.cfg.target_tokens is not None \
            else self.cfg.target_fraction * sum(tokens_in.values())
        targets = language_targets(tokens_in, total)
        selection = {"total_target": total, "targets": targets, "units": {}}
        for lang, ps in parts.items():
            cat = {k: np.concatenate([p[k] for p in ps]) for k in ("doc", "index", "score", "tokens")}
            keep = select_top(cat["doc"], cat["index"], cat["score"], cat["tokens"], targets[lang])
            offset = 0
            for u, p in zip(by_lang[lang], ps):
                selection["units"][u] = keep[offset:offset + len(p["doc"])]
                offset += len(p["doc"])
        write_pickle(self.work / "selection.pkl", selection)

    def _part_prefix(self, u: int, lang: str) -> Path:
        return self.work / "write" / f"u{u:06d}" / f"{lang}_text_document"

    def write(self, units) -> None:
        """Each unit's kept files, in phase-1 order, as a partial dataset (merged by rank 0);
        a unit whose selection changed since it was written is written again."""
        selection = load_pickle(self.work / "selection.pkl")
        todo = []
        for u in self.mine(len(units)):
            keep = selection["units"][u]
            digest = hashlib.blake2b(np.packbits(keep).tobytes() + str(len(keep)).encode(),
                                     digest_size=8).hexdigest()
            done = self._part_prefix(u, units[u][0]).parent / "done.json"
            if not done.exists() or json.loads(done.read_text())["selection"] != digest:
                todo.append((u, keep, digest, done))
        with self.bar(len(todo), "write") as bar:
            for u, keep, digest, done in todo:
                documents, tokens = self.write_unit(u, units[u][0], keep)
                write_text(done, json.dumps({"selection": digest, "documents": documents,
                                             "tokens": tokens}))
                bar.update()

    def write_unit(self, u: int, lang: str, keep: np.ndarray) -> tuple[int, int]:
        scores = self.load_scores(u)
        wanted = set(zip(scores["doc"][keep].tolist(), scores["index"][keep].tolist()))
        if not wanted:
            return 0, 0
        tok = self.input.tokenizer
        dtype = read_index(self.input.prefix(lang)).dtype       # phase 1's token dtype
        with IndexedDatasetWriter(self._part_prefix(u, lang), vocab_size=tok.vocab_size,
                                  dtype=dtype) as w:
            for d in sorted({d for d, _ in wanted}):
                for f in self.input.files(lang, d, d + 1):
                    if (f.doc, f.index) in wanted:
                        w.add_document(np.append(f.tokens, tok.special.eod).astype(dtype))
        return len(wanted), int(w.num_tokens)
