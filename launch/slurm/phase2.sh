#!/bin/bash
# Phase 2 of the recipe (starts from phase 1's final checkpoint: init_from: previous).
#
#   sbatch [--nodes=N] [--partition=P] [--account=A] [--time=T] launch/slurm/phase2.sh [--set KEY=VALUE ...]
#
# Trains the recipe's phase 2 (SNOWTRAIN_CONFIG, default configs/recipe/snowcoder.yaml; or the
# phase SNOWTRAIN_PHASE names) with one task per GPU; resumes from the phase's latest checkpoint;
# saves a checkpoint and requeues itself when SLURM signals the end of the time limit or a
# preemption. The defaults below fit 8-GPU H100 nodes; sbatch flags override them. On a CPU-only
# cluster: --gres=none --ntasks-per-node=N. Everything else: launch/slurm/common.sh, docs/slurm.md.
#SBATCH --job-name=snowtrain-phase2
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=8
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@600
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

st_init "$ST_DIR"
st_train_phase 2 "$@"
