"""`data-prep tokenize` against an independent reference: sentencepiece encoding each document
and megatron-core's IndexedDatasetBuilder writing them, byte for byte."""
import json
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
