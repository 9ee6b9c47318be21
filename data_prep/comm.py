"""One communicator interface for a single process and for MPI ranks (mpi4py).

MPI is used when the process was started by an MPI launcher (mpirun/mpiexec, or srun with PMI);
otherwise the run is a single process, and nothing imports mpi4py.
"""
from __future__ import annotations

import os

_MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE")


class SingleProcess:
    """The methods of an mpi4py communicator that data_prep uses, for one process."""
    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def barrier(self):
        pass

    def bcast(self, obj, root=0):
        return obj

    def allgather(self, obj):
        return [obj]

    def gather(self, obj, root=0):
        return [obj]

    def alltoall(self, objs):
        return list(objs)

    def allreduce(self, obj, op=None):
        return obj

    def scatter(self, objs, root=0):
        return objs[0]


def launched_by_mpi() -> bool:
    return any(k in os.environ for k in _MPI_ENV)


def world():
    """COMM_WORLD under an MPI launcher, else a single-process stand-in with the same methods."""
    if not launched_by_mpi():
        return SingleProcess()
    from mpi4py import MPI
    return MPI.COMM_WORLD


def local_size() -> int:
    for key in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"):
        if key in os.environ:
            try:
                return max(1, int(os.environ[key].split("(")[0]))
            except ValueError:
                pass
    return 1


def local_rank() -> int:
    """This rank's number on its node (0 outside a launcher), e.g. to pick its GPU."""
    for key in ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0
