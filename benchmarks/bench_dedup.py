#!/usr/bin/env python3
"""Near-dedup throughput, recall and false removals: data_prep.dedup.near_dedup against datasketch
and datatrove, in the same run.

Corpus: real Python source (the standard library, then site-packages) read in sorted order up to
--mb megabytes, plus --pairs planted near-duplicates (a file with about --mutate of its lines
replaced by lines of other files; their true Jaccard similarity is reported). Jaccard threshold
0.7, 5-gram shingles everywhere:

* ours: near_dedup with its defaults (256 permutations, 25 bands x 10 rows, candidates verified by
  exact Jaccard, one process);
* datasketch: MinHash(num_perm=256, shared permutations) + update_batch over the distinct shingles
  of our tokens, MinHashLSH(threshold=0.7) (25 x 10) queried then inserted file by file (a file is
  dropped when the index already holds a candidate) - its usual streaming dedup, no verification;
* datatrove (optional): its four MinHash stages (MinhashDedupSignature, MinhashDedupBuckets,
  MinhashDedupCluster, MinhashDedupFilter) on a LocalPipelineExecutor with --dt-workers workers
  (tasks = workers for stages 1 and 4, one per bucket for stage 2, 1 for stage 3), fed in-memory
  Documents; its own text normalisation and word tokenizer (language "en": a blank spaCy
  pipeline, nothing downloaded), 5-grams, its default hash (xxhash, 64 bits), --dt-buckets
  buckets x --dt-rows hashes (default 25 x 10, like the others; its own default is 14 x 8). No
  verification: every file in a cluster but one is removed.

Recall = planted pairs of which one file was dropped; the script also prints the recall that any
25x10-band LSH is expected to reach on them (1 - (1 - J**10)**25 averaged over the pairs).
False removal = a dropped file with no other file of the corpus at true Jaccard >= 0.7 (exact
search: candidates from an inverted index of our shingle hashes, confirmed with the plain-Python
reference: data_prep.dedup.tokenize and sets of 5-token tuples). "No kept near-dup" = a dropped
file none of whose >= 0.7 neighbours was kept. The tools run interleaved (--repeat rounds of
ours, datasketch, datatrove) so that they share the machine's load; the fastest run of each is
reported, with every run's wall and CPU time (CPU: this process plus its reaped children).
Results overwrite benchmarks/results/dedup-<date>.md and dedup-<date>.json (--append to add to
the day's JSON list instead).

    PYTHONPATH=. python benchmarks/bench_dedup.py [--mb 20] [--pairs 500] [--repeat 2] \
        [--dt-workers 1 2] [--dt-buckets 25 --dt-rows 10]

datasketch and datatrove are optional, e.g. in a scratch virtual environment:
    python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install numpy mpi4py tqdm \
        datasketch datatrove==0.10.1 spacy 'xxhash<4' regex tokenizers
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_prep.dedup import (NearDedupConfig, jaccard, near_dedup, shingle_set,  # noqa: E402
                             tokenize)
from data_prep.dedup.minhash import TOKEN_PATTERN  # noqa: E402

DATATROVE_INSTALL = "pip install 'datatrove==0.10.1' spacy 'xxhash<4' regex tokenizers"


def cpu_now() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def source_roots() -> list[Path]:
    import site
    roots = [Path(sysconfig.get_paths()["stdlib"])]
    for p in site.getsitepackages() + [site.getusersitepackages()]:
        if Path(p).is_dir() and Path(p) not in roots:
            roots.append(Path(p))
    return roots


def read_corpus(max_bytes: int, max_file_bytes: int = 1 << 20) -> list[tuple[str, str]]:
    docs, total, seen = [], 0, set()
    for root in source_roots():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if not name.endswith(".py"):
                    continue
                path = Path(dirpath) / name
                try:
                    real = path.resolve()
                    if real in seen or real.stat().st_size > max_file_bytes:
                        continue
                    seen.add(real)
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                if not text.strip():
                    continue
                docs.append((str(path), text))
                total += len(text.encode("utf-8"))
                if total >= max_bytes:
                    return docs
    return docs


def plant_pairs(docs: list[tuple[str, str]], n_pairs: int, mutate: float, seed: int
                ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Appends near-duplicate copies of n_pairs files of at least 40 lines; returns
    (docs, [(original id, copy id)])."""
    rng = random.Random(seed)
    eligible = [i for i, (_, t) in enumerate(docs) if 40 <= t.count("\n") <= 5000]
    picks = rng.sample(eligible, min(n_pairs, len(eligible)))
    out = list(docs)
    pairs = []
    for k, i in enumerate(picks):
        ident, text = docs[i]
        lines = text.split("\n")
        donor = docs[rng.randrange(len(docs))][1].split("\n")
        for j in rng.sample(range(len(lines)), max(1, round(mutate * len(lines)))):
            lines[j] = rng.choice(donor)
        copy_id = f"planted/{k:05d}/{Path(ident).name}"
        out.append((copy_id, "\n".join(lines)))
        pairs.append((ident, copy_id))
    rng.shuffle(out)
    return out, pairs


def run_ours(docs, cfg: NearDedupConfig) -> dict:
    c0, t0 = cpu_now(), time.perf_counter()
    res = near_dedup(docs, cfg)
    wall, cpu = time.perf_counter() - t0, cpu_now() - c0
    return {"wall_s": wall, "cpu_s": cpu, "dropped": set(res.dropped), "stages": res.timings,
            "stats": res.stats}


def run_datasketch(docs, num_perm: int, threshold: float, ngram: int) -> dict:
    from datasketch import MinHash, MinHashLSH
    c0, t0 = cpu_now(), time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    template = MinHash(num_perm=num_perm, seed=1)
    # datasketch >= 2.0 needs the permutation scheme (default "affine32") with shared permutations
    extra = {"scheme": template.scheme} if hasattr(template, "scheme") else {}
    perms = template.permutations
    dropped = set()
    for ident, text in docs:
        toks = TOKEN_PATTERN.findall(text)
        if not toks:
            continue
        if len(toks) < ngram:
            shingles = {" ".join(toks)}
        else:
            shingles = {" ".join(toks[i:i + ngram]) for i in range(len(toks) - ngram + 1)}
        m = MinHash(num_perm=num_perm, permutations=perms, **extra)
        m.update_batch([s.encode("utf-8", "surrogatepass") for s in shingles])
        if lsh.query(m):
            dropped.add(ident)
        else:
            lsh.insert(ident, m, check_duplication=False)
    wall, cpu = time.perf_counter() - t0, cpu_now() - c0
    return {"wall_s": wall, "cpu_s": cpu, "dropped": dropped,
            "lsh": {"bands": lsh.b, "rows": lsh.r, "scheme": extra.get("scheme", "legacy")}}


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Sends file descriptor 2 (datatrove's loguru and tqdm output) to a file."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def datatrove_version() -> str | None:
    try:
        import importlib
        importlib.import_module("datatrove.pipeline.dedup.minhash")
        from datatrove.utils.word_tokenizers import load_word_tokenizer
        load_word_tokenizer("en").word_tokenize("warm up")    # imports spaCy, builds the pipeline
    except Exception as e:   # ImportError, or a missing optional dependency of datatrove
        print(f"datatrove is not usable ({type(e).__name__}: {e}): `{DATATROVE_INSTALL}` to "
              f"compare with it (in a separate virtual environment if you like). Skipping it.")
        return None
    from importlib.metadata import version
    return version("datatrove")


def run_datatrove(docs, bands: int, rows: int, ngram: int, workers: int, work_root: Path) -> dict:
    """datatrove's four MinHash stages over in-memory Documents; returns the dropped ids."""
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets,
                                                  MinhashDedupCluster, MinhashDedupFilter,
                                                  MinhashDedupSignature)
    from datatrove.utils.hashing import HashConfig

    cfg = MinhashConfig(n_grams=ngram, num_buckets=bands, hashes_per_bucket=rows,
                        hash_config=HashConfig())
    work = Path(tempfile.mkdtemp(prefix="datatrove-", dir=work_root))
    (work / "kept").mkdir()
    n = len(docs)

    def read_shard(data, rank: int = 0, world_size: int = 1):
        lo, hi = n * rank // world_size, n * (rank + 1) // world_size
        for ident, text in docs[lo:hi]:
            yield Document(text=text, id=ident)

    def write_kept(data, rank: int = 0, world_size: int = 1):
        with open(work / "kept" / f"{rank:05d}.jsonl", "w") as f:
            for doc in data:
                f.write(json.dumps(doc.id) + "\n")

    # fork: the pool's workers are this process's children (their CPU time is counted)
    ex = {"workers": workers, "start_method": "fork", "skip_completed": False}
    stages = [
        ("signatures", LocalPipelineExecutor(
            [read_shard, MinhashDedupSignature(output_folder=str(work / "sigs"), config=cfg)],
            tasks=workers, logging_dir=str(work / "logs1"), **ex)),
        ("buckets", LocalPipelineExecutor(
            [MinhashDedupBuckets(input_folder=str(work / "sigs"),
                                 output_folder=str(work / "buckets"), config=cfg)],
            tasks=cfg.num_buckets, logging_dir=str(work / "logs2"), **ex)),
        ("cluster", LocalPipelineExecutor(
            [MinhashDedupCluster(input_folder=str(work / "buckets"),
                                 output_folder=str(work / "remove_ids"), config=cfg)],
            tasks=1, logging_dir=str(work / "logs3"), **ex)),
        ("filter", LocalPipelineExecutor(
            [read_shard, MinhashDedupFilter(input_folder=str(work / "remove_ids")), write_kept],
            tasks=workers, logging_dir=str(work / "logs4"), **ex)),
    ]
    timings = {}
    c0, t0 = cpu_now(), time.perf_counter()
    with _stderr_to(work / "stderr.log"):
        for name, executor in stages:
            t = time.perf_counter()
            executor.run()
            timings[name] = time.perf_counter() - t
    wall, cpu = time.perf_counter() - t0, cpu_now() - c0
    kept = set()
    for path in sorted((work / "kept").glob("*.jsonl")):
        kept.update(json.loads(line) for line in path.read_text().splitlines())
    dropped = {ident for ident, _ in docs} - kept
    shutil.rmtree(work, ignore_errors=True)
    return {"wall_s": wall, "cpu_s": cpu, "dropped": dropped, "stages": timings,
            "config": {"n_grams": cfg.n_grams, "num_buckets": cfg.num_buckets,
                       "hashes_per_bucket": cfg.hashes_per_bucket,
                       "hash": str(cfg.hash_config), "language": "en (spaCy blank)",
                       "workers": workers}}


def recall(dropped: set, pairs) -> float:
    return sum(1 for a, b in pairs if a in dropped or b in dropped) / max(1, len(pairs))


class Neighbours:
    """Exact near-duplicate neighbours (true Jaccard >= threshold) of given files."""

    def __init__(self, docs, ngram: int = 5, threshold: float = 0.7):
        self.docs, self.ngram, self.threshold = docs, ngram, threshold
        self.index = {ident: k for k, (ident, _) in enumerate(docs)}
        self.sets = [shingle_set(text, ngram) for _, text in docs]
        self.lens = np.array([len(s) for s in self.sets], dtype=np.int64)
        flat = np.concatenate(self.sets)
        owner = np.repeat(np.arange(len(docs)), self.lens)
        order = np.argsort(flat, kind="stable")
        self.flat, self.owner = flat[order], owner[order]
        self._ref: dict[int, set] = {}
        self.cache: dict[str, list[tuple[str, float]]] = {}

    def ref_shingles(self, k: int) -> set:
        """Plain-Python reference: distinct 5-token tuples of data_prep.dedup.tokenize."""
        if k not in self._ref:
            toks, n = tokenize(self.docs[k][1]), self.ngram
            self._ref[k] = ({tuple(toks)} if 0 < len(toks) < n else
                            {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)})
        return self._ref[k]

    def ref_jaccard(self, i: int, j: int) -> float:
        a, b = self.ref_shingles(i), self.ref_shingles(j)
        return len(a & b) / len(a | b) if a and b else 0.0

    def of(self, ident: str) -> list[tuple[str, float]]:
        """[(id, true Jaccard)] of the files at true Jaccard >= threshold, best first."""
        if ident in self.cache:
            return self.cache[ident]
        k = self.index[ident]
        s = self.sets[k]
        lo = np.searchsorted(self.flat, s, "left")
        cnt = np.searchsorted(self.flat, s, "right") - lo
        starts = np.cumsum(cnt) - cnt
        pos = np.arange(int(cnt.sum())) - np.repeat(starts, cnt) + np.repeat(lo, cnt)
        inter = np.bincount(self.owner[pos], minlength=len(self.docs)).astype(np.float64)
        inter[k] = 0
        with np.errstate(divide="ignore", invalid="ignore"):
            est = inter / (self.lens[k] + self.lens - inter)
        # hashed shingles only screen (margin 0.1); the plain-Python reference decides
        out = []
        for j in np.flatnonzero(est >= self.threshold - 0.1).tolist():
            sim = self.ref_jaccard(k, j)
            if sim >= self.threshold:
                out.append((self.docs[j][0], sim))
        out.sort(key=lambda x: -x[1])
        self.cache[ident] = out
        return out


def removal_check(dropped: set, nb: Neighbours) -> dict:
    false, orphan = [], []
    for ident in sorted(dropped):
        near = nb.of(ident)
        if not near:
            false.append(ident)
        elif all(other in dropped for other, _ in near):
            orphan.append(ident)
    return {"false_removals": len(false), "no_kept_near_dup": len(orphan),
            "false_removal_examples": false[:10], "no_kept_near_dup_examples": orphan[:10]}


def _sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=20.0, help="corpus size in MB (before planting)")
    ap.add_argument("--pairs", type=int, default=500, help="planted near-duplicate pairs")
    ap.add_argument("--mutate", type=float, default=0.02,
                    help="fraction of a planted copy's lines replaced (0.02: Jaccard about 0.9)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="interleaved rounds of every tool; the fastest run of each is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-datasketch", action="store_true")
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--dt-workers", type=int, nargs="+", default=[1],
                    help="datatrove LocalPipelineExecutor workers, one configuration each")
    ap.add_argument("--dt-buckets", type=int, default=25, help="datatrove num_buckets")
    ap.add_argument("--dt-rows", type=int, default=10, help="datatrove hashes_per_bucket")
    ap.add_argument("--workdir", default=None,
                    help="datatrove's scratch files (default: a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--append", action="store_true",
                    help="add this run to the day's JSON list instead of overwriting the files")
    args = ap.parse_args(argv)
    command = "PYTHONPATH=. python benchmarks/bench_dedup.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    date_str, nproc = _sh(["date"]), _sh(["nproc"])

    t0 = time.perf_counter()
    base = read_corpus(int(args.mb * 1e6))
    docs, pairs = plant_pairs(base, args.pairs, args.mutate, args.seed)
    n_bytes = sum(len(t.encode("utf-8", "surrogatepass")) for _, t in docs)
    text_of = dict(docs)
    sims = sorted(jaccard(shingle_set(text_of[a]), shingle_set(text_of[b])) for a, b in pairs)
    print(f"corpus: {len(docs)} files, {n_bytes / 1e6:.1f} MB ({len(pairs)} planted pairs, "
          f"Jaccard min {sims[0]:.3f} median {sims[len(sims) // 2]:.3f}), "
          f"read in {time.perf_counter() - t0:.1f} s", flush=True)

    cfg = NearDedupConfig()
    # What any MinHash LSH with these bands can reach: P(candidate) = 1 - (1 - J**rows)**bands.
    expected = sum(1 - (1 - j ** cfg.rows) ** cfg.bands for j in sims) / max(1, len(sims))
    print(f"expected recall of {cfg.bands}x{cfg.rows} LSH on the planted pairs: {expected:.4f}")
    have_ds = not args.skip_datasketch
    if have_ds:
        try:
            import importlib
            importlib.import_module("datasketch")
        except ImportError:
            have_ds = False
            print("datasketch is not installed: `pip install datasketch` to compare with it "
                  "(in a separate virtual environment if you like). Skipping it.")
    dt_version = None if args.skip_datatrove else datatrove_version()
    work_root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-dedup-"))
    work_root.mkdir(parents=True, exist_ok=True)

    tools = {"ours": lambda: run_ours(docs, cfg)}
    if have_ds:
        tools["datasketch"] = lambda: run_datasketch(docs, cfg.num_perm, cfg.threshold, cfg.ngram)
    if dt_version:
        for w in args.dt_workers:
            tools[f"datatrove_{w}w"] = (lambda w=w: run_datatrove(
                docs, args.dt_buckets, args.dt_rows, cfg.ngram, w, work_root))
    best: dict[str, dict] = {}
    runs: dict[str, list] = {name: [] for name in tools}
    for rnd in range(args.repeat):     # interleaved, so that all see the same machine load
        for name, fn in tools.items():
            r = fn()
            runs[name].append({"wall_s": round(r["wall_s"], 3), "cpu_s": round(r["cpu_s"], 3),
                               "load1": round(os.getloadavg()[0], 2)})
            if name not in best or r["wall_s"] < best[name]["wall_s"]:
                best[name] = r
            print(f"round {rnd + 1} {name:14s} {r['wall_s']:7.2f} s wall, {r['cpu_s']:7.2f} s cpu,"
                  f" {len(r['dropped'])} dropped (load {os.getloadavg()[0]:.1f})", flush=True)
    if args.workdir is None:
        shutil.rmtree(work_root, ignore_errors=True)

    t1 = time.perf_counter()
    nb = Neighbours(docs, cfg.ngram, cfg.threshold)
    checks = {name: removal_check(r["dropped"], nb) for name, r in best.items()}
    print(f"false-removal check (exact neighbours of {len(nb.cache)} dropped files) in "
          f"{time.perf_counter() - t1:.1f} s")

    def summary(name: str) -> dict:
        r = best[name]
        return {"wall_s": round(r["wall_s"], 3), "cpu_s": round(r["cpu_s"], 3),
                "mb_per_s": round(n_bytes / 1e6 / r["wall_s"], 3),
                "docs_per_s": round(len(docs) / r["wall_s"], 1),
                "dropped": len(r["dropped"]), "recall": round(recall(r["dropped"], pairs), 4),
                **checks[name], "runs": runs[name],
                "ours_speedup_wall": round(r["wall_s"] / best["ours"]["wall_s"], 2),
                "ours_speedup_cpu": round(r["cpu_s"] / best["ours"]["cpu_s"], 2),
                "ours_speedup_median_wall": round(
                    median(name, "wall_s") / median("ours", "wall_s"), 2),
                "ours_speedup_median_cpu": round(
                    median(name, "cpu_s") / median("ours", "cpu_s"), 2)}

    def median(name: str, key: str) -> float:
        return float(np.median([r[key] for r in runs[name]]))

    o = best["ours"]
    result = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "date_cmd": date_str,
        "command": command,
        "machine": f"{platform.machine()} {_sh(['nproc'])} cpus (nproc), "
                   f"python {platform.python_version()}, numpy {np.__version__}",
        "nproc": nproc,
        "corpus": {"files": len(docs), "mb": round(n_bytes / 1e6, 2), "planted_pairs": len(pairs),
                   "planted_jaccard_min": round(sims[0], 4),
                   "planted_jaccard_median": round(sims[len(sims) // 2], 4),
                   "expected_lsh_recall": round(expected, 4)},
        "config": {"ngram": cfg.ngram, "num_perm": cfg.num_perm, "bands": cfg.bands,
                   "rows": cfg.rows, "threshold": cfg.threshold, "verify": cfg.verify},
        "ours": {**summary("ours"), "stages_s": {k: round(v, 3) for k, v in o["stages"].items()},
                 "stats": o["stats"]},
    }
    if have_ds:
        import datasketch
        result["datasketch"] = {**summary("datasketch"),
                                "version": getattr(datasketch, "__version__", "?"),
                                **best["datasketch"]["lsh"]}
    for name in tools:
        if name.startswith("datatrove"):
            r = best[name]
            result[name] = {**summary(name), "version": dt_version, **r["config"],
                            "stages_s": {k: round(v, 3) for k, v in r["stages"].items()}}
    print(json.dumps(result, indent=1))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    day = _dt.date.today().isoformat()
    jpath, mpath = out / f"dedup-{day}.json", out / f"dedup-{day}.md"
    prior = json.loads(jpath.read_text()) if args.append and jpath.exists() else []
    jpath.write_text(json.dumps(prior + [result], indent=1) + "\n")
    mpath.write_text(markdown(result, [n for n in tools]))
    print(f"wrote {mpath} and {jpath}")
    return 0


def markdown(res: dict, names: list[str]) -> str:
    cor, c = res["corpus"], res["config"]
    lines = [
        "# Near dedup: data_prep.dedup vs datasketch vs datatrove (same run)", "",
        f"- date: {res['date_cmd']}",
        f"- machine: {res['machine']}; shared with other jobs (1-min load average at the end of "
        f"each run in the JSON)",
        f"- command: `{res['command']}`",
        f"- corpus: {cor['mb']} MB, {cor['files']} Python files (stdlib, then site-packages), "
        f"{cor['planted_pairs']} planted near-duplicate pairs (true Jaccard median "
        f"{cor['planted_jaccard_median']:.2f}, min {cor['planted_jaccard_min']:.2f}; expected "
        f"recall of a 25x10 LSH {cor['expected_lsh_recall']:.3f})",
        f"- ours: {c['ngram']}-grams, {c['num_perm']} perms, {c['bands']}x{c['rows']} bands, "
        f"threshold {c['threshold']}, verified by exact Jaccard, 1 process",
    ]
    if "datasketch" in res:
        d = res["datasketch"]
        lines.append(f"- datasketch {d['version']}: MinHash(256, {d['scheme']}) + "
                     f"MinHashLSH(threshold=0.7) = {d['bands']}x{d['rows']}, streaming "
                     f"query-then-insert, no verification, 1 process")
    for n in names:
        if n.startswith("datatrove"):
            d = res[n]
            lines.append(f"- {n}: datatrove {d['version']} MinHash stages 1-4, "
                         f"{d['n_grams']}-grams, {d['num_buckets']} buckets x "
                         f"{d['hashes_per_bucket']} hashes, {d['hash']}, word tokenizer "
                         f"{d['language']}, LocalPipelineExecutor workers={d['workers']}, "
                         f"no verification; stage times "
                         + ", ".join(f"{k} {v} s" for k, v in d["stages_s"].items()))
    lines += [
        "- recall: planted pairs with one file dropped; false removals: dropped files with no "
        "other file at true Jaccard >= 0.7 (exact search, plain-Python reference Jaccard); no "
        "kept near-dup: dropped files all of whose >= 0.7 neighbours were dropped too (clusters "
        "are connected components, so a chain A-B-C of >= 0.7 edges can keep A and drop B and C; "
        "every file ours drops has a verified >= 0.7 neighbour, not always a kept one)",
        "- times: fastest of the interleaved runs (all runs in the JSON); CPU = process + "
        "reaped children", "",
        "| tool | wall s | CPU s | MB/s | docs/s | dropped | recall | false removals | "
        "no kept near-dup | ours faster (wall) | ours faster (CPU) | (medians: wall, CPU) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in names:
        d = res[n]
        lines.append(f"| {n} | {d['wall_s']:.2f} | {d['cpu_s']:.2f} | {d['mb_per_s']:.2f} | "
                     f"{d['docs_per_s']:.1f} | {d['dropped']} | {d['recall']:.4f} | "
                     f"{d['false_removals']} | {d['no_kept_near_dup']} | "
                     f"{d['ours_speedup_wall']}x | {d['ours_speedup_cpu']}x | "
                     f"{d['ours_speedup_median_wall']}x, {d['ours_speedup_median_cpu']}x |")
    lines += ["", "Runs (wall s / CPU s, in order):", ""]
    for n in names:
        lines.append(f"- {n}: " + ", ".join(f"{r['wall_s']:.2f} / {r['cpu_s']:.2f}"
                                            for r in res[n]["runs"]))
    ex = [(n, res[n]["false_removal_examples"]) for n in names if res[n]["false_removals"]]
    if ex:
        lines += ["", "False removal examples:", ""]
        lines += [f"- {n}: " + ", ".join(f"`{e}`" for e in exs[:5]) for n, exs in ex]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
