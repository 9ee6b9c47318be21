"""Tests for snowtrain.distributed and snowtrain.testing.run_distributed (real gloo processes)."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import socket
import time

import pytest
import torch
import torch.distributed as dist

from snowtrain.distributed import (
    LaunchEnv,
    destroy_distributed,
    expand_hostlist,
    get_state,
    grid_ranks,
    init_distributed,
    launch_env,
)
from snowtrain.testing import DistributedTestError, run_distributed

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    """No launcher variables, even when pytest itself runs under torchrun or srun."""
    for key in list(os.environ):
        if key in LAUNCH_VARS or key.startswith("SLURM_"):
            monkeypatch.delenv(key)
    return monkeypatch


# --------------------------------------------------------------------------- hostlist


@pytest.mark.parametrize(
    "spec, hosts",
    [
        ("node1", ["node1"]),
        ("n[1-3]", ["n1", "n2", "n3"]),
        ("n[008-011]", ["n008", "n009", "n010", "n011"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("a[1-2],b[3]", ["a1", "a2", "b3"]),
        ("rack1-n[01-02]", ["rack1-n01", "rack1-n02"]),
        (
            "gpu[001-003,010],login1,n[1-2]-ib",
            ["gpu001", "gpu002", "gpu003", "gpu010", "login1", "n1-ib", "n2-ib"],
        ),
        ("r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]),
        (" x1 , x2 ", ["x1", "x2"]),
    ],
)
def test_expand_hostlist(spec, hosts):
    assert expand_hostlist(spec) == hosts


@pytest.mark.parametrize("spec", ["n[1-2", "n1-2]", "n[a-b]", "n[3-1]", "n[[1]]"])
def test_expand_hostlist_rejects_malformed(spec):
    with pytest.raises(ValueError):
        expand_hostlist(spec)


# --------------------------------------------------------------------------- launch env


SLURM_ENV = {
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "8",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NODELIST": "gpu[007-010]",
    "SLURM_NODELIST": "ignored[1-2]",
    "SLURM_JOB_ID": "123456",
}


def test_launch_env_slurm(clean_env):
    for k, v in SLURM_ENV.items():
        clean_env.setenv(k, v)
    assert launch_env() == LaunchEnv(
        rank=5, world_size=8, local_rank=1, master_addr="gpu007",
        master_port=20000 + 123456 % 20000, source="slurm",
    )


def test_launch_env_slurm_fallbacks(clean_env):
    for k, v in SLURM_ENV.items():
        clean_env.setenv(k, v)
    clean_env.delenv("SLURM_JOB_NODELIST")
    clean_env.setenv("MASTER_PORT", "31337")
    le = launch_env()
    assert (le.master_addr, le.master_port) == ("ignored1", 31337)
    clean_env.setenv("MASTER_ADDR", "10.0.0.7")
    assert launch_env().master_addr == "10.0.0.7"


def test_launch_env_torchrun_takes_precedence(clean_env):
    for k, v in SLURM_ENV.items():
        clean_env.setenv(k, v)
    for k, v in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3",
                 "MASTER_ADDR": "head", "MASTER_PORT": "29511"}.items():
        clean_env.setenv(k, v)
    assert launch_env() == LaunchEnv(3, 4, 3, "head", 29511, "torchrun")


def test_launch_env_single(clean_env):
    le = launch_env()
    assert (le.rank, le.world_size, le.local_rank, le.source) == (0, 1, 0, "single")
    assert le.master_addr == "127.0.0.1" and 0 < le.master_port < 65536


def test_launch_env_rejects_rank_outside_world(clean_env):
    clean_env.setenv("RANK", "4")
    clean_env.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="rank=4"):
        launch_env()


# --------------------------------------------------------------------------- grid


def test_grid_ranks_8x2():
    tp, dp = grid_ranks(8, 2)
    assert tp == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert dp == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_grid_ranks_edges():
    assert grid_ranks(4, 1) == ([[0], [1], [2], [3]], [[0, 1, 2, 3]])
    assert grid_ranks(4, 4) == ([[0, 1, 2, 3]], [[0], [1], [2], [3]])
    assert grid_ranks(1, 1) == ([[0]], [[0]])


@pytest.mark.parametrize("tp", [3, 0, -2, 16])
def test_grid_ranks_invalid_tp(tp):
    with pytest.raises(ValueError, match=rf"tensor_parallel={tp} does not divide world_size=8") as e:
        grid_ranks(8, tp)
    assert "[1, 2, 4, 8]" in str(e.value)  # the message lists valid choices


def test_init_distributed_rejects_bad_tp_before_rendezvous(clean_env):
    with pytest.raises(ValueError, match="tensor_parallel=2 does not divide world_size=1"):
        init_distributed(tensor_parallel=2, backend="gloo", timeout_s=5)
    assert not dist.is_initialized()


def test_get_state_before_init_raises():
    destroy_distributed()
    with pytest.raises(RuntimeError, match="init_distributed"):
        get_state()


# --------------------------------------------------------------------------- real processes
# Workers are module-level so that spawn can pickle them by reference.


def _grid_worker(tp: int) -> dict:
    st = init_distributed(tensor_parallel=tp, backend="gloo", timeout_s=60)
    me = torch.tensor([st.rank], dtype=torch.long)
    tp_sum, dp_sum, world_sum = me.clone(), me.clone(), me.clone()
    dist.all_reduce(tp_sum, group=st.tp_group)
    dist.all_reduce(dp_sum, group=st.dp_group)
    dist.all_reduce(world_sum)
    gathered = [torch.zeros(1, dtype=torch.long) for _ in range(st.tp_size)]
    dist.all_gather(gathered, me, group=st.tp_group)
    return {
        "rank": st.rank, "world_size": st.world_size, "local_rank": st.local_rank,
        "tp_rank": st.tp_rank, "tp_size": st.tp_size, "dp_rank": st.dp_rank, "dp_size": st.dp_size,
        "tp_ranks": st.tp_ranks, "dp_ranks": st.dp_ranks,
        "tp_group_ranks": dist.get_process_group_ranks(st.tp_group),
        "dp_group_ranks": dist.get_process_group_ranks(st.dp_group),
        "tp_sum": int(tp_sum), "dp_sum": int(dp_sum), "world_sum": int(world_sum),
        "tp_gather": [int(t) for t in gathered],
        "is_main": st.is_main, "device": str(st.device), "backend": st.backend,
        "get_state_is_st": get_state() is st,
        "reinit_is_st": init_distributed(tensor_parallel=tp, backend="gloo") is st,
    }


@pytest.fixture(scope="module")
def grid_2x2():
    return run_distributed(_grid_worker, 4, 2, timeout_s=90)


def test_grid_2x2_ranks_match_grid_ranks(grid_2x2):
    tp_groups, dp_groups = grid_ranks(4, 2)
    assert [r["rank"] for r in grid_2x2] == [0, 1, 2, 3]
    for rank, r in enumerate(grid_2x2):
        assert (r["world_size"], r["local_rank"], r["tp_size"], r["dp_size"]) == (4, rank, 2, 2)
        assert (r["tp_rank"], r["dp_rank"]) == (rank % 2, rank // 2)
        assert r["tp_ranks"] == r["tp_group_ranks"] == tp_groups[rank // 2]
        assert r["dp_ranks"] == r["dp_group_ranks"] == dp_groups[rank % 2]
        assert r["is_main"] == (rank == 0)
        assert (r["device"], r["backend"]) == ("cpu", "gloo")
        assert r["get_state_is_st"] and r["reinit_is_st"]


def test_grid_2x2_collectives(grid_2x2):
    for r in grid_2x2:
        assert r["tp_sum"] == sum(r["tp_ranks"])
        assert r["dp_sum"] == sum(r["dp_ranks"])
        assert r["world_sum"] == 0 + 1 + 2 + 3
        assert r["tp_gather"] == r["tp_ranks"]
    # Pin the actual values too, so a wrong layout cannot pass by agreeing with itself.
    assert [r["tp_sum"] for r in grid_2x2] == [1, 1, 5, 5]
    assert [r["dp_sum"] for r in grid_2x2] == [2, 4, 2, 4]


def _failing_worker() -> int:
    if int(os.environ["RANK"]) == 1:
        raise ValueError("boom on rank 1")
    init_distributed(backend="gloo", timeout_s=60)  # would wait for rank 1 forever
    dist.barrier()
    return 0


def test_exception_in_one_rank_surfaces_in_parent():
    start = time.monotonic()
    with pytest.raises(DistributedTestError) as e:
        run_distributed(_failing_worker, 2, timeout_s=60)
    assert e.value.rank == 1
    assert "rank 1 of 2" in str(e.value)
    assert "ValueError: boom on rank 1" in str(e.value)  # the child's traceback
    assert "_failing_worker" in str(e.value)
    assert time.monotonic() - start < 30, "the parent should not wait for the blocked rank 0"
    assert mp.active_children() == []


def _sleepy_worker() -> int:
    if int(os.environ["RANK"]) == 1:
        time.sleep(300)
    return 0


def test_hanging_rank_times_out_and_is_killed():
    with pytest.raises(TimeoutError, match=r"ranks \[1\] of 2 still running"):
        run_distributed(_sleepy_worker, 2, timeout_s=10)
    assert mp.active_children() == []


def test_unpicklable_fn_is_rejected():
    with pytest.raises(TypeError, match="module-level"):
        run_distributed(lambda: 0, 1)


def _slurm_worker() -> tuple:
    le = launch_env()  # before init, which exports RANK/WORLD_SIZE for env://
    st = init_distributed(backend="gloo", timeout_s=60)
    total = torch.tensor([st.rank + 1])
    dist.all_reduce(total)
    return le, st.rank, st.world_size, st.local_rank, int(total), os.environ["MASTER_PORT"]


def _free_port_in_slurm_range() -> int:
    for _ in range(200):
        port = random.randrange(20000, 40000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000..39999")


def test_init_distributed_rendezvous_from_slurm_env_only():
    port = _free_port_in_slurm_range()
    job_id = 7_000_000 + (port - 20000)  # 20000 + job_id % 20000 == port

    def env(rank):
        overrides = {k: None for k in LAUNCH_VARS}  # drop the torchrun-style env
        overrides.update({
            "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(rank),
            "SLURM_JOB_NODELIST": "localhost,gpu[002-003]", "SLURM_JOB_ID": str(job_id),
        })
        return overrides

    out = run_distributed(_slurm_worker, 2, env=env, timeout_s=90)
    for rank, (le, r, world, local, total, master_port) in enumerate(out):
        assert le == LaunchEnv(rank, 2, rank, "localhost", port, "slurm")
        assert (r, world, local) == (rank, 2, rank)
        assert total == 1 + 2
        assert master_port == str(port)
