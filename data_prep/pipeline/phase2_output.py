"""Phase 2's final step on rank 0: the per-unit datasets merged per language, the tokenizer
copied, manifest.json (per language: files and tokens in and kept, the target, the score cut,
score quantiles; checked: kept + dropped == in, and the datasets hold exactly the kept files)
and optionally scores.png."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..indexed import merge_datasets, read_index
from ..store import load_pickle, write_text
from ..tokenizer import copy_tokenizer

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def finish(run, units, annotator_metrics: dict) -> dict:
    selection = load_pickle(run.work / "selection.pkl")
    by_lang: dict[str, list[int]] = {}
    for u, (lang, _, _) in enumerate(units):
        by_lang.setdefault(lang, []).append(u)
    run.out.mkdir(parents=True, exist_ok=True)
    datasets, languages = {}, {}
    for lang, us in by_lang.items():
        parts = [run.load_scores(u) for u in us]
        score = np.concatenate([p["score"] for p in parts])
        tokens = np.concatenate([p["tokens"] for p in parts])
        keep = np.concatenate([selection["units"][u] for u in us])
        written = [json.loads((run._part_prefix(u, lang).parent / "done.json").read_text()) for u in us]
        prefix = str(run.out / f"{lang}_text_document")
        pieces = [str(run._part_prefix(u, lang)) for u, w in zip(us, written) if w["documents"]]
        if pieces:
            merge_datasets(pieces, prefix)
            datasets[lang] = prefix
        else:   # nothing kept: no dataset, and none left from an earlier run
            for suffix in (".idx", ".bin"):
                Path(prefix + suffix).unlink(missing_ok=True)
        languages[lang] = _language_entry(lang, score, tokens, keep, selection["targets"][lang],
                                          datasets.get(lang))
        _check_all_scored(run.input.manifest, lang, len(score))
    copy_tokenizer(run.input.tokenizer.path, run.out)
    total = lambda *keys: sum(_get(s, keys) for s in languages.values())  # noqa: E731
    manifest = {
        "stage": "phase2",
        "input": str(run.input.folder),
        # "kept", "documents" and "tokens" as phase 1's totals name them
        "totals": {"files_in": total("files", "in"), "kept": total("files", "kept"),
                   "dropped": total("files", "dropped", "below_quality_cut"),
                   "documents": total("files", "kept"), "tokens_in": total("tokens", "in"),
                   "tokens": total("tokens", "kept"), "target_tokens": selection["total_target"]},
        "languages": languages,
        "annotator": annotator_metrics,
        "datasets": datasets,
    }
    write_text(run.out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
    if run.cfg.scores_png:
        try:
            render_scores(run, by_lang, languages, run.out / "scores.png")
        except ImportError:
            run.log("matplotlib is not installed: no scores.png")
    for lang, s in languages.items():
        cut = "-" if s["threshold"] is None else f"{s['threshold']:.4f}"
        run.log(f"{lang}: kept {s['files']['kept']} of {s['files']['in']} files, "
                f"{s['tokens']['kept']:,} tokens (target {s['tokens']['target']:,.0f}), score cut {cut}")
    t = manifest["totals"]
    run.log(f"kept {t['kept']} of {t['files_in']} files, {t['tokens']:,} of {t['tokens_in']:,} "
            f"tokens (target {t['target_tokens']:,.0f}) in {len(datasets)} datasets in {run.out}")
    return manifest


def _get(d: dict, keys):
    for k in keys:
        d = d[k]
    return d


def _check_all_scored(input_manifest: dict, lang: str, scored: int) -> None:
    """Every input file was scored, when the input's manifest counts them (phase 1's does)."""
    stages = input_manifest.get("languages")
    files = stages.get(lang, {}).get("group", {}).get("files") if isinstance(stages, dict) else None
    if files is not None and files != scored:
        raise AssertionError(f"manifest accounting broken for {lang}: the input holds {files} "
                             f"files, {scored} were scored")


def _language_entry(lang, score, tokens, keep, target, dataset) -> dict:
    n, kept = len(score), int(keep.sum())
    entry = {
        "files": {"in": n, "kept": kept, "dropped": {"below_quality_cut": int(n - kept)}},
        "tokens": {"in": int(tokens.sum()), "kept": int(tokens[keep].sum()), "target": float(target)},
        "target_met": bool(tokens[keep].sum() >= target),
        # the lowest kept score: files scored below it were dropped
        "threshold": float(score[keep].min()) if kept else None,
        "score_quantiles": {f"p{round(q * 100)}": float(np.quantile(score, q))
                            for q in QUANTILES} if n else {},
        "dataset": dataset,
    }
    if entry["files"]["kept"] + entry["files"]["dropped"]["below_quality_cut"] != n:
        raise AssertionError(f"manifest accounting broken for {lang}: {entry['files']}")
    if dataset is not None:
        info = read_index(dataset)
        docs = len(info.document_indices) - 1
        written = int(info.sequence_lengths.sum(dtype=np.int64))
    else:
        docs, written = 0, 0
    if docs != kept or written != entry["tokens"]["kept"]:
        raise AssertionError(f"manifest accounting broken for {lang}: {kept} files and "
                             f"{entry['tokens']['kept']} tokens kept, the dataset holds {docs} "
                             f"documents and {written} tokens")
    return entry


def render_scores(run, by_lang: dict, languages: dict, out_png) -> Path:
    """A score histogram per language, with the cut."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from snowtrain.metrics import save_figure
    langs = list(by_lang)
    fig, axes = plt.subplots(1, len(langs), figsize=(3.6 * len(langs) + 1, 3.4), squeeze=False)
    for ax, lang in zip(axes[0], langs):
        score = np.concatenate([run.load_scores(u)["score"] for u in by_lang[lang]])
        s = languages[lang]
        ax.hist(score, bins=40, range=(0, 1), color="tab:blue", alpha=0.8)
        if s["threshold"] is not None:
            ax.axvline(s["threshold"], color="tab:red", lw=1.5, label=f"cut {s['threshold']:.3f}")
            ax.legend(fontsize=8)
        ax.set_title(f"{lang}: {s['files']['kept']}/{s['files']['in']} files kept", fontsize=9)
        ax.set_xlabel("annotator score")
    axes[0][0].set_ylabel("files")
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=110, bbox_inches=None)
