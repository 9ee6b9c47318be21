# shellcheck shell=bash disable=SC2016
# The shared body of launch/slurm/phase{1,2,3}.sh and data_prep.sh: sourced, never run.
#
# What it does inside a job (see docs/slurm.md):
#   - environment: SNOWTRAIN_SETUP (a file to source, or a command), SNOWTRAIN_MODULES
#     (`module load` them), SNOWTRAIN_VENV (activate; default <repo>/.venv when present),
#     SNOWTRAIN_CONTAINER (+ _RUNTIME apptainer|singularity|pyxis, _MOUNTS, _ARGS);
#   - rendezvous: MASTER_ADDR = the first node of the allocation (its NodeAddr), MASTER_PORT =
#     20000 + job id % 20000, unless set; NCCL defaults only where unset;
#   - one log folder per job, ${SNOWTRAIN_LOG_ROOT:-$SLURM_SUBMIT_DIR/logs/slurm}/<job name>-<job id>/,
#     with per-restart files: run-<R>.log (everything printed), config-<R>.yaml (the resolved
#     recipe), version-<R>.txt (git commit + dirty flag, package versions), job-<R>.txt
#     (allocation, rendezvous and NCCL settings), where R = SLURM_RESTART_COUNT (0 first);
#   - preemption and time limits: the batch shell traps USR1 and TERM and forwards SIGUSR1 to
#     the srun step (srun passes it on to every task); the trainer saves a checkpoint at its
#     next step and exits 3; the job then requeues itself (`scontrol requeue`) and the next run
#     resumes from that checkpoint.
#
# Tunables (environment; all optional): SNOWTRAIN_CONFIG, SNOWTRAIN_PHASE, SNOWTRAIN_SET,
# SNOWTRAIN_GRACE, SNOWTRAIN_GPUS_PER_NODE, SNOWTRAIN_SRUN_ARGS, SNOWTRAIN_LOG_ROOT,
# SNOWTRAIN_REQUEUE (1), SNOWTRAIN_MAX_RESTARTS (50), SNOWTRAIN_KILL_ON_BAD_EXIT (1),
# SNOWTRAIN_HOME, SNOWTRAIN_WORKDIR.

set -o pipefail

st_log() { printf '[snowtrain-slurm %(%F %T)T] %s\n' -1 "$*"; }
st_die() {  # st_die CODE MESSAGE...
    local code=$1
    shift
    st_log "error: $*" >&2
    exit "$code"
}

# ----------------------------------------------------------------------------- setup

# st_init SCRIPT_DIR: checks we are inside a job, finds the repository, opens the job's log
# folder (everything printed from here on is also written to run-<R>.log) and sets up the
# environment. Sets ST_LOG_DIR, ST_RESTART, SNOWTRAIN_HOME.
st_init() {
    local dir=$1
    if [[ -z ${SLURM_JOB_ID:-} ]]; then
        echo "This is a SLURM batch script: submit it with sbatch, e.g." >&2
        echo "  sbatch [--nodes=N] [--partition=P] [--account=A] [--time=T] $0 [--set KEY=VALUE ...]" >&2
        echo "or submit the whole recipe: bash $dir/submit_recipe.sh --config RECIPE.yaml (see docs/slurm.md)" >&2
        exit 2
    fi
    SNOWTRAIN_HOME=${SNOWTRAIN_HOME:-$(cd "$dir/../.." && pwd)}
    export SNOWTRAIN_HOME
    cd "${SNOWTRAIN_WORKDIR:-${SLURM_SUBMIT_DIR:-$PWD}}" || st_die 1 "cannot cd to the work folder"

    ST_RESTART=${SLURM_RESTART_COUNT:-0}
    local root=${SNOWTRAIN_LOG_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}/logs/slurm}
    ST_LOG_DIR="$root/${SLURM_JOB_NAME:-job}-${SLURM_JOB_ID}"
    mkdir -p "$ST_LOG_DIR" || st_die 1 "cannot create the log folder $ST_LOG_DIR"
    ST_LOG_DIR=$(cd "$ST_LOG_DIR" && pwd)
    # Everything from here on also goes to run-<R>.log. tee ignores the stop signals, so that a
    # signal sent to the whole job cannot cut the log short.
    exec > >(trap '' USR1 USR2 TERM INT HUP; exec tee -a "$ST_LOG_DIR/run-$ST_RESTART.log") 2>&1

    st_log "job ${SLURM_JOB_ID} (${SLURM_JOB_NAME:-}) restart ${ST_RESTART} on ${SLURM_JOB_NODELIST:-?}:" \
        "${SLURM_JOB_NUM_NODES:-1} node(s), ${SLURM_NTASKS:-1} task(s); logs in $ST_LOG_DIR"
    st_setup_env
    st_record_version
}

# Sources a setup hook, loads modules, activates a virtual environment, prepares a container.
st_setup_env() {
    if [[ -n ${SNOWTRAIN_SETUP:-} ]]; then
        st_log "setup: $SNOWTRAIN_SETUP"
        if [[ -f $SNOWTRAIN_SETUP ]]; then
            # shellcheck disable=SC1090
            source "$SNOWTRAIN_SETUP" || st_die 1 "SNOWTRAIN_SETUP=$SNOWTRAIN_SETUP failed"
        else
            eval "$SNOWTRAIN_SETUP" || st_die 1 "SNOWTRAIN_SETUP command failed: $SNOWTRAIN_SETUP"
        fi
    fi
    if [[ -n ${SNOWTRAIN_MODULES:-} ]]; then
        if ! type module >/dev/null 2>&1; then
            local f
            for f in /etc/profile.d/lmod.sh /etc/profile.d/modules.sh /usr/share/lmod/lmod/init/bash \
                     /usr/share/modules/init/bash; do
                # shellcheck disable=SC1090
                [[ -f $f ]] && source "$f" && break
            done
        fi
        type module >/dev/null 2>&1 || st_die 1 "SNOWTRAIN_MODULES is set but the 'module' command is missing"
        st_log "module load $SNOWTRAIN_MODULES"
        # shellcheck disable=SC2086
        module load $SNOWTRAIN_MODULES || st_die 1 "module load $SNOWTRAIN_MODULES failed"
    fi

    # Usable GPUs per node: SNOWTRAIN_GPUS_PER_NODE, else (where nvidia-smi works) those in
    # CUDA_VISIBLE_DEVICES (SLURM sets it from the gres) or all nvidia-smi lists, else 0. (SLURM's
    # own count is no guide: an --exclusive job gets every gres of its nodes, even --gres=none.)
    if [[ -z ${SNOWTRAIN_GPUS_PER_NODE:-} ]]; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
                SNOWTRAIN_GPUS_PER_NODE=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .)
            else
                SNOWTRAIN_GPUS_PER_NODE=$(nvidia-smi -L | grep -c '^GPU')
            fi
        else
            SNOWTRAIN_GPUS_PER_NODE=0
        fi
    fi
    export SNOWTRAIN_GPUS_PER_NODE

    ST_RUN=()        # prefix of a command run in the container (apptainer/singularity)
    ST_SRUN_CT=()    # srun flags that put a step in the container (pyxis)
    ST_VENV=""
    if [[ -n ${SNOWTRAIN_CONTAINER:-} ]]; then
        local rt=${SNOWTRAIN_CONTAINER_RUNTIME:-}
        if [[ -z $rt ]]; then
            if [[ $SNOWTRAIN_CONTAINER == *.sif || $SNOWTRAIN_CONTAINER == *.simg ]]; then
                rt=$(command -v apptainer >/dev/null 2>&1 && echo apptainer || echo singularity)
            else
                rt=pyxis
            fi
        fi
        local mounts=${SNOWTRAIN_CONTAINER_MOUNTS:-$PWD,$SNOWTRAIN_HOME} m pairs=""
        # shellcheck disable=SC2206
        local extra=(${SNOWTRAIN_CONTAINER_ARGS:-})
        case $rt in
            apptainer|singularity)
                command -v "$rt" >/dev/null 2>&1 || st_die 1 "SNOWTRAIN_CONTAINER_RUNTIME=$rt: $rt not found"
                ST_RUN=("$rt" exec --bind "$mounts" --pwd "$PWD")
                [[ $SNOWTRAIN_GPUS_PER_NODE -gt 0 ]] && ST_RUN+=(--nv)
                ST_RUN+=("${extra[@]}" "$SNOWTRAIN_CONTAINER") ;;
            pyxis)
                for m in ${mounts//,/ }; do
                    [[ $m == *:* ]] || m="$m:$m"
                    pairs+="${pairs:+,}$m"
                done
                ST_SRUN_CT=(--container-image="$SNOWTRAIN_CONTAINER" --container-mounts="$pairs"
                            --container-workdir="$PWD" "${extra[@]}") ;;
            *) st_die 1 "SNOWTRAIN_CONTAINER_RUNTIME=$rt: use apptainer, singularity or pyxis" ;;
        esac
        st_log "container: $SNOWTRAIN_CONTAINER ($rt)"
        # A virtual environment on a mounted path is activated inside the container.
        ST_VENV=${SNOWTRAIN_VENV:-}
    else
        local venv=${SNOWTRAIN_VENV:-}
        if [[ -z $venv && -f $SNOWTRAIN_HOME/.venv/bin/activate ]]; then
            venv=$SNOWTRAIN_HOME/.venv
        fi
        if [[ -n $venv && $venv != none ]]; then
            [[ -f $venv/bin/activate ]] || st_die 1 "SNOWTRAIN_VENV=$venv has no bin/activate"
            # shellcheck disable=SC1091
            source "$venv/bin/activate" || st_die 1 "cannot activate $venv"
            st_log "venv: $venv"
        fi
    fi

    # Threads per rank: the CPUs SLURM gave each task. srun (22.05+) no longer reads
    # SLURM_CPUS_PER_TASK, so pass it on explicitly.
    if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
        export SRUN_CPUS_PER_TASK=${SRUN_CPUS_PER_TASK:-$SLURM_CPUS_PER_TASK}
    fi
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
    export PYTHONUNBUFFERED=1
}

# st_tool CMD...: runs a tool (snowtrain config, python) where the ranks will run it.
st_tool() {
    if [[ ${#ST_SRUN_CT[@]} -gt 0 ]]; then
        srun --nodes=1 --ntasks=1 --kill-on-bad-exit=1 "${ST_SRUN_CT[@]}" \
            bash -c '[[ -n $1 ]] && source "$1/bin/activate"; shift; exec "$@"' st-tool "$ST_VENV" "$@"
    elif [[ ${#ST_RUN[@]} -gt 0 ]]; then
        "${ST_RUN[@]}" bash -c '[[ -n $1 ]] && source "$1/bin/activate"; shift; exec "$@"' st-tool "$ST_VENV" "$@"
    else
        "$@"
    fi
}

# version-<R>.txt: which code this run used.
st_record_version() {
    local f="$ST_LOG_DIR/version-$ST_RESTART.txt"
    {
        echo "date: $(date -Is)"
        echo "snowtrain_home: $SNOWTRAIN_HOME"
        if command -v git >/dev/null 2>&1 && git -C "$SNOWTRAIN_HOME" rev-parse HEAD >/dev/null 2>&1; then
            # Read-only: no index refresh, no lock (other jobs may share the checkout).
            local dirty
            dirty=$(GIT_OPTIONAL_LOCKS=0 git -C "$SNOWTRAIN_HOME" status --porcelain --untracked-files=no 2>/dev/null | head -n1)
            echo "git_commit: $(git -C "$SNOWTRAIN_HOME" rev-parse HEAD)"
            echo "git_dirty: $([[ -n $dirty ]] && echo true || echo false)"
        else
            echo "git_commit: unknown (not a git checkout)"
        fi
        st_tool python -c '
import importlib.metadata as m, platform
for p in ("snowtrain", "torch", "numpy", "megatron-core", "mpi4py"):
    try:
        print(f"{p}: {m.version(p)}")
    except m.PackageNotFoundError:
        pass
print(f"python: {platform.python_version()}")' 2>&1
    } >"$f"
    st_log "code: $(grep -E '^(git_commit|git_dirty|snowtrain):' "$f" | tr '\n' ' ')"
}

# ----------------------------------------------------------------------------- rendezvous

st_rendezvous() {
    local first addr
    first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null | head -n1)
    # The node's address as SLURM reaches it (its NodeAddr; usually the host name itself).
    addr=$(scontrol show node -o "$first" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
    export MASTER_ADDR=${MASTER_ADDR:-${addr:-$first}}
    export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
    # NCCL: fail a collective instead of hanging when a rank dies; warnings only. Site settings
    # (NCCL_IB_HCA, NCCL_SOCKET_IFNAME, ...) belong in SNOWTRAIN_SETUP or the environment.
    export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
    export NCCL_ASYNC_ERROR_HANDLING=${NCCL_ASYNC_ERROR_HANDLING:-1}
    export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
    export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
    {
        echo "job_id: $SLURM_JOB_ID"
        echo "job_name: ${SLURM_JOB_NAME:-}"
        echo "restart: $ST_RESTART"
        echo "nodes: ${SLURM_JOB_NODELIST:-} (${SLURM_JOB_NUM_NODES:-1})"
        echo "tasks: ${SLURM_NTASKS:-1} (${SLURM_TASKS_PER_NODE:-?} per node), cpus per task: ${SLURM_CPUS_PER_TASK:-1}"
        echo "gpus_per_node: $SNOWTRAIN_GPUS_PER_NODE"
        echo "partition: ${SLURM_JOB_PARTITION:-}  account: ${SLURM_JOB_ACCOUNT:-}"
        echo "master: $MASTER_ADDR:$MASTER_PORT"
        echo "workdir: $PWD"
        echo "gres: ${SLURM_JOB_GPUS:+gpus $SLURM_JOB_GPUS}${SLURM_GPUS_ON_NODE:+ ($SLURM_GPUS_ON_NODE on this node)}"
        env | grep -E '^(NCCL_|TORCH_NCCL_|CUDA_DEVICE_MAX|CUDA_VISIBLE_DEVICES|OMP_NUM_THREADS|SNOWTRAIN_)' | sort
    } >"$ST_LOG_DIR/job-$ST_RESTART.txt"
    st_log "rendezvous $MASTER_ADDR:$MASTER_PORT, ${SLURM_NTASKS:-1} rank(s), $SNOWTRAIN_GPUS_PER_NODE GPU(s) per node"
}

# ----------------------------------------------------------------------------- signals

ST_SRUN_PID=""
ST_STOP_SIGNAL=""
ST_TRAPPED=0

st_on_signal() {
    ST_TRAPPED=1
    if [[ -n $ST_STOP_SIGNAL ]]; then
        st_log "received SIG$1 again (stop already requested)"
    else
        ST_STOP_SIGNAL=$1
        st_log "received SIG$1: asking the ranks to save a checkpoint and stop"
    fi
    if [[ -n $ST_SRUN_PID ]] && kill -0 "$ST_SRUN_PID" 2>/dev/null; then
        # srun forwards the signal to every task of the step, on every node.
        kill -USR1 "$ST_SRUN_PID" 2>/dev/null || scancel --signal=USR1 "$SLURM_JOB_ID" 2>/dev/null
    fi
}

st_trap_signals() {
    trap 'st_on_signal USR1' USR1
    trap 'st_on_signal TERM' TERM
    # Without --signal=B:USR1@... a grace period set at run time still works: a timer sends
    # SIGUSR1 to this shell SNOWTRAIN_GRACE seconds before the job's end time.
    if [[ -n ${SNOWTRAIN_GRACE:-} ]]; then
        local end now left
        end=$(squeue -h -j "$SLURM_JOB_ID" -o %e 2>/dev/null | head -n1)
        if [[ -n $end && $end != N/A && $end != Unknown ]] && end=$(date -d "$end" +%s 2>/dev/null); then
            now=$(date +%s)
            left=$((end - now - SNOWTRAIN_GRACE))
            ((left < 0)) && left=0
            st_log "grace timer: SIGUSR1 in ${left}s (${SNOWTRAIN_GRACE}s before the time limit)"
            (trap - USR1 TERM; sleep "$left" && kill -USR1 $$) </dev/null >/dev/null 2>&1 &
            ST_TIMER_PID=$!
        fi
    fi
}

# st_wait_srun: waits for the background srun, through any number of trapped signals. Sets ST_RC.
st_wait_srun() {
    while :; do
        ST_TRAPPED=0
        wait "$ST_SRUN_PID"
        ST_RC=$?
        # A trapped signal makes `wait` return >128 at once; srun is still running then.
        if ((ST_RC > 128)) && ((ST_TRAPPED)); then
            continue
        fi
        break
    done
    ST_SRUN_PID=""
    [[ -n ${ST_TIMER_PID:-} ]] && kill "$ST_TIMER_PID" 2>/dev/null
}

# ----------------------------------------------------------------------------- requeue

st_secs() {  # [D-]HH:MM:SS, MM:SS or SS -> seconds
    local t=$1 d=0 h=0 m=0 s=0
    [[ $t == *-* ]] && { d=${t%%-*}; t=${t#*-}; }
    IFS=: read -r -a f <<<"$t"
    case ${#f[@]} in
        3) h=${f[0]} m=${f[1]} s=${f[2]} ;;
        2) m=${f[0]} s=${f[1]} ;;
        1) s=${f[0]} ;;
    esac
    echo $(((10#$d * 24 + 10#$h) * 3600 + 10#$m * 60 + 10#$s))
}

# True when the job has run for (about) its whole time limit.
st_time_limit_reached() {
    local info rt tl
    info=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null) || return 1
    rt=$(grep -o 'RunTime=[^ ]*' <<<"$info" | cut -d= -f2)
    tl=$(grep -o 'TimeLimit=[^ ]*' <<<"$info" | cut -d= -f2)
    [[ $rt =~ ^[0-9:-]+$ && $tl =~ ^[0-9:-]+$ ]] || return 1
    (($(st_secs "$rt") + 10 >= $(st_secs "$tl")))
}

# st_requeue REASON: requeue this job (same job id; SLURM_RESTART_COUNT grows by one) unless
# disabled, over the restart limit, or cancelled by its owner. Exits.
st_requeue() {
    if [[ ${SNOWTRAIN_REQUEUE:-1} == 0 ]]; then
        st_log "$1; SNOWTRAIN_REQUEUE=0: not requeueing (resubmit to resume)"
        exit 3
    fi
    if ((ST_RESTART >= ${SNOWTRAIN_MAX_RESTARTS:-50})); then
        st_log "$1; restart $ST_RESTART reached SNOWTRAIN_MAX_RESTARTS=${SNOWTRAIN_MAX_RESTARTS:-50}: not requeueing"
        exit 3
    fi
    # SIGTERM alone (no SIGUSR1 first) comes from `scancel`, a time limit or a preemption; only
    # the last two requeue, so that a cancelled job stays cancelled.
    # (A preempted job has a PreemptTime; its state reads COMPLETING, as a cancelled one's does.)
    if [[ $ST_STOP_SIGNAL == TERM ]] && ! st_time_limit_reached; then
        local preempt
        preempt=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | grep -o 'PreemptTime=[^ ]*' | cut -d= -f2)
        if [[ -z $preempt || $preempt == None ]]; then
            st_log "$1; SIGTERM before the time limit (scancel): not requeueing (resubmit to resume)"
            exit 3
        fi
        st_log "preempted at $preempt"
    fi
    st_log "$1; requeueing job $SLURM_JOB_ID (next run: SLURM_RESTART_COUNT=$((ST_RESTART + 1)))"
    if scontrol requeue "$SLURM_JOB_ID"; then
        exit 3
    fi
    st_log "scontrol requeue failed: resubmit the job to resume from its latest checkpoint"
    exit 3
}

# st_requeue_hung: a rank found itself hung (exit 4: no step for training.hang_timeout_s; its
# stacks are in the log). Requeued, as the cause is often a node or the network, at most
# SNOWTRAIN_MAX_HANG_RESTARTS times (default 3) over the job's runs: a hang that comes back
# every time needs a person. Exits.
st_requeue_hung() {
    local count_file="$ST_LOG_DIR/hangs" n
    n=$(($(cat "$count_file" 2>/dev/null || echo 0) + 1))
    echo "$n" >"$count_file"
    if ((n > ${SNOWTRAIN_MAX_HANG_RESTARTS:-3})); then
        st_log "a rank hung (exit 4), for the ${n}th time in this job: over SNOWTRAIN_MAX_HANG_RESTARTS=${SNOWTRAIN_MAX_HANG_RESTARTS:-3}, not requeueing; the ranks' stacks are in the log"
        exit 4
    fi
    st_requeue "a rank hung (exit 4, hang $n of at most ${SNOWTRAIN_MAX_HANG_RESTARTS:-3}; its stacks are in the log); the latest committed checkpoint is the resume point"
}

# ----------------------------------------------------------------------------- training

# st_train_phase INDEX [ARGS...]: trains the recipe's INDEX-th phase (1-based), or
# SNOWTRAIN_PHASE; ARGS go to `snowtrain train` (e.g. --set KEY=VALUE, --max-steps N).
st_train_phase() {
    local index=$1
    shift
    st_trap_signals
    local config=${SNOWTRAIN_CONFIG:-$SNOWTRAIN_HOME/configs/recipe/snowcoder.yaml}
    [[ -f $config ]] || st_die 2 "recipe $config not found: set SNOWTRAIN_CONFIG (or sbatch --export=ALL,SNOWTRAIN_CONFIG=...)"

    # --set overrides: SNOWTRAIN_SET (whitespace-separated KEY=VALUE), then the script's arguments.
    local sets=() kv a prev=""
    for kv in ${SNOWTRAIN_SET:-}; do sets+=(--set "$kv"); done
    for a in "$@"; do
        [[ $prev == --set ]] && sets+=(--set "$a")
        [[ $a == --set=* ]] && sets+=(--set "${a#--set=}")
        prev=$a
    done
    local extra=()
    for kv in ${SNOWTRAIN_SET:-}; do extra+=(--set "$kv"); done
    extra+=("$@")

    local resolved="$ST_LOG_DIR/config-$ST_RESTART.yaml"
    if ! st_tool snowtrain config --config "$config" "${sets[@]}" >"$resolved"; then
        st_die 2 "the recipe does not validate (see above): $config ${sets[*]}"
    fi
    local phase=${SNOWTRAIN_PHASE:-}
    if [[ -z $phase ]]; then
        phase=$(awk -v n="$index" '
            /^phases:/ { p = 1; next }
            p && /^[^ -]/ { p = 0 }
            p && /^- name: / { c++; if (c == n) { sub(/^- name: /, ""); gsub(/["\047]/, ""); print; exit } }' "$resolved")
        [[ -n $phase ]] || st_die 2 "$config has fewer than $index phases (set SNOWTRAIN_PHASE)"
    fi
    st_log "recipe $config, phase $phase${sets[*]:+, overrides: ${sets[*]}}; resolved config: $resolved"

    st_rendezvous
    if [[ $SNOWTRAIN_GPUS_PER_NODE -gt 0 && -n ${SLURM_NTASKS_PER_NODE:-} ]] &&
        ((SLURM_NTASKS_PER_NODE > SNOWTRAIN_GPUS_PER_NODE)); then
        st_log "warning: $SLURM_NTASKS_PER_NODE tasks per node but $SNOWTRAIN_GPUS_PER_NODE GPUs per node (use one task per GPU)"
    fi
    if [[ -n $ST_STOP_SIGNAL ]]; then
        st_requeue "stop requested (SIG$ST_STOP_SIGNAL) before training started"
    fi

    # One task per GPU, started by srun itself (not torchrun): every rank is a direct child of
    # its slurmstepd, so a forwarded SIGUSR1 reaches each rank (torchrun's agent would die on
    # it), and SLURM_PROCID/SLURM_LOCALID give rank and local rank. Every task sees all GPUs of
    # its node and takes cuda:LOCAL_RANK.
    # shellcheck disable=SC2206
    local srun_args=(--kill-on-bad-exit="${SNOWTRAIN_KILL_ON_BAD_EXIT:-1}" --label ${SNOWTRAIN_SRUN_ARGS:-})
    # A rank that hangs writes here before it exits 4 (snowtrain/watchdog.py): srun reports the
    # status of the ranks it killed after the first exit, not that 4.
    export SNOWTRAIN_HANG_MARKER="$ST_LOG_DIR/hung-$ST_RESTART"
    st_log "srun ${srun_args[*]} snowtrain train --config $config --phase $phase ${extra[*]}"
    srun "${srun_args[@]}" "${ST_SRUN_CT[@]}" "${ST_RUN[@]}" bash -c '
        echo "rank ${SLURM_PROCID}/${SLURM_NTASKS} on ${SLURMD_NODENAME:-?} ($(hostname)), local rank ${SLURM_LOCALID}, master ${MASTER_ADDR}:${MASTER_PORT}"
        if [[ -n $1 ]]; then source "$1/bin/activate" || exit 1; fi
        shift
        exec "$@"' st-rank "$ST_VENV" snowtrain train --config "$config" --phase "$phase" "${extra[@]}" &
    ST_SRUN_PID=$!
    st_wait_srun
    local rc=$ST_RC
    st_log "training exited $rc${ST_STOP_SIGNAL:+ (after SIG$ST_STOP_SIGNAL)}"
    case $rc in
        0) st_log "phase $phase finished (or reached --max-steps)"; exit 0 ;;
        2) st_die 2 "configuration error: not requeueing" ;;
        3) st_requeue "stopped with a checkpoint saved" ;;
        4) st_requeue_hung ;;
    esac
    if [[ -s $SNOWTRAIN_HANG_MARKER ]]; then
        st_log "$(head -n1 "$SNOWTRAIN_HANG_MARKER") (training exited $rc as srun ended the other ranks)"
        st_requeue_hung
    fi
    if [[ -n $ST_STOP_SIGNAL ]]; then
        # Ranks killed while stopping (e.g. by --kill-on-bad-exit once the first rank exited 3).
        st_requeue "stopped on SIG$ST_STOP_SIGNAL (exit $rc); the latest committed checkpoint is the resume point"
    fi
    st_log "training failed (exit $rc): not requeueing; resubmit to resume from the latest good checkpoint"
    exit "$rc"
}

# ----------------------------------------------------------------------------- data prep

# st_data_prep [ARGS...]: runs `data-prep ARGS` (or SNOWTRAIN_DATA_PREP_CMD; ARGS default to
# SNOWTRAIN_DATA_PREP_ARGS) as SLURM_NTASKS MPI ranks over the allocation, and exits with its
# status. st_data_prep_cmd [ARGS...] only sets ST_DP_CMD, the launcher's command line (for a
# caller that runs it in the background, as synth.sh does).
#
# Launcher (SNOWTRAIN_MPI_LAUNCHER): `mpiexec` (the default when the environment has one) starts
# the ranks itself; Open MPI's mpiexec reads the allocation from SLURM and starts its daemons
# on the nodes with srun, so it works whatever PMI the cluster offers (the PyPI Open MPI 5
# cannot be started by `srun --mpi=pmi2`, and Debian's Slurm lacks the PMIx library). `srun`
# starts the ranks directly (`srun --mpi=$SNOWTRAIN_SRUN_MPI`, default pmix): use it with an MPI
# built against the cluster's PMIx, and for pyxis containers.
st_data_prep_cmd() {
    local args=("$@") cmd=()
    if [[ ${#args[@]} -eq 0 && -n ${SNOWTRAIN_DATA_PREP_ARGS:-} ]]; then
        read -r -a args <<<"$SNOWTRAIN_DATA_PREP_ARGS"
    fi
    [[ ${#args[@]} -gt 0 ]] || st_die 2 "nothing to run: sbatch data_prep.sh phase1 --config CONFIG.yaml (or set SNOWTRAIN_DATA_PREP_ARGS)"
    read -r -a cmd <<<"${SNOWTRAIN_DATA_PREP_CMD:-data-prep}"
    local launcher=${SNOWTRAIN_MPI_LAUNCHER:-}
    if [[ -z $launcher ]]; then
        if [[ ${#ST_SRUN_CT[@]} -eq 0 ]] && command -v mpiexec >/dev/null 2>&1; then launcher=mpiexec; else launcher=srun; fi
    fi
    local n=${SLURM_NTASKS:-1}
    if [[ $(id -u) -eq 0 ]]; then  # Open MPI refuses root without these
        export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1}
        export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
    fi
    local wrap=(bash -c '[[ -n $1 ]] && { source "$1/bin/activate" || exit 1; }; shift; exec "$@"' st-rank "$ST_VENV")
    case $launcher in
        mpiexec)
            # shellcheck disable=SC2206
            local margs=(-n "$n" --bind-to none ${SNOWTRAIN_MPIEXEC_ARGS:-})
            st_log "mpiexec ${margs[*]} ${cmd[*]} ${args[*]}"
            ST_DP_CMD=(mpiexec "${margs[@]}" "${ST_RUN[@]}" "${wrap[@]}" "${cmd[@]}" "${args[@]}") ;;
        srun)
            # shellcheck disable=SC2206
            local sargs=(--mpi="${SNOWTRAIN_SRUN_MPI:-pmix}" --kill-on-bad-exit=1 ${SNOWTRAIN_SRUN_ARGS:-})
            st_log "srun ${sargs[*]} ${cmd[*]} ${args[*]}"
            ST_DP_CMD=(srun "${sargs[@]}" "${ST_SRUN_CT[@]}" "${ST_RUN[@]}" "${wrap[@]}" "${cmd[@]}" "${args[@]}") ;;
        *) st_die 2 "SNOWTRAIN_MPI_LAUNCHER=$launcher: use mpiexec or srun" ;;
    esac
}

st_data_prep() {
    st_data_prep_cmd "$@"
    local rc
    "${ST_DP_CMD[@]}"
    rc=$?
    st_log "data prep exited $rc with ${SLURM_NTASKS:-1} rank(s)"
    exit "$rc"
}
