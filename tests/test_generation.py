"""Batched decoding (snowtrain/generation.py) against two references: the same requests decoded one
at a time, and transformers' own batched generate() with left padding. Rows of one batch have
different prompts, limits, stop strings and sampling settings and finish at different steps."""
from __future__ import annotations

import threading

import pytest
import torch

transformers = pytest.importorskip("transformers")

from snowtrain.generation import BatchQueue, Decoder, Request, Result  # noqa: E402
from snowtrain.serve import Engine  # noqa: E402

PROMPTS = ["def add(a, b):\n    return", "import torch\n\nclass Model:", "x = 1\n",
           "for i in range(10):\n    print(i)\n# then", "def f():", "'''A docstring.'''\n"]

pytestmark = pytest.mark.usefixtures("keep_torch_threads")


@pytest.fixture(scope="module")
def engine(hf_dir):
    return Engine.load(str(hf_dir))


def alone(engine, requests):
    return [engine.generate_batch([r])[0] for r in requests]


def test_greedy_batch_equals_one_at_a_time_with_rows_ending_apart(engine):
    base = [Request(engine.encode(p), 24, temperature=0.0) for p in PROMPTS]
    free = alone(engine, base)
    assert all(r.finish_reason == "length" and r.tokens == 24 for r in free)
    # a stop string taken from the middle of some rows' own text ends them early, at different steps
    reqs = []
    for i, (r, f) in enumerate(zip(base, free)):
        stop = [f.text[len(f.text) * (i + 1) // 8:][:3]] if i % 2 == 0 and f.text.strip() else []
        reqs.append(Request(r.prompt, 8 + 3 * i, 0.0, stop=stop))
    reqs.append(Request(engine.encode("x"), 0, 0.0))  # nothing to generate
    one = alone(engine, reqs)
    assert len({r.tokens for r in one}) > 3 and any(r.finish_reason == "stop" for r in one)
    assert one[-1] == Result("", 0, "length")
    assert engine.generate_batch(reqs) == one
    assert engine.generate_batch(reqs[::-1]) == one[::-1]


def test_sampling_rows_keep_their_own_seed_and_settings(engine):
    reqs = [Request(engine.encode(p), 12, temperature=t, top_p=tp, seed=s)
            for p, t, tp, s in zip(PROMPTS, (0.8, 1.0, 0.0, 0.5, 1.3, 0.8), (0.9, 1.0, 1.0, 0.5, 1.0, 1.0),
                                   (1, 2, 3, 4, 5, 1))]
    one = alone(engine, reqs)
    assert engine.generate_batch(reqs) == one
    assert one[0] != one[5]   # the same seed on another prompt is another stream
    again = engine.generate_batch([Request(reqs[0].prompt, 12, 0.8, 0.9, seed=99), reqs[0]])
    assert again[1] == one[0] and again[0] != one[0]


def test_batch_equals_transformers_generate_with_left_padding(engine):
    """transformers builds its own position ids and masks for a left-padded batch."""
    prompts = [engine.encode(p) for p in PROMPTS]
    k = 16
    ours = engine.generate_batch([Request(p, k, 0.0) for p in prompts])
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    eos = engine.decoder.eos_id
    with torch.no_grad():
        out = engine.model.generate(ids, attention_mask=mask, max_new_tokens=k, do_sample=False,
                                    eos_token_id=eos, pad_token_id=eos)
    for row, r in zip(out[:, width:].tolist(), ours):
        assert eos not in row, "the random model must not end the document for this test"
        assert r == Result(engine.sp.decode(row), k, "length")


def test_end_of_document_ends_a_row_and_is_counted_not_written(engine):
    """With the 5th greedy token of the first prompt taken as <eod>, each row ends at that token's
    first appearance in its own greedy sequence (transformers' generate gives the sequences)."""
    prompts = [engine.encode(p) for p in PROMPTS[:4]]
    with torch.no_grad():
        greedy = [engine.model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                        max_new_tokens=12, do_sample=False)[0, len(p):].tolist()
                  for p in prompts]
    eod = greedy[0][4]
    dec = Decoder(engine.model, engine.sp, eod, engine.vocab, engine.decoder.cache_key)
    want = []
    for ids in greedy:
        j = ids.index(eod) if eod in ids else None
        want.append(Result(engine.sp.decode(ids), 12, "length") if j is None
                    else Result(engine.sp.decode(ids[:j]), j + 1, "stop"))
    assert want[0].finish_reason == "stop" and want[0].tokens <= 5
    assert dec.run([Request(p, 12, 0.0) for p in prompts]) == want


def test_batch_queue_groups_waiting_requests_and_reports_errors():
    started, release, calls = threading.Event(), threading.Event(), []

    def run(reqs):
        calls.append([r.prompt[0] for r in reqs])
        if len(calls) == 1:
            started.set()
            release.wait(10)
        if any(r.prompt[0] < 0 for r in reqs):
            raise RuntimeError("bad row")
        return [Result(str(r.prompt[0]), 1, "length") for r in reqs]

    q = BatchQueue(run, max_batch=3)
    out = {}
    first = threading.Thread(target=lambda: out.update(a=q.submit([Request([0], 1)])))
    first.start()
    assert started.wait(10)
    # five requests from two callers wait while the first batch runs: batches of 3 and 2 follow
    rest = [threading.Thread(target=lambda: out.update(b=q.submit([Request([1], 1), Request([2], 1)]))),
            threading.Thread(target=lambda: out.update(c=q.submit([Request([3], 1), Request([4], 1),
                                                                   Request([5], 1)])))]
    rest[0].start()
    while q._waiting.qsize() < 2:
        threading.Event().wait(0.01)
    rest[1].start()
    while q._waiting.qsize() < 5:
        threading.Event().wait(0.01)
    release.set()
    for t in [first, *rest]:
        t.join(10)
    assert calls == [[0], [1, 2, 3], [4, 5]] and q.batch_sizes == {1: 1, 3: 1, 2: 1}
    assert [r.text for r in out["b"] + out["c"]] == ["1", "2", "3", "4", "5"]
    with pytest.raises(RuntimeError, match="bad row"):
        q.submit([Request([-1], 1)])
    assert q.submit([Request([7], 1)])[0].text == "7"   # the worker survives a failed batch
    # a bad request batched with good ones fails alone: its neighbours are decoded again alone
    box = {}
    calls.clear()
    q2 = BatchQueue(run, max_batch=4)
    started.clear(), release.clear()
    hold = threading.Thread(target=lambda: box.update(hold=q2.submit([Request([9], 1)])))
    hold.start()
    assert started.wait(10)
    bad = threading.Thread(target=lambda: box.update(bad=_error_of(q2, [Request([-2], 1)])))
    good = threading.Thread(target=lambda: box.update(good=q2.submit([Request([8], 1)])))
    bad.start()
    while q2._waiting.qsize() < 1:
        threading.Event().wait(0.01)
    good.start()
    while q2._waiting.qsize() < 2:
        threading.Event().wait(0.01)
    release.set()
    for t in (hold, bad, good):
        t.join(10)
    assert calls == [[9], [-2, 8], [-2], [8]]
    assert isinstance(box["bad"], RuntimeError) and box["good"][0].text == "8"
    q2.close()
    with pytest.raises(ValueError, match="max_batch"):
        BatchQueue(run, 0)


def _error_of(q, reqs):
    try:
        q.submit(reqs)
    except Exception as e:  # noqa: BLE001
        return e
