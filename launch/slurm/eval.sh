#!/bin/bash
# Evaluates a phase's final checkpoint (`snowtrain eval`, HumanEval pass@1 by default).
#
#   SNOWTRAIN_PHASE=phase1 sbatch launch/slurm/eval.sh [--phase PHASE] [--checkpoint DIR]
#       [--set KEY=VALUE ...] [EVAL ARGS ...]
#
# 1. Finds the checkpoint: --checkpoint DIR (or SNOWTRAIN_EVAL_CHECKPOINT), else the phase-end
#    checkpoint of PHASE (--phase, else SNOWTRAIN_PHASE, else the recipe's last phase) under the
#    recipe's checkpoint.dir, <checkpoint.dir>/<PHASE>/step_N: the newest committed one whose
#    COMMITTED marker says phase_end (with a warning, the newest committed one when the phase has
#    not ended). The recipe is SNOWTRAIN_CONFIG (default configs/recipe/snowcoder.yaml), resolved
#    by `snowtrain config` with SNOWTRAIN_SET and the --set arguments (as the training jobs had).
# 2. Runs, where the training ranks would run (venv, container),
#      snowtrain eval CHECKPOINT --benchmark humaneval --out OUT --quiet $SNOWTRAIN_EVAL_ARGS EVAL ARGS
#    OUT: SNOWTRAIN_EVAL_OUT, default ${SNOWTRAIN_LOG_ROOT:-<submit folder>/logs/slurm}/eval-<PHASE>;
#    rerunning into it resumes. `--problems FILE` in the arguments replaces --benchmark; a later
#    --out wins. SNOWTRAIN_EVAL_CMD replaces `snowtrain eval`. Exits with its status (0 done, 2 a
#    user error, 1 no checkpoint / a failed endpoint).
#    SNOWTRAIN_EVAL_BENCHMARKS="humaneval HumanEvalPlus-v0.1.10.jsonl.gz MbppPlus-v0.2.0.jsonl.gz"
#    runs one evaluation per entry (a built-in name, or a problems file: EvalPlus's,
#    BigCodeBench's), each into OUT/<its name>, one after the other; the worst exit status is the
#    job's.
# 3. Writes <log root>/eval-report.md: `snowtrain eval-report` over every eval-<PHASE> folder so
#    far (or OUT alone when SNOWTRAIN_EVAL_OUT is set), each phase beside the paper's scores.
#
# The local backend runs on the CPU: no GPUs are requested. It executes model-written code
# (docs/evaluation.md): run it where that is acceptable. Everything else: common.sh, docs/slurm.md.
#SBATCH --job-name=snowtrain-eval
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

# sbatch runs a copy of this script from its spool folder: find the repository's copy.
if [[ -n ${SNOWTRAIN_HOME:-} ]]; then ST_DIR=$SNOWTRAIN_HOME/launch/slurm
elif [[ -n ${SLURM_JOB_ID:-} ]]; then ST_DIR=$(dirname "$(scontrol show job -o "$SLURM_JOB_ID" | grep -o 'Command=[^ ]*' | cut -d= -f2)")
else ST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); fi
[[ -f $ST_DIR/common.sh ]] || ST_DIR=${SLURM_SUBMIT_DIR:-.}/launch/slurm
# shellcheck source=common.sh
source "$ST_DIR/common.sh" || { echo "cannot find launch/slurm/common.sh: set SNOWTRAIN_HOME" >&2; exit 1; }

st_init "$ST_DIR"

# ----------------------------------------------------------------------------- arguments
phase=${SNOWTRAIN_PHASE:-} ckpt=${SNOWTRAIN_EVAL_CHECKPOINT:-}
sets=() args=()
for kv in ${SNOWTRAIN_SET:-}; do sets+=(--set "$kv"); done
while [[ $# -gt 0 ]]; do
    case $1 in
        --phase) phase=$2; shift 2 ;;
        --phase=*) phase=${1#*=}; shift ;;
        --checkpoint) ckpt=$2; shift 2 ;;
        --checkpoint=*) ckpt=${1#*=}; shift ;;
        --set) sets+=(--set "$2"); shift 2 ;;
        --set=*) sets+=(--set "${1#--set=}"); shift ;;
        *) args+=("$1"); shift ;;
    esac
done
extra=()
read -r -a extra <<<"${SNOWTRAIN_EVAL_ARGS:-}"
extra+=("${args[@]}")

# ----------------------------------------------------------------------------- 1. the checkpoint
if [[ -z $ckpt ]]; then
    config=${SNOWTRAIN_CONFIG:-$SNOWTRAIN_HOME/configs/recipe/snowcoder.yaml}
    [[ -f $config ]] || st_die 2 "recipe $config not found: set SNOWTRAIN_CONFIG, or give --checkpoint DIR"
    resolved="$ST_LOG_DIR/config-$ST_RESTART.yaml"
    st_tool snowtrain config --config "$config" "${sets[@]}" >"$resolved" ||
        st_die 2 "the recipe does not validate (see above): $config ${sets[*]}"
    if [[ -z $phase ]]; then
        phase=$(awk '/^phases:/ { p = 1; next } p && /^[^ -]/ { p = 0 }
            p && /^- name: / { sub(/^- name: /, ""); gsub(/["\047]/, ""); n = $0 } END { print n }' "$resolved")
    fi
    # The newest committed step_N of the phase whose marker says phase_end (the trainer's
    # final_checkpoint), else the newest committed one; ordered as the checkpoint manager does.
    ckpt=$(st_tool python -c '
import json, os, sys
from pathlib import Path
import yaml
from snowtrain.config import ConfigError, resolve_path
cfg, phase = yaml.safe_load(open(sys.argv[1])), sys.argv[2]
names = [p.get("name") for p in cfg.get("phases") or []]
if phase not in names:
    sys.exit(f"no phase named {phase!r} in the recipe (phases: {names})")
try:
    root = Path(os.path.abspath(resolve_path(str(cfg["checkpoint"]["dir"]), key="checkpoint.dir")))
except ConfigError as e:
    sys.exit(str(e))
found = []
for d in sorted((root / phase).glob("step_*")):
    try:
        m = json.loads((d / "COMMITTED").read_text())
    except (OSError, ValueError):
        continue
    if isinstance(m, dict):
        found.append((int(m.get("seq", 0)), float(m.get("committed_at", 0.0)), int(m.get("step", -1)),
                      bool(m.get("phase_end", False)), d))
found.sort(key=lambda f: f[:3])
ends = [f for f in found if f[3]]
if ends:
    print(ends[-1][4])
elif found:
    print(f"warning: no phase-end checkpoint under {root / phase}: evaluating the newest committed one, "
          f"{found[-1][4].name} (the phase has not finished)", file=sys.stderr)
    print(found[-1][4])
else:
    sys.exit(f"no committed checkpoint of phase {phase!r} under {root / phase}: train the phase first, "
             "or give --checkpoint DIR")' "$resolved" "$phase") || st_die 1 "no checkpoint to evaluate (see above)"
    st_log "phase $phase: final checkpoint $ckpt"
else
    [[ -d $ckpt ]] || st_die 2 "--checkpoint $ckpt is not a folder"
    [[ -n $phase ]] || phase=$(basename "$(dirname "$(cd "$ckpt" && pwd)")")
fi

# ----------------------------------------------------------------------------- 2. snowtrain eval
root=${SNOWTRAIN_LOG_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}/logs/slurm}
out=${SNOWTRAIN_EVAL_OUT:-$root/eval-$phase}
read -r -a cmd <<<"${SNOWTRAIN_EVAL_CMD:-snowtrain eval}"
given_problems=0
for a in "${extra[@]}"; do [[ $a == --problems || $a == --problems=* ]] && given_problems=1; done

run_eval() {  # OUT_DIR [--benchmark NAME | --problems FILE]
    local dir=$1; shift
    st_log "${cmd[*]} $ckpt $* --out $dir --quiet ${extra[*]}"
    st_tool "${cmd[@]}" "$ckpt" "$@" --out "$dir" --quiet "${extra[@]}"
    local rc=$?
    st_log "evaluation exited $rc; output: $dir"
    return "$rc"
}

# 3. The scores so far, every phase's evaluations side by side (a failed report fails nothing).
report() {  # EXIT_STATUS
    local folders=("$out")
    if [[ -z ${SNOWTRAIN_EVAL_OUT:-} ]]; then
        shopt -s nullglob
        folders=("$root"/eval-*/)
        shopt -u nullglob
    fi
    if [[ ${#folders[@]} -eq 0 || ! -e ${folders[0]} ]]; then
        st_log "no evaluation to report"
    elif st_tool snowtrain eval-report "${folders[@]}" --out "$root/eval-report.md" >/dev/null; then
        st_log "report of the evaluations so far: $root/eval-report.md"
    else
        st_log "no report of the evaluations (see above)"
    fi
    exit "$1"
}

read -r -a benchmarks <<<"${SNOWTRAIN_EVAL_BENCHMARKS:-}"
if [[ ${#benchmarks[@]} -eq 0 ]]; then
    which=(--benchmark humaneval)
    [[ $given_problems == 1 ]] && which=()
    run_eval "$out" "${which[@]}"
    report $?
fi
[[ $given_problems == 1 ]] &&
    st_die 2 "give the problems files in SNOWTRAIN_EVAL_BENCHMARKS or with --problems, not both"
worst=0
for b in "${benchmarks[@]}"; do
    name=$(basename "$b"); name=${name%.gz}; name=${name%.jsonl}; name=${name%.json}
    if [[ $b == */* || $b == *.jsonl || $b == *.jsonl.gz || $b == *.json ]]; then
        run_eval "$out/$name" --problems "$b"
    else
        run_eval "$out/$name" --benchmark "$b"
    fi
    rc=$?
    (( rc > worst )) && worst=$rc
done
report "$worst"
