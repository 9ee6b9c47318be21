"""The `snowtrain` command line as users run it, in real processes: training under torchrun with
tensor parallelism, `plan`, configuration errors (exit 2), `plot`, and a SIGUSR1 stop (exit 3)
followed by a resume.

Every command costs seconds of imports (torch, megatron-core), so the independent ones (the
torchrun run, `plan`, the config errors) start in the background as the module begins and run
while the SIGUSR1 test does; the tests that check them wait for them."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from snowtrain.config import load_config, save_config
from train_helpers import events, losses, make_datasets, recipe

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXIT_STOPPED = 3


def _env() -> dict:
    """This environment without launcher variables (a lone process must not think it is one rank
    of a bigger job), one thread per process."""
    drop = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
            "MASTER_PORT", "TORCHELASTIC_RUN_ID"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return env


def _snowtrain(*args) -> list[str]:
    return [sys.executable, "-m", "snowtrain", *map(str, args)]


def _run(cmd, cwd, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _explain(p) -> str:
    return f"exit {p.returncode}\n--- stdout ---\n{p.stdout[-4000:]}\n--- stderr ---\n{p.stderr[-4000:]}"


def _tiny_yaml(root: Path, **kw) -> Path:
    """A tiny recipe (tests/train_helpers.py) saved as YAML, with its datasets beside it."""
    cfg = recipe(root, make_datasets(root / "data"), **kw)
    return save_config(cfg, root / "tiny.yaml")


# --------------------------------------------------------------------------- background commands

@dataclass
class Job:
    root: Path
    proc: subprocess.Popen

    def result(self, timeout: float = 240) -> subprocess.CompletedProcess:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode,
                                           (self.root / "stdout.txt").read_text(),
                                           (self.root / "stderr.txt").read_text())


def _start(root: Path, cmd, cwd=None) -> Job:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "stdout.txt", "w") as out, open(root / "stderr.txt", "w") as err:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd or root, env=_env(), stdout=out, stderr=err)
    return Job(root, proc)


def _torchrun_job(root: Path) -> Job:
    """8 steps of the tiny recipe under torchrun: 2 processes, tensor_parallel=2 from --set."""
    yaml_path = _tiny_yaml(root, steps=8, save_interval=4)
    return _start(root / "run", [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "snowtrain",
                                 "train", "--config", yaml_path, "--phase", "p1",
                                 "--set", "parallel.tensor_parallel=2"], cwd=root)


def _plan_job(root: Path) -> Job:
    return _start(root, _snowtrain("plan", "--config", ROOT / "configs/recipe/snowcoder.yaml",
                                   "--phase", "phase1", "--gpus", "64"), cwd=ROOT)


# `train` with a misspelt key; `config` (the same loader and validation, without the trainer's
# imports) with a value that fails validation. Override -> (command, what stderr must say).
CONFIG_ERRORS = {
    "model.hiden_size=128": (["train", "--phase", "p1"],
                             ["key 'model.hiden_size'", "unknown key 'hiden_size'", "did you mean 'hidden_size'"]),
    "parallel.tensor_parallel=3": (["config"],
                                   ["key 'parallel.tensor_parallel'", "does not divide", "fix:"]),
}


def _config_error_jobs(root: Path) -> dict[str, Job]:
    yaml_path = _tiny_yaml(root)
    return {ov: _start(root / f"case{i}", _snowtrain(cmd[0], "--config", yaml_path, *cmd[1:], "--set", ov),
                       cwd=root)
            for i, (ov, (cmd, _)) in enumerate(CONFIG_ERRORS.items())}


BACKGROUND = {"torchrun_run": _torchrun_job, "plan_run": _plan_job, "config_error_runs": _config_error_jobs}


@pytest.fixture(scope="module", autouse=True)
def _background(request, tmp_path_factory):
    """Starts the commands whose tests are selected, all at once; kills what is left at the end."""
    wanted = {name for item in request.session.items for name in item.fixturenames if name in BACKGROUND}
    jobs = {name: BACKGROUND[name](tmp_path_factory.mktemp(name)) for name in sorted(wanted)}
    try:
        yield jobs
    finally:
        procs = [j.proc for v in jobs.values() for j in (v.values() if isinstance(v, dict) else [v])]
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def torchrun_run(_background):
    job = _background["torchrun_run"]
    return job.root.parent, job.result()  # the run's folder (config, data, ckpt, logs), its output


@pytest.fixture
def plan_run(_background):
    return _background["plan_run"].result()


@pytest.fixture
def config_error_runs(_background):
    return {ov: (job.root.parent, job.result()) for ov, job in _background["config_error_runs"].items()}


# --------------------------------------------------------------------------- SIGUSR1 (foreground)

def _first_step_logged(metrics: Path) -> bool:
    if not metrics.exists():
        return False
    return any('"loss"' in line for line in metrics.read_text().splitlines())


def test_sigusr1_saves_exits_3_and_the_next_run_resumes(tmp_path):
    yaml_path = _tiny_yaml(tmp_path, steps=200, save_interval=100_000)
    metrics = tmp_path / "logs" / "metrics.jsonl"
    proc = subprocess.Popen(_snowtrain("train", "--config", yaml_path, "--phase", "p1"), cwd=tmp_path,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not _first_step_logged(metrics):
            assert proc.poll() is None, f"exited {proc.returncode} before its first step:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "no step logged within 180 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_STOPPED, f"exit {proc.returncode}\n{out}"
    stopped = max(losses(tmp_path / "logs"))
    assert 1 <= stopped < 200
    assert f"p1 stopped at step {stopped}/200" in out, out
    assert any(e.startswith("stop requested (SIGUSR1)") and f"at step {stopped}" in e
               for e in events(tmp_path / "logs"))
    folder = tmp_path / "ckpt" / "p1" / f"step_{stopped:08d}"
    assert (folder / "COMMITTED").is_file(), list((tmp_path / "ckpt" / "p1").iterdir())
    assert json.loads((folder / "extra.json").read_text())["step"] == stopped

    # the requeued job resumes from that checkpoint (two more steps, then it stops: exit 0)
    p = _run(_snowtrain("train", "--config", yaml_path, "--phase", "p1", "--max-steps", 2), cwd=tmp_path,
             timeout=180)
    assert p.returncode == 0, _explain(p)
    assert f"p1 max_steps at step {stopped + 2}/200" in p.stdout, _explain(p)
    resumed = [e for e in events(tmp_path / "logs") if e.startswith("resumed")]
    assert len(resumed) == 1 and f"at step {stopped}" in resumed[0], resumed
    assert str(folder) in resumed[0]
    assert {stopped + 1, stopped + 2} <= set(losses(tmp_path / "logs"))


# --------------------------------------------------------------------------- the background commands

def test_plan_prints_the_recipe_numbers(plan_run):
    p = plan_run
    assert p.returncode == 0, _explain(p)
    out = p.stdout
    assert "1.364 B" in out and "parameters" in out, out
    assert "13.02 GFLOP" in out, out
    assert "119,210" in out, out
    assert "TP=1, DP=64" in out, out


def test_config_errors_exit_2_and_name_the_key(config_error_runs):
    for ov, (root, p) in config_error_runs.items():
        assert p.returncode == 2, f"--set {ov}: {_explain(p)}"
        assert p.stderr.startswith("snowtrain: config error: "), p.stderr
        for needle in CONFIG_ERRORS[ov][1]:
            assert needle in p.stderr, f"--set {ov}: {needle!r} not in {p.stderr!r}"
        assert "Traceback" not in p.stderr, p.stderr
        assert not (root / "logs").exists()  # nothing was trained


def test_train_under_torchrun_with_tensor_parallel(torchrun_run):
    root, p = torchrun_run
    assert p.returncode == 0, _explain(p)
    assert "p1 complete at step 8/8" in p.stdout, _explain(p)
    # the resolved config, as run, is saved with the logs
    assert load_config(root / "logs/config.yaml").parallel.tensor_parallel == 2
    # checkpoints at the interval and at the phase end, committed, one shard file per rank
    ckpt = root / "ckpt"
    for step in (4, 8):
        folder = ckpt / "p1" / f"step_{step:08d}"
        marker = json.loads((folder / "COMMITTED").read_text())
        assert (marker["step"], marker["tp_size"], marker["dp_size"], marker["world_size"]) == (step, 2, 1, 2)
        assert marker["phase_end"] == (step == 8)
        assert sorted(f.name for f in folder.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        assert (folder / ".metadata").is_file() and (folder / "extra.json").is_file()
        assert json.loads((folder / "extra.json").read_text())["step"] == step
    assert json.loads((ckpt / "latest").read_text())["path"] == "p1/step_00000008"
    assert not list((ckpt / "p1").glob(".tmp_step_*"))
    # one metrics record per step, written by rank 0 only
    got = losses(root / "logs", "p1")
    assert sorted(got) == list(range(1, 9))
    assert all(math.isfinite(v) and 0 < v < 10 for v in got.values())
    assert any("p1 complete at step 8" in e for e in events(root / "logs"))


def test_plot_writes_a_png(torchrun_run, tmp_path):
    root, run = torchrun_run
    assert run.returncode == 0, _explain(run)
    out = tmp_path / "x.png"
    p = _run(_snowtrain("plot", root / "logs", "--out", out), cwd=tmp_path)
    assert p.returncode == 0, _explain(p)
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert out.stat().st_size > 1000
    # no metrics: exit 2 with a message, no file
    empty = tmp_path / "empty"
    empty.mkdir()
    p = _run(_snowtrain("plot", empty, "--out", tmp_path / "y.png"), cwd=tmp_path)
    assert p.returncode == 2 and "no metrics.jsonl" in p.stderr, _explain(p)
    assert not (tmp_path / "y.png").exists()
