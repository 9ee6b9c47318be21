"""snowtrain.data: megatron GPTDataset streams, resumable blend segments, DP batches, errors."""
from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch

from snowtrain.config import ConfigError, DatasetConfig, PhaseConfig
from snowtrain.data import (BlendSchedule, PhaseData, Segment, epoch_seed, greedy_picks,
                            steps_for_phase, weights_from_tokens)
from snowtrain.testing import run_distributed

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")

SEQ = 32
VOCAB = 4000
TOKENS = [3000, 5000, 2000]  # per dataset; dataset d holds ids in [1000 d + 1, 1000 d + 999]
SEED = 1234


def _write(prefix: str, d: int, ntok: int, rng) -> np.ndarray:
    """A dataset of ``ntok`` tokens in documents of 5..59 tokens; returns all its tokens."""
    try:
        from data_prep.indexed import IndexedDatasetWriter
    except ImportError:  # pragma: no cover - the project's writer is the normal path
        IndexedDatasetWriter = None
    docs, left = [], ntok
    while left > 0:
        n = int(min(left, rng.integers(5, 60)))
        docs.append(rng.integers(1000 * d + 1, 1000 * d + 1000, n).astype(np.int64))
        left -= n
    if IndexedDatasetWriter is not None:
        with IndexedDatasetWriter(prefix, vocab_size=VOCAB) as w:
            for doc in docs:
                w.add_document(doc)
    else:  # pragma: no cover
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
        b = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
        for doc in docs:
            b.add_document(torch.from_numpy(doc), [len(doc)])
        b.finalize(prefix + ".idx")
    return np.concatenate(docs)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("blend")
    rng = np.random.default_rng(0)
    prefixes, tokens = [], []
    for d, n in enumerate(TOKENS):
        p = str(root / f"lang{d}_text_document")
        tokens.append(_write(p, d, n, rng))
        prefixes.append(p)
    return {"root": root, "prefixes": prefixes, "tokens": tokens}


def _phase(data, weights=None, repeats=None, tokens=20_000, gbs=8, mbs=2, seq=SEQ, names=None,
           idx=None):
    idx = list(range(3)) if idx is None else idx
    ds = [DatasetConfig(path=data["prefixes"][d], weight=None if weights is None else weights[i],
                        repeat=1.0 if repeats is None else repeats[i],
                        name=None if names is None else names[i]) for i, d in enumerate(idx)]
    return PhaseConfig(name="phase2", tokens=tokens, global_batch_size=gbs, micro_batch_size=mbs,
                       seq_len=seq, datasets=ds)


def _make(data, phase, cache="cache", **kw):
    kw.setdefault("seed", SEED)
    kw.setdefault("vocab_size", VOCAB)
    return PhaseData(phase, cache_dir=str(data["root"] / cache), **kw)


def _run(pd, steps, **kw):
    """[(sample_ids [n,3] list, tokens tensor, labels, loss_mask)] per step, all micro-batches."""
    out = []
    for step in pd.batches(num_steps=steps, **kw):
        out.append((torch.cat([m["sample_ids"] for m in step]).tolist(),
                    torch.cat([m["tokens"] for m in step]),
                    torch.cat([m["labels"] for m in step]),
                    torch.cat([m["loss_mask"] for m in step])))
    return out


class _RefTokenizer:
    """An independent minimal tokenizer for megatron's own builder."""
    vocab_size = None
    eod = 0
    unique_identifiers = {"class": "test-reference"}


def _megatron_reference(prefix, seed, cache):
    """megatron-core's own one-epoch GPTDataset, through its BlendedMegatronDatasetBuilder."""
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder)
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    cfg = GPTDatasetConfig(random_seed=seed, sequence_length=SEQ, blend=([prefix], None),
                           split="100,0,0", path_to_cache=str(cache), tokenizer=_RefTokenizer(),
                           reset_position_ids=False, reset_attention_mask=False,
                           eod_mask_loss=False)
    train, valid, test = BlendedMegatronDatasetBuilder(
        GPTDataset, [None, None, None], lambda: True, cfg).build()
    assert valid is None and test is None
    return train


def _dataset_of(tokens: torch.Tensor) -> int:
    ids = torch.unique(tokens // 1000)
    assert ids.numel() == 1, f"sample mixes datasets {ids.tolist()}"
    return int(ids[0])


# ----------------------------------------------------------------------------- (1) megatron


def test_single_dataset_stream_is_megatrons_own_sequence(data):
    pd = _make(data, _phase(data, idx=[1], tokens=9_000))
    spe = pd.streams[0].samples_per_epoch
    assert spe == (TOKENS[1] - 1) // SEQ
    steps = _run(pd, pd.total_steps)
    ids = [row for s in steps for row in s[0]]
    toks = torch.cat([s[1] for s in steps])
    labels = torch.cat([s[2] for s in steps])
    mask = torch.cat([s[3] for s in steps])
    assert 2 * spe > len(ids) > spe  # crosses into the second epoch
    assert [r[1] for r in ids] == [0] * len(ids)
    assert [r[2] for r in ids] == list(range(len(ids))) == [r[0] for r in ids]

    refs = [_megatron_reference(data["prefixes"][1], epoch_seed(SEED, e),
                                data["root"] / "refcache") for e in range(2)]
    assert epoch_seed(SEED, 0) == SEED and len(refs[0]) == spe
    for n in range(len(ids)):
        item = refs[n // spe][n % spe]
        assert torch.equal(toks[n], item["tokens"]), n
        assert torch.equal(labels[n], item["labels"]), n
        assert torch.equal(mask[n], item["loss_mask"]), n
    # labels are the next tokens; every token comes from this dataset
    assert torch.equal(labels[:, :-1], toks[:, 1:])
    assert toks.dtype == labels.dtype == torch.int64 and mask.dtype == torch.float32
    assert toks.shape[1] == SEQ and bool((toks // 1000 == 1).all())
    # epoch 1 is another shuffle of the same documents
    assert not torch.equal(toks[:5], toks[spe:spe + 5])


# ----------------------------------------------------------------------------- (2) proportions


def test_greedy_rule_and_blend_proportions(data):
    # the rule itself: argmax w(k+1) - c, ties to the lowest index
    assert greedy_picks([0.5, 0.5], 0, [0, 0], 4) == [0, 1, 0, 1]
    assert greedy_picks([0.25, 0.75], 0, [0, 0], 4) == [1, 0, 1, 1]
    rng = np.random.default_rng(1)
    for _ in range(20):
        w = rng.random(int(rng.integers(1, 6)))
        w /= w.sum()
        picks = np.array(greedy_picks(list(w), 0, [0] * len(w), 2000))
        counts = np.cumsum(np.eye(len(w))[picks], axis=0)
        assert np.abs(counts - np.outer(np.arange(1, 2001), w)).max() < 1

    weights = [0.5, 0.3, 0.2]
    pd = _make(data, _phase(data, weights=weights, tokens=16_000))
    steps = _run(pd, pd.total_steps)
    ids = np.array([r for s in steps for r in s[0]])
    toks = torch.cat([s[1] for s in steps])
    n = len(ids)
    assert n == pd.budget_samples == steps_for_phase(16_000, 8, SEQ) * 8
    assert list(ids[:, 0]) == list(range(n))
    counts = np.cumsum(np.eye(3)[ids[:, 1]], axis=0)
    assert np.abs(counts - np.outer(np.arange(1, n + 1), weights)).max() < 1
    for d in range(3):  # the origin read from the tokens is the assigned dataset
        rows = ids[:, 1] == d
        assert bool((toks[torch.from_numpy(rows)] // 1000 == d).all())
        assert list(ids[rows, 2]) == list(range(int(rows.sum())))

    # weights from tokens x repeat (the recipe's "top 12.5B repeated 4 times")
    pd2 = _make(data, _phase(data, repeats=[1, 4, 2]))
    expect = np.array([TOKENS[0] * 1, TOKENS[1] * 4, TOKENS[2] * 2], dtype=float)
    assert pd2.weights_from == "tokens x repeat"
    np.testing.assert_allclose(pd2.config_weights, expect / expect.sum(), rtol=1e-12)
    np.testing.assert_allclose(weights_from_tokens(TOKENS, [1, 1, 1]),
                               np.array(TOKENS) / sum(TOKENS))
    assert steps_for_phase(20_000, 8, 32) == 79 and steps_for_phase(256, 8, 32) == 1


# ----------------------------------------------------------------------------- (3) resume


def test_resume_from_json_continues_the_identical_stream(data):
    phase = _phase(data, weights=[0.5, 0.3, 0.2])
    full = _run(_make(data, phase), 12)

    pd = _make(data, phase)
    for i, _step in enumerate(pd.batches()):  # the whole phase, cut off mid-iteration
        if i == 4:
            state = json.loads(json.dumps(pd.state_dict()))
            break
    assert state["step"] == 5 and state["consumed_samples"] == 40
    assert sum(state["per_dataset_consumed"].values()) == 40
    assert state["phase"] == "phase2" and len(state["segments"]) == 1

    fresh = _make(data, phase)  # everything rebuilt from scratch (from the cache)
    assert fresh.load_state_dict(state) is None
    rest = _run(fresh, 7)
    for a, b in zip(full[5:], rest):
        assert a[0] == b[0]
        assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert fresh.state_dict()["step"] == 12

    # DataLoader workers give the same stream
    pd3 = _make(data, phase)
    assert pd3.load_state_dict(state) is None
    with_workers = _run(pd3, 3, num_workers=1)
    for a, b in zip(rest, with_workers):
        assert a[0] == b[0] and torch.equal(a[1], b[1])

    with pytest.raises(ValueError, match="phase 'other'"):
        _make(data, _phase(data, weights=[0.5, 0.3, 0.2])).load_state_dict(
            {**state, "phase": "other"})
    with pytest.raises(ValueError, match="seq_len"):
        _make(data, phase).load_state_dict({**state, "seq_len": 64})
    bad = json.loads(json.dumps(state))
    bad["per_dataset_consumed"]["lang0_text_document"] += 3
    bad["per_dataset_consumed"]["lang1_text_document"] -= 3
    with pytest.raises(ValueError, match="does not fit its blend segment"):
        _make(data, phase).load_state_dict(bad)


# ----------------------------------------------------------------------------- (4) blend change


def _resume_with_new_blend(data, state, weights_b, steps):
    pd = _make(data, _phase(data, weights=weights_b))
    msg = pd.load_state_dict(json.loads(json.dumps(state)))
    return pd, msg, _run(pd, steps)


def test_blend_change_continues_every_dataset_where_it_stopped(data):
    a, b = [0.5, 0.3, 0.2], [0.1, 0.3, 0.6]
    pd = _make(data, _phase(data, weights=a))
    first = _run(pd, 5)
    state = pd.state_dict()

    pd_b, msg, second = _resume_with_new_blend(data, state, b, 40)
    assert msg.startswith("blend change at step 5 (sample 40): ")
    assert "lang0_text_document 0.5->0.1" in msg and "lang2_text_document 0.2->0.6" in msg
    assert "lang1_text_document" not in msg  # unchanged weight
    st = pd_b.state_dict()
    assert len(st["segments"]) == 2
    seg = st["segments"][1]
    assert seg["start_sample"] == 40 and seg["step"] == 5
    assert seg["weights"] == dict(zip(pd_b.names, b))
    assert seg["start_consumed"] == state["per_dataset_consumed"]
    assert st["segments"][0]["weights"] == dict(zip(pd_b.names, a))

    ids = np.array([r for s in first + second for r in s[0]])
    toks = torch.cat([s[1] for s in first + second])
    assert list(ids[:, 0]) == list(range(len(ids)))
    refs = {}
    for d in range(3):  # every dataset: 0, 1, 2, ... with no gap or repeat, across the change
        rows = np.flatnonzero(ids[:, 1] == d)
        assert list(ids[rows, 2]) == list(range(len(rows))), d
        spe = pd_b.streams[d].samples_per_epoch
        refs[d] = [_megatron_reference(data["prefixes"][d], epoch_seed(SEED, e),
                                       data["root"] / "refcache") for e in range(2)]
        for j, r in enumerate(rows):  # and the content is megatron's sample j of that dataset
            if j < 2 * spe:
                assert torch.equal(toks[r], refs[d][j // spe][j % spe]["tokens"])
        first_epoch = [tuple(toks[r].tolist()) for r in rows[:spe]]
        assert len(set(first_epoch)) == len(first_epoch)  # nothing repeated within the epoch
    # the new segment follows the new weights within one sample
    seg_ids = ids[40:, 1]
    counts = np.cumsum(np.eye(3)[seg_ids], axis=0)
    assert np.abs(counts - np.outer(np.arange(1, len(seg_ids) + 1), b)).max() < 1
    # the schedule replays the whole history from the recorded segments
    sched = BlendSchedule(pd_b.names, [Segment.from_dict(s) for s in st["segments"]])
    ds, per = sched.assign(0, len(ids))
    assert list(ds) == list(ids[:, 1]) and list(per) == list(ids[:, 2])

    # reproducible: the same change again gives the same stream
    _, msg2, again = _resume_with_new_blend(data, state, b, 40)
    assert msg2 == msg
    assert [s[0] for s in again] == [s[0] for s in second]
    assert all(torch.equal(x[1], y[1]) for x, y in zip(again, second))

    # resuming after the change (same weights) keeps both segments and the same stream
    pd_b2, _, part = _resume_with_new_blend(data, state, b, 10)
    pd_c = _make(data, _phase(data, weights=b))
    assert pd_c.load_state_dict(json.loads(json.dumps(pd_b2.state_dict()))) is None
    assert len(pd_c.state_dict()["segments"]) == 2
    assert [s[0] for s in part + _run(pd_c, 30)] == [s[0] for s in second]

    # a dataset dropped from the YAML is reported and gets no more samples
    pd_d = _make(data, _phase(data, weights=[0.5, 0.5], idx=[0, 1]))
    msg3 = pd_d.load_state_dict(json.loads(json.dumps(state)))
    assert "lang2_text_document removed" in msg3
    tail = np.array([r for s in _run(pd_d, 5) for r in s[0]])
    assert set(tail[:, 1]) <= {0, 1}
    assert pd_d.state_dict()["per_dataset_consumed"]["lang2_text_document"] == \
        state["per_dataset_consumed"]["lang2_text_document"]


# ----------------------------------------------------------------------------- (5) data parallel


def test_data_parallel_ranks_split_each_global_batch(data):
    phase = _phase(data, weights=[0.5, 0.3, 0.2], gbs=8, mbs=2)
    ref = _run(_make(data, phase), 6)
    ranks = [_make(data, phase) for _ in range(2)]
    iters = [pd.batches(num_steps=6, dp_rank=r, dp_size=2) for r, pd in enumerate(ranks)]
    for step, (m0, m1) in enumerate(zip(*iters)):
        assert len(m0) == len(m1) == 2 and m0[0]["tokens"].shape == (2, SEQ)
        union = torch.cat([m["sample_ids"] for m in m0 + m1]).tolist()
        assert union == ref[step][0]
        assert torch.equal(torch.cat([m["tokens"] for m in m0 + m1]), ref[step][1])
    assert ranks[0].state_dict() == ranks[1].state_dict()
    with pytest.raises(ValueError, match="divisible"):
        ranks[0].batches(global_batch_size=9, dp_size=2, dp_rank=0)


def _dp_worker(prefixes, cache_dir, steps):
    from snowtrain.distributed import init_distributed

    warnings.filterwarnings("ignore")
    st = init_distributed(backend="gloo")
    phase = PhaseConfig(name="phase2", tokens=20_000, global_batch_size=8, micro_batch_size=2,
                        seq_len=SEQ, datasets=[DatasetConfig(path=p, weight=w) for p, w in
                                               zip(prefixes, [0.5, 0.3, 0.2])])
    pd = PhaseData(phase, seed=SEED, vocab_size=VOCAB, cache_dir=cache_dir)
    out = [torch.cat([m["sample_ids"] for m in step]).tolist()
           for step in pd.batches(num_steps=steps)]  # dp rank/size from the distributed state
    return st.dp_rank, out, pd.state_dict()


def test_two_gloo_processes_build_with_a_barrier(data):
    cache = str(data["root"] / "dist_cache")  # empty: rank 0 builds, rank 1 loads
    results = run_distributed(_dp_worker, 2, data["prefixes"], cache, 4, timeout_s=180)
    ref = _run(_make(data, _phase(data, weights=[0.5, 0.3, 0.2])), 4)
    assert [r[0] for r in results] == [0, 1]
    for step in range(4):
        assert results[0][1][step] + results[1][1][step] == ref[step][0]
    assert results[0][2] == results[1][2]
    assert results[0][2]["consumed_samples"] == 32
    assert any(f.endswith("shuffle_index.npy") for f in os.listdir(cache))


# ----------------------------------------------------------------------------- (6) errors


def test_missing_files_name_the_key_and_the_path(data, tmp_path):
    broken = str(tmp_path / "broken_text_document")
    shutil.copy(data["prefixes"][1] + ".bin", broken + ".bin")
    phase = _phase(data, weights=[1, 1], idx=[0, 1])
    phase.datasets[1].path = broken
    with pytest.raises(ConfigError) as e:
        PhaseData(phase, seed=SEED, vocab_size=VOCAB, cache_dir=str(tmp_path / "c"),
                  phase_index=1)
    assert e.value.key == "phases[1].datasets[1].path"
    assert broken + ".idx" in str(e.value) and "data-prep" in str(e.value)
    phase.datasets[1].path = "${SNOWTRAIN_TEST_UNSET_VAR}/x"
    with pytest.raises(ConfigError, match="SNOWTRAIN_TEST_UNSET_VAR"):
        PhaseData(phase, seed=SEED, vocab_size=VOCAB, cache_dir=str(tmp_path / "c"))


def test_token_id_beyond_the_vocab(data, tmp_path, monkeypatch):
    biggest = int(data["tokens"][2].max())
    with pytest.raises(ConfigError) as e:
        _make(data, _phase(data, weights=[1, 1, 1]), vocab_size=1500)
    msg = str(e.value)
    assert "lang1_text_document" in msg and f"token id {int(data['tokens'][1].max())}" in msg
    assert "1500 entries" in msg and e.value.key == "phases[phase2].datasets[1].path"
    # the boundary: an id equal to the vocab size is out of range
    with pytest.raises(ConfigError, match=f"token id {biggest}, .* {biggest} entries"):
        _make(data, _phase(data, weights=[1, 1, 1]), vocab_size=biggest)
    _make(data, _phase(data, weights=[1, 1, 1]), vocab_size=biggest + 1)
    # ranks scan interleaved chunks of the .bin: together they see every token
    from snowtrain.data import sources
    monkeypatch.setattr(sources, "_SCAN_CHUNK", 7)
    b, toks = data["prefixes"][1] + ".bin", data["tokens"][1]
    parts = [sources._scan_share(b, np.uint16, r, 3) for r in range(3)]
    assert min(p[0] for p in parts) == toks.min() and max(p[1] for p in parts) == toks.max()
    assert sources._scan_share(b, np.uint16, 10**6, 10**6 + 1) is None
    # a rewritten file is rescanned, not answered from the cache
    p = str(tmp_path / "small_text_document")
    _write(p, 0, 1000, np.random.default_rng(5))
    phase = PhaseConfig(name="x", tokens=1000, global_batch_size=2, micro_batch_size=1,
                        seq_len=SEQ, datasets=[DatasetConfig(path=p)])
    PhaseData(phase, vocab_size=1000, cache_dir=str(tmp_path / "c"))
    _write(p, 1, 900, np.random.default_rng(6))
    with pytest.raises(ConfigError, match="vocabulary has 1000"):
        PhaseData(phase, vocab_size=1000, cache_dir=str(tmp_path / "c"))


def test_seq_len_longer_than_the_data(data):
    with pytest.raises(ConfigError) as e:
        _make(data, _phase(data, weights=[1, 1, 1], seq=2500))
    msg = str(e.value)
    assert "lang2_text_document" in msg and f"only {TOKENS[2]} tokens" in msg
    assert e.value.key == "phases[phase2].seq_len" and "2501" in msg


def test_a_data_prep_output_folder_stands_for_its_language_datasets(data, tmp_path):
    """A folder with manifest.json expands to its datasets: the same stream as listing them,
    a weight given to the folder is split by tokens, and `languages` picks a subset."""
    out = tmp_path / "phase2"
    out.mkdir()
    langs = ["lang0", "lang1", "lang2"]
    for lang, p in zip(langs, data["prefixes"]):
        for ext in (".bin", ".idx"):
            shutil.copy(p + ext, out / f"{lang}_text_document{ext}")
    (out / "manifest.json").write_text(json.dumps({"datasets": {l: "" for l in langs}}))

    def phase(datasets):
        return PhaseConfig(name="p", tokens=20_000, global_batch_size=8, micro_batch_size=2,
                           seq_len=SEQ, datasets=datasets)

    listed = _make(data, phase([DatasetConfig(path=str(out / f"{l}_text_document"), name=f"phase2/{l}")
                                for l in langs]), cache="c1")
    folder = _make(data, phase([DatasetConfig(path=str(out), repeat=1.0)]), cache="c1")
    assert folder.names == ["phase2/lang0", "phase2/lang1", "phase2/lang2"]
    assert folder.weights == listed.weights
    assert [s[0] for s in _run(folder, 3)] == [s[0] for s in _run(listed, 3)]

    other = str(data["prefixes"][0])
    mixed = _make(data, phase([DatasetConfig(path=str(out), weight=0.5, languages=["lang1", "lang2"]),
                               DatasetConfig(path=other, weight=0.5, name="other")]), cache="c2")
    total = TOKENS[1] + TOKENS[2]
    want = {"phase2/lang1": 0.5 * TOKENS[1] / total, "phase2/lang2": 0.5 * TOKENS[2] / total,
            "other": 0.5}
    assert mixed.weights == pytest.approx(want, rel=0.02)  # train tokens exclude nothing here

    with pytest.raises(ConfigError) as e:
        _make(data, phase([DatasetConfig(path=str(out), languages=["rust"])]), cache="c3",
              phase_index=2)
    assert e.value.key == "phases[2].datasets[0].languages" and "lang0" in str(e.value)
    with pytest.raises(ConfigError, match="manifest.json"):
        _make(data, phase([DatasetConfig(path=str(tmp_path))]), cache="c3")
