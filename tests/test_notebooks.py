"""Jupyter notebooks become percent-format scripts (data_prep/notebooks.py): jupytext, reading
the script back, finds every code and markdown cell of the notebook (nbformat writes them); no
output, image or metadata survives; unreadable notebooks and ones without code are counted
drops; and phase 1 writes the scripts, not the JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.notebooks import notebook_to_script

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")

BIN = Path(sys.executable).parent
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def make_notebook(cells, language="python") -> str:
    v4 = nbformat.v4
    nb = v4.new_notebook(metadata={"kernelspec": {"name": language, "language": language,
                                                  "display_name": language},
                                   "language_info": {"name": language}})
    for kind, src in cells:
        if kind == "code":
            c = v4.new_code_cell(src, execution_count=3)
            c.outputs = [v4.new_output("display_data", data={"image/png": PIXEL * 40, "text/plain": "<Figure>"}),
                         v4.new_output("stream", name="stdout", text="printed output\n")]
        elif kind == "markdown":
            c = v4.new_markdown_cell(src)
        else:
            c = v4.new_raw_cell(src)
        nb.cells.append(c)
    return nbformat.writes(nb)


CELLS = [("markdown", "# Fitting a line\n\nWe fit *y = ax + b*."),
         ("code", "%matplotlib inline\nimport numpy as np\n!pip install numpy"),
         ("code", "def fit(x, y):\n    a, b = np.polyfit(x, y, 1)\n\n    return a, b"),
         ("code", "   \n"),                                    # an empty cell: dropped
         ("raw", "raw text for nbconvert"),                     # a raw cell: dropped
         ("markdown", "Done."),
         ("code", "fit([0, 1, 2], [1, 3, 5])")]


def test_jupytext_reads_the_script_back_into_the_notebooks_cells():
    script, why = notebook_to_script(make_notebook(CELLS))
    assert why is None
    back = jupytext.reads(script, fmt="py:percent")
    got = [(c.cell_type, c.source.strip()) for c in back.cells]
    want = [(k, s.strip()) for k, s in CELLS if k != "raw" and s.strip()]
    assert got == want
    assert PIXEL[:40] not in script and "printed output" not in script and "execution_count" not in script
    assert "# %matplotlib inline" in script and "# !pip install numpy" in script   # not code
    compile(script, "<script>", "exec")            # the rest is plain Python


def test_other_kernels_formats_and_drops():
    scala, _ = notebook_to_script(make_notebook([("markdown", "Hi"), ("code", "val x = 1")], "scala"))
    assert scala == "// %% [markdown]\n// Hi\n\n// %%\nval x = 1\n"
    v3 = {"nbformat": 3, "metadata": {}, "worksheets": [{"cells": [
        {"cell_type": "heading", "level": 1, "source": ["Title"]},
        {"cell_type": "code", "language": "python", "input": ["x = 1\n", "print(x)"], "outputs": []}]}]}
    assert notebook_to_script(json.dumps(v3)) == ("# %% [markdown]\n# Title\n\n# %%\nx = 1\nprint(x)\n", None)
    # odd but valid JSON: non-string source parts, non-dict metadata, CRLF, a markdown "%%" line,
    # a form feed inside a string; an R kernel keeps its "!" lines
    odd = {"metadata": "x", "cells": [
        {"cell_type": "markdown", "source": ["%% not a cell\r\n", None, "text"]},
        {"cell_type": "code", "source": ["s = 'a\x0cb'\r\n", 7, "print(s)\n", "\n"]}]}
    script, why = notebook_to_script(json.dumps(odd))
    assert script == "# %% [markdown]\n# %% not a cell\n# text\n\n# %%\ns = 'a\x0cb'\nprint(s)\n" and why is None
    r, _ = notebook_to_script(make_notebook([("code", "x <- c(1, NA)\n!is.na(x)")], "R"))
    assert "\n!is.na(x)\n" in r
    assert notebook_to_script('{"cells": [') == (None, "notebook_unreadable")
    assert notebook_to_script('{"nbformat": 4}') == (None, "notebook_unreadable")
    assert notebook_to_script("[1, 2]") == (None, "notebook_unreadable")
    assert notebook_to_script(make_notebook([("markdown", "only prose"), ("code", "  ")])) == \
        (None, "notebook_no_code")


def test_phase1_trains_on_the_scripts_and_counts_the_drops(tmp_path):
    from data_prep.dataset_files import PhaseOutput
    repo = tmp_path / "src" / "org" / "analysis"
    repo.mkdir(parents=True)
    for i in range(6):
        cells = [("markdown", f"## Step {i}"), ("code", f"import math\n\ndef area_{i}(r):\n    "
                                                         f"return math.pi * r ** {i + 2}\n\nprint(area_{i}(2))")]
        (repo / f"nb{i}.ipynb").write_text(make_notebook(cells))
        (repo / f"mod{i}.py").write_text(f"def twice_{i}(x):\n    return {i} * x + x\n\nprint(twice_{i}(3))\n")
    (repo / "broken.ipynb").write_text('{"cells": [')
    (repo / "prose.ipynb").write_text(make_notebook([("markdown", "nothing to run here at all")]))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({
        "output": str(tmp_path / "out"), "sources": [{"type": "tree", "paths": [str(tmp_path / "src")]}],
        "near_dedup": {"enabled": False}, "decontamination": {"enabled": False},
        "tokenizer": {"vocab_size": 300}, "buckets": 2}))
    r = subprocess.run([str(BIN / "data-prep"), "phase1", "--config", str(cfg), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    # too few pieces for the characters of the corpus: a config error naming the key
    assert r.returncode == 2 and "tokenizer.vocab_size" in r.stderr and "raise the vocab size" in r.stderr, r.stderr
    cfg.write_text(cfg.read_text().replace("\"vocab_size\": 300", "\"vocab_size\": 400"))
    r = subprocess.run([str(BIN / "data-prep"), "phase1", "--config", str(cfg), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    # the corrected vocab_size reruns from the tokenizer on, without --restart
    assert "the tokenizer settings changed" in r.stdout and "input units" in r.stdout
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    jup = m["languages"]["jupyter"]
    assert jup["filter"]["in"] == 8 and jup["filter"]["kept"] == 6
    assert jup["filter"]["dropped"] == {"notebook_unreadable": 1, "notebook_no_code": 1}
    files = list(PhaseOutput(tmp_path / "out").files("jupyter"))
    assert len(files) == 6
    for f in files:
        assert f.content.startswith("# %% [markdown]\n# ## Step") and "\n# %%\nimport math\n" in f.content
        assert '"cell_type"' not in f.content and PIXEL[:40] not in f.content


def test_max_file_bytes_applies_to_the_script_and_old_stamps_resume(tmp_path):
    """A notebook whose JSON (an image output) is over max_file_bytes is read up to
    max_notebook_bytes and kept when its script fits; one whose script does not fit, or whose JSON
    is over max_notebook_bytes, is a too_large drop; with notebooks: raw the JSON must fit. A work
    folder stamped before max_notebook_bytes existed resumes."""
    from data_prep.pipeline.config import load_phase1_config
    from data_prep.pipeline.phase1 import Phase1
    from snowtrain.config import ConfigError
    repo = tmp_path / "src" / "org" / "plots"
    repo.mkdir(parents=True)
    image = [("code", "import math\n\ndef area(r):\n    return math.pi * r * r\n\narea(2)")]
    for i in range(5):
        (repo / f"small{i}.ipynb").write_text(make_notebook(
            [("markdown", f"# Part {i}"), ("code", f"def part_{i}(x):\n    return x * {i + 1}\n\npart_{i}(3)")]))
        (repo / f"mod{i}.py").write_text(f"def twice_{i}(x):\n    return {i} * x + x\n\nprint(twice_{i}(3))\n")
    (repo / "image.ipynb").write_text(make_notebook(image).replace(PIXEL * 40, PIXEL * 400))
    long_code = "\n".join(f"value_{j} = {j} * {j}" for j in range(900))
    (repo / "long.ipynb").write_text(make_notebook([("code", long_code)]))
    (repo / "huge.ipynb").write_text(make_notebook(image).replace(PIXEL * 40, PIXEL * 4000))
    sizes = {p.name: p.stat().st_size for p in repo.glob("*.ipynb")}
    assert sizes["image.ipynb"] > 16384 > sizes["small0.ipynb"] and sizes["huge.ipynb"] > 200_000
    assert 16384 < len(long_code) < sizes["long.ipynb"] < 200_000
    base = {"output": str(tmp_path / "out"), "sources": [{"type": "tree", "paths": [str(tmp_path / "src")]}],
            "max_file_bytes": 16384, "max_notebook_bytes": 200_000, "near_dedup": {"enabled": False},
            "decontamination": {"enabled": False}, "tokenizer": {"vocab_size": 400}, "buckets": 2}

    def run(name, **changes):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(json.dumps({**base, **changes}))
        Phase1(load_phase1_config(cfg), progress=False, config_file=cfg).run()
        return json.loads((Path(changes.get("output", base["output"])) / "manifest.json").read_text())

    jup = run("script")["languages"]["jupyter"]
    assert jup["filter"]["in"] == 7 and jup["filter"]["kept"] == 6          # small0-4 and image
    assert jup["filter"]["dropped"] == {"too_large": 1}                     # long: its script
    # the readers: notebooks up to max_notebook_bytes (notebooks: script), else up to max_file_bytes
    from data_prep.sources import JsonlSource, ParquetSource, TreeSource
    for notebook_bytes, dropped in ((None, 3), (200_000, 1)):       # raw: image, long, huge; script: huge
        tree = TreeSource([tmp_path / "src"], max_file_bytes=16384, max_notebook_bytes=notebook_bytes)
        names = sorted(r.path for u in tree.units() for r in tree.iter_unit(u) if r.lang == "jupyter")
        assert len(names) == 8 - dropped and tree.dropped["too_large"] == dropped, (names, tree.dropped)
        rows = [{"content": (repo / n).read_text(), "lang": "Jupyter Notebook", "path": n} for n in sizes]
        rows.append({"content": "x = 1\n" * 5000, "lang": "Python", "path": "big.py"})  # never a notebook
        lines = tmp_path / "rows.jsonl"
        lines.write_text("".join(json.dumps(r) + "\n" for r in rows))
        pq = pytest.importorskip("pyarrow.parquet")
        import pyarrow as pa
        pq.write_table(pa.table({k: [r[k] for r in rows] for k in ("content", "lang", "path")}),
                       tmp_path / "rows.parquet")
        for src in (JsonlSource([lines], fields={"content": "content", "lang": "lang", "path": "path"},
                                max_file_bytes=16384, max_notebook_bytes=notebook_bytes),
                    ParquetSource([tmp_path / "rows.parquet"], columns={"content": "content", "lang": "lang",
                                                                        "path": "path"},
                                  max_file_bytes=16384, max_notebook_bytes=notebook_bytes)):
            kept = [r.lang for r in src]
            assert kept.count("jupyter") == 8 - dropped and "python" not in kept, (type(src), kept)
            assert src.dropped["too_large"] == dropped + 1, (type(src), src.dropped)
    # a work folder stamped before max_notebook_bytes existed reads as holding its default: it
    # resumes with the default, and another value is a change like any other
    stamp = tmp_path / "out" / ".work" / "config.yaml"
    stamp.write_text("".join(line for line in stamp.read_text().splitlines(keepends=True)
                             if not line.startswith("max_notebook_bytes:")))
    with pytest.raises(ConfigError, match=r"max_notebook_bytes: 33554432 -> 200000"):
        run("script")
    resumed = run("default", max_notebook_bytes=32 << 20)  # resumed: what was read stands
    assert resumed["languages"]["jupyter"]["filter"] == jup["filter"]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(json.dumps({**base, "max_notebook_bytes": 0}))
    with pytest.raises(Exception, match="max_notebook_bytes"):
        load_phase1_config(cfg)
