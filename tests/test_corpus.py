"""Tree source, repository grouping and the tokenizer, on small trees made here."""
from pathlib import Path

import pytest

from data_prep.grouping import repository_documents
from data_prep.records import language_of
from data_prep.sources import TreeSource, embedded_roots
from data_prep.tokenizer import FILE_SEP, REPO_NAME, Tokenizer, train_tokenizer


def make_tree(root: Path) -> Path:
    files = {
        "repo_a/pkg/mod.py": "def f(x):\n    return x + 1\n",
        "repo_a/pkg/util.py": "import os\nprint(os.sep)\n",
        "repo_a/native/fast.c": "int add(int a, int b) { return a + b; }\n",
        "repo_a/README.md": "not code",
        "repo_b/main.go": "package main\nfunc main() {}\n",
        "repo_b/__pycache__/x.py": "cached = True\n",
        "repo_b/empty.py": "   \n",
        "loose.py": "x = 1\n",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (root / "repo_b/bad.py").write_bytes(b"x = '\xff\xfe'\n")
    return root


def test_tree_source_reads_repos_and_counts_drops(tmp_path):
    src = TreeSource([make_tree(tmp_path / "corpus")])
    recs = list(src)
    got = {(r.repo, r.path, r.lang) for r in recs}
    assert got == {
        ("corpus/corpus", "loose.py", "python"),
        ("corpus/repo_a", "pkg/mod.py", "python"), ("corpus/repo_a", "pkg/util.py", "python"),
        ("corpus/repo_a", "native/fast.c", "c"), ("corpus/repo_b", "main.go", "go"),
    }
    assert dict(src.dropped) == {"empty": 1, "invalid_utf8": 1}
    assert src.read == len(recs) + 2
    assert [r.id for r in recs] == [r.id for r in TreeSource([tmp_path / "corpus"])]  # stable order


def test_tree_source_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        TreeSource([tmp_path / "nope"])


def test_language_by_extension():
    assert (language_of("a/b.PY"), language_of("x.hpp"), language_of("x.ipynb"), language_of("Makefile")) == \
        ("python", "cpp", "jupyter", None)


def test_grouping_by_language_then_repo_and_splitting(tmp_path):
    recs = list(TreeSource([make_tree(tmp_path / "corpus")]))
    docs = list(repository_documents(recs, seed=3))
    keys = [(d.lang, d.repo) for d in docs]
    assert keys == sorted(keys) and ("c", "corpus/repo_a") in keys and ("python", "corpus/repo_a") in keys
    py_a = next(d for d in docs if d.lang == "python" and d.repo == "corpus/repo_a")
    assert py_a.text.startswith(f"{REPO_NAME}corpus/repo_a\n") and py_a.text.count(FILE_SEP) == 2
    for rec in recs:
        if rec.repo == "corpus/repo_a" and rec.lang == "python":
            assert f"{FILE_SEP}{rec.path}\n{rec.content}" in py_a.text
    # the order is seeded: the same seed gives the same documents, whatever the input order
    again = list(repository_documents(list(reversed(recs)), seed=3))
    assert [d.text for d in again] == [d.text for d in docs]
    # a tiny size limit splits at file boundaries, never inside a file, and loses no file
    parts = [d for d in repository_documents(recs, seed=3, max_chars=10) if d.lang == "python"]
    assert sum(len(d.file_ids) for d in parts) == sum(r.lang == "python" for r in recs)
    assert all(len(d.file_ids) == 1 for d in parts)


def test_tokenizer_round_trips_and_has_special_tokens(tmp_path):
    roots = embedded_roots()
    assert roots[0].is_dir()
    texts = [r.content for r in TreeSource(roots[:1], max_total_bytes=1 << 20)]
    model = train_tokenizer(texts, tmp_path / "tok", vocab_size=1000, seed=0)
    tok = Tokenizer(model)
    assert tok.vocab_size == 1000
    s = tok.special
    assert len({s.pad, s.unk, s.eod, s.repo_name, s.file_sep, s.fim_prefix, s.fim_middle,
                s.fim_suffix, s.fim_pad}) == 9
    tricky = f"{REPO_NAME}x/y\n{FILE_SEP}a.py\n\tdef ünïcødé():  # 🙂 emoji\n\n   \r\n\x00\x7f 12345"
    ids = tok.encode([tricky])[0]
    assert tok.decode(ids) == tricky
    assert ids[0] == s.repo_name and s.file_sep in ids
    for t in texts[:50]:
        assert tok.decode(tok.encode([t])[0]) == t
    assert (tmp_path / "tok/special_tokens.json").is_file()
