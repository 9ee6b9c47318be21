"""`data-prep tokenize` against an independent reference: sentencepiece encoding each document
and megatron-core's IndexedDatasetBuilder writing them, byte for byte."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep.sources import TreeSource, embedded_roots
from data_prep.tokenizer import train_tokenizer

BIN = Path(sys.executable).parent


def test_tokenize_cli_is_byte_identical_to_megatron_builder(tmp_path):
    import sentencepiece as spm
    from megatron.core.datasets import indexed_dataset

    texts = [r.content for r in TreeSource(embedded_roots()[:1], max_total_bytes=600_000)]
    texts.insert(3, "")  # an empty document still gets its end-of-document token
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    model = train_tokenizer(texts, tmp_path / "tok", 800)
    r = subprocess.run([str(BIN / "data-prep"), "tokenize", "--input", str(corpus), "--field", "text",
                        "--tokenizer", str(model), "--output", str(tmp_path / "ours_text_document")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    sp = spm.SentencePieceProcessor(model_file=str(model))
    eod = sp.piece_to_id("<eod>")
    ref = tmp_path / "ref_text_document"
    builder = indexed_dataset.IndexedDatasetBuilder(str(ref) + ".bin", dtype=np.uint16)
    for t in texts:
        ids = sp.encode(t) + [eod]
        builder.add_document(np.array(ids), [len(ids)])
    builder.finalize(str(ref) + ".idx")
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"ours_text_document{ext}").read_bytes() == Path(str(ref) + ext).read_bytes()


def test_tokenize_cli_names_a_bad_line(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text('{"content": "x = 1"}\n{"content": 1\n')
    model = train_tokenizer(["x = 1\n" * 50, "def f(): pass\n" * 40], tmp_path / "tok", 280)
    r = subprocess.run([str(BIN / "data-prep"), "tokenize", "--input", str(corpus),
                        "--tokenizer", str(model), "--output", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "docs.jsonl:2" in r.stderr
    assert not (tmp_path / "o.idx").exists()


def test_chunk_cache_falls_back_when_a_tokenizer_merges_across_spaces(tmp_path):
    """A model trained without whitespace splitting has pieces spanning spaces, so encoding
    chunk by chunk would differ: the encoder must notice and encode plainly."""
    import io

    import sentencepiece as spm

    from data_prep.tokenize import ChunkEncoder
    from data_prep.tokenizer import EOD, MARKERS, PAD, UNK

    texts = [r.content for r in TreeSource(embedded_roots()[:1], max_total_bytes=400_000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=1500, model_type="bpe",
        byte_fallback=True, split_by_whitespace=False, pad_id=0, unk_id=1, bos_id=-1, eos_id=2,
        pad_piece=PAD, unk_piece=UNK, eos_piece=EOD, user_defined_symbols=[*MARKERS, "\n"],
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, max_sentence_length=1 << 20, minloglevel=2)
    path = tmp_path / "spanning.model"
    path.write_bytes(model.getvalue())
    enc = ChunkEncoder(str(path))
    got = enc.encode(texts)
    plain = enc.sp.encode(texts)
    assert [list(a[:-1]) for a in got] == plain
    assert not enc.cached  # pieces span spaces: the chunk rule does not hold for this model


def test_tokenize_cli_clear_errors_and_stale_temp_files(tmp_path):
    import gzip
    model = train_tokenizer(["x = 1\n" * 50, "def f(): pass\n" * 40], tmp_path / "tok", 280)
    whole = gzip.compress("".join(json.dumps({"content": f"x = {i}\n" * 50}) + "\n"
                                  for i in range(200)).encode())
    (tmp_path / "docs.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    not_sp = tmp_path / "tokenizer.model"
    not_sp.write_text("not a model\n")
    # a temp file of a dead process (pid 2**22 + 1 is above Linux's pid_max) and of a live one
    dead, live = tmp_path / "o.bin.tmp.4194305.abc123", tmp_path / f"o.idx.tmp.{os.getpid()}.abc123"
    dead.write_bytes(b"x")
    live.write_bytes(b"x")

    def tokenize(tokenizer):
        return subprocess.run([str(BIN / "data-prep"), "tokenize", "--input", str(tmp_path / "docs.jsonl.gz"),
                               "--tokenizer", str(tokenizer), "--output", str(tmp_path / "o")],
                              capture_output=True, text=True, timeout=120)

    r = tokenize(model)
    assert r.returncode == 2 and "docs.jsonl.gz: cannot be read" in r.stderr, r.stderr
    assert "truncated" in r.stderr and "Traceback" not in r.stderr
    assert not dead.exists() and live.exists() and not (tmp_path / "o.idx").exists()
    assert not list(tmp_path.glob("o.bin.tmp.*"))
    r = tokenize(not_sp)
    assert r.returncode == 2 and "not a sentencepiece model" in r.stderr and "Traceback" not in r.stderr
