#!/usr/bin/env bash
# A single-machine SLURM cluster for the tests of launch/slurm/ (and for trying the scripts).
#
#   bash scripts/slurm_cluster.sh install        apt-get install munge, slurmctld, slurmd, slurm-client
#                                                (skipped when present; needs root and apt-get)
#   bash scripts/slurm_cluster.sh start DIR [G]  start munged, slurmctld and two slurmd (nodes n1, n2)
#                                                with their config and state under DIR, G fake GPUs
#                                                per node (default 0); prints the
#                                                `export SLURM_CONF=...` line to use the cluster
#   bash scripts/slurm_cluster.sh stop DIR       stop exactly the daemons `start DIR` started
#
# The tests (tests/test_slurm.py) start and stop their own cluster through tests/slurm_cluster.py;
# `start`/`stop` are the same code, for trying launch/slurm/*.sh by hand.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKGS=(slurmctld slurmd slurm-client munge)

have_slurm() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null
}

install() {
    if have_slurm; then
        echo "[slurm] already installed ($(slurmd -V 2>/dev/null))"
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "[slurm] not root: cannot install ${PKGS[*]}; the SLURM tests will skip" >&2
        return 1
    fi
    if ! command -v apt-get >/dev/null; then
        echo "[slurm] apt-get not found: install ${PKGS[*]} by other means; the SLURM tests will skip" >&2
        return 1
    fi
    echo "[slurm] installing ${PKGS[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
    echo "[slurm] installed ($(slurmd -V))"
}

python_bin() {
    local venv="${SNOWTRAIN_VENV:-$ROOT/.venv}"
    if [[ -x "$venv/bin/python" ]]; then echo "$venv/bin/python"; else echo "${PYTHON:-python3}"; fi
}

case "${1:-}" in
    install) install ;;
    start|stop)
        [[ $# -eq 2 || ($1 == start && $# -eq 3) ]] || { echo "usage: $0 start DIR [GPUS_PER_NODE] | stop DIR" >&2; exit 2; }
        exec "$(python_bin)" "$ROOT/tests/slurm_cluster.py" "$@" ;;
    *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
