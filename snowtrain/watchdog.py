"""Hang detection: a rank on which no training step (nor validation, nor checkpoint save) has
finished for `training.hang_timeout_s` seconds is stuck (a dead peer in a collective, a stalled
file system, a deadlocked loader worker). It prints why, the Python stack of every thread, and
exits with HUNG_EXIT, so that the job ends and the SLURM scripts requeue it from the latest
committed checkpoint, instead of holding its nodes until the time limit. The trainer gives its
collectives a longer timeout than the watchdog's, so the ranks waiting for a stuck one end the
same way rather than by a collective's error; each also appends a line to $SNOWTRAIN_HANG_MARKER,
since srun's exit status is that of the ranks it kills once the first has exited.

The clock starts at the first step's end (the first step also compiles, builds the extension
and warms the caches); every later step, validation and save restarts it.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback

HUNG_EXIT = 4
# A file the hung rank appends to, where the launcher names one (launch/slurm/common.sh does).
MARKER_ENV = "SNOWTRAIN_HANG_MARKER"


class HangWatchdog:
    def __init__(self, timeout_s: float | None, *, rank: int, exit_code: int = HUNG_EXIT):
        self.timeout_s, self.rank, self.exit_code = timeout_s, rank, exit_code
        self._last = time.monotonic()
        self._what = "start"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, what: str) -> None:
        """`what` just finished (e.g. "step 12"); starts the clock on the first call."""
        self._last, self._what = time.monotonic(), what
        if self.timeout_s and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="snowtrain-hang-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _watch(self) -> None:
        poll = min(5.0, self.timeout_s / 10)
        while not self._stop.wait(poll):
            idle = time.monotonic() - self._last
            if idle > self.timeout_s:
                self._fire(idle)

    def _fire(self, idle: float) -> None:
        err = sys.stderr
        print(f"rank {self.rank}: hung: nothing finished for {idle:.0f} s since {self._what} "
              f"(training.hang_timeout_s={self.timeout_s:g}); the stack of every thread follows",
              file=err, flush=True)
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            print(f"\nthread {names.get(ident, ident)}:\n" + "".join(traceback.format_stack(frame)),
                  file=err, flush=True)
        print(f"rank {self.rank}: exiting {self.exit_code} (hung); the job resumes from the latest "
              "committed checkpoint", file=err, flush=True)
        marker = os.environ.get(MARKER_ENV)
        if marker:   # srun reports the highest exit status of the ranks it killed, not this 4
            try:
                with open(marker, "a") as f:
                    f.write(f"rank {self.rank} hung after {self._what}\n")
            except OSError:
                pass
        os._exit(self.exit_code)
