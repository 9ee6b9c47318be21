"""Run under mpiexec by tests/test_phase2.py: `data-prep phase2` with small training chunks, so
that the annotator's training samples are embedded by several ranks.

    mpiexec -n 2 python tests/_mpi_phase2_driver.py CHUNK phase2 --config CFG --no-progress
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.cli import main  # noqa: E402
from data_prep.pipeline import phase2_train  # noqa: E402

if __name__ == "__main__":
    phase2_train.CHUNK = int(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
