"""Tests for snowtrain.checkpoint: DCP resharding across TP/DP layouts and world sizes, atomic
commits, corruption fallback, retention, async saves and config diffs (real gloo processes)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemWriter

from snowtrain.checkpoint import (
    CheckpointError,
    CheckpointManager,
    Replicate,
    Shard,
    device_mesh,
    local_shard,
    to_dtensor,
    verify_checkpoint,
)
from snowtrain.checkpoint import manager as manager_mod
from snowtrain.config import CheckpointConfig, RunConfig
from snowtrain.testing import DistributedTestError, run_distributed

# DCP warns on each save without torch.distributed (the async one from its writer thread).
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")

# --------------------------------------------------------------------------- reference state
#
# Global reference tensors come from a seed only (independent of the checkpoint code); the local
# shard a rank must hold is cut here with DTensor's documented semantics: placements apply left
# to right over the ("dp", "tp") mesh, a Shard(d) splits like torch.chunk (ceil(n/k) per shard,
# the last ones smaller or empty).

SEED_A, SEED_B, SEED_C = 11, 22, 33

# name: (global shape, model placements, ZeRO-1 optimizer placements); ("S", d) = Shard(d).
PARAMS = {
    "layers.0.attn.qkv.weight": ((8, 6), [("R",), ("S", 0)], [("S", 0), ("S", 0)]),  # column-parallel
    "layers.0.attn.out.weight": ((6, 8), [("R",), ("S", 1)], [("S", 0), ("S", 1)]),  # row-parallel
    "layers.0.norm.weight": ((6,), [("R",), ("R",)], [("S", 0), ("R",)]),  # replicated
    "layers.0.mlp.up.weight": ((7, 5), [("R",), ("S", 0)], [("S", 0), ("S", 0)]),  # uneven
}
OPT_KEYS = ("exp_avg", "exp_avg_sq", "master")


def ref_tensor(seed: int, name: str, key: str) -> torch.Tensor:
    shape = PARAMS[name][0]
    idx = sorted(PARAMS).index(name) * 10 + (["param", *OPT_KEYS].index(key))
    g = torch.Generator().manual_seed(seed * 1000 + idx)
    t = torch.randn(shape, generator=g)
    return t.to(torch.bfloat16) if key == "param" else t


def ref_extra(seed: int) -> dict:
    return {"step": seed, "phase": "p1", "data": {"consumed_samples": seed * 64}, "rng_seed": seed + 1}


def expected_local(full: torch.Tensor, spec, coord, sizes) -> torch.Tensor:
    x = full
    for p, c, k in zip(spec, coord, sizes):
        if p[0] == "S":
            n = x.shape[p[1]]
            size = -(-n // k)
            start = min(c * size, n)
            x = x.narrow(p[1], start, min(start + size, n) - start)
    return x


def _placements(spec):
    return [Shard(p[1]) if p[0] == "S" else Replicate() for p in spec]


def build_state(seed: int | None, st=None, mesh=None) -> dict:
    """The trainer-shaped state dict; seed None gives zeros (a load template)."""

    def make(name, key, spec):
        full = ref_tensor(seed if seed is not None else 0, name, key)
        if seed is None:
            full = torch.zeros_like(full)
        if st is None:
            return full.clone()
        local = expected_local(full, spec, (st.dp_rank, st.tp_rank), (st.dp_size, st.tp_size))
        return to_dtensor(local.clone(), mesh, _placements(spec), full.shape)

    return {
        "model": {n: make(n, "param", PARAMS[n][1]) for n in PARAMS},
        "optim": {n: {k: make(n, k, PARAMS[n][2]) for k in OPT_KEYS} for n in PARAMS},
        "extra": ref_extra(seed) if seed is not None else {},
    }


def local_shard_mismatches(st, mesh) -> list[str]:
    bad = []
    for n, (_, model_spec, optim_spec) in PARAMS.items():
        for key, spec in (("param", model_spec), ("master", optim_spec)):
            full = ref_tensor(SEED_A, n, key)
            want = expected_local(full, spec, (st.dp_rank, st.tp_rank), (st.dp_size, st.tp_size))
            if not torch.equal(local_shard(full, mesh, _placements(spec)), want):
                bad.append(f"{n}.{key}")
    return bad


def mismatches(state: dict, seed: int, st=None) -> list[str]:
    """Names of tensors whose local data differs from the reference (every rank checks its part,
    together every element)."""
    bad = []

    def check(t, name, key, spec):
        full = ref_tensor(seed, name, key)
        if st is None:
            want, got = full, t
        else:
            want = expected_local(full, spec, (st.dp_rank, st.tp_rank), (st.dp_size, st.tp_size))
            got = t.to_local()
        if got.dtype != want.dtype or got.shape != want.shape or not torch.equal(got, want):
            bad.append(f"{name}.{key}")

    for n in PARAMS:
        check(state["model"][n], n, "param", PARAMS[n][1])
        for k in OPT_KEYS:
            check(state["optim"][n][k], n, k, PARAMS[n][2])
    return bad


def bump(state: dict, st=None) -> None:
    for t in [*state["model"].values(), *(v for d in state["optim"].values() for v in d.values())]:
        (t if st is None else t.to_local()).add_(1000)


# --------------------------------------------------------------------------- distributed job


def _reshard_job(root: str, w1_ckpt: str) -> dict:
    from snowtrain.distributed import init_distributed

    out: dict = {}
    cfg = CheckpointConfig(dir=root, keep_last=10)

    # TP=2, DP=1: save synchronously, then the same state asynchronously.
    st = init_distributed(2, backend="gloo")
    mesh = device_mesh(st)
    out["mesh_tp2"] = (mesh.mesh.tolist(), mesh.mesh_dim_names)
    mgr = CheckpointManager(cfg, state=st, run_config=RunConfig(name="tp2"))
    sd = build_state(SEED_A, st, mesh)
    out["saved_ok"] = mismatches(sd, SEED_A, st)
    out["local_shard_tp2"] = local_shard_mismatches(st, mesh)
    pa = mgr.save(sd, step=10, phase="p1")
    pb = mgr.save(sd, step=11, phase="p1", async_save=True)
    bump(sd, st)  # after staging: must not reach the checkpoint
    out["async_pending"] = mgr.pending
    mgr.wait()
    out["paths"] = (str(pa), str(pb))
    try:
        to_dtensor(torch.zeros(5, 5), mesh, [Replicate(), Shard(0)], (7, 5))
        out["uneven_error"] = ""
    except ValueError as e:
        out["uneven_error"] = str(e)
    mgr.close()

    # TP=1, DP=2: load both, save a new state.
    st2 = init_distributed(1, backend="gloo")
    mesh2 = device_mesh(st2)
    out["mesh_dp2"] = (mesh2.mesh.tolist(), mesh2.mesh_dim_names)
    out["local_shard_dp2"] = local_shard_mismatches(st2, mesh2)
    mgr2 = CheckpointManager(cfg, state=st2)
    tmpl = build_state(None, st2, mesh2)
    out["extra_a"] = mgr2.load(pa, tmpl)
    out["a_on_dp2"] = mismatches(tmpl, SEED_A, st2)
    tmpl = build_state(None, st2, mesh2)
    mgr2.load(pb, tmpl)
    out["async_on_dp2"] = mismatches(tmpl, SEED_A, st2)
    tmpl = build_state(None, st2, mesh2)
    out["extra_w1"] = mgr2.load(w1_ckpt, tmpl)  # world size 1 -> 2
    out["w1_on_dp2"] = mismatches(tmpl, SEED_C, st2)
    pc = mgr2.save(build_state(SEED_B, st2, mesh2), step=20, phase="p1")
    out["latest_dp2"] = str(mgr2.find_latest())
    mgr2.close()

    # Back to TP=2, DP=1.
    st3 = init_distributed(2, backend="gloo")
    mesh3 = device_mesh(st3)
    mgr3 = CheckpointManager(cfg, state=st3)
    tmpl = build_state(None, st3, mesh3)
    out["extra_c"] = mgr3.load(pc, tmpl)
    out["c_on_tp2"] = mismatches(tmpl, SEED_B, st3)
    out["pc"] = str(pc)
    return out


@pytest.fixture(scope="module")
def reshard_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("reshard")
    # A world-size-1 checkpoint, written without torch.distributed.
    w1 = CheckpointManager(CheckpointConfig(dir=str(base / "w1"))).save(
        build_state(SEED_C), step=5, phase="p0")
    results = run_distributed(_reshard_job, 2, str(base / "ckpt"), str(w1), timeout_s=150)
    return base, results


def test_device_mesh_grid(reshard_run):
    _, results = reshard_run
    for r in results:
        assert r["mesh_tp2"] == ([[0, 1]], ("dp", "tp"))
        assert r["mesh_dp2"] == ([[0], [1]], ("dp", "tp"))
        assert r["saved_ok"] == []
        assert r["local_shard_tp2"] == [] and r["local_shard_dp2"] == []


def test_reshard_tp2_to_dp2(reshard_run):
    _, results = reshard_run
    for r in results:
        assert r["a_on_dp2"] == []
        assert r["extra_a"] == ref_extra(SEED_A)


def test_reshard_dp2_to_tp2(reshard_run):
    _, results = reshard_run
    for r in results:
        assert r["c_on_tp2"] == []
        assert r["extra_c"] == ref_extra(SEED_B)
        assert r["latest_dp2"] == r["pc"]


def test_reshard_world1_to_2(reshard_run):
    _, results = reshard_run
    for r in results:
        assert r["w1_on_dp2"] == []
        assert r["extra_w1"] == ref_extra(SEED_C)


def test_reshard_world2_to_1(reshard_run):
    base, results = reshard_run
    mgr = CheckpointManager(CheckpointConfig(dir=str(base / "ckpt")))
    pa, _ = results[0]["paths"]
    for path, seed in ((pa, SEED_A), (results[0]["pc"], SEED_B)):
        tmpl = build_state(None)
        extra = mgr.load(path, tmpl)
        assert mismatches(tmpl, seed) == []
        assert extra == ref_extra(seed) == tmpl["extra"]


def test_async_save_two_processes_matches_sync(reshard_run):
    base, results = reshard_run
    for r in results:
        assert r["async_on_dp2"] == []
    pa, pb = map(Path, results[0]["paths"])
    assert (pb / "COMMITTED").is_file() and verify_checkpoint(pb) == []
    data = sorted(p.name for p in pa.glob("*.distcp"))
    assert data == ["__0_0.distcp", "__1_0.distcp"]  # every rank wrote its own part
    assert data == sorted(p.name for p in pb.glob("*.distcp"))
    for name in data:
        assert (pa / name).read_bytes() == (pb / name).read_bytes()
    mgr = CheckpointManager(CheckpointConfig(dir=str(base / "ckpt")))
    t1, t2 = build_state(None), build_state(None)
    mgr.load(pa, t1)
    mgr.load(pb, t2)
    assert mismatches(t2, SEED_A) == [] and mismatches(t1, SEED_A) == []


def test_to_dtensor_rejects_wrong_uneven_shard(reshard_run):
    _, results = reshard_run
    assert "does not match the shard (4, 5)" in results[0]["uneven_error"]
    assert "does not match the shard (3, 5)" in results[1]["uneven_error"]


def test_saved_config_and_layout(reshard_run):
    base, results = reshard_run
    pa = Path(results[0]["paths"][0])
    assert pa == base / "ckpt" / "p1" / "step_00000010"
    assert {"COMMITTED", "extra.json", "config.yaml", ".metadata"} <= {p.name for p in pa.iterdir()}
    marker = json.loads((pa / "COMMITTED").read_text())
    assert marker["step"] == 10 and marker["world_size"] == 2 and marker["tp_size"] == 2
    mgr = CheckpointManager(CheckpointConfig(dir=str(base / "ckpt")))
    assert mgr.load_config_diff(pa, RunConfig(name="tp2")) == []
    assert mgr.load_config_diff(pa, RunConfig(name="other")) == ["name: 'tp2' -> 'other'"]


# --------------------------------------------------------------------------- single process


def _mgr(tmp_path, **kw) -> CheckpointManager:
    return CheckpointManager(CheckpointConfig(dir=str(tmp_path / "ckpt"), **kw))


def _save_steps(mgr, steps, phase="p1", **kw):
    return [mgr.save(build_state(SEED_A + s), step=s, phase=phase, **kw) for s in steps]


def _latest_pointer(mgr) -> str:
    return json.loads((mgr.root / "latest").read_text())["path"]


def test_async_save_single_process_matches_sync(tmp_path):
    mgr = _mgr(tmp_path, async_save=True, keep_last=5)
    sd = build_state(SEED_A)
    p_sync = mgr.save(sd, step=1, phase="p1", async_save=False)
    p_async = mgr.save(sd, step=2, phase="p1")
    bump(sd)  # staged already: the checkpoint keeps the values at save time
    p_async2 = mgr.save(sd, step=3, phase="p1")  # waits for (and commits) the previous one
    assert mgr.wait() == p_async2
    assert (p_async / "__0_0.distcp").read_bytes() == (p_sync / "__0_0.distcp").read_bytes()
    assert (p_async / "extra.json").read_text() == (p_sync / "extra.json").read_text()
    for path, ok in ((p_sync, True), (p_async, True), (p_async2, False)):
        tmpl = build_state(None)
        mgr.load(path, tmpl)
        assert (mismatches(tmpl, SEED_A) == []) is ok
    assert mgr.find_latest() == p_async2
    mgr.close()


@pytest.mark.parametrize("crash_at", ["data_written", "marker_written"])
def test_crash_during_save_keeps_last_good(tmp_path, monkeypatch, crash_at):
    mgr = _mgr(tmp_path)
    (good,) = _save_steps(mgr, [1])

    class Crash(RuntimeError):
        pass

    def boom(*a, **k):
        raise Crash("simulated crash")

    if crash_at == "data_written":  # rank files written, .metadata not
        monkeypatch.setattr(FileSystemWriter, "finish", boom)
    else:  # COMMITTED written into the tmp folder, not yet renamed
        real = manager_mod._fsync_dir
        monkeypatch.setattr(manager_mod, "_fsync_dir",
                            lambda p: boom() if Path(p).name.startswith(".tmp_step_") else real(p))
    with pytest.raises(Exception, match="simulated crash"):
        _save_steps(mgr, [2])
    monkeypatch.undo()

    tmp = mgr.root / "p1" / ".tmp_step_2"
    assert tmp.is_dir() and any(tmp.glob("*.distcp"))
    assert not (mgr.root / "p1" / "step_00000002").exists()
    assert _latest_pointer(mgr) == "p1/step_00000001"
    assert mgr.find_latest() == good
    assert not tmp.exists()  # cleaned on resume
    (p3,) = _save_steps(mgr, [3])
    assert mgr.find_latest() == p3


def _killed_save_job(root: str) -> None:
    mgr = CheckpointManager(CheckpointConfig(dir=root))
    mgr.save(build_state(SEED_A), step=1, phase="p1")

    def die(*a, **k):
        os._exit(17)  # a hard kill: no exception handler, no cleanup

    FileSystemWriter.finish = die
    mgr.save(build_state(SEED_B), step=2, phase="p1")


def test_killed_process_mid_save(tmp_path):
    root = tmp_path / "ckpt"
    with pytest.raises(DistributedTestError, match="code 17"):
        run_distributed(_killed_save_job, 1, str(root), timeout_s=60)
    tmp = root / "p1" / ".tmp_step_2"
    assert any(tmp.glob("*.distcp")) and not (tmp / ".metadata").exists()
    mgr = CheckpointManager(CheckpointConfig(dir=str(root)))
    assert _latest_pointer(mgr) == "p1/step_00000001"
    (p2,) = _save_steps(mgr, [2])  # the next save cleans the leftover and succeeds
    assert verify_checkpoint(p2) == [] and mgr.find_latest() == p2
    tmpl = build_state(None)
    mgr.load(root / "p1" / "step_00000001", tmpl)
    assert mismatches(tmpl, SEED_A) == []


def test_crash_after_rename_before_latest(tmp_path, monkeypatch):
    mgr = _mgr(tmp_path)
    _save_steps(mgr, [1])
    monkeypatch.setattr(manager_mod, "_replace_atomic", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError):
        _save_steps(mgr, [2])
    monkeypatch.undo()
    assert _latest_pointer(mgr) == "p1/step_00000001"
    # step 2 was renamed (committed) and is complete: resume takes the newer one.
    assert mgr.find_latest() == mgr.step_dir("p1", 2)


def _damage(path: Path, kind: str) -> None:
    if kind == "truncate":
        f = path / "__0_0.distcp"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif kind == "delete_data":
        (path / "__0_0.distcp").unlink()
    elif kind == "remove_marker":
        (path / "COMMITTED").unlink()
    elif kind == "garbage_metadata":  # same size, so only the metadata check can notice
        f = path / ".metadata"
        f.write_bytes(b"\0" * f.stat().st_size)
    elif kind == "delete_metadata":
        (path / ".metadata").unlink()
    elif kind == "delete_extra":
        (path / "extra.json").unlink()
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["truncate", "delete_data", "remove_marker", "garbage_metadata", "delete_metadata", "delete_extra"],
)
def test_corrupted_latest_falls_back(tmp_path, caplog, kind):
    mgr = _mgr(tmp_path, keep_last=5)
    p1, p2, p3 = _save_steps(mgr, [1, 2, 3])
    _damage(p3, kind)
    assert verify_checkpoint(p3) != []
    with caplog.at_level(logging.WARNING, logger="snowtrain.checkpoint"):
        assert mgr.find_latest() == p2
    assert any(str(p3) in r.getMessage() and "corrupted or incomplete" in r.getMessage()
               for r in caplog.records), caplog.text
    with pytest.raises(CheckpointError) as ei:
        mgr.load(p3, build_state(None))
    msg = str(ei.value)
    assert str(p3) in msg and "corrupted or incomplete" in msg and str(p2) in msg
    tmpl = build_state(None)
    assert mgr.load(p2, tmpl) == ref_extra(SEED_A + 2)
    assert mismatches(tmpl, SEED_A + 2) == []


def test_unreadable_latest_pointer_scans(tmp_path, caplog):
    mgr = _mgr(tmp_path)
    _, p2 = _save_steps(mgr, [1, 2])
    (mgr.root / "latest").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="snowtrain.checkpoint"):
        assert mgr.find_latest() == p2
    assert "unreadable" in caplog.text
    (mgr.root / "latest").unlink()
    assert mgr.find_latest() == p2


def test_find_latest_empty_and_all_damaged(tmp_path):
    mgr = _mgr(tmp_path)
    assert mgr.find_latest() is None
    (p1,) = _save_steps(mgr, [1])
    (p1 / "COMMITTED").unlink()
    # the only checkpoint is damaged: refused, never a silent start from scratch
    with pytest.raises(CheckpointError, match="no complete checkpoint under .*step_00000001 damaged"):
        mgr.find_latest()
    with pytest.raises(CheckpointError, match="no older complete checkpoint"):
        mgr.load(p1, build_state(None))


@pytest.mark.parametrize("keep_phase_ends", [True, False])
def test_retention_keeps_last_and_phase_ends(tmp_path, keep_phase_ends):
    mgr = _mgr(tmp_path, keep_last=2, keep_phase_ends=keep_phase_ends)
    _save_steps(mgr, [1, 2, 3], phase="p1")
    p1_end = mgr.save(build_state(SEED_A), step=4, phase="p1", phase_end=True)
    _save_steps(mgr, [5, 6, 7], phase="p2")
    left = sorted(str(p.relative_to(mgr.root)) for p in mgr.root.glob("*/step_*"))
    want = ["p2/step_00000006", "p2/step_00000007"]
    if keep_phase_ends:
        want = ["p1/step_00000004", *want]
        assert mgr.final_checkpoint("p1") == p1_end
    else:
        assert mgr.final_checkpoint("p1", missing_ok=True) is None
    assert left == want
    assert not list(mgr.root.glob("*/.t*"))  # no tmp/trash leftovers
    with pytest.raises(CheckpointError, match="no complete phase-end checkpoint for phase 'p2'"):
        mgr.final_checkpoint("p2")


def test_resave_same_step_as_phase_end(tmp_path):
    mgr = _mgr(tmp_path)
    p = mgr.save(build_state(SEED_A), step=4, phase="p1")
    assert mgr.save(build_state(SEED_B), step=4, phase="p1", phase_end=True) == p
    assert mgr.info(p).phase_end and mgr.final_checkpoint("p1") == p
    mgr.save(build_state(SEED_C), step=4, phase="p1")  # a later interval save keeps the mark
    assert mgr.info(p).phase_end
    tmpl = build_state(None)
    mgr.load("p1/step_00000004", tmpl)  # relative to the checkpoint root
    assert mismatches(tmpl, SEED_C) == []
    assert [d.name for d in (mgr.root / "p1").iterdir()] == ["step_00000004"]


def test_config_diff_on_resume(tmp_path):
    cfg = RunConfig(name="run")
    mgr = CheckpointManager(cfg.checkpoint, str(tmp_path / "ckpt"), run_config=cfg)
    (p,) = _save_steps(mgr, [1])
    assert mgr.load_config_diff(p, cfg) == []
    new = RunConfig(name="run")
    new.optim.lr = 3e-4
    new.parallel.tensor_parallel = 2
    diff = mgr.load_config_diff(p, new)
    assert diff == ["parallel.tensor_parallel: 1 -> 2", "optim.lr: 0.00053 -> 0.0003"]


def test_load_with_wrong_keys_is_clear(tmp_path):
    mgr = _mgr(tmp_path)
    (p,) = _save_steps(mgr, [1])
    tmpl = build_state(None)
    tmpl["model"]["not.saved"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=f"loading checkpoint {p}"):
        mgr.load(p, tmpl)


def test_extra_must_be_json(tmp_path):
    mgr = _mgr(tmp_path)
    sd = build_state(SEED_A)
    sd["extra"]["bad"] = object()
    with pytest.raises(TypeError, match="JSON"):
        mgr.save(sd, step=1, phase="p1")
    assert not mgr.root.exists() or not list(mgr.root.glob("*/step_*"))


def test_invalid_phase_name(tmp_path):
    with pytest.raises(ValueError, match="invalid phase name"):
        _mgr(tmp_path).save(build_state(SEED_A), step=1, phase="../x")


def test_cleanup_of_leftovers_on_save(tmp_path):
    mgr = _mgr(tmp_path)
    stale = mgr.root / "p0" / ".tmp_step_99"
    stale.mkdir(parents=True)
    (stale / "__0_0.distcp").write_bytes(b"x")
    _save_steps(mgr, [1])
    assert not stale.exists()
    shutil.rmtree(mgr.root)
