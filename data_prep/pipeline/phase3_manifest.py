"""The phase-3 manifest: per language the seeds requested, the files kept, the drops by stage
and reason, the tokens used and written; kept plus dropped equals requested, checked. Its
"datasets", "languages" and "totals" keys are those PhaseOutput and training read."""
from __future__ import annotations

from collections import Counter

from ..store import load_pickle

STAGES = ("generate", "filter", "exact_dedup", "near_dedup", "decontaminate")


def build_manifest(run, plan, finals, tokens: dict[str, Counter], datasets: dict[str, str]) -> dict:
    """finals: every unit's final verdicts in unit order; tokens: per language documents and
    tokens written."""
    drops = {lang: {s: Counter() for s in STAGES} for lang in plan.languages}
    usage = {lang: Counter() for lang in plan.languages}
    seen = Counter()
    contaminated = []
    for final in finals:
        for seed, lang, stage, reason, prompt_tokens, completion_tokens, attempts in final["verdicts"]:
            seen[lang] += 1
            usage[lang].update(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                               requests=attempts, failed_requests=reason == "api_error")
            if reason is not None:
                drops[lang][stage][reason] += 1
        contaminated += [{"seed": int(s), **m} for s, m in final["contaminated"].items()]

    languages = {}
    for lang in plan.languages:
        n = plan.counts[lang]
        if seen[lang] != n:
            raise AssertionError(f"manifest accounting broken for {lang}: {n} seeds planned, "
                                 f"{seen[lang]} answered")
        stages, left, dropped = {}, n, Counter()
        for stage in STAGES:
            d = drops[lang][stage]
            stages[stage] = {"in": left, "kept": left - sum(d.values()), "dropped": dict(sorted(d.items()))}
            left = stages[stage]["kept"]
            dropped.update(d)
        tok = tokens.get(lang, Counter())
        if left + sum(dropped.values()) != n or tok["documents"] != left:
            raise AssertionError(f"manifest accounting broken for {lang}: {n} requested, {left} "
                                 f"kept, {sum(dropped.values())} dropped, {tok['documents']} "
                                 "documents written")
        languages[lang] = {
            "requested": n, "kept": left, "dropped": dict(sorted(dropped.items())),
            "share": round(n / plan.num_seeds, 6), "input_tokens": plan.tokens[lang],
            "usage": {k: int(usage[lang][k]) for k in
                      ("prompt_tokens", "completion_tokens", "requests", "failed_requests")},
            "stages": stages,
            "tokenize": {"documents": tok["documents"], "tokens": tok["tokens"],
                         "dataset": datasets.get(lang)},
        }
    dedup = load_pickle(run.post / "dedup.pkl")
    e = run.cfg.endpoint
    totals = {"requested": plan.num_seeds,
              "kept": sum(v["kept"] for v in languages.values()),
              "dropped": sum(sum(v["dropped"].values()) for v in languages.values()),
              "documents": sum(v["tokenize"]["documents"] for v in languages.values()),
              "tokens": sum(v["tokenize"]["tokens"] for v in languages.values())}
    for k in ("prompt_tokens", "completion_tokens", "requests", "failed_requests"):
        totals[k] = sum(v["usage"][k] for v in languages.values())
    if totals["kept"] + totals["dropped"] != totals["requested"]:
        raise AssertionError(f"manifest accounting broken: {totals}")
    return {
        "stage": "phase3",
        "input": {"folder": str(run.source.folder), "tokens": plan.tokens},
        "endpoint": {"base_url": e.base_url, "api": e.api, "model": e.model},
        "totals": totals,
        "languages": languages,
        "removals": {"decontamination": sorted(contaminated, key=lambda r: r["seed"])[:1000],
                     "near_duplicates_sample": [{"id": k, **v} for k, v in
                                                list(dedup["near"].items())[:200]]},
        "datasets": datasets,
    }
