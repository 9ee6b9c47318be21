#!/bin/bash
# Data-prep phase 3 in one job: the teacher model's server and the ranks that query it.
#
#   sbatch [--nodes=N] [--gres=gpu:G] [--ntasks-per-node=R] [--time=T] launch/slurm/synth.sh \
#       --config configs/data_prep/phase3.yaml [--set KEY=VALUE ...]
#
# 0. Checks the config (`--config`, `--set`): an error exits 2 before any model is loaded.
# 1. Starts the server on the job's first node, in the background: SNOWTRAIN_SYNTH_SERVER, a
#    shell command run by `bash -c` with PORT exported (write `$PORT` in single quotes), default
#      vllm serve "$SNOWTRAIN_SYNTH_MODEL" --tensor-parallel-size "${SLURM_GPUS_ON_NODE:-1}" --port "$PORT"
#    with SNOWTRAIN_SYNTH_MODEL=meta-llama/Llama-3.1-70B-Instruct. PORT is SNOWTRAIN_SYNTH_PORT,
#    else a free port of that node. Its output: server-<R>.log in the job's log folder.
# 2. Waits until GET /health answers 200, at most SNOWTRAIN_SYNTH_WAIT_S seconds (default 1800,
#    a 70B load); fails (exit 1, with the server log's tail) if the server exits or times out.
# 3. Runs `data-prep phase3 ARGS` as one MPI rank per task (st_data_prep_cmd in common.sh) with
#    SNOWTRAIN_SYNTH_URL=http://<first node>:<PORT>/v1 exported: the config's endpoint.base_url
#    reads it as ${SNOWTRAIN_SYNTH_URL:-...}. The ranks only wait on HTTP: a few CPU tasks do.
# 4. Stops the server on every way out (SIGTERM to its process group, SIGKILL after
#    SNOWTRAIN_SYNTH_STOP_S, default 60) and exits with data-prep's status.
#
# Phase 3 keeps every finished unit of answers, so a rerun only sends what is missing: before the
# time limit (SIGUSR1, --signal=B:USR1@300) or on preemption the job stops its ranks and its
# server and requeues itself, like the training scripts (SNOWTRAIN_REQUEUE=0 to resubmit by hand).
# More: SNOWTRAIN_SYNTH_HOST (the address the ranks use, default the first node's NodeAddr),
# docs/slurm.md. On a CPU-only cluster: --gres=none.
#SBATCH --job-name=snowtrain-synth
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

# sbatch runs a copy of this script from its spool folder: find the repository's copy.
if [[ -n ${SNOWTRAIN_HOME:-} ]]; then ST_DIR=$SNOWTRAIN_HOME/launch/slurm
elif [[ -n ${SLURM_JOB_ID:-} ]]; then ST_DIR=$(dirname "$(scontrol show job -o "$SLURM_JOB_ID" | grep -o 'Command=[^ ]*' | cut -d= -f2)")
else ST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); fi
[[ -f $ST_DIR/common.sh ]] || ST_DIR=${SLURM_SUBMIT_DIR:-.}/launch/slurm
# shellcheck source=common.sh
source "$ST_DIR/common.sh" || { echo "cannot find launch/slurm/common.sh: set SNOWTRAIN_HOME" >&2; exit 1; }

ST_SERVER_PID=""    # what we wait on for the server's exit status
ST_SERVER_PGID=""   # its process group (vLLM's workers included)
ST_SERVER_LOG=""

# A free TCP port of this node (the batch shell runs on the job's first node).
synth_free_port() {
    local py
    for py in python3 python; do
        if command -v "$py" >/dev/null 2>&1; then
            "$py" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])' && return
        fi
    done
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 40000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
    return 1
}

# True when GET URL answers 200.
synth_http_ok() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -o /dev/null --max-time 10 "$1" 2>/dev/null
    else
        python3 -c 'import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=10).status == 200 else 1)' "$1" >/dev/null 2>&1
    fi
}

synth_server_alive() { [[ -n $ST_SERVER_PID ]] && kill -0 "$ST_SERVER_PID" 2>/dev/null; }

synth_log_tail() {
    st_log "last lines of the server log $ST_SERVER_LOG:"
    tail -n "${SNOWTRAIN_SYNTH_LOG_TAIL:-40}" "$ST_SERVER_LOG" 2>/dev/null | sed 's/^/  server| /'
}

# Stops the server (if it runs): SIGTERM to its process group, SIGKILL after the grace period.
synth_stop_server() {
    [[ -n $ST_SERVER_PID ]] || return 0
    local pid=$ST_SERVER_PID pgid=${ST_SERVER_PGID:-$ST_SERVER_PID} grace=${SNOWTRAIN_SYNTH_STOP_S:-60} rc
    if kill -0 "$pid" 2>/dev/null; then
        st_log "stopping the server (SIGTERM to process group $pgid)"
        kill -TERM -- "-$pgid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
        local end=$((SECONDS + grace))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < end)); do sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            st_log "the server did not stop within ${grace}s: SIGKILL"
            kill -KILL -- "-$pgid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
        fi
    fi
    wait "$pid" 2>/dev/null
    rc=$?
    # What the server started and left behind (e.g. workers of a killed vLLM).
    if kill -0 -- "-$pgid" 2>/dev/null; then
        st_log "processes of the server's group $pgid are left: SIGKILL"
        kill -KILL -- "-$pgid" 2>/dev/null
    fi
    st_log "server stopped (exit $rc); its log: $ST_SERVER_LOG"
    ST_SERVER_PID=""
}

# shellcheck disable=SC2317  # run by the EXIT trap
synth_on_exit() {
    local rc=$?
    synth_stop_server
    exit "$rc"
}

# synth_server_failed MESSAGE: the server is not usable; exits 1 (the EXIT trap stops it).
synth_server_failed() {
    st_log "error: $*"
    synth_log_tail
    st_log "not requeueing: fix the server command (SNOWTRAIN_SYNTH_SERVER), model or resources and resubmit"
    exit 1
}

st_init "$ST_DIR"
st_trap_signals
trap synth_on_exit EXIT
st_rendezvous

# ----------------------------------------------------------------------------- arguments
[[ ${1:-} == phase3 ]] && shift
[[ $# -gt 0 ]] || st_die 2 "nothing to run: sbatch launch/slurm/synth.sh --config configs/data_prep/phase3.yaml [--set KEY=VALUE ...]"
config="" sets=() prev=""
for a in "$@"; do
    case $prev in --config) config=$a ;; --set) sets+=("$a") ;; esac
    case $a in --config=*) config=${a#--config=} ;; --set=*) sets+=("${a#--set=}") ;; esac
    prev=$a
done
[[ -n $config ]] || st_die 2 "no --config: sbatch launch/slurm/synth.sh --config configs/data_prep/phase3.yaml"

# ----------------------------------------------------------------------------- the server's address
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null | head -n1)
host=${SNOWTRAIN_SYNTH_HOST:-${MASTER_ADDR:-$first}}
port=${SNOWTRAIN_SYNTH_PORT:-}
if [[ -z $port ]]; then
    port=$(synth_free_port) || st_die 1 "cannot find a free port on $(hostname): set SNOWTRAIN_SYNTH_PORT"
fi
export PORT=$port SNOWTRAIN_SYNTH_PORT=$port
export SNOWTRAIN_SYNTH_MODEL=${SNOWTRAIN_SYNTH_MODEL:-meta-llama/Llama-3.1-70B-Instruct}
export SNOWTRAIN_SYNTH_URL="http://$host:$port/v1"
health="http://$host:$port/health"
# shellcheck disable=SC2016
server_cmd=${SNOWTRAIN_SYNTH_SERVER:-'vllm serve "$SNOWTRAIN_SYNTH_MODEL" --tensor-parallel-size "${SLURM_GPUS_ON_NODE:-1}" --port "$PORT"'}
[[ $server_cmd == *PORT* ]] || st_log "warning: SNOWTRAIN_SYNTH_SERVER does not mention \$PORT; the server must listen on $port"

# The config, before a long model load: it must validate and point at this job's server.
base_url=$(st_tool python -c '
import sys
from snowtrain.config import ConfigError
from data_prep.pipeline.phase3_config import load_phase3_config
try:
    print(load_phase3_config(sys.argv[1], sys.argv[2:]).endpoint.base_url)
except ConfigError as e:
    print(e, file=sys.stderr)
    sys.exit(2)' "$config" "${sets[@]}") || st_die 2 "the config does not validate (see above): $config ${sets[*]}; the server was not started"
st_log "config $config${sets[*]:+ (--set ${sets[*]})} validates; endpoint.base_url: $base_url"
if [[ ${base_url%/} != "$SNOWTRAIN_SYNTH_URL" ]]; then
    st_log "warning: endpoint.base_url is $base_url, not this job's server $SNOWTRAIN_SYNTH_URL" \
        "(write base_url: \${SNOWTRAIN_SYNTH_URL:-...} in $config)"
fi

# ----------------------------------------------------------------------------- 1. start the server
ST_SERVER_LOG="$ST_LOG_DIR/server-$ST_RESTART.log"
pidfile="$ST_LOG_DIR/.server-$ST_RESTART.pid"
rm -f "$pidfile"
st_log "server on $(hostname) ($host:$port): $server_cmd; log $ST_SERVER_LOG"
# In its own session and process group, so that stopping it reaches everything it started; the
# venv (or container) as the ranks have it. $PORT, $SNOWTRAIN_SYNTH_MODEL, $SLURM_* expand there.
# shellcheck disable=SC2016
run_server=(bash -c '[[ -n $1 ]] && { source "$1/bin/activate" || exit 1; }; exec bash -c "$2"' st-server "$ST_VENV" "$server_cmd")
if [[ ${#ST_SRUN_CT[@]} -gt 0 ]]; then   # pyxis: a step of one task on this node
    srun --overlap --nodes=1 --ntasks=1 --nodelist="$first" "${ST_SRUN_CT[@]}" "${run_server[@]}" \
        </dev/null >>"$ST_SERVER_LOG" 2>&1 &
    ST_SERVER_PID=$!
else
    # shellcheck disable=SC2016
    setsid -w bash -c 'echo $$ >"$1"; shift; exec "$@"' st-setsid "$pidfile" "${ST_RUN[@]}" "${run_server[@]}" \
        </dev/null >>"$ST_SERVER_LOG" 2>&1 &
    ST_SERVER_PID=$!
    for _ in $(seq 50); do [[ -s $pidfile ]] && break; sleep 0.1; done
    ST_SERVER_PGID=$(cat "$pidfile" 2>/dev/null)
    rm -f "$pidfile"
fi
st_log "server pid $ST_SERVER_PID${ST_SERVER_PGID:+ (process group $ST_SERVER_PGID)}"

# ----------------------------------------------------------------------------- 2. wait until it is ready
wait_s=${SNOWTRAIN_SYNTH_WAIT_S:-1800}
start=$SECONDS
while :; do
    if ! synth_server_alive; then
        wait "$ST_SERVER_PID" 2>/dev/null
        rc=$?
        ST_SERVER_PID=""
        synth_server_failed "the server exited ($rc) before it was ready, after $((SECONDS - start))s"
    fi
    if synth_http_ok "$health"; then
        break
    fi
    if [[ -n $ST_STOP_SIGNAL ]]; then
        synth_stop_server
        st_requeue "stop requested (SIG$ST_STOP_SIGNAL) while the server was loading"
    fi
    if ((SECONDS - start >= wait_s)); then
        synth_server_failed "the server is not ready after ${wait_s}s (SNOWTRAIN_SYNTH_WAIT_S): GET $health"
    fi
    sleep 2
done
st_log "server ready after $((SECONDS - start))s: $SNOWTRAIN_SYNTH_URL"
if [[ -n $ST_STOP_SIGNAL ]]; then
    synth_stop_server
    st_requeue "stop requested (SIG$ST_STOP_SIGNAL) before data prep started"
fi

# ----------------------------------------------------------------------------- 3. data-prep phase3
export SNOWTRAIN_SYNTH_URL
st_data_prep_cmd phase3 "$@"
"${ST_DP_CMD[@]}" &
ST_SRUN_PID=$!
st_wait_srun
rc=$ST_RC
st_log "data prep exited $rc with ${SLURM_NTASKS:-1} rank(s)${ST_STOP_SIGNAL:+ (after SIG$ST_STOP_SIGNAL)}"

# ----------------------------------------------------------------------------- 4. the outcome
if ((rc != 0)) && ! synth_server_alive; then
    st_log "the server is no longer running"
    synth_log_tail
fi
case $rc in
    0) st_log "phase 3 finished"; exit 0 ;;
    2) st_die 2 "configuration, input or endpoint error: not requeueing" ;;
esac
if [[ -n $ST_STOP_SIGNAL ]]; then
    synth_stop_server
    st_requeue "stopped on SIG$ST_STOP_SIGNAL (exit $rc); the next run sends only the requests not yet answered"
fi
st_log "data prep failed (exit $rc): not requeueing; resubmit to send the missing requests again"
exit "$rc"
