#!/bin/bash
# Submits a whole recipe: one job per phase, each starting after the previous one completed
# successfully (--dependency=afterok; a job that requeues itself counts once it finally ends);
# optionally the data preparation before it and an evaluation after each phase.
#
#   bash launch/slurm/submit_recipe.sh [--config RECIPE.yaml] [--from PHASE] [--only PHASE]
#        [--after JOBID] [--with-data [--data-configs DIR]] [--eval] [--dry-run]
#        [--all-flags "..."] [--data-flags "..."] [--data1-flags "..."] [--data2-flags "..."]
#        [--data3-flags "..."] [--eval-flags "..."] [SBATCH FLAGS ...] [-- TRAIN ARGS ...]
#
#   --config   the recipe (default: SNOWTRAIN_CONFIG, else configs/recipe/snowcoder.yaml)
#   --from     skip the phases before PHASE (e.g. phase 1 is already done)
#   --only     submit just PHASE
#   --after    the first job (the first data job and the first training job) waits for JOBID too
#   --with-data  also submit the data preparation of the phases submitted: data-phase1
#              (data_prep.sh phase1), data-phase2 (data_prep.sh phase2, after data-phase1),
#              data-phase3 (synth.sh, after data-phase2); training phase N waits for data-phase N
#              too (N = 1..3)
#   --data-configs  where phase1.yaml, phase2.yaml, phase3.yaml are (default configs/data_prep)
#   --eval     after each training phase, eval.sh on its final checkpoint (HumanEval; afterok on
#              that phase); the next phase does not wait for it
#   --dry-run  print the sbatch commands instead of running them
#   SBATCH FLAGS  go to every training job (--partition, --account, --nodes, --time, --qos, ...)
#   --all-flags "..."   sbatch flags for every job: training, data and eval (--account, --qos)
#   --data-flags "..."  sbatch flags for the data jobs; --dataN-flags for data-phaseN alone (they
#              come after --data-flags and win); --eval-flags "..." for the eval jobs. Each is
#              one string of flags separated by spaces (no quoting inside); repeatable.
#   TRAIN ARGS    go to every `snowtrain train` (e.g. --set optim.lr=3e-4; a --set before
#                 the `--` counts as one too; the --set ones go to eval.sh as well)
#
# Environment: SNOWTRAIN_GPUS_PER_NODE=0 submits CPU jobs (--gres=none on every job; give
# --ntasks-per-node), N>0 gives the training jobs --gres=gpu:N --ntasks-per-node=N;
# SNOWTRAIN_GRACE=S gives the training jobs --signal=B:USR1@S; SNOWTRAIN_LOG_ROOT (default
# ./logs/slurm) holds the jobs' output (and eval-<phase>/, the evaluations); every other
# SNOWTRAIN_* variable reaches the jobs (sbatch exports the environment), e.g. SNOWTRAIN_DATA,
# SNOWTRAIN_SYNTH_*, SNOWTRAIN_EVAL_ARGS.
# Prints one line per job: "<name> <job id>", where the name is the phase, data-phaseN or
# eval-<phase>.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export SNOWTRAIN_HOME=${SNOWTRAIN_HOME:-$(cd "$HERE/../.." && pwd)}

config=${SNOWTRAIN_CONFIG:-$SNOWTRAIN_HOME/configs/recipe/snowcoder.yaml}
from="" only="" after="" dry=0 with_data=0 do_eval=0
data_dir=$SNOWTRAIN_HOME/configs/data_prep
flags=() train=() all_flags=() data_flags=() data1_flags=() data2_flags=() data3_flags=() eval_flags=()
# add_flags ARRAY STRING: appends the space-separated flags of STRING to ARRAY.
add_flags() {
    local -n arr=$1
    local more=()
    read -r -a more <<<"$2"
    arr+=("${more[@]}")
}
while [[ $# -gt 0 ]]; do
    case $1 in
        --config) config=$2; shift 2 ;;
        --config=*) config=${1#*=}; shift ;;
        --from) from=$2; shift 2 ;;
        --from=*) from=${1#*=}; shift ;;
        --only) only=$2; shift 2 ;;
        --only=*) only=${1#*=}; shift ;;
        --after) after=$2; shift 2 ;;
        --after=*) after=${1#*=}; shift ;;
        --with-data) with_data=1; shift ;;
        --data-configs) data_dir=$2; shift 2 ;;
        --data-configs=*) data_dir=${1#*=}; shift ;;
        --eval) do_eval=1; shift ;;
        --all-flags|--data-flags|--data[123]-flags|--eval-flags)
            [[ $# -ge 2 ]] || { echo "submit_recipe: $1 needs a value" >&2; exit 2; }
            a=${1#--}; add_flags "${a//-/_}" "$2"; shift 2 ;;
        --all-flags=*|--data-flags=*|--data[123]-flags=*|--eval-flags=*)
            a=${1%%=*}; a=${a#--}; add_flags "${a//-/_}" "${1#*=}"; shift ;;
        --dry-run) dry=1; shift ;;
        --set) train+=(--set "$2"); shift 2 ;;
        --set=*) train+=(--set "${1#--set=}"); shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        --) shift; train+=("$@"); break ;;
        *) flags+=("$1"); shift ;;
    esac
done
[[ -f $config ]] || { echo "submit_recipe: recipe $config not found (--config)" >&2; exit 2; }
config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")
export SNOWTRAIN_CONFIG=$config

# The phases, in order, from the resolved recipe (validates it before anything is queued).
venv=${SNOWTRAIN_VENV:-$SNOWTRAIN_HOME/.venv}
snowtrain=snowtrain
[[ -x $venv/bin/snowtrain ]] && snowtrain=$venv/bin/snowtrain
sets=() train_sets=()
for kv in ${SNOWTRAIN_SET:-}; do sets+=(--set "$kv"); done
prev=""
for a in "${train[@]}"; do
    [[ $prev == --set ]] && train_sets+=(--set "$a")
    [[ $a == --set=* ]] && train_sets+=(--set "${a#--set=}")
    prev=$a
done
sets+=("${train_sets[@]}")
if command -v "$snowtrain" >/dev/null 2>&1; then
    resolved=$("$snowtrain" config --config "$config" "${sets[@]}") || {
        echo "submit_recipe: $config does not validate (above); nothing submitted" >&2; exit 2; }
    mapfile -t phases < <(awk '/^phases:/ { p = 1; next } p && /^[^ -]/ { p = 0 }
        p && /^- name: / { sub(/^- name: /, ""); gsub(/["\047]/, ""); print }' <<<"$resolved")
else
    echo "submit_recipe: snowtrain not found here (SNOWTRAIN_VENV): assuming phases phase1 phase2 phase3" >&2
    phases=(phase1 phase2 phase3)
fi
[[ ${#phases[@]} -gt 0 ]] || { echo "submit_recipe: $config has no phases" >&2; exit 2; }
for p in "$from" "$only"; do
    if [[ -n $p && " ${phases[*]} " != *" $p "* ]]; then
        echo "submit_recipe: no phase named '$p' in $config (phases: ${phases[*]})" >&2
        exit 2
    fi
done

# The phases to submit: their 1-based positions in the recipe.
selected=() started=0 i=0
[[ -z $from ]] && started=1
for phase in "${phases[@]}"; do
    i=$((i + 1))
    [[ $phase == "$from" ]] && started=1
    [[ $started == 1 ]] || continue
    [[ -n $only && $phase != "$only" ]] && continue
    selected+=("$i")
done

# Data preparation: data-phaseN goes with the recipe's N-th phase (N = 1, 2, 3).
data_phases=()
if [[ $with_data == 1 ]]; then
    [[ -d $data_dir ]] || { echo "submit_recipe: --data-configs $data_dir is not a folder" >&2; exit 2; }
    data_dir=$(cd "$data_dir" && pwd)
    for i in "${selected[@]}"; do
        ((i <= 3)) || continue
        [[ -f $data_dir/phase$i.yaml ]] || {
            echo "submit_recipe: $data_dir/phase$i.yaml not found (--data-configs)" >&2; exit 2; }
        data_phases+=("$i")
    done
fi

# Flags: every job gets `common`, the training jobs `train_common` too; the user's own flags
# come last and win (--all-flags first, then the kind's flags).
log_root=${SNOWTRAIN_LOG_ROOT:-$PWD/logs/slurm}
[[ $log_root == /* ]] || log_root=$PWD/$log_root
[[ $dry == 1 ]] || mkdir -p "$log_root"
export SNOWTRAIN_LOG_ROOT=$log_root
common=(--parsable --kill-on-invalid-dep=yes --output="$SNOWTRAIN_LOG_ROOT/%x-%j.out")
train_common=()
if [[ -n ${SNOWTRAIN_GPUS_PER_NODE:-} ]]; then
    if [[ $SNOWTRAIN_GPUS_PER_NODE -eq 0 ]]; then
        common+=(--gres=none)
    else
        train_common+=(--gres="gpu:$SNOWTRAIN_GPUS_PER_NODE" --ntasks-per-node="$SNOWTRAIN_GPUS_PER_NODE")
    fi
fi
[[ -n ${SNOWTRAIN_GRACE:-} ]] && train_common+=(--signal="B:USR1@$SNOWTRAIN_GRACE")

# submit NAME PHASE DEPS ARGS...: sbatch with the common flags, --job-name=snowtrain-NAME,
# --dependency=afterok:DEPS (DEPS: job ids joined by ':', or empty), then ARGS; with
# SNOWTRAIN_PHASE=PHASE unless PHASE is empty. Sets `id` and prints "NAME <id>".
submit() {
    local name=$1 phase=$2 deps=$3
    shift 3
    local cmd=(sbatch "${common[@]}" --job-name="snowtrain-$name")
    [[ -n $deps ]] && cmd+=(--dependency="afterok:$deps")
    cmd+=("${all_flags[@]}" "$@")
    if [[ $dry == 1 ]]; then
        echo "${phase:+SNOWTRAIN_PHASE=$phase }${cmd[*]}"
        id="<$name>"
    else
        if [[ -n $phase ]]; then
            id=$(SNOWTRAIN_PHASE=$phase "${cmd[@]}") || { echo "submit_recipe: sbatch failed for $name" >&2; exit 1; }
        else
            id=$(env -u SNOWTRAIN_PHASE "${cmd[@]}") || { echo "submit_recipe: sbatch failed for $name" >&2; exit 1; }
        fi
        id=${id%%;*}
    fi
    echo "$name $id"
}
join() { local IFS=:; echo "$*"; }

declare -A data_id=()
dep=$after
for n in "${data_phases[@]}"; do
    case $n in
        1) args=("$HERE/data_prep.sh" phase1 --config "$data_dir/phase1.yaml"); extra=("${data1_flags[@]}") ;;
        2) args=("$HERE/data_prep.sh" phase2 --config "$data_dir/phase2.yaml"); extra=("${data2_flags[@]}") ;;
        3) args=("$HERE/synth.sh" --config "$data_dir/phase3.yaml"); extra=("${data3_flags[@]}") ;;
    esac
    submit "data-phase$n" "" "$dep" "${data_flags[@]}" "${extra[@]}" "${args[@]}"
    data_id[$n]=$id
    dep=$id
done

dep=$after
for i in "${selected[@]}"; do
    phase=${phases[i - 1]}
    deps=()
    [[ -n $dep ]] && deps+=("$dep")
    [[ -n ${data_id[$i]:-} ]] && deps+=("${data_id[$i]}")
    script=$HERE/phase$((i <= 3 ? i : 3)).sh
    submit "$phase" "$phase" "$(join "${deps[@]}")" "${train_common[@]}" "${flags[@]}" "$script" "${train[@]}"
    dep=$id
    if [[ $do_eval == 1 ]]; then
        submit "eval-$phase" "$phase" "$dep" "${eval_flags[@]}" "$HERE/eval.sh" "${train_sets[@]}"
    fi
done
