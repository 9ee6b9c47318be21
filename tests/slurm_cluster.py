"""A real SLURM cluster on this one machine, for the tests of launch/slurm/.

munged, slurmctld and two slurmd daemons run from Debian's packages (``bash
scripts/slurm_cluster.sh install``), without systemd, with their config, state and logs under
one folder. The two fake nodes ``n1`` and ``n2`` are both at 127.0.0.1, each with its own port
and spool folder; optionally they have fake GPUs (gres whose device files are links to
/dev/null), so jobs can request ``--gres=gpu:N`` and see ``CUDA_VISIBLE_DEVICES``. Clients find
the cluster through ``SLURM_CONF`` (see :meth:`SlurmCluster.env`). :meth:`SlurmCluster.stop`
stops exactly the processes :meth:`SlurmCluster.start` started, by PID.

Also a command line (``scripts/slurm_cluster.sh start|stop DIR`` calls it)::

    python tests/slurm_cluster.py start DIR [GPUS_PER_NODE]   # prints: export SLURM_CONF=DIR/slurm.conf
    python tests/slurm_cluster.py stop DIR
"""
from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NODES = ("n1", "n2")
PARTITION = "debug"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo", "scancel")


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here, or None when it can."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} not found): run "
                "`bash scripts/slurm_cluster.sh install` as root (Debian: slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        return "the single-machine SLURM cluster needs root (munged runs as the munge user, slurmd as root)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "the munge user does not exist (reinstall the munge package)"
    if not Path("/etc/munge/munge.key").exists():
        return "/etc/munge/munge.key is missing (reinstall the munge package)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_resources() -> tuple[int, int]:
    """CPUs and memory (MB) for each fake node: what `slurmd -C` reports, memory shared out."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
    cpus = int(re.search(r"CPUs=(\d+)", out).group(1))
    mem = int(re.search(r"RealMemory=(\d+)", out).group(1))
    return cpus, max(256, mem // (2 * len(NODES)))


class SlurmCluster:
    def __init__(self, root: str | os.PathLike, fake_gpus: int = 0):
        self.root = Path(root).resolve()
        self.fake_gpus = fake_gpus
        self.conf = self.root / "slurm.conf"
        self.pids_file = self.root / "pids.json"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.pids: dict[str, int] = {}

    # ------------------------------------------------------------------ config
    def env(self, base: dict | None = None) -> dict:
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        # A client must not inherit the settings of a job it may itself be running in.
        for k in list(env):
            if k.startswith(("SLURM_JOB", "SLURM_STEP", "SBATCH_", "SRUN_", "SALLOC_")):
                del env[k]
        return env

    def write_config(self) -> None:
        host = socket.gethostname().split(".")[0]
        cpus, mem = _node_resources()
        r = self.root
        for d in ("state", "log", *(f"spool/{n}" for n in NODES)):
            (r / d).mkdir(parents=True, exist_ok=True)
        ctld_port = _free_port()
        gres, gres_types = "", ""
        if self.fake_gpus:
            lines = []
            for n in NODES:
                for i in range(self.fake_gpus):
                    dev = r / "dev" / f"{n}-gpu{i}"
                    dev.parent.mkdir(exist_ok=True)
                    if not dev.is_symlink():
                        dev.symlink_to("/dev/null")   # slurmd rejects plain files
                lines.append(f"NodeName={n} Name=gpu File={r}/dev/{n}-gpu[0-{self.fake_gpus - 1}]")
            (r / "gres.conf").write_text("\n".join(lines) + "\n")   # beside slurm.conf
            gres, gres_types = f"Gres=gpu:{self.fake_gpus} ", "GresTypes=gpu\n"
        nodes = "\n".join(
            f"NodeName={n} NodeAddr=127.0.0.1 NodeHostname={host} Port={_free_port()} CPUs={cpus} "
            f"RealMemory={mem} {gres}State=UNKNOWN" for n in NODES)
        self.conf.write_text(f"""\
# Written by tests/slurm_cluster.py: a two-node SLURM cluster on one machine.
ClusterName=snowtrain-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
EnforcePartLimits=ALL
MinJobAge=4
KillWait=5
InactiveLimit=0
Waittime=0
MessageTimeout=20
MailProg=/bin/true
{gres_types}{nodes}
PartitionName={PARTITION} Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
""")

    # ------------------------------------------------------------------ processes
    def _spawn(self, name: str, cmd: list[str], **kw) -> None:
        log = open(self.root / "log" / f"{name}.console", "ab")
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             env=self.env(), start_new_session=True, **kw)
        log.close()
        self.pids[name] = p.pid
        self.pids_file.write_text(json.dumps(self.pids))

    def _start_munge(self) -> None:
        d = self.munge_socket.parent
        d.mkdir(parents=True, exist_ok=True)
        munge = pwd.getpwnam("munge")
        os.chown(d, munge.pw_uid, munge.pw_gid)
        os.chmod(d, 0o755)
        # munged checks that the folders above its socket are not writable by others.
        for parent in [self.root, *self.root.parents]:
            mode = parent.stat().st_mode
            if mode & 0o002 and not mode & 0o1000:
                raise RuntimeError(f"{parent} is world-writable without the sticky bit; munged refuses it")
        # As the munge user (it owns the key), started directly so that its PID is munged's own.
        self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log",
                               f"--seed-file={d}/munged.seed"],
                    user=munge.pw_uid, group=munge.pw_gid, extra_groups=[], cwd=str(d))
        self._wait(lambda: self.munge_socket.exists(), 10, "munged did not create its socket")

    def start(self, timeout: float = 60) -> "SlurmCluster":
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.write_config()
        try:
            self._start_munge()
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
            for n in NODES:
                self._spawn(f"slurmd-{n}", ["slurmd", "-D", "-N", n, "-f", str(self.conf)])
            self._wait(self._nodes_idle, timeout, "the nodes did not become idle")
        except BaseException:
            self.stop()
            raise
        return self

    def _nodes_idle(self) -> bool:
        for name, pid in self.pids.items():
            if not _alive(pid):
                raise RuntimeError(f"{name} (pid {pid}) exited; see {self.root}/log/")
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True,
                           env=self.env(), timeout=30)
        states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
        return r.returncode == 0 and all(states.get(n) == "idle" for n in NODES)

    def _wait(self, cond, timeout: float, what: str) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if cond():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{what} within {timeout:.0f} s; see {self.root}/log/")

    def stop(self) -> None:
        """Cancel the cluster's jobs, then stop the daemons this cluster started (by PID)."""
        if not self.pids and self.pids_file.exists():
            self.pids = json.loads(self.pids_file.read_text())
        if self.pids.get("slurmctld") and _alive(self.pids["slurmctld"]):
            env = self.env()
            ids = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                                 env=env, timeout=30).stdout.split()
            if ids:
                subprocess.run(["scancel", *ids], env=env, capture_output=True, timeout=30)
                end = time.time() + 15
                while time.time() < end and subprocess.run(
                        ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=env,
                        timeout=30).stdout.split():
                    time.sleep(0.5)
        order = [n for n in self.pids if n.startswith("slurmd")] + ["slurmctld", "munged"]
        for name in order:
            pid = self.pids.get(name)
            if pid and _alive(pid):
                os.kill(pid, signal.SIGTERM)
                end = time.time() + 10
                while time.time() < end and _alive(pid):
                    time.sleep(0.1)
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            _reap(pid)
        self.pids = {}
        if self.pids_file.exists():
            self.pids_file.unlink()

    # ------------------------------------------------------------------ helpers for tests
    def run(self, *cmd: str, timeout: float = 60, check: bool = True, env: dict | None = None,
            **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                           env=self.env(env), **kw)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def job_state(self, job_id: str) -> dict:
        r = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        return dict(tok.split("=", 1) for tok in r.stdout.split() if "=" in tok)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _reap(pid: int | None) -> None:
    if not pid:
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def main(argv: list[str]) -> int:
    if not 2 <= len(argv) <= 3 or argv[0] not in ("start", "stop"):
        print(__doc__)
        return 2
    c = SlurmCluster(argv[1], fake_gpus=int(argv[2]) if len(argv) == 3 else 0)
    if argv[0] == "start":
        c.start()
        print(f"export SLURM_CONF={c.conf}")
    else:
        c.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
