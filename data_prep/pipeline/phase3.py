"""Phase 3: synthetic code files written by an LLM from phase-2 seeds (OSS-Instruct adapted to
pretraining), then checked, filtered, deduplicated, decontaminated and tokenized like phase 1's
files, one dataset per language, on one process or many MPI ranks.

The seeds are cut into units of `unit_size` that do not depend on the number of ranks (rank r
takes units r, r + size, ...). Each unit's answers are written atomically once all of them have
come back, so a killed run started again only requests the units that had not finished, and its
outputs are byte-identical to an uninterrupted run. Requests that failed after their retries are
requested again by the next run, until a run ends with at most `max_error_fraction` of them; from
then on the answers are final. Changing only the checks after generation (answers, filters,
dedup, decontamination) redoes those checks without requesting anything again.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from snowtrain.config import ConfigError, suggest

from ..comm import local_size
from ..dataset_files import PhaseOutput
from ..indexed import merge_datasets
from ..store import atomic_writer, load_pickle, write_bytes, write_pickle, write_text
from ..synth.answers import answer_file
from ..synth.client import Endpoint, EndpointAuthError, Reply, served_models
from ..synth.prompts import EXTENSIONS, render, seed_values
from ..synth.runner import RequestRunner
from ..synth.seeds import Seed, draw_seed, file_spans, language_tokens, seed_counts
from ..tokenize import DatasetEncoder
from ..tokenizer import FILE_SEP, copy_tokenizer
from .run import PipelineRun, changed_keys
from .phase3_config import Phase3Config, generation_stamp, post_stamp
from .manifest import render_funnel
from .phase3_manifest import STAGES, build_manifest


class Phase3Failed(RuntimeError):
    """The run cannot finish (too many failed requests); what was done is kept for the retry."""


def synthetic_path(lang: str, n: int) -> str:
    return f"synthetic/{lang}/{n}{EXTENSIONS.get(lang, '.txt')}"


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)


def _provenance(ans: dict, lang: str, path: str, code: str) -> str:
    """A kept file's line of synthetic.jsonl: its text and where it came from."""
    return json.dumps({
        "path": path, "lang": lang, "content": code, "seed": ans["seed"], "source": ans["source"],
        "seed_text": ans["seed_text"], "model": ans["model"], "finish_reason": ans["finish_reason"],
        "usage": ans["usage"]}, sort_keys=True, ensure_ascii=False) + "\n"


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@dataclass
class Plan:
    """How many seeds each language gets, in rounds: the first run's seeds, then those each
    top-up adds (a rerun asking for more seeds). A round starts on a unit boundary, so the units
    of earlier rounds never change; seed i is in unit i // unit_size, and the k-th seed of a
    language in a round is that language's seed number (its seeds in earlier rounds) + k."""
    languages: list[str]
    tokens: dict[str, int]
    counts: dict[str, int]              # every round's seeds together, per language
    unit_size: int
    rounds: list[dict] | None = None    # [{"counts": {lang: n}, "first_unit": u}]; None: one round

    def __post_init__(self):
        if self.rounds is None:
            self.rounds = [{"counts": dict(self.counts), "first_unit": 0}]

    @property
    def num_seeds(self) -> int:
        return sum(self.counts.values())

    def _round_units(self, r: dict) -> int:
        return math.ceil(sum(r["counts"].values()) / self.unit_size)

    @property
    def num_units(self) -> int:
        return self.rounds[-1]["first_unit"] + self._round_units(self.rounds[-1])

    def _round(self, u: int) -> int:
        return max(k for k, r in enumerate(self.rounds) if r["first_unit"] <= u)

    def unit_seeds(self, u: int) -> range:
        r = self.rounds[self._round(u)]
        end = r["first_unit"] * self.unit_size + sum(r["counts"].values())
        return range(u * self.unit_size, min(end, (u + 1) * self.unit_size))

    def locate(self, i: int) -> tuple[str, int]:
        k = self._round(i // self.unit_size)
        r = self.rounds[k]
        pos = i - r["first_unit"] * self.unit_size
        for lang in self.languages:
            n = r["counts"].get(lang, 0)
            if pos < n:
                return lang, sum(e["counts"].get(lang, 0) for e in self.rounds[:k]) + pos
            pos -= n
        raise IndexError(i)

    def add_round(self, counts: dict[str, int]) -> "Plan":
        """This plan with one more round of `counts` seeds."""
        total = Counter(self.counts)
        total.update(counts)
        return Plan(sorted(total), self.tokens, dict(sorted(total.items())), self.unit_size,
                    [*self.rounds, {"counts": dict(sorted(counts.items())), "first_unit": self.num_units}])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


# The keys that size the run: a rerun that asks for more seeds (top-up) keeps every answer.
SIZE_KEYS = {"num_seeds", "target_tokens", "tokens_per_seed", "language_shares"}


class Phase3(PipelineRun):
    name = "phase3"

    def __init__(self, cfg: Phase3Config, *, comm=None, restart: bool = False, progress: bool = True,
                 config_file=None):
        super().__init__(cfg, comm=comm, progress=progress)
        self.config_file = config_file
        self.post = self.work / "post"
        self.source = PhaseOutput(cfg.input)
        self._spans: dict[str, np.ndarray] = {}
        self._orders: dict[str, dict] = {}
        self.check_work_dir(restart)

    def _forget_unanswered(self) -> None:
        """A work folder stamped with other values of what decides the answers (endpoint.model,
        say) but holding no answer (every request failed) keeps nothing worth keeping: its
        generation state goes and the new values are stamped, so that the corrected run is not
        refused. With a saved answer the stamp check refuses the change as before."""
        stamp, text = self.work / "config.yaml", generation_stamp(self.cfg)
        changed = changed_keys(stamp, text)
        if not changed:
            return
        if any(a["error"] is None for p in (self.work / "gen").glob("u*.jsonl") for a in _read_jsonl(p)):
            return
        self.log(f"{self.work} holds no answer from the earlier run (every request failed): "
                 f"starting its generation afresh with the new {', '.join(sorted(changed))}")
        for name in ("gen", "spans", "post"):
            shutil.rmtree(self.work / name, ignore_errors=True)
        for name in ("plan.json", "generated.json"):
            (self.work / name).unlink(missing_ok=True)
        write_text(stamp, text)

    def _wanted_seeds(self) -> int:
        cfg = self.cfg
        return cfg.num_seeds or math.ceil(cfg.target_tokens / cfg.tokens_per_seed)

    def _top_up(self) -> None:
        """A rerun that changes only what sizes the run (SIZE_KEYS) keeps the plan and every
        answer: more seeds become a new round, drawn on from where each language's seeds
        stopped (the increment split by the current language_shares); the checks after
        generation are redone over all of them. Fewer seeds is a ConfigError."""
        stamp, text, path = self.work / "config.yaml", generation_stamp(self.cfg), self.work / "plan.json"
        changed = changed_keys(stamp, text)
        if not changed or not path.exists() or not changed <= SIZE_KEYS:
            return   # nothing changed, nothing planned yet, or the stamp check names what else did
        plan, want = Plan(**json.loads(path.read_text())), self._wanted_seeds()
        if want < plan.num_seeds:
            raise ConfigError(
                f"{self.work} holds a plan of {plan.num_seeds} seeds; the config now asks for {want} "
                f"({', '.join(sorted(changed))} changed): a phase-3 run can grow, keeping its "
                "answers, but not shrink", file=self.config_file, key=sorted(changed)[0],
                fix=f"ask for at least {plan.num_seeds} seeds, or start over with --restart (every "
                    "seed is requested again)")
        if want > plan.num_seeds:
            counts = {k: v for k, v in seed_counts(want - plan.num_seeds, self.cfg.language_shares,
                                                   plan.tokens).items() if v}
            # the gate and the checks go first: a run killed before the new plan is written
            # sees the old one and tops up again; one killed after it generates the new seeds
            (self.work / "generated.json").unlink(missing_ok=True)
            shutil.rmtree(self.post, ignore_errors=True)
            for lang in sorted(set(counts) - set(plan.languages)):
                self._write_spans(lang)
            write_text(path, plan.add_round(counts).to_json())
            self.log(f"top-up: {want - plan.num_seeds} more seeds ({', '.join(f'{k} {v}' for k, v in counts.items())})"
                     f" after the {plan.num_seeds} already planned, whose answers are kept")
        else:
            self.log(f"{', '.join(sorted(changed))} changed but the run still has {want} seeds: nothing to add")
        write_text(stamp, text)

    def _check_work_dir(self, restart: bool) -> None:
        if not restart:
            self._forget_unanswered()
            self._top_up()
        self.write_stamp(self.work / "config.yaml", generation_stamp(self.cfg), restart,
                         discards="the saved answers: everything is requested again")
        post = self.post / "config.yaml"
        if post.exists() and post.read_text() != post_stamp(self.cfg):
            self.log("the checks after generation changed: redoing them from the saved answers")
            shutil.rmtree(self.post)
        write_text(post, post_stamp(self.cfg))

    def run(self) -> dict | None:
        plan = self.timed("plan", self.plan)
        self.log(f"{plan.num_seeds} seeds ({', '.join(f'{k} {v}' for k, v in plan.counts.items())}) "
                 f"in {plan.num_units} units on {self.size} rank(s)")
        self.timed("generate", lambda: self.generate(plan))
        self.timed("check", lambda: self.check(plan))
        self.comm.barrier()
        self.timed("dedup", lambda: self.dedup(plan))
        self.timed("decontaminate", lambda: self.decontaminate(plan))
        self.comm.barrier()
        self.timed("tokenize", lambda: self.tokenize(plan))
        self.comm.barrier()
        manifest = None
        if self.rank == 0:
            manifest = self.timed("merge", lambda: self.merge(plan))
            self._report_target(plan, manifest)
            write_text(self.out / "timings.json", json.dumps(self.timings, indent=2))
        self.comm.barrier()
        return manifest

    def _report_target(self, plan: Plan, manifest: dict) -> None:
        """With target_tokens: how far the kept tokens fall short and the top-up that closes it."""
        cfg, kept = self.cfg, manifest["totals"]["tokens"]
        if not cfg.target_tokens or kept >= cfg.target_tokens:
            return
        per_seed = math.floor(kept / plan.num_seeds * 10) / 10   # rounded down: never fewer seeds
        if per_seed <= 0:
            self.log(f"kept no tokens of target_tokens {cfg.target_tokens:,}: see manifest.json's drops")
            return
        more = math.ceil(cfg.target_tokens / per_seed) - plan.num_seeds
        self.log(f"kept {kept:,} tokens, {kept / cfg.target_tokens:.0%} of target_tokens "
                 f"{cfg.target_tokens:,}: {per_seed:.1f} kept tokens per seed, not tokens_per_seed "
                 f"{cfg.tokens_per_seed:g}. To top up, rerun with --set tokens_per_seed={per_seed:.1f}: "
                 f"about {more:,} more seeds are requested and the {plan.num_seeds:,} answered are kept")

    # ------------------------------------------------------------------ plan and seeds
    def plan(self) -> Plan:
        path = self.work / "plan.json"
        self.on_rank0(lambda: path.exists() or self._write_plan(path))
        return Plan(**json.loads(path.read_text()))

    def _write_plan(self, path: Path) -> None:
        """Seeds per language and the files of each, from the input alone."""
        cfg = self.cfg
        langs = cfg.languages or self.source.languages
        tokens = language_tokens(self.source, langs)
        counts = {k: v for k, v in seed_counts(self._wanted_seeds(), cfg.language_shares, tokens).items() if v}
        for lang in counts:
            self._write_spans(lang)
        write_text(path, Plan(sorted(counts), tokens, counts, cfg.unit_size).to_json())

    def _write_spans(self, lang: str) -> None:
        """Where each file of `lang` lies in the input (seeds are drawn from them)."""
        spans = file_spans(self.source, lang)
        if not len(spans):
            raise ConfigError(f"{self.source.prefix(lang)} holds no files to draw seeds from",
                              file=self.config_file, key="languages",
                              fix=f"leave {lang} out of languages")
        buf = io.BytesIO()
        np.save(buf, spans)
        write_bytes(self.work / "spans" / f"{lang}.npy", buf.getvalue())

    def seeds(self, plan: Plan, u: int) -> list[Seed]:
        out = []
        lo, hi = self.cfg.seed_lines
        for i in plan.unit_seeds(u):
            lang, j = plan.locate(i)
            if lang not in self._spans:
                self._spans[lang] = np.load(self.work / "spans" / f"{lang}.npy", mmap_mode="r")
            try:
                out.append(draw_seed(self.source, lang, self._spans[lang], j, i, seed=self.cfg.seed,
                                     min_lines=lo, max_lines=hi, max_chars=self.cfg.max_seed_chars,
                                     orders=self._orders.setdefault(lang, {})))
            except ValueError as e:
                limit = self.cfg.max_seed_chars is not None
                raise ConfigError(str(e), file=self.config_file,
                                  key="max_seed_chars" if limit else "languages",
                                  fix="raise max_seed_chars" if limit else f"leave {lang} out") from None
        return out

    def payload(self, seed: Seed) -> dict:
        cfg, p = self.cfg, self.cfg.prompt
        values = seed_values(seed.lang, seed.text, seed.path, seed.repo)
        g = cfg.generation
        body = {"model": cfg.endpoint.model, "temperature": g.temperature,
                "max_tokens": g.max_tokens, **g.extra}
        if cfg.endpoint.api == "completions":
            return {**body, "prompt": render(p.completion, values)}
        messages = [{"role": "system", "content": render(p.system, values)}] if p.system else []
        messages.append({"role": "user", "content": render(p.user, values)})
        return {**body, "messages": messages}

    def answer(self, seed: Seed, reply: Reply) -> dict:
        return {"seed": seed.index, "lang": seed.lang, "source": seed.provenance(),
                "seed_text": seed.text, "model": self.cfg.endpoint.model,
                "finish_reason": reply.finish_reason, "text": reply.text,
                "usage": {"prompt_tokens": reply.prompt_tokens,
                          "completion_tokens": reply.completion_tokens},
                "error": reply.error, "status": reply.status, "attempts": reply.attempts}

    # ------------------------------------------------------------------ generate
    def _gen_path(self, u: int) -> Path:
        return self.work / "gen" / f"u{u:06d}.jsonl"

    def endpoint(self, base_url: str | None = None) -> Endpoint:
        e = self.cfg.endpoint
        return Endpoint(base_url or e.base_url, e.api, api_key=self.cfg.api_key(), timeout_s=e.timeout_s,
                        retries=e.retries, backoff_s=e.backoff_s, max_backoff_s=e.max_backoff_s)

    def check_endpoint(self, endpoint: Endpoint) -> str:
        """Lists the server's models once before any request: the root to use (base_url, or
        base_url + /v1 when the URL lacks it and only that answers); a model the server does
        not list is a ConfigError naming those it serves."""
        e = self.cfg.endpoint
        try:
            root, names = served_models(endpoint.base_url, self.cfg.api_key(), min(e.timeout_s, 30.0))
        except EndpointAuthError as err:
            raise ConfigError(f"{err}: the server refuses the API key", file=self.config_file,
                              key="endpoint.api_key_env",
                              fix="export the right key in the variable endpoint.api_key_env names") from None
        if root != endpoint.base_url:
            self.log(f"{endpoint.base_url}/models does not answer but {root}/models does: using "
                     f"{root} (write it as endpoint.base_url to silence this)")
        if names is not None and e.model not in names:
            raise ConfigError(
                f"{root} does not serve model '{e.model}'; it serves "
                f"{', '.join(repr(n) for n in names) or 'no model'}", file=self.config_file,
                key="endpoint.model",
                fix="set endpoint.model to one of the served models" + suggest(e.model, names))
        return root

    def generate(self, plan: Plan) -> None:
        gate = self.work / "generated.json"
        if gate.exists():
            return
        # unit -> its answers, None where a request is still to be made
        todo: dict[int, list] = {}
        for u in self.mine(plan.num_units):
            p = self._gen_path(u)
            if not p.exists():
                todo[u] = [None] * len(plan.unit_seeds(u))
            else:
                saved = _read_jsonl(p)
                if any(a["error"] is not None for a in saved):
                    todo[u] = [a if a["error"] is None else None for a in saved]
        n_requests = sum(x is None for answers in todo.values() for x in answers)
        endpoint = self.endpoint()
        if any(self.comm.allgather(n_requests > 0)):
            def checked_root():
                endpoint.check_reachable()
                return self.check_endpoint(endpoint)
            endpoint = self.endpoint(self.on_rank0(checked_root))
        self._pending_seeds: dict[int, list[Seed]] = {}
        mine_total = sum(len(plan.unit_seeds(u)) for u in self.mine(plan.num_units))
        with self.bar(n_requests, "requests", unit="req") as bar:
            runner = RequestRunner(endpoint, self.cfg.endpoint.concurrency,
                                   max_errors=self.cfg.max_error_fraction * mine_total,
                                   max_consecutive_errors=self.cfg.max_consecutive_errors, bar=bar)
            stats = runner.run(self._jobs(plan, todo), lambda key, reply: self._answered(todo, key, reply))
        self._close_generation(plan, stats, endpoint.base_url)

    def _jobs(self, plan: Plan, todo: dict[int, list]):
        for u in sorted(todo):
            seeds = self.seeds(plan, u)
            self._pending_seeds[u] = seeds
            for slot, answer in enumerate(todo[u]):
                if answer is None:
                    yield (u, slot), self.payload(seeds[slot])

    def _answered(self, todo: dict[int, list], key, reply: Reply) -> None:
        u, slot = key
        todo[u][slot] = self.answer(self._pending_seeds[u][slot], reply)
        if all(a is not None for a in todo[u]):
            write_text(self._gen_path(u), _jsonl(todo[u]))
            del todo[u], self._pending_seeds[u]

    def _close_generation(self, plan: Plan, stats, url: str) -> None:
        """Fails the run when too many requests failed; else the answers become final."""
        errors = missing = 0
        for u in self.mine(plan.num_units):
            p = self._gen_path(u)
            if p.exists():
                errors += sum(a["error"] is not None for a in _read_jsonl(p))
            else:
                missing += len(plan.unit_seeds(u))
        parts = self.comm.allgather({"errors": errors, "missing": missing, "stopped": stats.stopped,
                                     "first_errors": stats.first_errors, "sent": stats.requests,
                                     "failed": stats.errors})
        errors = sum(p["errors"] for p in parts)
        missing = sum(p["missing"] for p in parts)
        sent, failed = sum(p["sent"] for p in parts), sum(p["failed"] for p in parts)
        stopped = next((p["stopped"] for p in parts if p["stopped"]), None)
        examples = [e.rstrip(".") for p in parts for e in p["first_errors"]][:3]
        total = plan.num_seeds
        if missing or errors > self.cfg.max_error_fraction * total:
            e = self.cfg.endpoint
            f = self.cfg.max_error_fraction
            what = (f"{failed} of the {sent} requests this run sent to {url} failed after "
                    f"their retries (max_error_fraction {f}: at most {math.floor(f * total)} of the "
                    f"{total} seeds may fail)")
            if stopped:
                what += (f"; stopped early {stopped}"
                         + (f" per rank ({self.size} ranks)" if self.size > 1 else "")
                         + f", {missing} seeds left in unfinished units")
            raise Phase3Failed(
                f"{what}. First errors: {' | '.join(examples) or 'none this run'}. "
                f"The answers received are kept in {self.work}: check that the server at "
                f"{e.base_url} is up and serves model '{e.model}' (endpoint.base_url, "
                f"endpoint.model, endpoint.api_key_env), then run the same command again; only "
                "the failed and missing requests are sent again.")
        if self.rank == 0:
            write_text(self.work / "generated.json", json.dumps({"seeds": total, "failed": errors}))
            if errors:
                self.log(f"{errors} requests failed after their retries: counted as api_error")
        self.comm.barrier()

    # ------------------------------------------------------------------ checks after generation
    def _post_path(self, stage: str, u: int, suffix: str = ".pkl") -> Path:
        return self.post / stage / f"u{u:06d}{suffix}"

    def check(self, plan: Plan) -> None:
        """Answer -> file or drop reason (answer checks, then the filters), per unit."""
        from ..filters import FilterChain
        chain = FilterChain(self.cfg.filters)
        a = self.cfg.answers
        todo = [u for u in self.mine(plan.num_units) if not self._post_path("check", u).exists()]
        for u in todo:
            items = []
            for ans in _read_jsonl(self._gen_path(u)):
                reason, code = answer_file(ans, self.cfg.endpoint.api, a.finish_reasons, a.code_block)
                stage = "generate"
                if reason is None:
                    path = synthetic_path(ans["lang"], ans["seed"])
                    reason, stage = chain.check_text(code, ans["lang"], path), "filter"
                items.append((ans["seed"], ans["lang"], stage if reason else None, reason,
                              code if reason is None else None))
            write_pickle(self._post_path("check", u), items)

    @staticmethod
    def _doc_id(seed: int) -> str:
        return f"s{seed:010d}"

    def dedup(self, plan: Plan) -> None:
        done = self.post / "dedup.pkl"
        if done.exists():
            return
        docs, lang = [], {}
        for u in self.mine(plan.num_units):
            for seed, lg, _stage, reason, code in load_pickle(self._post_path("check", u)):
                if reason is None:
                    docs.append((self._doc_id(seed), code))
                    lang[self._doc_id(seed)] = lg
        self.deduplicate(docs, lang, lambda d: d[0], done)

    def decontaminate(self, plan: Plan) -> None:
        """Decontaminates the survivors and writes each unit's final verdicts."""
        from ..decontam import DecontamConfig, Decontaminator
        todo = [u for u in self.mine(plan.num_units)
                if not self._post_path("final", u, ".json").exists()]
        if not todo:
            return
        dropped = load_pickle(self.post / "dedup.pkl")
        dec = Decontaminator(DecontamConfig.from_dict(self.cfg.decontamination.options)) \
            if self.cfg.decontamination.enabled else None
        for u in todo:
            usage = {a["seed"]: (a["usage"], a["attempts"]) for a in _read_jsonl(self._gen_path(u))}
            verdicts, matches = [], {}
            for seed, lang, stage, reason, code in load_pickle(self._post_path("check", u)):
                ident = self._doc_id(seed)
                if reason is None and ident in dropped["exact"]:
                    stage, reason = "exact_dedup", "duplicate"
                elif reason is None and ident in dropped["near"]:
                    stage, reason = "near_dedup", "near_duplicate"
                elif reason is None and dec is not None and (m := dec.match(code)) is not None:
                    stage, reason = "decontaminate", f"contaminated:{m.benchmark}"
                    matches[seed] = {"benchmark": m.benchmark, "task_id": m.task_id, "field": m.field}
                (use, attempts) = usage[seed]
                verdicts.append([seed, lang, stage, reason, use["prompt_tokens"],
                                 use["completion_tokens"], attempts])
            write_text(self._post_path("final", u, ".json"),
                       json.dumps({"verdicts": verdicts, "contaminated": matches}, sort_keys=True))

    # ------------------------------------------------------------------ datasets
    def _kept_before(self, plan: Plan) -> list[Counter]:
        """Per unit, the files of each language kept in all earlier units (file numbering)."""
        running, out = Counter(), []
        for u in range(plan.num_units):
            out.append(Counter(running))
            for v in json.loads(self._post_path("final", u, ".json").read_text())["verdicts"]:
                if v[3] is None:
                    running[v[1]] += 1
        return out

    def kept_files(self, units, start: Counter):
        """(answer, lang, path, code) of every kept file of `units`, in seed order."""
        n = Counter(start)
        for u in units:
            codes = {s: c for s, _l, _st, r, c in load_pickle(self._post_path("check", u)) if r is None}
            kept = {v[0] for v in json.loads(self._post_path("final", u, ".json").read_text())["verdicts"]
                    if v[3] is None}
            for ans in _read_jsonl(self._gen_path(u)):
                if ans["seed"] in kept:
                    lang = ans["lang"]
                    yield ans, lang, synthetic_path(lang, n[lang]), codes[ans["seed"]]
                    n[lang] += 1

    def _shard_dir(self, s: int) -> Path:
        return self.post / "tok" / f"s{s:05d}"

    def tokenize(self, plan: Plan) -> None:
        shards = math.ceil(plan.num_units / self.cfg.shard_units)
        mine = [s for s in self.mine(shards)
                if not all((self._shard_dir(s) / f).exists() for f in ("done.json", "synthetic.jsonl"))]
        if not mine:
            return
        before = self._kept_before(plan)
        tok = self.source.tokenizer
        workers = max(1, (os.cpu_count() or 1) // local_size())
        with self.bar(len(mine), "tokenize", unit="shard") as bar, \
                DatasetEncoder(tok, workers=workers) as encoder:
            for s in mine:
                units = range(s * self.cfg.shard_units, min(plan.num_units, (s + 1) * self.cfg.shard_units))
                by_lang: dict[str, list[str]] = {}
                records = []
                for ans, lang, path, code in self.kept_files(units, before[units[0]]):
                    by_lang.setdefault(lang, []).append(f"{FILE_SEP}{path}\n{code}")
                    records.append(_provenance(ans, lang, path, code))
                counts = {}
                for lang in sorted(by_lang):
                    docs, tokens = encoder.write(by_lang[lang], self._shard_dir(s) / f"{lang}_text_document")
                    counts[lang] = {"documents": docs, "tokens": tokens}
                write_text(self._shard_dir(s) / "synthetic.jsonl", "".join(records))
                write_text(self._shard_dir(s) / "done.json", json.dumps(counts, sort_keys=True))
                bar.update()

    def merge(self, plan: Plan) -> dict:
        shards = math.ceil(plan.num_units / self.cfg.shard_units)
        prefixes: dict[str, list[str]] = {}
        tokens: dict[str, Counter] = {}
        for s in range(shards):
            for lang, c in json.loads((self._shard_dir(s) / "done.json").read_text()).items():
                prefixes.setdefault(lang, []).append(str(self._shard_dir(s) / f"{lang}_text_document"))
                tokens.setdefault(lang, Counter()).update(c)
        self.out.mkdir(parents=True, exist_ok=True)
        datasets = {}
        for lang in sorted(prefixes):
            datasets[lang] = str(self.out / f"{lang}_text_document")
            merge_datasets(prefixes[lang], datasets[lang])
        copy_tokenizer(self.source.tokenizer.path, self.out)
        with atomic_writer(self.out / "synthetic.jsonl") as f:  # the shards' parts, in order
            for s in range(shards):
                with open(self._shard_dir(s) / "synthetic.jsonl", encoding="utf-8") as part:
                    shutil.copyfileobj(part, f)
        finals = (json.loads(self._post_path("final", u, ".json").read_text())
                  for u in range(plan.num_units))
        manifest = build_manifest(self, plan, finals, tokens, datasets)
        write_text(self.out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
        t = manifest["totals"]
        plot = ""
        try:
            funnel = {lang: {"seeds": s["requested"], **{k: s["stages"][k]["kept"] for k in STAGES}}
                      for lang, s in manifest["languages"].items()}
            render_funnel(funnel, f"phase-3 funnel: {t['requested']} seeds, {t['kept']} files kept, "
                          f"{t['tokens']:,} tokens", self.out / "funnel.png")
            plot = ", funnel.png"
        except ImportError:
            self.log("matplotlib is not installed: no funnel.png")
        self.log(f"kept {t['kept']} of {t['requested']} synthetic files ({t['tokens']:,} tokens) in "
                 f"{len(datasets)} datasets in {self.out}; manifest.json, synthetic.jsonl{plot}")
        return manifest
