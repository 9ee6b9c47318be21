#!/bin/bash
# Offline data preparation (`data-prep ...`) across MPI ranks, one rank per task:
#
#   sbatch [--nodes=N] [--ntasks-per-node=R] launch/slurm/data_prep.sh phase1 --config configs/data_prep/phase1.yaml
#   SNOWTRAIN_DATA_PREP_ARGS="phase1 --config ..." sbatch launch/slurm/data_prep.sh
#
# Arguments (or SNOWTRAIN_DATA_PREP_ARGS) go to `data-prep` (or SNOWTRAIN_DATA_PREP_CMD).
# The ranks are started by the environment's mpiexec inside the allocation (it uses SLURM's
# node list and srun), or by `srun --mpi=pmix` with SNOWTRAIN_MPI_LAUNCHER=srun: see
# st_data_prep in launch/slurm/common.sh and docs/slurm.md. CPU work: no GPUs requested.
#SBATCH --job-name=snowtrain-data-prep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=32
#SBATCH --cpus-per-task=2
#SBATCH --time=24:00:00
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
st_data_prep "$@"
