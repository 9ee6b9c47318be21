"""Batched decoding with a KV cache: the loop behind `snowtrain serve` and `snowtrain eval`.

The prompts of a batch are left-padded to one length, with position ids counted from each
prompt's first token, so a row sees exactly what it would see alone. Every row has its own token
limit, stop strings, temperature, top_p and sampling generator: a request gives the same text
alone or in a batch (up to the float rounding of batched matmuls). A finished row leaves the
batch and its rows of the cache, so short answers do not pay for long ones.
"""
from __future__ import annotations

import inspect
import queue
import random
import sys
import threading
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from .evaluation.backends import cut_at_stop


@dataclass
class Request:
    prompt: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Result:
    text: str            # without `<eod>` and the stop string
    tokens: int          # completion tokens, `<eod>` or the stop string's tokens included
    finish_reason: str   # "stop" | "length"


def pick(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """One token from one row of logits: argmax at temperature 0, else nucleus sampling."""
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(0) - sorted_p >= top_p  # keep the smallest set reaching top_p
        probs = probs.clone()
        probs[order[drop]] = 0
    return int(torch.multinomial(probs, 1, generator=gen))


class Decoder:
    """Decodes batches of Requests with a Hugging Face causal LM and a sentencepiece tokenizer."""

    def __init__(self, model, sp, eos_id: int | None, vocab: int, cache_key: str):
        self.model, self.sp, self.eos_id, self.vocab, self.cache_key = model, sp, eos_id, vocab, cache_key
        self.device = next(model.parameters()).device
        # only the last position's logits are needed: not a [batch, prompt, vocab] tensor per prefill
        names = inspect.signature(model.forward).parameters
        keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in names), None)
        self.last_only = {keep: 1} if keep else {}

    def _finish(self, req: Request, out: list[int]) -> Result | None:
        """The result once row `out` is done, else None."""
        if out[-1] == self.eos_id:
            return Result(self.sp.decode(out[:-1]), len(out), "stop")
        text, stopped = cut_at_stop(self.sp.decode(out), req.stop)
        if stopped:
            return Result(text, len(out), "stop")
        if len(out) >= req.max_tokens:
            return Result(text, len(out), "length")
        return None

    @torch.inference_mode()
    def run(self, requests: list[Request]) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        rows = []   # request index of each batch row
        for i, r in enumerate(requests):
            if r.max_tokens < 1:
                results[i] = Result("", 0, "length")
            else:
                rows.append(i)
        if not rows:
            return results
        gens = {i: torch.Generator().manual_seed(requests[i].seed % 2**63 if requests[i].seed is not None
                                                 else random.getrandbits(63)) for i in rows}
        width = max(len(requests[i].prompt) for i in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for b, i in enumerate(rows):
            p = requests[i].prompt
            ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[b, width - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        outs = {i: [] for i in rows}
        cache = None
        while True:
            res = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             **{self.cache_key: cache}, **self.last_only)
            cache = getattr(res, self.cache_key)
            logits = res.logits[:, -1, :self.vocab]
            greedy = logits.argmax(-1).tolist()   # on the device: one small copy for every greedy row
            keep, tokens = [], []
            for b, i in enumerate(rows):
                req = requests[i]
                outs[i].append(greedy[b] if req.temperature == 0 else
                               pick(logits[b].float().cpu(), req.temperature, req.top_p, gens[i]))
                results[i] = self._finish(req, outs[i])
                if results[i] is None:
                    keep.append(b)
                    tokens.append(outs[i][-1])
            if not keep:
                return results
            if len(keep) < len(rows):
                sel = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(sel)   # a transformers Cache (every one since 4.44)
                mask, positions = mask[sel], positions[sel]
                rows = [rows[b] for b in keep]
            ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)


class BatchQueue:
    """Requests from many threads decoded together: one worker thread takes whatever is waiting
    (up to max_batch requests) as the next batch. A request that arrives while a batch decodes
    waits for the next one (no joining mid-batch)."""

    def __init__(self, run, max_batch: int):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._run, self.max_batch = run, max_batch
        self._waiting: queue.Queue = queue.Queue()
        self.batch_sizes: Counter[int] = Counter()   # batches run, by size
        self._thread = threading.Thread(target=self._loop, name="snowtrain-batcher", daemon=True)
        self._thread.start()

    def submit(self, requests: list[Request]) -> list[Result]:
        """Blocks until every request is decoded; a failed batch raises its error here."""
        futures = [Future() for _ in requests]
        for r, f in zip(requests, futures):
            self._waiting.put((r, f))
        return [f.result() for f in futures]

    def close(self, timeout_s: float = 30.0) -> None:
        """Ends the worker once the requests queued before this are done, and waits for it (a
        thread of torch's that ends while the interpreter shuts down can abort the process)."""
        self._waiting.put(None)
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            first = self._waiting.get()
            if first is None:
                return
            items = [first]
            while len(items) < self.max_batch:
                try:
                    item = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if item is None:   # close() after these: finish them first
                    self._waiting.put(None)
                    break
                items.append(item)
            self.batch_sizes[len(items)] += 1
            try:
                results = self._run([r for r, _ in items])
            except Exception:  # noqa: BLE001 - one bad request must not fail its neighbours
                if len(items) == 1:
                    items[0][1].set_exception(sys.exc_info()[1])
                    continue
                for r, f in items:   # alone, each gets its own result or its own error
                    try:
                        f.set_result(self._run([r])[0])
                    except Exception as e:  # noqa: BLE001 - reported to that caller
                        f.set_exception(e)
                continue
            for (_, f), res in zip(items, results):
                f.set_result(res)
