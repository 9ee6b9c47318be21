#!/usr/bin/env python3
"""Near-dedup throughput and recall: data_prep.dedup.near_dedup against datasketch, same run.

Corpus: real Python source (the standard library, then site-packages) read in sorted order up to
--mb megabytes, plus --pairs planted near-duplicates (a file with about --mutate of its lines
replaced by lines of other files; their true Jaccard similarity is reported). Both sides use the
same tokens and 5-gram shingles, 256 permutations and Jaccard threshold 0.7:

* ours: near_dedup with its defaults (25 bands x 10 rows, verified by exact Jaccard);
* datasketch: MinHash(num_perm=256, shared permutations) + update_batch over the distinct
  shingles, MinHashLSH(threshold=0.7) queried then inserted file by file (a file is dropped when
  the index already holds a candidate) - its usual streaming dedup, with no verification.

Recall = planted pairs of which one file was dropped; the script also prints the recall that
any 25x10-band LSH is expected to reach on them (1 - (1 - J**10)**25 averaged over the pairs).
Results are appended to benchmarks/results/dedup-<date>.md (one markdown line) and
dedup-<date>.json.

    PYTHONPATH=. python benchmarks/bench_dedup.py [--mb 50] [--pairs 500] [--repeat 1]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_prep.dedup import NearDedupConfig, near_dedup, shingle_set, jaccard  # noqa: E402
from data_prep.dedup.minhash import TOKEN_PATTERN  # noqa: E402


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
    c0, t0 = time.process_time(), time.perf_counter()
    res = near_dedup(docs, cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "dropped": set(res.dropped), "stages": res.timings,
            "stats": res.stats}


def run_datasketch(docs, num_perm: int, threshold: float, ngram: int) -> dict:
    from datasketch import MinHash, MinHashLSH
    c0, t0 = time.process_time(), time.perf_counter()
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
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "dropped": dropped,
            "lsh": {"bands": lsh.b, "rows": lsh.r, "scheme": extra.get("scheme", "legacy")}}


def recall(dropped: set, pairs) -> float:
    return sum(1 for a, b in pairs if a in dropped or b in dropped) / max(1, len(pairs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=50.0, help="corpus size in MB (before planting)")
    ap.add_argument("--pairs", type=int, default=500, help="planted near-duplicate pairs")
    ap.add_argument("--mutate", type=float, default=0.02,
                    help="fraction of a planted copy's lines replaced (0.02: Jaccard about 0.9)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side; best time kept")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-datasketch", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

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
            import datasketch  # noqa: F401
        except ImportError:
            have_ds = False
            print("datasketch is not installed: `pip install datasketch` to compare with it "
                  "(in a separate virtual environment if you like). Running ours only.")
    ours, theirs = None, None
    for _ in range(args.repeat):     # alternate, so that both see the same machine load
        r = run_ours(docs, cfg)
        ours = r if ours is None or r["wall_s"] < ours["wall_s"] else ours
        print(f"ours:       {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s cpu", flush=True)
        if have_ds:
            r = run_datasketch(docs, cfg.num_perm, cfg.threshold, cfg.ngram)
            theirs = r if theirs is None or r["wall_s"] < theirs["wall_s"] else theirs
            print(f"datasketch: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s cpu", flush=True)

    def summary(r: dict) -> dict:
        return {"wall_s": round(r["wall_s"], 3), "cpu_s": round(r["cpu_s"], 3),
                "mb_per_s": round(n_bytes / 1e6 / r["wall_s"], 2),
                "docs_per_s": round(len(docs) / r["wall_s"], 1),
                "dropped": len(r["dropped"]), "recall": round(recall(r["dropped"], pairs), 4)}

    result = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, "
                   f"python {platform.python_version()}",
        "corpus": {"files": len(docs), "mb": round(n_bytes / 1e6, 2), "planted_pairs": len(pairs),
                   "planted_jaccard_min": round(sims[0], 4),
                   "planted_jaccard_median": round(sims[len(sims) // 2], 4),
                   "expected_lsh_recall": round(expected, 4)},
        "config": {"ngram": cfg.ngram, "num_perm": cfg.num_perm, "bands": cfg.bands,
                   "rows": cfg.rows, "threshold": cfg.threshold, "verify": cfg.verify},
        "ours": {**summary(ours), "stages_s": {k: round(v, 3) for k, v in ours["stages"].items()},
                 "stats": ours["stats"]},
    }
    if theirs is not None:
        import datasketch
        result["datasketch"] = {**summary(theirs), "version": getattr(datasketch, "__version__",
                                                                      "?"), **theirs["lsh"]}
        result["speedup_wall"] = round(theirs["wall_s"] / ours["wall_s"], 2)
        result["speedup_cpu"] = round(theirs["cpu_s"] / ours["cpu_s"], 2)
    print(json.dumps(result, indent=1))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    day = _dt.date.today().isoformat()
    jpath, mpath = out / f"dedup-{day}.json", out / f"dedup-{day}.md"
    runs = json.loads(jpath.read_text()) if jpath.exists() else []
    runs.append(result)
    jpath.write_text(json.dumps(runs, indent=1) + "\n")
    o = result["ours"]
    cor = result["corpus"]
    line = (f"| {result['date']} | {cor['mb']} MB, {len(docs)} files, {len(pairs)} planted pairs "
            f"(Jaccard median {cor['planted_jaccard_median']:.2f}, min "
            f"{cor['planted_jaccard_min']:.2f}; expected LSH recall "
            f"{cor['expected_lsh_recall']:.3f}) | "
            f"ours {o['mb_per_s']} MB/s, {o['docs_per_s']} docs/s, recall {o['recall']:.3f} | ")
    if theirs is not None:
        d = result["datasketch"]
        line += (f"datasketch {d['mb_per_s']} MB/s, {d['docs_per_s']} docs/s, recall "
                 f"{d['recall']:.3f} | {result['speedup_wall']}x wall, "
                 f"{result['speedup_cpu']}x cpu |")
    else:
        line += "datasketch not run | - |"
    if not mpath.exists():
        mpath.write_text("# Near dedup: data_prep.dedup vs datasketch (256 perms, threshold 0.7, "
                         "1 process)\n\n| date | corpus | ours | datasketch | speedup |\n"
                         "| --- | --- | --- | --- | --- |\n")
    with mpath.open("a") as f:
        f.write(line + "\n")
    print(f"wrote {mpath} and {jpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
