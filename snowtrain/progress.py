"""Progress bars that suit both a terminal and a batch job's log file."""
from __future__ import annotations

import sys


def progress_bar(total, desc: str, unit: str = "it", *, enabled: bool = True, **kw):
    """A tqdm bar (rate and ETA) on stderr: on a terminal it redraws often; into a file (a SLURM
    job's output) it writes at most every 30 s instead of thousands of updates."""
    from tqdm import tqdm
    interval = 0.1 if sys.stderr.isatty() else 30.0
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, mininterval=interval, **kw)
