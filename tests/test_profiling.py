"""`profile:` in the run config: torch.profiler traces of chosen steps, on chosen ranks, without
changing what is trained."""
import json
from pathlib import Path

import pytest

from snowtrain.config import ConfigError, validate_config
from snowtrain.testing import run_distributed
from snowtrain.train import train_phase
from train_helpers import losses, make_datasets, recipe


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_datasets(tmp_path_factory.mktemp("data"))


def _ranges(trace: Path) -> dict[str, int]:
    """How often each named step part appears among the trace's CPU ranges."""
    events = json.loads(trace.read_text())["traceEvents"]
    names = [e.get("name", "") for e in events if e.get("ph") == "X"]
    parts = ("forward", "backward", "grad_sync", "optimizer")
    out = {p: names.count(p) for p in parts}
    out["steps"] = len({n for n in names if n.startswith("ProfilerStep#")})
    return out


def _profiled(root: Path, data, **kw):
    cfg = recipe(root, data)
    cfg.profile.enabled = True
    for k, v in kw.items():
        setattr(cfg.profile, k, v)
    return cfg


def test_profiled_steps_are_traced_and_training_is_unchanged(tmp_path, data, capsys):
    train_phase(recipe(tmp_path / "plain", data), "p1")
    cfg = _profiled(tmp_path / "prof", data, start_step=5, steps=2)
    train_phase(cfg, "p1")
    assert losses(tmp_path / "prof/logs") == losses(tmp_path / "plain/logs")
    out = tmp_path / "prof/logs/profile"
    assert sorted(p.name for p in out.iterdir()) == ["p1-step5-rank0.json", "p1-step5-rank0.txt"]
    # steps 5 and 6 only (step 4 warmed the profiler up): 4 micro-batches of 2 per step
    assert _ranges(out / "p1-step5-rank0.json") == {"forward": 8, "backward": 8, "grad_sync": 2,
                                                    "optimizer": 2, "steps": 2}
    table = (out / "p1-step5-rank0.txt").read_text()
    assert "aten::mm" in table or "aten::addmm" in table
    assert "profile of p1 steps 5-6 on rank 0" in capsys.readouterr().out


def _worker(root, data, ranks, start, steps):
    cfg = _profiled(Path(root), data, start_step=start, steps=steps, ranks=ranks)
    cfg.profile.dir = str(Path(root) / "traces")
    return train_phase(cfg, "p1").step


def test_only_the_listed_ranks_record_and_a_cut_short_recording_is_kept(tmp_path, data):
    # DP=2; steps 11-15 asked, the phase ends at 12: the trace holds steps 11 and 12
    assert run_distributed(_worker, 2, str(tmp_path), data, [1], 11, 5, timeout_s=300) == [12, 12]
    traces = tmp_path / "traces"
    assert sorted(p.name for p in traces.iterdir()) == ["p1-step11-rank1.json", "p1-step11-rank1.txt"]
    got = _ranges(traces / "p1-step11-rank1.json")
    assert got["steps"] == 2 and got["optimizer"] == 2 and got["forward"] == 4  # 2 micro-batches a rank


def test_the_first_step_can_be_profiled_and_bad_values_are_config_errors(tmp_path, data):
    cfg = _profiled(tmp_path, data, start_step=1, steps=1, ranks=None)
    train_phase(cfg, "p1")
    assert _ranges(tmp_path / "logs/profile/p1-step1-rank0.json")["optimizer"] == 1
    # a dotted phase name, a run resumed inside the window (step 4 of 5-6: records 5-6 without
    # a warm-up step), and one resumed past it (records nothing)
    cfg = _profiled(tmp_path / "resumed", data, start_step=5, steps=2)
    cfg.phases[0].name = "p1.5"
    cfg.profile.enabled = False
    train_phase(cfg, "p1.5", max_steps=4)
    cfg.profile.enabled = True
    train_phase(cfg, "p1.5", max_steps=2)
    got = _ranges(tmp_path / "resumed/logs/profile/p1.5-step5-rank0.json")
    assert got["optimizer"] == 2 and got["steps"] == 2
    cfg.profile.start_step = 2
    train_phase(cfg, "p1.5")
    assert sorted(p.name for p in (tmp_path / "resumed/logs/profile").iterdir()) == \
        ["p1.5-step5-rank0.json", "p1.5-step5-rank0.txt"]
    bad = _profiled(tmp_path, data, ranks=[0, 3])
    with pytest.raises(ConfigError, match=r"profile.ranks=\[0, 3\] but the run has 1 rank"):
        train_phase(bad, "p1")
    for key, value in (("start_step", 0), ("steps", 0), ("ranks", [-1])):
        bad = _profiled(tmp_path, data)
        setattr(bad.profile, key, value)
        with pytest.raises(ConfigError, match="profile"):
            validate_config(bad)
