"""Tests for data_prep.indexed: our writer/merge/reader against megatron-core's own reader,
builder and GPTDataset."""

import io
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

with warnings.catch_warnings():  # megatron-core warns about missing TE/Apex on import
    warnings.simplefilter("ignore")
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import (
        DType,
        IndexedDataset,
        IndexedDatasetBuilder,
    )

from data_prep.indexed import (
    IndexedDatasetWriter,
    dtype_for_vocab,
    format_inspection,
    inspect_dataset,
    merge_datasets,
    read_index,
)

VOCABS = [32000, 100000]


def make_docs(seed, vocab, n=40, max_len=700, low=0, high=None):
    """Random documents: fixed edge lengths (incl. several of length 1) plus random ones,
    containing the extreme ids low and high-1."""
    high = vocab if high is None else high
    rng = np.random.default_rng(seed)
    lengths = [1, 2, 1, 17, 1, 513] + [int(x) for x in rng.integers(1, max_len, n)]
    docs = [rng.integers(low, high, n_tok).tolist() for n_tok in lengths]
    docs[1] = [low, high - 1]
    return docs


def leftovers(directory):
    """Every file below directory (relative), for checking that nothing else was left."""
    return sorted(str(p.relative_to(directory)) for p in Path(directory).rglob("*") if p.is_file())


def write(prefix, docs, vocab, **kw):
    with IndexedDatasetWriter(prefix, vocab_size=vocab, **kw) as w:
        for d in docs:
            w.add_document(d)
    return w


def read_all(prefix):
    ds = IndexedDataset(str(prefix))
    return ds, [np.asarray(ds[i]) for i in range(len(ds))]


# --------------------------------------------------------------------------------------------
# format, dtype, byte-identity with megatron-core
# --------------------------------------------------------------------------------------------


def test_dtype_for_vocab_matches_megatron():
    for v in (1, 255, 32000, 50257, 65499, 65500, 65536, 100000, 152064):
        assert dtype_for_vocab(v) == np.dtype(DType.optimal_dtype(v)), v
    assert dtype_for_vocab(65499) == np.uint16
    assert dtype_for_vocab(65500) == np.int32
    with pytest.raises(ValueError):
        dtype_for_vocab(0)


@pytest.mark.parametrize("vocab", VOCABS)
def test_roundtrip_with_megatron_reader_and_builder(tmp_path, vocab):
    docs = make_docs(1, vocab)
    # mix the accepted input types: list, int64/int32 numpy, torch tensor
    inputs = []
    for i, d in enumerate(docs):
        kind = i % 4
        inputs.append(d if kind == 0 else np.array(d, dtype=np.int64) if kind == 1
                      else np.array(d, dtype=np.int32) if kind == 2 else torch.tensor(d))

    prefix = tmp_path / "nested" / "dir" / "python_text_document"  # parents created
    # a small buffer forces many flushes and the doc-larger-than-buffer path (513+ tokens)
    w = write(prefix, inputs, vocab, buffer_bytes=1024)
    assert w.num_documents == len(docs)
    assert w.num_tokens == sum(map(len, docs))
    assert w.dtype == dtype_for_vocab(vocab)

    ds, got = read_all(prefix)
    assert ds.index.dtype == (np.uint16 if vocab < 65500 else np.int32)
    assert len(ds) == len(docs)
    for i, (g, d) in enumerate(zip(got, docs)):
        assert g.dtype == ds.index.dtype
        np.testing.assert_array_equal(g, np.array(d), err_msg=f"document {i}")
    np.testing.assert_array_equal(ds.sequence_lengths, [len(d) for d in docs])
    np.testing.assert_array_equal(ds.document_indices, np.arange(len(docs) + 1))
    # partial reads as GPTDataset does them
    np.testing.assert_array_equal(ds.get(5, offset=100, length=50), docs[5][100:150])

    # megatron-core's own builder, same documents -> byte-identical files
    ref = tmp_path / "ref"
    builder = IndexedDatasetBuilder(str(ref) + ".bin", dtype=DType.optimal_dtype(vocab))
    for d in docs:
        builder.add_document(np.asarray(d), [len(d)])
    builder.finalize(str(ref) + ".idx")
    for ext in (".bin", ".idx"):
        assert Path(str(prefix) + ext).read_bytes() == Path(str(ref) + ext).read_bytes(), ext

    # our reader agrees
    info = read_index(prefix)
    assert info.dtype == dtype_for_vocab(vocab)
    np.testing.assert_array_equal(info.sequence_lengths, ds.sequence_lengths)
    np.testing.assert_array_equal(info.offsets, ds.index.sequence_pointers)
    np.testing.assert_array_equal(info.document_indices, ds.document_indices)

    # nothing but the pair was left behind
    assert leftovers(tmp_path / "nested") == [
        "dir/python_text_document.bin", "dir/python_text_document.idx"]


# --------------------------------------------------------------------------------------------
# GPTDataset over our output
# --------------------------------------------------------------------------------------------


class _MiniTokenizer:
    """The attributes GPTDataset / MegatronDataset read from a MegatronTokenizer."""

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size
        self.eod = 0
        self.eos = 0
        self.pad = vocab_size - 1  # never written below, so no token is rewritten as padding
        self.unique_identifiers = {"class": "_MiniTokenizer", "vocab_size": vocab_size}


@pytest.mark.parametrize("vocab", VOCABS)
def test_gpt_dataset_samples_match_document_stream(tmp_path, vocab):
    docs = make_docs(2, vocab, n=30, max_len=300, high=vocab - 1)
    prefix = str(tmp_path / "data" / "code_text_document")
    write(prefix, docs, vocab)

    seq_len = 32
    total = sum(map(len, docs))
    n_train = int(2.5 * total / seq_len)  # several epochs
    config = GPTDatasetConfig(
        random_seed=1234,
        sequence_length=seq_len,
        blend=([prefix], None),
        split="1,0,0",
        tokenizer=_MiniTokenizer(vocab),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        path_to_cache=str(tmp_path / "cache"),
        mmap_bin_files=True,
    )
    train, valid, test = BlendedMegatronDatasetBuilder(
        GPTDataset, [n_train, None, None], is_built_on_rank=lambda: True, config=config
    ).build()
    assert valid is None and test is None
    assert len(train) >= n_train

    # Every document appears once per epoch in the (shuffled) epoch document order.
    doc_order = np.asarray(train.document_index)
    counts = np.bincount(doc_order, minlength=len(docs))
    assert counts.min() == counts.max() >= 2

    # Expected token stream, built from our own document lists (not from the files):
    # unshuffled sample j is stream[j*L : (j+1)*L + 1] (one overlapping extra token).
    stream = np.concatenate([np.asarray(docs[d], dtype=np.int64) for d in doc_order])
    shuffle = np.asarray(train.shuffle_index)
    assert sorted(shuffle.tolist()) == list(range(len(shuffle)))
    for i in range(len(train)):
        sample = train[i]
        j = int(shuffle[i])
        expected = stream[j * seq_len:(j + 1) * seq_len + 1]
        assert len(expected) == seq_len + 1
        np.testing.assert_array_equal(sample["tokens"].numpy(), expected[:-1], err_msg=str(i))
        np.testing.assert_array_equal(sample["labels"].numpy(), expected[1:], err_msg=str(i))
        assert float(sample["loss_mask"].min()) == 1.0  # no padding anywhere


# --------------------------------------------------------------------------------------------
# rejected documents
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "empty", [[], (), np.array([], dtype=np.int64), torch.tensor([], dtype=torch.long)]
)
def test_empty_document_rejected(tmp_path, empty):
    prefix = tmp_path / "out" / "empty_doc_test"
    with IndexedDatasetWriter(prefix, vocab_size=32000) as w:
        for d in ([1, 2, 3], [4], [5, 6]):
            w.add_document(d)
        with pytest.raises(ValueError) as err:
            w.add_document(empty)
        msg = str(err.value)
        assert str(prefix) in msg
        assert "#3" in msg and "empty" in msg and "skip" in msg
        w.add_document([7, 8])  # the writer is unharmed and goes on
    _, got = read_all(prefix)
    assert [g.tolist() for g in got] == [[1, 2, 3], [4], [5, 6], [7, 8]]


@pytest.mark.parametrize(
    "vocab,dtype,bad",
    [
        (32000, None, [1, 32000]),
        (32000, None, [-1, 5]),
        (32000, None, np.array([3, -7], dtype=np.int64)),
        (32000, None, np.array([3, 40000], dtype=np.int32)),
        (32000, None, np.array([65535], dtype=np.uint16)),
        (32000, None, torch.tensor([1, 2, 32001])),
        (100000, None, [99999, 100000]),
        (100000, None, np.array([5, -1], dtype=np.int8)),
        (100000, None, [2 ** 70]),
        (None, np.uint16, [65536]),
        (None, np.uint16, np.array([-1], dtype=np.int32)),
        (None, np.int32, np.array([2 ** 31], dtype=np.int64)),
    ],
)
def test_out_of_range_token_rejected(tmp_path, vocab, dtype, bad):
    prefix = tmp_path / "range_test"
    with IndexedDatasetWriter(prefix, vocab_size=vocab, dtype=dtype) as w:
        w.add_document([1, 2])
        w.add_document([3])
        with pytest.raises(ValueError, match=r"document #2\b") as err:
            w.add_document(bad)
        assert str(prefix) in str(err.value)
        assert "range" in str(err.value) or "64 bits" in str(err.value)
        assert w.num_documents == 2 and w.num_tokens == 3
    _, got = read_all(prefix)
    assert [g.tolist() for g in got] == [[1, 2], [3]]


def test_non_integer_tokens_rejected(tmp_path):
    with IndexedDatasetWriter(tmp_path / "x", vocab_size=32000) as w:
        for bad in ([1.5, 2], ["1"], np.array([1.0, 2.0]), torch.tensor([1.0])):
            with pytest.raises(TypeError, match="document #0"):
                w.add_document(bad)
        with pytest.raises(TypeError, match="document #0"):
            w.add_document(torch.ones(3, dtype=torch.bfloat16))
        with pytest.raises(TypeError, match="document #0"):
            w.add_document(5)  # a bare int is not a document
        for bad in (np.ones((2, 3), dtype=np.int64), np.array(5), torch.tensor(5)):
            with pytest.raises(ValueError, match="1-D"):
                w.add_document(bad)
        w.add_document((1, 2))  # tuples and other int sequences are fine
        w.add_document(range(3, 6))
        w.add_document(torch.tensor([7.0], requires_grad=True).long())
        w.add_document(np.arange(10)[::3])  # strided views too
    _, got = read_all(tmp_path / "x")
    assert [g.tolist() for g in got] == [[1, 2], [3, 4, 5], [7], [0, 3, 6, 9]]


def test_bad_writer_arguments(tmp_path):
    with pytest.raises(ValueError, match="does not fit"):
        IndexedDatasetWriter(tmp_path / "a", vocab_size=100000, dtype=np.uint16)
    with pytest.raises(ValueError, match="unsupported token dtype"):
        IndexedDatasetWriter(tmp_path / "a", dtype=np.float32)
    # a writer with no documents refuses to produce an (unreadable) empty dataset
    with pytest.raises(ValueError, match="no documents"):
        with IndexedDatasetWriter(tmp_path / "a", vocab_size=10):
            pass
    assert leftovers(tmp_path) == []
    with IndexedDatasetWriter(tmp_path / "b", vocab_size=10, allow_empty=True):
        pass
    info = read_index(tmp_path / "b")
    assert len(info.sequence_lengths) == 0 and info.document_indices.tolist() == [0]


# --------------------------------------------------------------------------------------------
# atomicity
# --------------------------------------------------------------------------------------------


def test_exception_inside_with_leaves_nothing(tmp_path):
    prefix = tmp_path / "out" / "aborted"
    with pytest.raises(RuntimeError, match="boom"):
        with IndexedDatasetWriter(prefix, vocab_size=32000, buffer_bytes=64) as w:
            for d in make_docs(3, 32000, n=20):
                w.add_document(d)
            assert leftovers(tmp_path)  # the temp .bin exists while writing
            raise RuntimeError("boom")
    assert leftovers(tmp_path) == []
    assert not IndexedDataset.exists(str(prefix))

    w = IndexedDatasetWriter(prefix, vocab_size=32000)
    w.add_document([1, 2, 3])
    w.abort()
    assert leftovers(tmp_path) == []
    with pytest.raises(RuntimeError):
        w.add_document([1])


def test_failed_commit_never_leaves_stale_idx(tmp_path, monkeypatch):
    """Crash between the .bin and the .idx renames: the old .idx must already be gone."""
    prefix = tmp_path / "ds"
    write(prefix, [[1, 2, 3]] * 5, 32000)
    real_replace = os.replace
    calls = []

    def crash_on_idx(src, dst):
        calls.append(dst)
        if str(dst).endswith(".idx"):
            raise OSError("simulated crash before the .idx rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_idx)
    with pytest.raises(OSError, match="simulated"):
        write(prefix, [[7, 8]], 32000)
    monkeypatch.setattr(os, "replace", real_replace)
    assert [Path(c).suffix for c in calls] == [".bin", ".idx"]  # .bin first, .idx last
    assert not Path(str(prefix) + ".idx").exists()
    assert not IndexedDataset.exists(str(prefix))
    assert leftovers(tmp_path) == ["ds.bin"]  # temp files cleaned, no valid-looking pair


_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from data_prep.indexed import IndexedDatasetWriter

    w = IndexedDatasetWriter(sys.argv[1], vocab_size=32000, buffer_bytes=4096)
    rng = np.random.default_rng(0)
    n = 0
    while True:  # never finalizes: the parent kills us
        w.add_document(rng.integers(0, 32000, 300))
        n += 1
        if n == 500:
            print("ready", flush=True)
    """
)


@pytest.mark.parametrize("preexisting", [False, True])
def test_killed_writer_leaves_no_valid_pair(tmp_path, preexisting):
    prefix = tmp_path / "out" / "killed"
    old_bytes = None
    if preexisting:
        write(prefix, [[1, 2, 3], [4]], 32000)
        old_bytes = {ext: Path(str(prefix) + ext).read_bytes() for ext in (".bin", ".idx")}

    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(prefix)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        tmp_bins = [p for p in leftovers(tmp_path) if ".bin.tmp." in p]
        assert len(tmp_bins) == 1 and (tmp_path / tmp_bins[0]).stat().st_size > 0
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    if preexisting:  # the old dataset is untouched and still readable
        for ext, data in old_bytes.items():
            assert Path(str(prefix) + ext).read_bytes() == data
        _, got = read_all(prefix)
        assert [g.tolist() for g in got] == [[1, 2, 3], [4]]
    else:
        assert not IndexedDataset.exists(str(prefix))
        assert not Path(str(prefix) + ".idx").exists()
        assert not Path(str(prefix) + ".bin").exists()
    # the killed writer never got as far as an .idx, not even a temporary one
    idx_files = [p for p in leftovers(tmp_path) if ".idx" in p]
    assert idx_files == (["out/killed.idx"] if preexisting else [])


def test_rewrite_replaces_existing_dataset(tmp_path):
    prefix = tmp_path / "ds"
    write(prefix, make_docs(4, 100000, n=30), 100000)  # int32, many docs
    new_docs = [[5, 6, 7], [8], [9, 10]]
    write(prefix, new_docs, 32000)  # uint16, fewer docs
    ds, got = read_all(prefix)
    assert ds.index.dtype == np.uint16
    assert [g.tolist() for g in got] == new_docs
    write(tmp_path / "fresh", new_docs, 32000)
    for ext in (".bin", ".idx"):
        assert Path(str(prefix) + ext).read_bytes() == (tmp_path / ("fresh" + ext)).read_bytes()
    assert leftovers(tmp_path) == ["ds.bin", "ds.idx", "fresh.bin", "fresh.idx"]


# --------------------------------------------------------------------------------------------
# merge
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", VOCABS)
def test_merge_three(tmp_path, vocab):
    parts = [make_docs(10, vocab, n=12), [[3, 1, 4]], make_docs(11, vocab, n=25)]
    prefixes = []
    for k, docs in enumerate(parts):
        prefixes.append(str(tmp_path / f"part{k}"))
        write(prefixes[-1], docs, vocab)
    summary = merge_datasets(prefixes, tmp_path / "merged" / "all")
    all_docs = [d for docs in parts for d in docs]
    assert summary["documents"] == len(all_docs)
    assert summary["tokens"] == sum(map(len, all_docs))

    ds, got = read_all(tmp_path / "merged" / "all")
    assert len(got) == len(all_docs)
    for i, (g, d) in enumerate(zip(got, all_docs)):
        np.testing.assert_array_equal(g, d, err_msg=str(i))
    np.testing.assert_array_equal(ds.document_indices, np.arange(len(all_docs) + 1))
    # identical to writing the concatenation in one go
    write(tmp_path / "single", all_docs, vocab)
    for ext in (".bin", ".idx"):
        assert (tmp_path / "merged" / ("all" + ext)).read_bytes() == \
            (tmp_path / ("single" + ext)).read_bytes()
    assert not [p for p in leftovers(tmp_path) if ".tmp." in p]


def test_merge_keeps_multi_sequence_documents(tmp_path):
    """Megatron --split-sentences data (several sequences per document) survives a merge."""
    a = str(tmp_path / "a")
    b = IndexedDatasetBuilder(a + ".bin", dtype=np.uint16)
    b.add_document(np.array([1, 2, 3, 4, 5]), [2, 3])
    b.add_document(np.array([6]), [1])
    b.finalize(a + ".idx")
    write(tmp_path / "c", [[7, 8], [9]], 32000)
    merge_datasets([a, tmp_path / "c"], tmp_path / "m")
    ds, got = read_all(tmp_path / "m")
    assert [g.tolist() for g in got] == [[1, 2], [3, 4, 5], [6], [7, 8], [9]]
    assert ds.document_indices.tolist() == [0, 2, 3, 4, 5]


def test_merge_errors(tmp_path):
    write(tmp_path / "small", [[1, 2]], 32000)
    write(tmp_path / "big", [[1, 2]], 100000)
    with pytest.raises(ValueError, match="dtypes differ") as err:
        merge_datasets([tmp_path / "small", tmp_path / "big"], tmp_path / "out")
    assert "small.idx" in str(err.value) and "big.idx" in str(err.value)
    assert "uint16" in str(err.value) and "int32" in str(err.value)
    assert not IndexedDataset.exists(str(tmp_path / "out"))

    with open(tmp_path / "small.bin", "ab") as f:  # .bin disagrees with its index
        f.write(b"\0\0")
    with pytest.raises(ValueError, match="small.bin"):
        merge_datasets([tmp_path / "small"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="nope.idx"):
        merge_datasets([tmp_path / "nope"], tmp_path / "out")
    with pytest.raises(ValueError):
        merge_datasets([], tmp_path / "out")
    assert leftovers(tmp_path) == ["big.bin", "big.idx", "small.bin", "small.idx"]


# --------------------------------------------------------------------------------------------
# read_index / inspect
# --------------------------------------------------------------------------------------------


def test_read_index_errors_name_the_file(tmp_path):
    write(tmp_path / "good", [[1, 2, 3], [4, 5]], 32000)
    idx = (tmp_path / "good.idx").read_bytes()

    def check(name, data, pattern):
        (tmp_path / (name + ".idx")).write_bytes(data)
        with pytest.raises(ValueError, match=pattern) as err:
            read_index(tmp_path / name)
        assert str(tmp_path / (name + ".idx")) in str(err.value)

    check("garbage", os.urandom(200), "bad magic")
    check("text", b"hello world, this is not an index file at all", "bad magic")
    check("short", idx[:20], "truncated")
    check("cut", idx[:-3], "truncated")
    check("long", idx + b"\1\2\3\4\5", "trailing")
    check("version", idx[:9] + (2).to_bytes(8, "little") + idx[17:], "version")
    check("code", idx[:17] + bytes([99]) + idx[18:], "dtype code")
    with pytest.raises(FileNotFoundError, match="missing.idx"):
        read_index(tmp_path / "missing")
    # the good one reads, with or without a suffix
    assert read_index(tmp_path / "good.idx").sequence_lengths.tolist() == [3, 2]


def test_inspect_dataset(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    lines = ["def add(a, b):", "return a + b", "print(add(1, 2))", "for i in range(10):",
             "print(i * i)", "class Foo:", "pass"] * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                   vocab_size=64, model_type="bpe", minloglevel=2)
    (tmp_path / "sp.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    text = "print(add(1, 2))"
    ids = sp.encode(text)
    assert sp.decode(ids) == text

    prefix = tmp_path / "insp"
    write(prefix, [[5, 6, 7, 8], ids, [9]], sp.get_piece_size())
    r = inspect_dataset(prefix)
    assert (r["dtype"], r["documents"], r["sequences"]) == ("uint16", 3, 3)
    assert r["tokens"] == 5 + len(ids)
    assert (r["doc_length_min"], r["doc_length_max"]) == (1, max(4, len(ids)))
    assert r["doc_length_mean"] == pytest.approx((5 + len(ids)) / 3)
    assert r["sample"] == 0 and r["sample_tokens"] == [5, 6, 7, 8]
    assert r["problems"] == [] and "sample_text" not in r

    r = inspect_dataset(prefix, tokenizer_model=tmp_path / "sp.model", sample=1)
    assert r["sample_tokens"] == ids and r["sample_text"] == text
    r = inspect_dataset(prefix, tokenizer_model=tmp_path / "sp.model", sample=1, max_tokens=2)
    assert r["sample_tokens"] == ids[:2] and r["sample_length"] == len(ids)
    report = format_inspection(r)
    for needle in (str(prefix), "uint16", "documents:  3", "sequences:  3", "min 1", "decoded:"):
        assert needle in report, needle
    assert str(r) == report  # print(inspect_dataset(...)) prints the report
    with pytest.raises(ValueError, match="out of range"):
        inspect_dataset(prefix, sample=3)
    with pytest.raises(ValueError, match="sentencepiece"):
        inspect_dataset(prefix, tokenizer_model=tmp_path / "insp.idx")  # not a model

    with open(str(prefix) + ".bin", "ab") as f:
        f.write(b"\0\0")
    assert "insp.bin" in inspect_dataset(prefix)["problems"][0]
