"""Reading an output folder back into files: every file of every repository document, with its
repository, path and content, as the records that went in (the independent reference)."""
import json

import numpy as np

from data_prep.dataset_files import PhaseOutput
from data_prep.grouping import repository_documents
from data_prep.indexed import IndexedDatasetWriter
from data_prep.records import Record
from data_prep.tokenize import encode_to_dataset
from data_prep.tokenizer import Tokenizer, train_tokenizer


def test_files_round_trip_through_a_phase_output(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for r in range(6):
        for f in range(int(rng.integers(1, 5))):
            body = "".join(f"def f{r}_{f}_{i}(x):\n    return x * {i}  # ünïcode\n"
                           for i in range(int(rng.integers(1, 6))))
            records.append(Record(id=f"r{r}f{f}", content=body, lang="python", repo=f"org/repo{r}",
                                  path=f"pkg/mod_{f}.py"))
    records.append(Record(id="nl", content="x = 1", lang="python", repo="org/repo9", path="a.py"))
    model = train_tokenizer([r.content for r in records] * 5, tmp_path / "out" / "tokenizer", 320)
    docs = list(repository_documents(records, seed=1, max_chars=120))
    assert len(docs) > 7  # some repositories were split into parts
    encode_to_dataset([d.text for d in docs], Tokenizer(model), tmp_path / "out" / "python_text_document",
                      workers=1)
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"datasets": {"python": "x"}}))

    out = PhaseOutput(tmp_path / "out")
    files = list(out.files("python"))
    by_id = {r.id: r for r in records}
    expected = [by_id[i] for d in docs for i in d.file_ids]
    assert [(f.repo, f.path) for f in files] == [(r.repo, r.path) for r in expected]
    for f, r in zip(files, expected):
        want = r.content if r.content.endswith("\n") else r.content + "\n"
        assert f.content == want
        assert out.tokenizer.decode(f.tokens) == f"<file_sep>{r.path}\n{want}"
    # the slices cover every token of the documents except the repository headers and <eod>
    total = sum(len(out.document_tokens("python", d)) for d in range(out.num_documents("python")))
    headers = sum(len(out.tokenizer.encode([f"<repo_name>{d.repo}\n"])[0]) + 1 for d in docs)
    assert sum(len(f.tokens) for f in files) == total - headers


def test_a_document_without_markers_is_one_file(tmp_path):
    model = train_tokenizer(["print('hello world')\n" * 40], tmp_path / "tokenizer", 300)
    tok = Tokenizer(model)
    with IndexedDatasetWriter(tmp_path / "python_text_document", vocab_size=tok.vocab_size) as w:
        w.add_document(tok.encode(["print('hi')\n"])[0] + [tok.special.eod])
    (tmp_path / "manifest.json").write_text(json.dumps({"datasets": {"python": "x"}}))
    [f] = list(PhaseOutput(tmp_path).files("python"))
    assert (f.repo, f.path, f.content) == ("", "", "print('hi')\n")
