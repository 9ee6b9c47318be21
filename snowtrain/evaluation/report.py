"""`snowtrain eval-report`: the scores of many evaluations side by side, one row per model (a
checkpoint of each phase, say) and one column per benchmark, beside the Arctic-SnowCoder paper's
numbers after the same phase where the benchmark is one it reports. Reads the summary.json files
`snowtrain eval` writes; prints a markdown table, optionally writes it and a bar chart."""
from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from ..config import ConfigError

# Greedy pass@1 (%) after each phase (Wei, Han, Samdani 2024, arXiv 2409.02326, table of results).
PAPER = {"HumanEval+": {1: 14.0, 2: 21.3, 3: 28.0}, "MBPP+": {1: 27.8, 2: 34.7, 3: 42.9},
         "EvoEval": {1: 7.4, 2: 12.8, 3: 18.0}, "BigCodeBench": {1: 10.3, 2: 12.3, 3: 19.4}}
# A benchmark's name without its version (HumanEvalPlus-v0.1.10) -> the paper's column; subsets
# (HumanEvalPlus-Mini, EvoEval_difficult) are other benchmarks.
_PAPER_NAME = {"humanevalplus": "HumanEval+", "mbppplus": "MBPP+", "evoeval": "EvoEval",
               "bigcodebench": "BigCodeBench"}
# EvoEval's five semantic-altering benchmarks, whose mean is its summary score
EVOEVAL_PARTS = ("difficult", "creative", "subtle", "combine", "tool_use")
_VERSION = re.compile(r"[-_]v?\d+(\.\d+)*$")
_PHASE = re.compile(r"(?:^|[/_-])phase([123])(?=$|[/_-])")


def _unversioned(name: str) -> str:
    """A benchmark's name in lower case without its version (HumanEvalPlus-v0.1.10 -> humanevalplus)."""
    return _VERSION.sub("", name).lower()


def paper_benchmark(name: str) -> str | None:
    return _PAPER_NAME.get(_unversioned(name))


def _phase(*paths: str) -> int | None:
    """The phase a path names, innermost first (/runs/phase1-ablation/ckpt/phase3/... is 3)."""
    for path in paths:
        found = _PHASE.findall(path)
        if found:
            return int(found[-1])
    return None


def _when(stamp: str) -> datetime:
    try:
        t = datetime.fromisoformat(stamp)
        return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return datetime.min.replace(tzinfo=timezone.utc)


def _later(rec: dict, than: dict | None) -> bool:
    """Whether evaluation `rec` finished no earlier than `than` (None: there is none)."""
    return than is None or _when(rec["finished_at"]) >= _when(than["finished_at"])


def find_summaries(paths) -> list[Path]:
    found = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(p.rglob("summary.json"))
        else:
            raise ConfigError("no such file or folder", file=p,
                              fix="give evaluation output folders (snowtrain eval --out) or their summary.json")
    if not found:
        raise ConfigError("no summary.json under " + ", ".join(map(str, paths)), file=None,
                          fix="run snowtrain eval first; it writes OUT/summary.json when it finishes")
    return found


def collect(paths, say=lambda msg: print(msg, file=sys.stderr)) -> list[dict]:
    """One record per (model, benchmark): the latest finished evaluation of it. A file that is
    not a summary is skipped with a warning; none readable is a ConfigError."""
    latest: dict[tuple, dict] = {}
    broken = []
    for f in find_summaries(paths):
        try:
            s = json.loads(f.read_text())
            rec = {"model": s["model"], "benchmark": s["benchmark"], "problems": s["problems"],
                   "pass@1": s["pass@k"]["pass@1"], "base": (s.get("base_pass@k") or {}).get("pass@1"),
                   "finished_at": s.get("finished_at", ""), "file": str(f)}
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
            broken.append(f)
            say(f"snowtrain eval-report: skipping {f}: not a summary written by snowtrain eval "
                f"({type(e).__name__}: {e})")
            continue
        rec["phase"] = _phase(str(rec["model"]), str(f))
        key = (rec["model"], rec["benchmark"])
        if _later(rec, latest.get(key)):
            latest[key] = rec
    if not latest:
        raise ConfigError("no readable summary among " + ", ".join(map(str, broken)), file=None,
                          fix="rerun those evaluations (snowtrain eval writes OUT/summary.json last)")
    records = list(latest.values()) + _evoeval_means(list(latest.values()))
    return sorted(records, key=lambda r: (r["phase"] or 99, r["model"], r["benchmark"]))


def _evoeval_means(records: list[dict]) -> list[dict]:
    """An "EvoEval" record per model evaluated on all five EvoEval benchmarks: the mean of their
    pass@1, the suite's own summary score (and our reading of the paper's EvoEval column)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in records):
        mine = [r for r in records if r["model"] == model]
        if any(paper_benchmark(r["benchmark"]) == "EvoEval" for r in mine):
            continue  # an "EvoEval" file of its own was evaluated
        parts = {}
        for r in mine:  # a part evaluated under two names (with and without a version): the later
            name = _unversioned(r["benchmark"])
            part = name.removeprefix("evoeval_")
            if name != part and part in EVOEVAL_PARTS and _later(r, parts.get(part)):
                parts[part] = r
        if len(parts) == len(EVOEVAL_PARTS):
            first = parts[EVOEVAL_PARTS[0]]
            out.append({"model": model, "benchmark": "EvoEval", "phase": first["phase"], "base": None,
                        "problems": sum(r["problems"] for r in parts.values()),
                        "pass@1": sum(r["pass@1"] for r in parts.values()) / len(parts),
                        "finished_at": max((r["finished_at"] for r in parts.values()), key=_when),
                        "file": "mean of " + ", ".join(r["benchmark"] for r in parts.values())})
    return out


def _label(model: str) -> str:
    parts = Path(model).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else model


def table(records: list[dict]) -> str:
    models = list(dict.fromkeys(r["model"] for r in records))
    benchmarks = sorted({r["benchmark"] for r in records})
    cell = {(r["model"], r["benchmark"]): r for r in records}
    head = ["model"]
    for b in benchmarks:
        head.append(b)
        if paper_benchmark(b):
            head.append(f"paper {paper_benchmark(b)}")
    rows = []
    for m in models:
        phase = next(r["phase"] for r in records if r["model"] == m)
        row = [_label(m) + (f" (phase {phase})" if phase else "")]
        for b in benchmarks:
            r = cell.get((m, b))
            row.append("-" if r is None else f"{100 * r['pass@1']:.1f}"
                       + (f" (base {100 * r['base']:.1f})" if r["base"] is not None else "")
                       + f" /{r['problems']}")
            if paper_benchmark(b):
                ref = PAPER[paper_benchmark(b)].get(phase)
                row.append("-" if ref is None else f"{ref:.1f}")
        rows.append(row)
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n\npass@1 in %, greedy unless the evaluation sampled; /N: problems " \
                            "evaluated; paper: Arctic-SnowCoder-1.3B after the same phase.\n"


def plot(records: list[dict], out_png) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..metrics import save_figure
    models = list(dict.fromkeys(r["model"] for r in records))
    benchmarks = sorted({r["benchmark"] for r in records})
    cell = {(r["model"], r["benchmark"]): r for r in records}
    width, top, legend_done = 0.8 / len(benchmarks), 0.0, False
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(models) * len(benchmarks)), 4.5))
    for k, b in enumerate(benchmarks):
        xs = [i + k * width for i, m in enumerate(models) if (m, b) in cell]
        ys = [100 * cell[(m, b)]["pass@1"] for m in models if (m, b) in cell]
        bars = ax.bar(xs, ys, width, label=b)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        top = max([top, *ys])
        if paper_benchmark(b):
            refs = [(i + k * width, PAPER[paper_benchmark(b)].get(cell[(m, b)]["phase"]))
                    for i, m in enumerate(models) if (m, b) in cell]
            refs = [(x, y) for x, y in refs if y is not None]
            if refs:
                top = max([top, *(y for _, y in refs)])
                ax.plot(*zip(*refs), marker="_", linestyle="none", markersize=18, mew=2, color="black",
                        label=None if legend_done else "paper, after the same phase")
                legend_done = True
    ax.set_xticks([i + width * (len(benchmarks) - 1) / 2 for i in range(len(models))])
    ax.set_xticklabels([_label(m) for m in models], rotation=15, ha="right")
    ax.set_ylim(0, max(5.0, 1.15 * top))   # scores of 0 (a toy model) still get an axis
    ax.set_ylabel("pass@1 (%)")
    ax.set_title("evaluations")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_png)


def report_command(args) -> int:
    """0 done, 2 nothing to report or an unreadable summary."""
    from data_prep.store import write_text
    try:
        records = collect(args.paths)
    except ConfigError as e:
        print(f"snowtrain eval-report: {e}", file=sys.stderr)
        return 2
    text = table(records)
    print(text, end="")
    if args.out:
        write_text(args.out, text)
    if args.plot:
        print(f"wrote {plot(records, args.plot)}")
    return 0
