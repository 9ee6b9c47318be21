"""Hang detection (snowtrain/watchdog.py): a stuck rank prints every thread's stack and exits 4;
in a real two-rank run where one rank stops inside a step, both ranks end with 4 (the other
waits in the collective) and a rerun resumes from the latest checkpoint to the end."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from snowtrain.config import save_config
from snowtrain.watchdog import HUNG_EXIT
from train_helpers import losses, make_datasets, recipe

SCRIPT = """
import time
from snowtrain.watchdog import HangWatchdog

def stuck_in_here():
    time.sleep(60)

w = HangWatchdog({timeout}, rank=7)
for i in range({beats}):
    w.beat(f"step {{i + 1}}")
    time.sleep(0.1)
{after}
"""


def _script(tmp_path, timeout, beats, after) -> subprocess.CompletedProcess:
    path = tmp_path / "w.py"
    path.write_text(SCRIPT.format(timeout=timeout, beats=beats, after=after))
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)


def test_a_stuck_rank_dumps_its_stacks_and_exits_4(tmp_path):
    r = _script(tmp_path, 1.0, 3, "stuck_in_here()")
    assert r.returncode == HUNG_EXIT, r.stderr
    assert "rank 7: hung: nothing finished for 1 s since step 3" in r.stderr
    assert "stuck_in_here" in r.stderr and "thread MainThread" in r.stderr


def test_steady_beats_and_a_stop_never_fire(tmp_path):
    # 3 s of beats 0.1 s apart under a 1 s limit, then a stop and a pause past the limit
    r = _script(tmp_path, 1.0, 30, "w.stop()\ntime.sleep(2)\nprint('finished')")
    assert r.returncode == 0 and r.stdout.strip() == "finished", r.stderr


HANG = """
import os, time
import snowtrain.train as t
calls = [0]
real = t.train_step

def hanging_step(*a, **k):
    calls[0] += 1
    if calls[0] == 5:
        time.sleep(300)
    return real(*a, **k)

if os.environ.get("RANK") == "1":
    t.train_step = hanging_step
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(cfg: Path, cwd: Path, extra_path: str | None):
    """Both ranks as srun starts them: one process each, rank and world from the environment."""
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        if extra_path:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
        procs.append(subprocess.Popen([sys.executable, "-m", "snowtrain", "train", "--config", str(cfg),
                                       "--phase", "p1"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return [(p.wait(timeout=240), *p.communicate()) for p in procs]


def test_a_rank_stuck_in_a_step_ends_both_ranks_with_4_and_the_rerun_resumes(tmp_path):
    cfg = recipe(tmp_path, make_datasets(tmp_path / "data"), save_interval=2)
    cfg.training.hang_timeout_s = 4.0
    path = save_config(cfg, tmp_path / "tiny.yaml")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(HANG))
    (rc0, out0, err0), (rc1, out1, err1) = _two_ranks(path, tmp_path, str(hook))
    assert (rc0, rc1) == (HUNG_EXIT, HUNG_EXIT), err0[-3000:] + err1[-3000:]
    assert "rank 1: hung: nothing finished for" in err1 and "since the checkpoint of step 4" in err1
    assert "hanging_step" in err1                    # the stack shows where rank 1 is stuck
    assert "rank 0: hung" in err0 and "all_reduce" in err0   # rank 0 waits for it in a collective
    assert sorted(losses(tmp_path / "logs")) == [1, 2, 3, 4]
    (rc0, out0, err0), (rc1, _, err1) = _two_ranks(path, tmp_path, None)
    assert (rc0, rc1) == (0, 0), err0[-3000:] + err1[-3000:]
    assert "resumed p1 from" in out0 and "at step 4" in out0
    assert sorted(losses(tmp_path / "logs")) == list(range(1, 13))
