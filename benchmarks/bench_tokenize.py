"""Tokenize-and-write: `data-prep tokenize` against the Megatron way, same corpus, tokenizer and
cores, whole processes timed side by side, outputs compared byte for byte.

The corpus is real code from this machine (the standard library and installed packages' .py,
.c, .h, .cpp files), one JSON line per file, as Megatron's tool reads it.
Usage: python benchmarks/bench_tokenize.py [--mb 100] [--vocab 32000] [--workers 2]
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_prep.sources import TreeSource, embedded_roots  # noqa: E402
from data_prep.tokenizer import train_tokenizer  # noqa: E402


def build_corpus(path: Path, mb: float) -> tuple[int, int]:
    n = size = 0
    with open(path, "w", encoding="utf-8") as f:
        for rec in TreeSource(embedded_roots(), max_total_bytes=int(mb * 2**20)):
            f.write(json.dumps({"content": rec.content}) + "\n")
            n += 1
            size += len(rec.content.encode())
    return n, size


def timed(cmd, env=None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def digest(prefix: str) -> str:
    h = hashlib.sha256()
    for ext in (".bin", ".idx"):
        h.update(Path(prefix + ext).read_bytes())
    return h.hexdigest()[:16]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mb", type=float, default=100.0)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--work", default="/tmp/snowtrain-bench-tokenize")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    docs, size = build_corpus(corpus, args.mb)
    model = work / "tok" / "tokenizer.model"
    if not model.exists():
        texts = (json.loads(line)["content"] for line in open(corpus, encoding="utf-8"))
        train_tokenizer(texts, model.parent, args.vocab, sample_chunks=200_000)
    py = sys.executable
    bin_dir = Path(py).parent
    runs = {"megatron_way": [], "snowtrain": []}
    for _ in range(args.repeat):  # interleaved, to share any drift of the machine
        runs["megatron_way"].append(timed([py, str(ROOT / "benchmarks/megatron_preprocess_baseline.py"),
                                           str(corpus), str(model), str(work / "megatron_text_document"),
                                           str(args.workers)]))
        runs["snowtrain"].append(timed([str(bin_dir / "data-prep"), "tokenize", "--input", str(corpus),
                                        "--tokenizer", str(model), "--output", str(work / "ours_text_document"),
                                        "--workers", str(args.workers)]))
    same = digest(str(work / "megatron_text_document")) == digest(str(work / "ours_text_document"))
    best = {k: min(v) for k, v in runs.items()}
    mbs = {k: size / 2**20 / v for k, v in best.items()}
    ratio = best["megatron_way"] / best["snowtrain"]
    result = {
        "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join(sys.argv), "corpus_files": docs, "corpus_mb": round(size / 2**20, 1),
        "vocab": args.vocab, "workers": args.workers, "seconds": runs, "mb_per_s": mbs,
        "speedup": round(ratio, 2), "byte_identical": same,
    }
    print(json.dumps(result, indent=2))
    out = ROOT / "benchmarks/results" / f"tokenize-{result['date']}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(
        f"# Tokenize-and-write, {result['date']}\n\n"
        f"Machine: {result['machine']}. Command: `{result['command']}`.\n"
        f"Corpus: {docs} real source files, {result['corpus_mb']} MB of JSONL text; a {args.vocab}-piece "
        f"sentencepiece BPE; {args.workers} workers/threads; whole processes (imports included), best of "
        f"{args.repeat}, interleaved.\n\n"
        f"| tool | seconds | MB/s |\n|---|---|---|\n"
        f"| Megatron way (pool + IndexedDatasetBuilder) | {best['megatron_way']:.1f} | {mbs['megatron_way']:.2f} |\n"
        f"| snowtrain `data-prep tokenize` | {best['snowtrain']:.1f} | {mbs['snowtrain']:.2f} |\n\n"
        f"Speed-up: **{ratio:.2f}x**. Outputs byte-identical: **{same}**.\n")
    print(f"wrote {out}.md")


if __name__ == "__main__":
    main()
