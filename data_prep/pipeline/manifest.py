"""The phase-1 manifest: for every stage and language, what came in, what was kept and what was
dropped and why; kept plus dropped equals read, checked. Optionally a funnel plot."""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path

from ..store import load_pickle



def build_manifest(run, n_units: int, datasets: dict[str, str]) -> dict:
    work, cfg = run.work, run.cfg
    units = [json.loads((work / "read" / f"u{i:06d}.json").read_text()) for i in range(n_units)]
    read = sum(u["read"] for u in units)
    source_dropped = Counter()
    problems = []
    filt: dict = defaultdict(lambda: {"in": 0, "kept": 0, "dropped": Counter()})
    for u in units:
        source_dropped.update(u["source_dropped"])
        problems += u["problems"]
        for lang, c in u["filter"].items():
            filt[lang]["in"] += c["in"]
            filt[lang]["kept"] += c["kept"]
            filt[lang]["dropped"].update(c["dropped"])
    dedup = load_pickle(work / "dedup.pkl")
    exact_by_lang = Counter(d["lang"] for d in dedup["exact"].values())
    near_by_lang = Counter(d["lang"] for d in dedup["near"].values())
    decon_by_lang: dict = defaultdict(Counter)
    removals = []
    for i in range(n_units):
        for rid, m in load_pickle(work / "decontam" / f"u{i:06d}.pkl").items():
            decon_by_lang[m["lang"]][m["benchmark"]] += 1
            removals.append({"id": rid, "benchmark": m["benchmark"], "task_id": m["task_id"],
                             "field": m["field"]})
    group: dict = defaultdict(Counter)
    tokens: dict = defaultdict(Counter)
    for b in range(cfg.buckets):
        for lang, c in json.loads((work / "group" / f"b{b:05d}.json").read_text()).items():
            group[lang].update(c)
        for lang, c in json.loads((work / "tok" / f"b{b:05d}" / "done.json").read_text()).items():
            tokens[lang].update(c)

    languages = {}
    for lang in sorted(filt):
        f = filt[lang]
        exact_in = f["kept"]
        near_in = exact_in - exact_by_lang[lang]
        dec_in = near_in - near_by_lang[lang]
        kept = dec_in - sum(decon_by_lang[lang].values())
        stages = {
            "filter": {"in": f["in"], "kept": f["kept"], "dropped": dict(sorted(
                (k, v) for k, v in f["dropped"].items() if v))},
            "exact_dedup": {"in": exact_in, "kept": near_in, "dropped": {"duplicate": exact_by_lang[lang]}},
            "near_dedup": {"in": near_in, "kept": dec_in, "dropped": {"near_duplicate": near_by_lang[lang]}},
            "decontaminate": {"in": dec_in, "kept": kept,
                              "dropped": dict(sorted(decon_by_lang[lang].items()))},
            "group": {"files": group[lang]["files"], "documents": group[lang]["documents"],
                      "repositories": group[lang]["repositories"]},
            "tokenize": {"documents": tokens[lang]["documents"], "tokens": tokens[lang]["tokens"],
                         "dataset": datasets.get(lang)},
        }
        for name in ("filter", "exact_dedup", "near_dedup", "decontaminate"):
            st = stages[name]
            if st["kept"] + sum(st["dropped"].values()) != st["in"]:
                raise AssertionError(f"manifest accounting broken for {lang} at {name}: {st}")
        if group[lang]["files"] != kept or tokens[lang]["documents"] != group[lang]["documents"]:
            raise AssertionError(f"manifest accounting broken for {lang}: {kept} files kept, "
                                 f"{group[lang]['files']} grouped, {tokens[lang]['documents']} "
                                 f"documents tokenized of {group[lang]['documents']}")
        languages[lang] = stages
    yielded = sum(f["in"] for f in filt.values())
    final = sum(s["decontaminate"]["kept"] for s in languages.values())
    dropped_total = sum(source_dropped.values()) + sum(
        sum(s[n]["dropped"].values()) for s in languages.values()
        for n in ("filter", "exact_dedup", "near_dedup", "decontaminate"))
    if read != yielded + sum(source_dropped.values()) or read != final + dropped_total:
        raise AssertionError(f"manifest accounting broken: read {read}, kept {final}, "
                             f"dropped {dropped_total}")
    return {
        "stage": "phase1",
        "totals": {"read": read, "kept": final, "dropped": dropped_total,
                   "documents": sum(t["documents"] for t in tokens.values()),
                   "tokens": sum(t["tokens"] for t in tokens.values())},
        "read": {"read": read, "dropped": dict(sorted(source_dropped.items())),
                 "problems": problems[:50]},
        "languages": languages,
        "removals": {"decontamination": sorted(removals, key=lambda r: r["id"])[:1000],
                     "near_duplicates_sample": [{"id": k, **v} for k, v in
                                                list(dedup["near"].items())[:200]]},
        "datasets": datasets,
    }


def phase1_funnel(manifest: dict) -> dict[str, dict[str, int]]:
    """Files left after each phase-1 stage, per language."""
    steps = ("filter", "exact_dedup", "near_dedup", "decontaminate")
    return {lang: {"read": s["filter"]["in"], **{step: s[step]["kept"] for step in steps}}
            for lang, s in manifest["languages"].items()}


def render_funnel(counts: dict[str, dict[str, int]], title: str, out_png: str | os.PathLike,
                  unit: str = "files") -> Path:
    """counts[lang][stage] (stages in order) as grouped bars, written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from snowtrain.metrics import save_figure
    langs = list(counts)
    steps = list(next(iter(counts.values()), {}))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(langs) + 3), 4.5))
    width = 0.8 / max(1, len(steps))
    for k, step in enumerate(steps):
        ax.bar([i + k * width for i in range(len(langs))], [counts[l][step] for l in langs], width,
               label=step)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(langs))], langs, rotation=30)
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out_png, dpi=110)
