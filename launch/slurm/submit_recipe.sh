#!/bin/bash
# Submits a whole recipe: one job per phase, each starting after the previous one completed
# successfully (--dependency=afterok; a job that requeues itself counts once it finally ends).
#
#   bash launch/slurm/submit_recipe.sh [--config RECIPE.yaml] [--from PHASE] [--only PHASE]
#        [--after JOBID] [--dry-run] [SBATCH FLAGS ...] [-- TRAIN ARGS ...]
#
#   --config   the recipe (default: SNOWTRAIN_CONFIG, else configs/recipe/snowcoder.yaml)
#   --from     skip the phases before PHASE (e.g. phase 1 is already done)
#   --only     submit just PHASE
#   --after    the first job waits for JOBID too (e.g. a data_prep.sh job)
#   --dry-run  print the sbatch commands instead of running them
#   SBATCH FLAGS  go to every job (--partition, --account, --nodes, --time, --qos, ...)
#   TRAIN ARGS    go to every `snowtrain train` (e.g. --set optim.lr=3e-4; a --set before
#                 the `--` counts as one too)
#
# Environment: SNOWTRAIN_GPUS_PER_NODE=0 submits CPU jobs (--gres=none; give
# --ntasks-per-node), N>0 gives --gres=gpu:N --ntasks-per-node=N; SNOWTRAIN_GRACE=S gives
# --signal=B:USR1@S; SNOWTRAIN_LOG_ROOT (default ./logs/slurm) holds the jobs' output; every
# other SNOWTRAIN_* variable reaches the jobs (sbatch exports the environment).
# Prints one line per job: "<phase> <job id>".
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export SNOWTRAIN_HOME=${SNOWTRAIN_HOME:-$(cd "$HERE/../.." && pwd)}

config=${SNOWTRAIN_CONFIG:-$SNOWTRAIN_HOME/configs/recipe/snowcoder.yaml}
from="" only="" after="" dry=0
flags=() train=()
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
sets=()
for kv in ${SNOWTRAIN_SET:-}; do sets+=(--set "$kv"); done
prev=""
for a in "${train[@]}"; do
    [[ $prev == --set ]] && sets+=(--set "$a")
    [[ $a == --set=* ]] && sets+=(--set "${a#--set=}")
    prev=$a
done
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

# Flags every job gets (the user's own flags come last and win).
log_root=${SNOWTRAIN_LOG_ROOT:-$PWD/logs/slurm}
[[ $log_root == /* ]] || log_root=$PWD/$log_root
[[ $dry == 1 ]] || mkdir -p "$log_root"
export SNOWTRAIN_LOG_ROOT=$log_root
common=(--parsable --kill-on-invalid-dep=yes --output="$SNOWTRAIN_LOG_ROOT/%x-%j.out")
if [[ -n ${SNOWTRAIN_GPUS_PER_NODE:-} ]]; then
    if [[ $SNOWTRAIN_GPUS_PER_NODE -eq 0 ]]; then
        common+=(--gres=none)
    else
        common+=(--gres="gpu:$SNOWTRAIN_GPUS_PER_NODE" --ntasks-per-node="$SNOWTRAIN_GPUS_PER_NODE")
    fi
fi
[[ -n ${SNOWTRAIN_GRACE:-} ]] && common+=(--signal="B:USR1@$SNOWTRAIN_GRACE")

dep=$after started=0 i=0
[[ -z $from ]] && started=1
for phase in "${phases[@]}"; do
    i=$((i + 1))
    [[ $phase == "$from" ]] && started=1
    [[ $started == 1 ]] || continue
    [[ -n $only && $phase != "$only" ]] && continue
    script=$HERE/phase$((i <= 3 ? i : 3)).sh
    cmd=(sbatch "${common[@]}" --job-name="snowtrain-$phase")
    [[ -n $dep ]] && cmd+=(--dependency="afterok:$dep")
    cmd+=("${flags[@]}" "$script" "${train[@]}")
    if [[ $dry == 1 ]]; then
        echo "SNOWTRAIN_PHASE=$phase ${cmd[*]}"
        id="<$phase>"
    else
        id=$(SNOWTRAIN_PHASE=$phase "${cmd[@]}") || { echo "submit_recipe: sbatch failed for $phase" >&2; exit 1; }
        id=${id%%;*}
    fi
    echo "$phase $id"
    dep=$id
done
if [[ -n $from && $started == 0 ]]; then
    echo "submit_recipe: no phase named '$from' in $config (phases: ${phases[*]})" >&2
    exit 2
fi
