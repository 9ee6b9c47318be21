"""launch/slurm/ against a real SLURM cluster on this machine (tests/slurm_cluster.py: munged,
slurmctld and two slurmd daemons for the fake nodes n1 and n2, from Debian's packages).

The real scripts are submitted with sbatch, with a tiny recipe, on CPU (--gres=none, gloo; the
2-node job keeps the scripts' default --gres=gpu:8, which the fake nodes' fake GPUs satisfy):
a phase completes and leaves checkpoints; submit_recipe.sh chains phase 2 after phase 1
(afterok) and phase 2 starts from phase 1's final weights; a job signalled mid-phase checkpoints,
requeues itself and resumes to the same final loss as the uninterrupted run; a job killed
without warning is resumed from its last good checkpoint on resubmission; a 2-node job's ranks
meet across the nodes; data_prep.sh starts MPI ranks across the allocation; synth.sh serves a
tiny model with `snowtrain serve` (in place of vLLM), runs data-prep phase 3 against it and stops
it, fails fast when the server cannot start, and stops it on the time-limit signal;
submit_recipe.sh --with-data --eval queues the data jobs, phases and evaluations with the right
dependencies (dry run, and on the cluster with stand-in commands that record when they ran);
eval.sh finds a phase's final checkpoint and evaluates a tiny trained one.

Skipped with the reason when SLURM is not installed (`bash scripts/slurm_cluster.sh install`,
which scripts/test.sh runs) or when not root.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_cluster import SlurmCluster, unavailable_reason
from snowtrain.config import save_config
from train_helpers import losses, make_datasets, recipe

# synth.sh's inputs: a phase-2-like seed folder and the phase-3 config writer (tests/test_phase3.py),
# a tiny exported model with its sentencepiece tokenizer (tests/test_serve.py). Fixtures, used
# through request.getfixturevalue so that the other tests run without them.
try:
    from test_phase3 import seeds_dir, write_config as write_phase3_config  # noqa: F401
    from test_serve import hf_dir, tokenizer_path  # noqa: F401
    SYNTH_SKIP = None
except (ImportError, pytest.skip.Exception) as e:     # test_serve skips itself without transformers
    SYNTH_SKIP = f"synth.sh test inputs unavailable: {e}"

ROOT = Path(__file__).resolve().parents[1]
SLURM_DIR = ROOT / "launch" / "slurm"
# The environment running the tests (not resolved: a venv's python is a link to the system's).
VENV = Path(sys.executable).parent.parent
CPU = ["--gres=none", "--cpus-per-task=1"]   # instead of the defaults' 8 GPUs and 8 CPUs per task
STEPS = 150         # phase 1 of the signal/kill runs: long enough to be interrupted mid-phase
JOB_TIMEOUT = 240   # per job: generous, the machine may be shared
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}

REASON = unavailable_reason()
pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def cluster():
    import tempfile
    if REASON is not None:
        pytest.skip(f"SLURM tests skipped: {REASON}")
    # Not under pytest's tmp folder: munged (user munge) must reach its socket folder.
    root = tempfile.mkdtemp(prefix="snowtrain-slurm-")
    c = SlurmCluster(root, fake_gpus=8)    # like an H100 node: gpu:8 (links to /dev/null)
    c.start()
    try:
        yield c
    finally:
        c.stop()
        if not os.environ.get("SNOWTRAIN_KEEP_SLURM_DIR"):    # the daemons' logs, for debugging
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_datasets(tmp_path_factory.mktemp("slurm-data"), n=2)


def write_recipe(root: Path, data, steps: int = STEPS, phases: int = 2, p2_steps: int = 6) -> Path:
    cfg = recipe(root, data, steps=steps, save_interval=10, phases=phases)
    cfg.logging.log_interval = 25
    if phases > 1:
        cfg.phases[1].tokens = p2_steps * cfg.phases[1].global_batch_size * cfg.phases[1].seq_len
    return save_config(cfg, root / "recipe.yaml")


def clean_env(base: dict | None = None) -> dict:
    """The environment without settings of the caller's own runs (SNOWTRAIN_*, rendezvous)."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith("SNOWTRAIN_") and k not in ("MASTER_ADDR", "MASTER_PORT", "RANK",
                                                            "WORLD_SIZE", "LOCAL_RANK")}
    env["SNOWTRAIN_VENV"] = str(VENV)
    return env


def job_env(cluster, config: Path, **extra) -> dict:
    env = cluster.env(clean_env())
    env["SNOWTRAIN_CONFIG"] = str(config)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def sbatch(cluster, cwd: Path, env: dict, *args: str) -> str:
    r = cluster.run("sbatch", "--parsable", *args, cwd=cwd, env=env)
    return r.stdout.strip().split(";")[0]


def wait_job(cluster, job_id: str, timeout: float = JOB_TIMEOUT) -> dict:
    """Polls until the job ends, through requeues (a requeued job starts again after about 10 s,
    AuthInfo=cred_expire=10; `scontrol update StartTime=now` can start it too early, before the
    previous run's credential expires, and fail it). Returns its last `scontrol show job` record."""
    end, last, done_since = time.time() + timeout, {}, None
    while time.time() < end:
        info = cluster.job_state(job_id)
        if not info:            # purged (MinJobAge) after it ended
            if last.get("JobState") in TERMINAL:
                return last
            raise AssertionError(f"job {job_id} vanished; last seen: {last}")
        last = info
        state = info.get("JobState")
        if state in TERMINAL:
            done_since = done_since or time.time()
            if time.time() - done_since > 1.0:   # settled, not a step of a requeue
                return info
        else:
            done_since = None
        time.sleep(0.5)
    cluster.run("scancel", job_id, check=False)
    raise AssertionError(f"job {job_id} did not finish within {timeout:.0f} s; last: {last}")


def wait_for(pred, timeout: float, what: str, interval: float = 0.2):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def log_dir(cwd: Path, job_name: str, job_id: str) -> Path:
    return cwd / "logs" / "slurm" / f"{job_name}-{job_id}"


def run_log(cwd: Path, job_name: str, job_id: str, restart: int = 0) -> str:
    p = log_dir(cwd, job_name, job_id) / f"run-{restart}.log"
    return p.read_text() if p.exists() else ""


def steps_logged(metrics_dir: Path) -> int:
    p = metrics_dir / "metrics.jsonl"
    if not p.exists():
        return 0
    n = 0
    for line in p.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:      # a line being written
            continue
        n = max(n, r.get("step", 0) if "loss" in r else 0)
    return n


def latest_step(ckpt: Path) -> int | None:
    p = ckpt / "latest"
    return json.loads(p.read_text())["step"] if p.exists() else None


def final_loss(metrics_dir: Path, phase: str = "p1") -> tuple[int, float]:
    ls = losses(metrics_dir, phase)
    step = max(ls)
    return step, ls[step]


def show(cwd: Path, job_name: str, job_id: str) -> str:
    """The job's logs, for assertion messages."""
    d = log_dir(cwd, job_name, job_id)
    parts = [f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(d.glob("run-*.log"))] if d.exists() else []
    return "\n".join(parts) or f"(no logs in {d})"


# ----------------------------------------------------------------------------- three scenarios at once
# The recipe chain, the signalled run and the killed run go through the cluster together (each
# job takes a whole node, so two run at a time and SLURM queues the rest), which keeps this file
# within a few minutes on 2 cores. Each scenario runs in a thread; its test asserts on what it saw.

def scenario_recipe(cluster, data, root: Path) -> dict:
    """submit_recipe.sh: phase 1 (2 ranks), then phase 2 after it (afterok); both to the end.
    Phase 1 is also the uninterrupted reference of the signalled run."""
    config = write_recipe(root, data)
    env = job_env(cluster, config)
    r = cluster.run("bash", str(SLURM_DIR / "submit_recipe.sh"), *CPU, "--ntasks-per-node=2",
                    cwd=root, env=env, timeout=120)
    jobs = dict(line.split() for line in r.stdout.splitlines() if line.strip())
    infos = {phase: wait_job(cluster, jid) for phase, jid in jobs.items()}
    return dict(root=root, config=config, jobs=jobs, infos=infos, stdout=r.stdout)


def scenario_signal(cluster, data, root: Path) -> dict:
    """phase1.sh (2 ranks) gets SLURM's warning mid-phase, to the batch shell only (as
    --signal=B:USR1@grace sends it), once step 15 is logged (the first checkpoint is step 10)."""
    config = write_recipe(root, data)
    env = job_env(cluster, config)
    jid = sbatch(cluster, root, env, *CPU, "--ntasks-per-node=2", "--job-name=snowtrain-p1",
                 str(SLURM_DIR / "phase1.sh"))
    wait_for(lambda: steps_logged(root / "logs") >= 15 or cluster.job_state(jid).get("JobState") in TERMINAL,
             JOB_TIMEOUT, "step 15 of the signalled run")
    cluster.run("scancel", "--signal=USR1", "--batch", jid)
    return dict(root=root, jid=jid, info=wait_job(cluster, jid))


def scenario_kill(cluster, data, root: Path) -> dict:
    """phase1.sh (1 rank) is killed without warning (SIGKILL to every process of the job, batch
    shell included) once a checkpoint of step 20 or later exists, then resubmitted."""
    config = write_recipe(root, data)
    env = job_env(cluster, config)
    ckpt = root / "ckpt"
    args = [*CPU, "--ntasks-per-node=1", "--job-name=snowtrain-p1", str(SLURM_DIR / "phase1.sh")]
    jid = sbatch(cluster, root, env, *args)
    wait_for(lambda: (latest_step(ckpt) or 0) >= 20 or cluster.job_state(jid).get("JobState") in TERMINAL,
             JOB_TIMEOUT, "the step-20 checkpoint")
    cluster.run("scancel", "--signal=KILL", "--full", jid)
    killed = wait_job(cluster, jid)
    good = latest_step(ckpt)
    jid2 = sbatch(cluster, root, env, *args)
    return dict(root=root, ckpt=ckpt, jid=jid, killed=killed, good=good, jid2=jid2, info=wait_job(cluster, jid2))


@pytest.fixture(scope="module")
def scenarios(cluster, data, tmp_path_factory):
    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="slurm-scenario")
    futures = {name: pool.submit(fn, cluster, data, tmp_path_factory.mktemp(name))
               for name, fn in (("recipe", scenario_recipe), ("signal", scenario_signal),
                                ("kill", scenario_kill))}
    yield futures
    pool.shutdown(wait=True)


def test_submit_recipe_prints_one_job_per_phase_chained_by_afterok(scenarios):
    run = scenarios["recipe"].result()
    jobs = run["jobs"]
    assert list(jobs) == ["p1", "p2"], run["stdout"]
    assert all(re.fullmatch(r"\d+", j) for j in jobs.values())
    for phase, info in run["infos"].items():
        assert info["JobState"] == "COMPLETED", (phase, info, show(run["root"], f"snowtrain-{phase}", jobs[phase]))


def test_phase1_completes_and_leaves_checkpoints_and_job_logs(scenarios):
    run = scenarios["recipe"].result()
    root, jid = run["root"], run["jobs"]["p1"]
    ckpt = root / "ckpt" / "p1"
    steps = sorted(int(p.name.split("_")[1]) for p in ckpt.glob("step_*"))
    assert steps and steps[-1] == STEPS, steps
    assert (ckpt / f"step_{STEPS:08d}" / "COMMITTED").exists()
    assert final_loss(root / "logs")[0] == STEPS

    d = log_dir(root, "snowtrain-p1", jid)
    log = (d / "run-0.log").read_text()
    assert "training exited 0" in log, show(root, "snowtrain-p1", jid)
    assert "rank 0/2" in log and "rank 1/2" in log
    assert re.search(r"rendezvous 127\.0\.0\.1:\d+, 2 rank\(s\), 0 GPU\(s\) per node", log)
    job = (d / "job-0.txt").read_text()
    assert f"master: 127.0.0.1:{20000 + int(jid) % 20000}" in job, job
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in job and "NCCL_DEBUG=WARN" in job
    resolved = (d / "config-0.yaml").read_text()
    assert "- name: p1" in resolved and "global_batch_size: 8" in resolved
    version = (d / "version-0.txt").read_text()
    assert re.search(r"^(git_commit: [0-9a-f]{40}|git_commit: unknown.*)$", version, re.M), version
    assert re.search(r"^snowtrain: \S+", version, re.M), version
    # submit_recipe.sh puts sbatch's own output beside the job folders.
    assert (root / "logs" / "slurm" / f"snowtrain-p1-{jid}.out").exists()


def test_phase2_chained_by_afterok_starts_from_phase1_final_weights(scenarios):
    run = scenarios["recipe"].result()
    root, jid = run["root"], run["jobs"]["p2"]
    log = run_log(root, "snowtrain-p2", jid)
    final = root / "ckpt" / "p1" / f"step_{STEPS:08d}"
    assert f"p2 starts from the weights of {final}" in log, show(root, "snowtrain-p2", jid)
    assert "p2 complete at step 6" in log
    p1, p2 = run["infos"]["p1"], run["infos"]["p2"]
    assert p2["StartTime"] >= p1["EndTime"], (p1["EndTime"], p2["StartTime"])


def test_signal_checkpoints_requeues_and_resumes_to_the_same_loss(scenarios):
    run = scenarios["signal"].result()
    root, jid, info = run["root"], run["jid"], run["info"]
    first, second = run_log(root, "snowtrain-p1", jid, 0), run_log(root, "snowtrain-p1", jid, 1)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, show(root, "snowtrain-p1", jid))
    m = re.search(r"stop requested \(SIGUSR1\): checkpoint saved at step (\d+)", first)
    assert m, first[-3000:]
    stopped = int(m.group(1))
    assert 15 <= stopped < STEPS
    assert "received SIGUSR1" in first and "requeueing job" in first
    # The ranks agreed on the step (an all-reduce); rank 0 reports it.
    assert first.count(f"snowtrain: p1 stopped at step {stopped}/") == 1, first[-3000:]
    assert re.search(rf"resumed p1 from \S+/p1/step_{stopped:08d} at step {stopped} \(SLURM_RESTART_COUNT=1\)",
                     second), second[-3000:]
    assert "training exited 0" in second
    # The same run as the uninterrupted one.
    ref = scenarios["recipe"].result()
    ref_step, ref_loss = final_loss(ref["root"] / "logs")
    step, loss = final_loss(root / "logs")
    assert step == ref_step == STEPS
    assert abs(loss - ref_loss) <= 1e-6, (loss, ref_loss)
    # sbatch's own output file (--open-mode=append) holds both runs.
    out = (root / f"slurm-snowtrain-p1-{jid}.out").read_text()
    assert "restart 0" in out and "restart 1" in out


def test_killed_job_resumes_from_last_good_checkpoint_on_resubmission(scenarios):
    run = scenarios["kill"].result()
    root, killed, good, info = run["root"], run["killed"], run["good"], run["info"]
    assert killed["JobState"] in ("FAILED", "CANCELLED") and killed["Restarts"] == "0", killed
    assert good is not None and 20 <= good < STEPS, (good, show(root, "snowtrain-p1", run["jid"]))
    log = run_log(root, "snowtrain-p1", run["jid2"])
    assert info["JobState"] == "COMPLETED", (info, show(root, "snowtrain-p1", run["jid2"]))
    assert re.search(rf"resumed p1 from {re.escape(str(run['ckpt']))}/p1/step_{good:08d} at step {good} "
                     r"\(SLURM_RESTART_COUNT=0\)", log), log[-3000:]
    assert final_loss(root / "logs")[0] == STEPS


def test_config_error_exits_2_without_requeue(cluster, data, tmp_path):
    config = write_recipe(tmp_path, data, steps=8)
    env = job_env(cluster, config)
    jid = sbatch(cluster, tmp_path, env, *CPU, "--ntasks-per-node=1", "--job-name=bad",
                 str(SLURM_DIR / "phase1.sh"), "--set", "optim.lrr=1")
    info = wait_job(cluster, jid)
    assert info["JobState"] == "FAILED" and info["ExitCode"].startswith("2:") and info["Restarts"] == "0", info
    log = run_log(tmp_path, "bad", jid)
    assert "lrr" in log and "does not validate" in log, log


# Hangs rank 1 inside the 15th training step of the job's first run (SLURM_RESTART_COUNT unset).
HANG_HOOK = """
import os, time
if not os.environ.get("SLURM_RESTART_COUNT") and os.environ.get("SLURM_PROCID") == "1":
    import snowtrain.train as t
    calls, real = [0], t.train_step

    def hanging_step(*a, **k):
        calls[0] += 1
        if calls[0] == 15:
            time.sleep(600)
        return real(*a, **k)
    t.train_step = hanging_step
"""


def test_hung_rank_exits_4_and_the_job_requeues_and_resumes(cluster, data, tmp_path):
    config = write_recipe(tmp_path, data, steps=30, phases=1)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HANG_HOOK)
    env = job_env(cluster, config, SNOWTRAIN_SET="training.hang_timeout_s=5")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    jid = sbatch(cluster, tmp_path, env, *CPU, "--ntasks-per-node=2", "--job-name=hang",
                 str(SLURM_DIR / "phase1.sh"))
    info = wait_job(cluster, jid)
    first, second = run_log(tmp_path, "hang", jid, 0), run_log(tmp_path, "hang", jid, 1)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, show(tmp_path, "hang", jid))
    # rank 1 is stuck in its step, rank 0 waits for it in a collective: the watchdogs end both
    assert "rank 1: hung: nothing finished for" in first and "hanging_step" in first, first[-3000:]
    assert re.search(r"training exited \d+", first) and "hang 1 of at most 3" in first
    assert "requeueing job" in first
    assert re.search(r"resumed p1 from \S+/p1/step_00000010 at step 10 \(SLURM_RESTART_COUNT=1\)", second), \
        second[-3000:]
    assert final_loss(tmp_path / "logs")[0] == 30
    d = log_dir(tmp_path, "hang", jid)
    assert (d / "hangs").read_text().strip() == "1" and "hung after" in (d / "hung-0").read_text()


# ----------------------------------------------------------------------------- two nodes

def test_two_node_job_ranks_meet_across_nodes(cluster, data, tmp_path):
    config = write_recipe(tmp_path, data, steps=8, phases=1)
    env = job_env(cluster, config)
    # The scripts' own --gres=gpu:8 (fake GPUs: torch sees no CUDA and uses gloo).
    jid = sbatch(cluster, tmp_path, env, "--cpus-per-task=1", "--nodes=2", "--ntasks-per-node=1",
                 "--job-name=two-nodes", str(SLURM_DIR / "phase1.sh"))
    info = wait_job(cluster, jid)
    log = run_log(tmp_path, "two-nodes", jid)
    assert info["JobState"] == "COMPLETED", (info, log[-3000:])
    assert info["NodeList"] == "n[1-2]"
    assert re.search(r"rank 0/2 on n1 ", log) and re.search(r"rank 1/2 on n2 ", log), log[-3000:]
    assert "2 rank(s), 0 GPU(s) per node" in log and "p1 complete at step 8" in log   # no nvidia-smi
    assert "gpu:8" in info.get("TresPerNode", "") + info.get("TRES", ""), info
    assert "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7" in (log_dir(tmp_path, "two-nodes", jid) / "job-0.txt").read_text()
    assert final_loss(tmp_path / "logs")[0] == 8


# ----------------------------------------------------------------------------- data prep

MPI_PROBE = """\
import json, os, sys
from mpi4py import MPI
c = MPI.COMM_WORLD
out = sys.argv[1]
with open(os.path.join(out, f"rank{c.Get_rank()}.json"), "w") as f:
    json.dump({"rank": c.Get_rank(), "size": c.Get_size(), "node": os.environ.get("SLURMD_NODENAME"),
               "args": sys.argv[2:], "sum": c.allreduce(c.Get_rank() + 1)}, f)
"""


def test_data_prep_runs_one_mpi_rank_per_task_across_nodes(cluster, tmp_path):
    pytest.importorskip("mpi4py")
    probe = tmp_path / "probe.py"
    probe.write_text(MPI_PROBE)
    (tmp_path / "out").mkdir()
    env = cluster.env(clean_env())
    env["SNOWTRAIN_DATA_PREP_CMD"] = f"python {probe}"
    jid = sbatch(cluster, tmp_path, env, "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
                 "--job-name=dp", str(SLURM_DIR / "data_prep.sh"), str(tmp_path / "out"), "phase1", "--x")
    info = wait_job(cluster, jid, timeout=120)
    log = run_log(tmp_path, "dp", jid)
    assert info["JobState"] == "COMPLETED", (info, log)
    ranks = [json.loads((tmp_path / "out" / f"rank{i}.json").read_text()) for i in range(2)]
    assert [r["size"] for r in ranks] == [2, 2] and [r["sum"] for r in ranks] == [3, 3]
    assert {r["node"] for r in ranks} == {"n1", "n2"}
    assert ranks[0]["args"] == ["phase1", "--x"]
    assert "data prep exited 0 with 2 rank(s)" in log


def _data_prep_phase1_help() -> str | None:
    try:
        r = subprocess.run([str(VENV / "bin" / "data-prep"), "phase1", "--help"], capture_output=True,
                           text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def test_data_prep_phase1_two_ranks_match_one_rank(cluster, tmp_path):
    pytest.importorskip("mpi4py")
    if _data_prep_phase1_help() is None:
        pytest.skip("`data-prep phase1 --help` fails: the phase-1 data pipeline is not in this "
                    "checkout (data_prep.sh itself is covered by the MPI probe test)")
    try:
        from phase1_corpus import make_corpus, write_config
    except ImportError as e:
        pytest.skip(f"the phase-1 test corpus (tests/phase1_corpus.py) is not available: {e}")
    make_corpus(tmp_path)
    outputs = {}
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        config = write_config(tmp_path, out)
        env = cluster.env(clean_env())
        env["OMP_NUM_THREADS"] = "1"
        jid = sbatch(cluster, tmp_path, env, f"--ntasks-per-node={n}", "--nodes=1", "--cpus-per-task=1",
                     f"--job-name=dp{n}", str(SLURM_DIR / "data_prep.sh"),
                     "phase1", "--config", str(config), "--no-progress")
        info = wait_job(cluster, jid, timeout=180)
        log = run_log(tmp_path, f"dp{n}", jid)
        assert info["JobState"] == "COMPLETED", (info, log[-3000:])
        assert f"on {n} rank(s)" in log and f"data prep exited 0 with {n} rank(s)" in log, log[-3000:]
        outputs[n] = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in (".bin", ".idx")}
    assert outputs[1] and outputs[1] == outputs[2]


# ----------------------------------------------------------------------------- phase 3 in one job

SYNTH_SEEDS = 8


def _alive_pid(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _processes_with(text: str) -> list[str]:
    """Command lines of the running processes that contain `text`."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{d.name}: {cmd}")
    return found


@pytest.fixture(scope="module")
def synth_runs(cluster, request, tmp_path_factory):
    """synth.sh three times at once: with `snowtrain serve` on a tiny model (it must complete);
    with a model folder that does not exist (the server exits at once: the job must fail fast);
    and signalled (SIGUSR1, as before a time limit) while its server loads, requeueing disabled."""
    if SYNTH_SKIP:
        pytest.skip(SYNTH_SKIP)
    from concurrent.futures import ThreadPoolExecutor
    seeds, hf = request.getfixturevalue("seeds_dir"), request.getfixturevalue("hf_dir")

    def watch(name: str, run: dict) -> dict:
        if name == "stop":
            wait_for(lambda: "server pid" in run_log(run["root"], "synth-stop", run["jid"])
                     or cluster.job_state(run["jid"]).get("JobState") in TERMINAL, 120, "the server's start")
            cluster.run("scancel", "--signal=USR1", "--batch", run["jid"])
        info = wait_job(cluster, run["jid"], timeout=180)
        return dict(info=info, elapsed=time.time() - run["start"],
                    log=run_log(run["root"], f"synth-{name}", run["jid"]))

    pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="synth")
    request.addfinalizer(lambda: pool.shutdown(wait=True))
    runs = {}
    for name in ("ok", "bad", "stop"):
        root = tmp_path_factory.mktemp(f"synth-{name}")
        model = root / "no-such-model" if name == "bad" else hf
        # The tiny model's context is 96 tokens: short seeds and answers.
        config = write_phase3_config(
            root / "phase3.yaml", seeds, root / "out", "${SNOWTRAIN_SYNTH_URL:-http://127.0.0.1:9/v1}",
            num_seeds=SYNTH_SEEDS, unit_size=4, max_seed_chars=48,
            endpoint={"api": "completions", "model": "tiny", "concurrency": 2},
            generation={"max_tokens": 8}, answers={"finish_reasons": ["stop", "length"]},
            filters={"basic": False, "python_syntax": False, "encoded_data": False})
        env = cluster.env(clean_env())
        env.update(OMP_NUM_THREADS="1", SNOWTRAIN_SYNTH_WAIT_S="600" if name == "bad" else "120",
                   SNOWTRAIN_REQUEUE="0",
                   SNOWTRAIN_SYNTH_SERVER=f"{VENV / 'bin' / 'snowtrain'} serve {model} --port $PORT "
                                          "--name tiny --threads 1")
        jid = sbatch(cluster, root, env, *CPU, "--ntasks-per-node=2", f"--job-name=synth-{name}",
                     str(SLURM_DIR / "synth.sh"), "--config", str(config), "--no-progress")
        runs[name] = dict(root=root, jid=jid, model=model, start=time.time())
        # Each job watched from its own thread: one that ends is purged a few seconds later.
        runs[name]["future"] = pool.submit(watch, name, runs[name])
    for name, run in runs.items():
        run.update(run.pop("future").result())
    return runs


def test_synth_serves_the_model_runs_phase3_and_stops_the_server(synth_runs):
    run = synth_runs["ok"]
    root, jid, log = run["root"], run["jid"], run["log"]
    assert run["info"]["JobState"] == "COMPLETED" and run["info"]["ExitCode"] == "0:0", (run["info"], log[-4000:])
    m = re.search(r"server ready after \d+s: (http://127\.0\.0\.1:(\d+)/v1)", log)
    assert m, log[-4000:]
    url, port = m.group(1), m.group(2)
    assert "data prep exited 0 with 2 rank(s)" in log
    # The config's ${SNOWTRAIN_SYNTH_URL:-...} was this job's server; every seed is accounted for.
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    t = manifest["totals"]
    assert manifest["endpoint"]["base_url"] == url
    assert t["requested"] == SYNTH_SEEDS and t["kept"] + t["dropped"] == SYNTH_SEEDS, t
    assert t["failed_requests"] == 0 and t["kept"] >= 1, t
    # The server answered those requests, and was stopped after data prep, by SIGTERM.
    server_log = (log_dir(root, "synth-ok", jid) / "server-0.log").read_text()
    assert f"serving {run['model']} as tiny on http://127.0.0.1:{port}" in server_log, server_log
    assert server_log.count("POST /v1/completions 200") == t["requests"], server_log
    assert "snowtrain serve: stopped" in server_log, server_log
    assert log.index("data prep exited 0") < log.index("stopping the server") < log.index("server stopped (exit 0)")
    pid = int(re.search(r"server pid (\d+)", log).group(1))
    assert not _alive_pid(pid)
    assert not _processes_with(str(run["model"])), _processes_with(str(run["model"]))


def test_synth_fails_fast_with_the_server_log_when_the_server_cannot_start(synth_runs):
    run = synth_runs["bad"]
    root, jid, log = run["root"], run["jid"], run["log"]
    assert run["info"]["JobState"] == "FAILED" and run["info"]["ExitCode"] == "1:0", (run["info"], log[-4000:])
    assert run["info"]["Restarts"] == "0"
    assert run["elapsed"] < 120, run["elapsed"]      # SNOWTRAIN_SYNTH_WAIT_S was 600
    # The reason and the server log's tail, in the job's output file.
    out = (root / f"slurm-synth-bad-{jid}.out").read_text()
    assert re.search(r"the server exited \(2\) before it was ready", out), out[-4000:]
    assert re.search(r"server\| snowtrain serve: .*no-such-model.* is neither a Hugging Face folder", out), out[-4000:]
    assert "mpiexec" not in out and not (root / "out").exists()     # data prep never started
    assert not _processes_with(str(run["model"]))


def test_synth_stops_its_server_on_the_time_limit_signal(synth_runs):
    run = synth_runs["stop"]
    log = run["log"]
    # Signalled while the server loads (or, on a slow machine, once data prep runs): either way
    # the job stops, would requeue (here SNOWTRAIN_REQUEUE=0: exit 3), and stops its server.
    assert run["info"]["ExitCode"] == "3:0" and run["info"]["Restarts"] == "0", (run["info"], log[-4000:])
    assert "received SIGUSR1" in log and "SNOWTRAIN_REQUEUE=0: not requeueing" in log, log[-4000:]
    assert re.search(r"stop requested \(SIGUSR1\) while the server was loading|stopped on SIGUSR1", log)
    assert "server stopped" in log, log[-4000:]
    server_log = (log_dir(run["root"], "synth-stop", run["jid"]) / "server-0.log").read_text()
    assert "snowtrain serve: stopped" in server_log or "serving" not in server_log, server_log
    assert not _alive_pid(int(re.search(r"server pid (\d+)", log).group(1)))


# ----------------------------------------------------------------------------- no cluster needed

def test_scripts_parse_and_refuse_to_run_outside_slurm():
    for s in sorted(SLURM_DIR.glob("*.sh")):
        subprocess.run(["bash", "-n", str(s)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = subprocess.run(["bash", str(SLURM_DIR / "phase1.sh")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "sbatch" in r.stderr


def test_submit_recipe_dry_run_builds_the_chain(tmp_path):
    config = tmp_path / "r.yaml"
    save_config(recipe(tmp_path, [str(tmp_path / "ds")], phases=3), config)
    env = clean_env()
    env.update(SNOWTRAIN_GPUS_PER_NODE="0", SNOWTRAIN_GRACE="300")
    r = subprocess.run(["bash", str(SLURM_DIR / "submit_recipe.sh"), "--config", str(config), "--dry-run",
                        "--from", "p2", "--after", "77", "--nodes=2", "--", "--set", "optim.lr=1e-3"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    cmds = [line for line in r.stdout.splitlines() if "sbatch" in line]
    assert len(cmds) == 2 and "p1" not in r.stdout.replace(str(tmp_path), "")
    assert cmds[0].startswith("SNOWTRAIN_PHASE=p2 ") and cmds[1].startswith("SNOWTRAIN_PHASE=p3 ")
    assert "--dependency=afterok:77" in cmds[0] and "--dependency=afterok:<p2>" in cmds[1]
    for c in cmds:
        assert "--gres=none" in c and "--signal=B:USR1@300" in c and "--kill-on-invalid-dep=yes" in c
        assert c.endswith("--set optim.lr=1e-3") and "--nodes=2" in c
    assert "phase2.sh" in cmds[0] and "phase3.sh" in cmds[1]
    assert not (tmp_path / "logs").exists()      # a dry run creates nothing
    bad = subprocess.run(["bash", str(SLURM_DIR / "submit_recipe.sh"), "--config", str(config), "--dry-run",
                          "--set", "x"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode != 0


# ----------------------------------------------------------------------------- the whole pipeline in one command

def dry_run_jobs(stdout: str) -> dict:
    """submit_recipe.sh --dry-run's output -> {name: job}, in submission order; a job has its
    afterok dependencies (names), sbatch flags, script name, arguments and SNOWTRAIN_PHASE."""
    jobs, lines = {}, stdout.splitlines()
    for cmd, printed in zip(lines, lines[1:]):
        if "sbatch " not in cmd:
            continue
        name, placeholder = printed.split()
        assert placeholder == f"<{name}>", printed
        words = cmd.split()
        phase = words.pop(0).split("=", 1)[1] if words[0].startswith("SNOWTRAIN_PHASE=") else None
        assert words[0] == "sbatch", cmd
        k = next(i for i, w in enumerate(words) if w.endswith(".sh"))
        flags = words[1:k]
        deps = [d.strip("<>") for f in flags if f.startswith("--dependency=afterok:")
                for d in f.split(":", 1)[1].split(":")]
        jobs[name] = dict(deps=deps, flags=flags, script=Path(words[k]).name, args=words[k + 1:], phase=phase)
    return jobs


def run_dry(tmp_path: Path, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    config = tmp_path / "r.yaml"
    if not config.exists():
        save_config(recipe(tmp_path, [str(tmp_path / "ds")], phases=3), config)
    env = clean_env()
    env.update(env_extra or {})
    return subprocess.run(["bash", str(SLURM_DIR / "submit_recipe.sh"), "--config", str(config), "--dry-run", *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_submit_recipe_with_data_dry_run_graph(tmp_path):
    configs = tmp_path / "dp"
    configs.mkdir()
    for n in (1, 2, 3):
        (configs / f"phase{n}.yaml").write_text("{}\n")
    r = run_dry(tmp_path, "--with-data", "--data-configs", str(configs), "--after", "77",
                "--all-flags", "--account=acc --qos=q", "--data-flags", "--ntasks-per-node=16 --time=4:00:00",
                "--data3-flags=--gres=gpu:4 --time=8:00:00", "--nodes=8", "--", "--set", "optim.lr=1e-3",
                env_extra=dict(SNOWTRAIN_GPUS_PER_NODE="8", SNOWTRAIN_GRACE="300"))
    assert r.returncode == 0, r.stderr
    jobs = dry_run_jobs(r.stdout)
    assert list(jobs) == ["data-phase1", "data-phase2", "data-phase3", "p1", "p2", "p3"], r.stdout
    # data1 -> data2 -> data3; phase N after phase N-1 and data N (--after: the first of each chain).
    assert {n: j["deps"] for n, j in jobs.items()} == {
        "data-phase1": ["77"], "data-phase2": ["data-phase1"], "data-phase3": ["data-phase2"],
        "p1": ["77", "data-phase1"], "p2": ["p1", "data-phase2"], "p3": ["p2", "data-phase3"]}
    d = str(configs.resolve())
    assert jobs["data-phase1"]["script"] == jobs["data-phase2"]["script"] == "data_prep.sh"
    assert jobs["data-phase1"]["args"] == ["phase1", "--config", f"{d}/phase1.yaml"]
    assert jobs["data-phase2"]["args"] == ["phase2", "--config", f"{d}/phase2.yaml"]
    assert jobs["data-phase3"]["script"] == "synth.sh" and jobs["data-phase3"]["args"] == ["--config", f"{d}/phase3.yaml"]
    for n, j in jobs.items():
        f = j["flags"]
        assert f"--job-name=snowtrain-{n}" in f and "--kill-on-invalid-dep=yes" in f and "--parsable" in f
        assert "--account=acc" in f and "--qos=q" in f
        if n.startswith("data-"):
            # The training flags stay with the training jobs; the data flags come last and win.
            assert j["phase"] is None and not {"--nodes=8", "--gres=gpu:8", "--signal=B:USR1@300"} & set(f), f
            assert f.index("--account=acc") < f.index("--ntasks-per-node=16")
            assert f[-1] == ("--time=8:00:00" if n == "data-phase3" else "--time=4:00:00"), f
            assert ("--gres=gpu:4" in f) == (n == "data-phase3")
        else:
            assert j["phase"] == n and j["script"] == f"phase{n[1]}.sh" and j["args"] == ["--set", "optim.lr=1e-3"]
            assert {"--nodes=8", "--gres=gpu:8", "--ntasks-per-node=8", "--signal=B:USR1@300"} <= set(f), f
            assert "--ntasks-per-node=16" not in f and "--time=4:00:00" not in f

    # --from p2: data 2 and 3 and the phases from p2; --only p3: data 3 and p3.
    r = run_dry(tmp_path, "--with-data", "--data-configs", str(configs), "--from", "p2")
    assert r.returncode == 0, r.stderr
    assert {n: j["deps"] for n, j in dry_run_jobs(r.stdout).items()} == {
        "data-phase2": [], "data-phase3": ["data-phase2"], "p2": ["data-phase2"], "p3": ["p2", "data-phase3"]}
    r = run_dry(tmp_path, "--with-data", "--data-configs", str(configs), "--only", "p3", "--after", "5")
    assert r.returncode == 0, r.stderr
    assert {n: j["deps"] for n, j in dry_run_jobs(r.stdout).items()} == {"data-phase3": ["5"], "p3": ["5", "data-phase3"]}

    # The default configs are the repository's; SNOWTRAIN_GPUS_PER_NODE=0 puts --gres=none on every job.
    r = run_dry(tmp_path, "--with-data", "--only", "p1", env_extra=dict(SNOWTRAIN_GPUS_PER_NODE="0"))
    jobs = dry_run_jobs(r.stdout)
    assert jobs["data-phase1"]["args"][-1] == str(ROOT / "configs" / "data_prep" / "phase1.yaml")
    assert all("--gres=none" in j["flags"] for j in jobs.values())
    # A missing data config or an unknown phase: nothing submitted, exit 2.
    (configs / "phase3.yaml").unlink()
    for args in (["--with-data", "--data-configs", str(configs)], ["--only", "p9"], ["--from", "p9"]):
        bad = run_dry(tmp_path, *args)
        assert bad.returncode == 2 and "sbatch" not in bad.stdout, (args, bad.stdout, bad.stderr)
    assert "phase3.yaml not found" in run_dry(tmp_path, "--with-data", "--data-configs", str(configs)).stderr
    assert run_dry(tmp_path, "--with-data", "--data-configs", str(configs), "--only", "p2").returncode == 0
    assert not (tmp_path / "logs").exists()


def test_submit_recipe_eval_dry_run_graph(tmp_path):
    r = run_dry(tmp_path, "--eval", "--with-data", "--eval-flags", "--time=2:00:00 --cpus-per-task=4", "--nodes=8",
                "--set", "checkpoint.dir=/x", "--", "--max-steps", "9")
    assert r.returncode == 0, r.stderr
    jobs = dry_run_jobs(r.stdout)
    assert list(jobs) == ["data-phase1", "data-phase2", "data-phase3", "p1", "eval-p1", "p2", "eval-p2", "p3", "eval-p3"]
    assert {n: j["deps"] for n, j in jobs.items()} == {
        "data-phase1": [], "data-phase2": ["data-phase1"], "data-phase3": ["data-phase2"],
        "p1": ["data-phase1"], "eval-p1": ["p1"], "p2": ["p1", "data-phase2"], "eval-p2": ["p2"],
        "p3": ["p2", "data-phase3"], "eval-p3": ["p3"]}     # the next phase does not wait for eval
    for p in ("p1", "p2", "p3"):
        e = jobs[f"eval-{p}"]
        assert e["script"] == "eval.sh" and e["phase"] == p and "--nodes=8" not in e["flags"]
        assert e["flags"][-2:] == ["--time=2:00:00", "--cpus-per-task=4"]
        assert e["args"] == ["--set", "checkpoint.dir=/x"]      # the recipe overrides, not train's other args
        assert jobs[p]["args"] == ["--set", "checkpoint.dir=/x", "--max-steps", "9"]
    r = run_dry(tmp_path, "--eval", "--from", "p3")
    assert {n: j["deps"] for n, j in dry_run_jobs(r.stdout).items()} == {"p3": [], "eval-p3": ["p3"]}


STANDIN_SNOWTRAIN = """\
#!/bin/bash
# snowtrain, except that `train` and `eval` only record when they ran (and train leaves a phase-end
# checkpoint as the trainer lays it out).
rec() {{ echo "$* $(date +%s.%N)" >>"$STANDIN_LOG"; }}
case $1 in
    train)
        phase=$(sed -n 's/.*--phase \\([^ ]*\\).*/\\1/p' <<<"$*")
        rec "$phase" start
        sleep 1
        for s in 2 4; do
            mkdir -p "$STANDIN_CKPT/$phase/step_0000000$s"
            echo "{{\\"phase\\": \\"$phase\\", \\"step\\": $s, \\"seq\\": $s, \\"phase_end\\": $([[ $s == 4 ]] && echo true || echo false)}}" \\
                >"$STANDIN_CKPT/$phase/step_0000000$s/COMMITTED"
        done
        rec "$phase" end ;;
    eval)
        rec "eval-$SNOWTRAIN_PHASE" start "$2" "$(sed -n 's/.*--out \\([^ ]*\\).*/\\1/p' <<<"$*")"
        sleep 1
        rec "eval-$SNOWTRAIN_PHASE" end ;;
    *) exec {real}/bin/snowtrain "$@" ;;
esac
"""

STANDIN_DATA_PREP = """\
#!/bin/bash
echo "data-$1 start $(date +%s.%N)" >>"$STANDIN_LOG"
sleep 1
[[ $1 == phase2 ]] && cp -r "$STANDIN_SEEDS" "$STANDIN_DATA/phase2"    # what phase 3 reads
echo "data-$1 end $(date +%s.%N)" >>"$STANDIN_LOG"
"""

STANDIN_SERVER = """\
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_submit_recipe_with_data_and_eval_runs_in_dependency_order(cluster, request, tmp_path):
    """The whole pipeline on the cluster, every command a stand-in that records when it ran:
    data-prep (SNOWTRAIN_DATA_PREP_CMD; phase 2 leaves the output phase 3 reads), the teacher
    server (SNOWTRAIN_SYNTH_SERVER), `snowtrain train` and `snowtrain eval` (a venv whose
    snowtrain wraps the real one). Everything waits for a held job first, so that the dependencies
    SLURM recorded can be read before any job runs."""
    if SYNTH_SKIP:
        pytest.skip(SYNTH_SKIP)
    seeds = request.getfixturevalue("seeds_dir")
    venv = tmp_path / "standin-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export VIRTUAL_ENV={venv}\nexport PATH="{venv}/bin:{VENV}/bin:$PATH"\n')
    (venv / "bin" / "snowtrain").write_text(STANDIN_SNOWTRAIN.format(real=VENV))
    (venv / "bin" / "snowtrain").chmod(0o755)
    (tmp_path / "data-prep").write_text(STANDIN_DATA_PREP)
    (tmp_path / "server.py").write_text(STANDIN_SERVER)
    configs, data = tmp_path / "dp", tmp_path / "data"
    configs.mkdir()
    data.mkdir()
    for n in (1, 2):
        (configs / f"phase{n}.yaml").write_text("{}\n")
    write_phase3_config(configs / "phase3.yaml", data / "phase2", data / "phase3",
                        "${SNOWTRAIN_SYNTH_URL:-http://127.0.0.1:9/v1}", num_seeds=4, unit_size=4)
    config = tmp_path / "r.yaml"
    save_config(recipe(tmp_path, [str(tmp_path / "ds")], phases=3), config)
    log = tmp_path / "ran.txt"
    env = job_env(cluster, config, SNOWTRAIN_VENV=venv, SNOWTRAIN_GPUS_PER_NODE=0, SNOWTRAIN_REQUEUE=0,
                  SNOWTRAIN_DATA_PREP_CMD=f"bash {tmp_path / 'data-prep'}", SNOWTRAIN_MPI_LAUNCHER="srun",
                  SNOWTRAIN_SRUN_MPI="none", SNOWTRAIN_SYNTH_SERVER=f"exec python3 {tmp_path / 'server.py'} $PORT",
                  SNOWTRAIN_SYNTH_WAIT_S=60, STANDIN_LOG=log, STANDIN_CKPT=tmp_path / "ckpt",
                  STANDIN_SEEDS=seeds, STANDIN_DATA=data, OMP_NUM_THREADS=1)
    gate = sbatch(cluster, tmp_path, env, "--hold", "--gres=none", "--ntasks=1", "--cpus-per-task=1",
                  "--job-name=gate", "--output=/dev/null", "--wrap", "true")
    try:
        r = cluster.run("bash", str(SLURM_DIR / "submit_recipe.sh"), "--with-data", "--eval", "--after", gate,
                        "--data-configs", str(configs), "--all-flags", "--cpus-per-task=1",
                        "--data-flags", "--ntasks-per-node=1", "--eval-flags", "--ntasks=1",
                        "--ntasks-per-node=1", cwd=tmp_path, env=env, timeout=120)
        jobs = dict(line.split() for line in r.stdout.splitlines() if line.strip())
        names = ["data-phase1", "data-phase2", "data-phase3", "p1", "eval-p1", "p2", "eval-p2", "p3", "eval-p3"]
        assert list(jobs) == names, r.stdout
        by_id = {v: k for k, v in jobs.items()} | {gate: "gate"}
        recorded = {n: sorted(by_id[i] for i in re.findall(r"afterok:(\d+)", cluster.job_state(jobs[n]).get("Dependency", "")))
                    for n in names}
    finally:
        cluster.run("scontrol", "release", gate, check=False)
    graph = {"data-phase1": ["gate"], "data-phase2": ["data-phase1"], "data-phase3": ["data-phase2"],
             "p1": ["data-phase1", "gate"], "eval-p1": ["p1"], "p2": ["data-phase2", "p1"], "eval-p2": ["p2"],
             "p3": ["data-phase3", "p2"], "eval-p3": ["p3"]}
    assert recorded == graph, recorded

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(len(names)) as pool:      # each job watched on its own: ended ones are purged
        infos = dict(zip(names, pool.map(lambda n: wait_job(cluster, jobs[n], timeout=180), names)))
    for n, info in infos.items():
        assert info["JobState"] == "COMPLETED", (n, info, show(tmp_path, f"snowtrain-{n}", jobs[n]))
    times, evals = {}, {}
    for line in log.read_text().splitlines():
        name, what, *rest = line.split()
        times.setdefault(name, {})[what] = float(rest[-1])
        if name.startswith("eval-") and what == "start":
            evals[name] = rest[:2]
    assert sorted(times) == sorted(names) and all(len(t) == 2 for t in times.values()), log.read_text()
    for n, deps in graph.items():     # every job started after the jobs it depends on had ended
        for d in deps:
            if d != "gate":
                assert times[n]["start"] >= times[d]["end"], (n, d, times)
    logs = tmp_path / "logs" / "slurm"
    for p in ("p1", "p2", "p3"):      # eval.sh found each phase's phase-end checkpoint
        assert evals[f"eval-{p}"] == [str(tmp_path / "ckpt" / p / "step_00000004"), str(logs / f"eval-{p}")], evals
    assert "server ready" in run_log(tmp_path, "snowtrain-data-phase3", jobs["data-phase3"])


def test_eval_sh_finds_the_phase_end_checkpoint(tmp_path):
    """eval.sh's checkpoint discovery and command line, run as a job would run it (no cluster
    needed: st_init only reads the job's variables)."""
    config = tmp_path / "r.yaml"
    save_config(recipe(tmp_path, [str(tmp_path / "ds")], phases=3), config)
    ckpt = tmp_path / "ckpt"
    for phase, step, seq, end, committed in [("p1", 2, 1, False, True), ("p1", 4, 2, True, True),
                                             ("p1", 6, 3, False, True), ("p1", 8, 4, True, False),
                                             ("p2", 3, 5, False, True)]:
        d = ckpt / phase / f"step_{step:08d}"
        d.mkdir(parents=True)
        if committed:
            (d / "COMMITTED").write_text(json.dumps({"phase": phase, "step": step, "seq": seq, "phase_end": end}))
    standin = tmp_path / "eval"
    standin.write_text('#!/bin/bash\nprintf "%s\\n" "$@" >"$STANDIN_OUT"\n')

    def run(n: int, *args: str, **extra) -> tuple[subprocess.CompletedProcess, list[str]]:
        out = tmp_path / f"args{n}"
        env = clean_env()
        env.update(SLURM_JOB_ID=str(900 + n), SLURM_JOB_NAME="ev", SNOWTRAIN_HOME=str(ROOT), SNOWTRAIN_CONFIG=str(config),
                   SNOWTRAIN_LOG_ROOT=str(tmp_path / "logs"), SNOWTRAIN_EVAL_CMD=f"bash {standin}",
                   **{"STANDIN_OUT": str(out), **extra})
        r = subprocess.run(["bash", str(SLURM_DIR / "eval.sh"), *args], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=120)
        return r, out.read_text().splitlines() if out.exists() else []

    logs = tmp_path / "logs"
    r, argv = run(1, SNOWTRAIN_PHASE="p1", SNOWTRAIN_EVAL_ARGS="--limit 5")
    assert r.returncode == 0, r.stdout + r.stderr
    # The newest committed phase-end checkpoint: not step 6 (not a phase end), not step 8 (not committed).
    assert argv == [str(ckpt / "p1" / "step_00000004"), "--benchmark", "humaneval", "--out", str(logs / "eval-p1"),
                    "--quiet", "--limit", "5"], argv
    # An unfinished phase: its newest committed checkpoint, with a warning; --problems replaces --benchmark.
    r, argv = run(2, "--phase", "p2", "--problems", "x.jsonl", "--out", "o")
    assert r.returncode == 0 and "no phase-end checkpoint" in r.stdout, r.stdout + r.stderr
    assert argv == [str(ckpt / "p2" / "step_00000003"), "--out", str(logs / "eval-p2"), "--quiet",
                    "--problems", "x.jsonl", "--out", "o"], argv
    # --set reaches the recipe (checkpoint.dir); no checkpoint at all: exit 1 before evaluating.
    r, argv = run(3, "--phase", "p1", "--set", f"checkpoint.dir={tmp_path / 'none'}")
    assert r.returncode == 1 and not argv and "no committed checkpoint of phase 'p1'" in r.stdout, r.stdout
    r, argv = run(4)            # the recipe's last phase by default
    assert r.returncode == 1 and "phase 'p3'" in r.stdout, r.stdout
    r, argv = run(5, "--checkpoint", str(ckpt / "p1" / "step_00000002"))
    assert r.returncode == 0 and argv[0] == str(ckpt / "p1" / "step_00000002") and argv[4] == str(logs / "eval-p1"), argv
    assert (logs / "ev-901" / "run-0.log").exists()
    # Several benchmarks: one evaluation each, into its own folder; the worst status is the job's.
    calls = tmp_path / "calls"
    standin.write_text('#!/bin/bash\nprintf "%s\\n" "$*" >>"$STANDIN_OUT"\n[[ $* == *Mbpp* ]] && exit 2\nexit 0\n')
    r, _ = run(6, "--phase", "p1", "--limit", "3", STANDIN_OUT=str(calls),
               SNOWTRAIN_EVAL_BENCHMARKS="humaneval /data/HumanEvalPlus-v0.1.10.jsonl.gz MbppPlus-v0.2.0.jsonl.gz")
    p1 = str(ckpt / "p1" / "step_00000004")
    assert calls.read_text().splitlines() == [
        f"{p1} --benchmark humaneval --out {logs / 'eval-p1' / 'humaneval'} --quiet --limit 3",
        f"{p1} --problems /data/HumanEvalPlus-v0.1.10.jsonl.gz --out {logs / 'eval-p1' / 'HumanEvalPlus-v0.1.10'} --quiet --limit 3",
        f"{p1} --problems MbppPlus-v0.2.0.jsonl.gz --out {logs / 'eval-p1' / 'MbppPlus-v0.2.0'} --quiet --limit 3"]
    assert r.returncode == 2, r.stdout + r.stderr
    r, _ = run(7, "--phase", "p1", "--problems", "x.jsonl", SNOWTRAIN_EVAL_BENCHMARKS="humaneval")
    assert r.returncode == 2 and "not both" in r.stdout + r.stderr


def test_eval_sh_evaluates_a_real_checkpoint(cluster, request, tmp_path):
    """eval.sh on the cluster, on the phase-end checkpoint of a tiny trained phase: a few HumanEval
    problems with the local backend."""
    if SYNTH_SKIP:
        pytest.skip(SYNTH_SKIP)
    from snowtrain.train import train_phase
    cfg = recipe(tmp_path, make_datasets(tmp_path, n=1, docs=10), steps=2, save_interval=2)
    cfg.tokenizer = str(request.getfixturevalue("tokenizer_path"))
    train_phase(cfg, "p1")
    config = save_config(cfg, tmp_path / "r.yaml")
    env = job_env(cluster, config, SNOWTRAIN_PHASE="p1", OMP_NUM_THREADS=1,
                  SNOWTRAIN_EVAL_ARGS="--limit 2 --max-new-tokens 8 --workers 1")
    jid = sbatch(cluster, tmp_path, env, *CPU, "--job-name=ev", str(SLURM_DIR / "eval.sh"))
    info = wait_job(cluster, jid, timeout=180)
    log = run_log(tmp_path, "ev", jid)
    assert info["JobState"] == "COMPLETED", (info, log[-3000:])
    final = tmp_path / "ckpt" / "p1" / "step_00000002"
    assert f"phase p1: final checkpoint {final}" in log, log[-3000:]
    summary = json.loads((tmp_path / "logs" / "slurm" / "eval-p1" / "summary.json").read_text())
    assert summary["problems"] == 2 and summary["model"] == str(final), summary
    assert re.search(r"humaneval: pass@1 \d\.\d{4} \(\d/2\)", log), log[-3000:]
    report = (tmp_path / "logs" / "slurm" / "eval-report.md").read_text()   # every phase so far
    assert report.splitlines()[2].startswith("| p1/step_00000002 | ") and "/2 |" in report, report
