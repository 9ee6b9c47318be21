"""Parquet and JSONL sources on small shards written here: contents, normalisation, bad input."""
import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.sources import JsonlSource, ParquetSource, SourceError, normalise_language


def stack_rows():
    """Rows in The Stack v1 layout, with some bad ones mixed in."""
    langs = ["Python", "C++", "C#", "JavaScript", "TypeScript", "Jupyter Notebook", "Shell", "Go"]
    exts = ["py", "cpp", "cs", "js", "ts", "ipynb", "sh", "go"]
    rows = []
    for i in range(40):
        k = i % len(langs)
        rows.append({
            "hexsha": f"{i:040x}", "size": 10, "ext": exts[k], "lang": langs[k],
            "max_stars_repo_path": f"src/file_{i}.{exts[k]}",
            "max_stars_repo_name": f"org/repo{i % 3}",
            "max_stars_repo_licenses": ["MIT", "Apache-2.0"] if i % 2 else ["BSD-3-Clause"],
            "max_stars_count": i if i % 5 else None,
            "content": f"// file {i}\nvalue = {i}\n",
        })
    return rows


def write_stack(path, rows, row_group_size=7, content_type=pa.string()):
    schema = pa.schema([
        ("hexsha", pa.string()), ("size", pa.int64()), ("ext", pa.string()), ("lang", pa.string()),
        ("max_stars_repo_path", pa.string()), ("max_stars_repo_name", pa.string()),
        ("max_stars_repo_licenses", pa.list_(pa.string())), ("max_stars_count", pa.int64()),
        ("content", content_type),
    ])
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_normalise_language():
    assert normalise_language("Python") == "python"
    assert normalise_language("C++") == "cpp"
    assert normalise_language("C#") == "csharp"
    assert normalise_language("Jupyter Notebook") == "jupyter"
    assert normalise_language("Shell") == "shell"
    assert normalise_language("JavaScript") == "javascript"
    assert normalise_language("Markdown") is None
    assert normalise_language(None) is None


def test_parquet_reads_stack_layout(tmp_path):
    rows = stack_rows()
    write_stack(tmp_path / "b.parquet", rows[20:])
    write_stack(tmp_path / "a.parquet", rows[:20])
    assert pq.ParquetFile(tmp_path / "a.parquet").num_row_groups == 3      # several row groups
    src = ParquetSource([str(tmp_path / "*.parquet")], batch_size=4)
    recs = list(src)
    assert [r.id for r in recs] == [r["hexsha"] for r in rows]               # files sorted, rows
    assert [r.content for r in recs] == [r["content"] for r in rows]
    assert [r.lang for r in recs[:8]] == ["python", "cpp", "csharp", "javascript", "typescript",
                                         "jupyter", "shell", "go"]
    assert recs[3].stars == 3 and recs[5].stars == 0                        # null stars -> 0
    assert recs[1].licenses == ("MIT", "Apache-2.0") and recs[0].licenses == ("BSD-3-Clause",)
    assert recs[4].repo == "org/repo1" and recs[4].path == "src/file_4.ts"
    assert recs[0].source.endswith("a.parquet") and recs[25].meta["row"] == 5
    assert src.read == 40 and not src.dropped

    py = ParquetSource(tmp_path, languages=["python", "go"])                # a folder works too
    got = list(py)
    assert {r.lang for r in got} == {"python", "go"} and len(got) == 10
    assert py.read == 40 and py.dropped["other_language"] == 30
    assert py.read == py.yielded + sum(py.dropped.values())


def test_parquet_bad_records_counted(tmp_path):
    rows = stack_rows()[:8]
    rows[0]["content"] = None
    rows[1]["content"] = "   \n"
    rows[2]["content"] = "x" * 200
    rows[3]["lang"], rows[3]["ext"], rows[3]["max_stars_repo_path"] = "Markdown", "md", "README.md"
    rows[4]["lang"] = None                                                   # falls back to ext
    rows[5]["lang"], rows[5]["ext"] = None, None                             # ... and to the path
    rows[5]["max_stars_repo_path"] = "lib/x.rs"
    write_stack(tmp_path / "s.parquet", rows, row_group_size=3)
    src = ParquetSource([tmp_path / "s.parquet"], max_file_bytes=100)
    recs = list(src)
    assert src.dropped == {"empty": 2, "too_large": 1, "unknown_language": 1}
    assert [r.lang for r in recs] == ["typescript", "rust", "shell", "go"]
    assert src.read == 8 == len(recs) + sum(src.dropped.values())
    assert {p.reason for p in src.problems} == {"empty", "too_large", "unknown_language"}


def test_parquet_binary_content_invalid_utf8(tmp_path):
    rows = stack_rows()[:4]
    for r in rows:
        r["content"] = r["content"].encode()
    rows[2]["content"] = b"x = '\xff\xfe'\n"
    write_stack(tmp_path / "bin.parquet", rows, content_type=pa.binary())
    src = ParquetSource([tmp_path / "bin.parquet"])
    recs = list(src)
    assert len(recs) == 3 and src.dropped == {"invalid_utf8": 1}
    assert recs[0].content == "// file 0\nvalue = 0\n"


def test_parquet_corrupt_files(tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(os.urandom(5000))
    with pytest.raises(SourceError, match="junk.parquet") as e:
        list(ParquetSource([junk]))
    assert "re-download" in str(e.value)

    good = write_stack(tmp_path / "good.parquet", stack_rows())
    data = good.read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[: len(data) * 2 // 3])
    src = ParquetSource([good, cut])
    with pytest.raises(SourceError, match="cut.parquet"):
        next(iter(src))                          # every file is checked before the first record

    # Footer intact, data pages damaged: fails while reading, naming the file.
    big = write_stack(tmp_path / "big.parquet", stack_rows() * 50, row_group_size=100)
    damaged = bytearray(big.read_bytes())
    damaged[len(damaged) // 3: len(damaged) // 3 + 300] = bytes(300)
    big.write_bytes(bytes(damaged))
    with pytest.raises(SourceError, match=r"big.parquet: reading failed near row"):
        list(ParquetSource([big]))

    with pytest.raises(SourceError, match="missing.parquet"):
        ParquetSource([tmp_path / "missing.parquet"])
    with pytest.raises(SourceError, match="matches no"):
        ParquetSource([str(tmp_path / "nothing-*.parquet")])


def test_parquet_missing_content_and_mapping(tmp_path):
    table = pa.table({"text": ["def f():\n    return 1\n", "int x;\n"],
                      "file_path": ["a/f.py", "b/x.c"], "language": ["Python", "C"]})
    pq.write_table(table, tmp_path / "other.parquet")
    with pytest.raises(SourceError) as e:
        list(ParquetSource([tmp_path / "other.parquet"]))
    msg = str(e.value)
    assert "other.parquet" in msg and "'content'" in msg and "file_path" in msg and "columns" in msg

    src = ParquetSource([tmp_path / "other.parquet"],
                        columns={"content": "text", "path": "file_path", "lang": "language"})
    recs = list(src)
    assert [(r.lang, r.path, r.repo, r.stars, r.licenses) for r in recs] == [
        ("python", "a/f.py", "unknown", 0, ()), ("c", "b/x.c", "unknown", 0, ())]
    assert recs[0].id == "other.parquet:0" and recs[1].id == "other.parquet:1"

    src = ParquetSource([tmp_path / "other.parquet"], columns={"content": "text", "lang": None})
    recs = list(src)                             # no language or path column: nothing to go on
    assert recs == [] and src.dropped == {"unknown_language": 2}
    with pytest.raises(ValueError, match="did you mean 'licenses'"):
        ParquetSource([tmp_path / "other.parquet"], columns={"licences": "x"})


# ----------------------------------------------------------------------------- JSONL

def jsonl_lines():
    return [
        json.dumps({"id": "a", "content": "print(1)\n", "lang": "Python", "repo": "o/r",
                    "path": "a.py", "stars": 5, "licenses": ["MIT"]}).encode(),
        b'{"content": "broken',                                              # 2: broken JSON
        json.dumps({"content": "fn main() {}\n", "path": "src/main.rs"}).encode(),
        b"",                                                                  # blank: skipped
        b'{"content": "x = \'\xff\'", "path": "bad.py"}',                     # 5: invalid UTF-8
        json.dumps({"text": "no content field", "path": "c.py"}).encode(),   # 6: missing
        json.dumps([1, 2, 3]).encode(),                                       # 7: not an object
        json.dumps({"content": "", "path": "e.py"}).encode(),                 # 8: empty
        json.dumps({"content": "echo hi\n", "lang": "Shell"}).encode(),
    ]


def test_jsonl_plain_and_gz(tmp_path):
    data = b"\n".join(jsonl_lines()) + b"\n"
    (tmp_path / "b.jsonl").write_bytes(data)
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as f:
        f.write(data)
    src = JsonlSource([tmp_path / "b.jsonl", tmp_path / "a.jsonl.gz"])
    recs = list(src)
    assert [r.source.rsplit("/", 1)[-1] for r in recs] == ["a.jsonl.gz"] * 3 + ["b.jsonl"] * 3
    first = recs[0]
    assert (first.id, first.lang, first.repo, first.path, first.stars, first.licenses) == (
        "a", "python", "o/r", "a.py", 5, ("MIT",))
    assert recs[1].lang == "rust" and recs[1].id == "a.jsonl.gz:3" and recs[1].repo == "unknown"
    assert recs[2].lang == "shell" and recs[2].path == recs[2].id == "a.jsonl.gz:9"
    assert src.dropped == {"broken_json": 2, "invalid_utf8": 2, "missing_content": 4, "empty": 2}
    assert src.read == 16 == len(recs) + sum(src.dropped.values())
    broken = [(p.file.rsplit("/", 1)[-1], p.line) for p in src.problems if p.reason == "broken_json"]
    assert broken == [("a.jsonl.gz", 2), ("b.jsonl", 2)]
    assert ("a.jsonl.gz", 5) in [(p.file.rsplit("/", 1)[-1], p.line) for p in src.problems
                                 if p.reason == "invalid_utf8"]


def test_jsonl_fields_and_errors(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"text": "SELECT 1;\n", "file": "q.sql", "lang": "SQL"}) + "\n")
    recs = list(JsonlSource([p], fields={"content": "text", "path": "file"}))
    assert len(recs) == 1 and recs[0].lang == "sql" and recs[0].path == "q.sql"

    with pytest.raises(SourceError, match="nope.jsonl"):
        JsonlSource([tmp_path / "nope.jsonl"])

    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(gzip.compress(b"\n".join(jsonl_lines()) * 50)[:-40])       # truncated gzip
    with pytest.raises(SourceError, match="t.jsonl.gz"):
        list(JsonlSource([gz]))
