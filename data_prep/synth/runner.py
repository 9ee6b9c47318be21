"""Keeps `concurrency` requests in flight on a thread pool and hands each reply to the caller on
the calling thread (so bookkeeping and file writes need no locks). Stops early, cancelling the
requests waiting to retry, when too many fail."""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable

from .client import Endpoint, Reply


@dataclass
class RunStats:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stopped: str | None = None          # when and why the run stopped early
    first_errors: list[str] = field(default_factory=list)


class RequestRunner:
    def __init__(self, endpoint: Endpoint, concurrency: int, *, max_errors: float = float("inf"),
                 max_consecutive_errors: int = 1 << 62, bar=None):
        self.endpoint, self.concurrency = endpoint, concurrency
        self.max_errors, self.max_consecutive = max_errors, max_consecutive_errors
        self.bar = bar
        self.stats = RunStats()
        self._consecutive = 0
        self._t0 = time.time()

    def _count(self, reply: Reply) -> None:
        s = self.stats
        s.requests += 1
        s.prompt_tokens += reply.prompt_tokens
        s.completion_tokens += reply.completion_tokens
        if reply.error is None:
            self._consecutive = 0
        else:
            s.errors += 1
            self._consecutive += 1
            if len(s.first_errors) < 3 and reply.error not in s.first_errors:
                s.first_errors.append(reply.error)
            if self._consecutive >= self.max_consecutive:
                s.stopped = (f"after {s.errors} failed requests, the last {self._consecutive} in a "
                             f"row (max_consecutive_errors {self.max_consecutive})")
            elif s.errors > self.max_errors:
                s.stopped = (f"after {s.errors} failed requests, more than the "
                             f"{math.floor(self.max_errors)} allowed")
        if self.bar is not None:
            self.bar.update()
            rate = s.completion_tokens / max(1e-9, time.time() - self._t0)
            self.bar.set_postfix_str(f"{rate:,.0f} tok/s, {s.errors} failed", refresh=False)

    def run(self, jobs: Iterable[tuple[Hashable, dict]],
            on_reply: Callable[[Hashable, Reply], None]) -> RunStats:
        """Sends every (key, payload) of `jobs` until done or stopped; on_reply(key, reply) for
        each answered or failed request (never for those cancelled by a stop)."""
        cancel = threading.Event()
        jobs = iter(jobs)
        inflight: dict = {}
        more = True
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="synth")
        clean = False
        try:
            while True:
                while more and self.stats.stopped is None and len(inflight) < self.concurrency:
                    job = next(jobs, None)
                    if job is None:
                        more = False
                        break
                    key, payload = job
                    inflight[pool.submit(self.endpoint.request, payload, cancel)] = key
                if not inflight:
                    break
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for f in done:
                    key = inflight.pop(f)
                    reply = f.result()
                    if reply.cancelled:
                        continue
                    self._count(reply)
                    on_reply(key, reply)
                if self.stats.stopped is not None:
                    cancel.set()    # requests waiting to retry give up; answers still arrive
            clean = True
        finally:
            cancel.set()
            pool.shutdown(wait=clean, cancel_futures=True)
        return self.stats
