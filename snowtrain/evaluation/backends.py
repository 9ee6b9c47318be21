"""Where completions come from: a local model (snowtrain.serve.Engine) or an OpenAI-compatible
/v1/completions server (vLLM, snowtrain serve). Both return the text up to the first stop
sequence, without it, so a server that ignores `stop` gives the same programs."""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

# Codex's stop sequences for HumanEval-style completions: the function body ends where the next
# top-level statement starts.
DEFAULT_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
TOO_LONG = "prompt_too_long"   # finish_reason of a prompt that leaves no room to generate
# Below this many parameters a CPU forward pass is all per-call overhead: extra torch threads only
# add synchronisation (2.3x slower with 2 threads on 2 busy cores for the quickstart's model).
SMALL_MODEL = 20_000_000


class BackendError(Exception):
    """The model or endpoint cannot be used (a user error: exit 2)."""


class GenerationError(Exception):
    """A request failed for good in the middle of a run (what was generated is kept)."""


@dataclass
class Completion:
    text: str
    finish_reason: str
    tokens: int


def cut_at_stop(text: str, stop) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class LocalBackend:
    """Generates with snowtrain serve's Engine (the same tokenization and sampling as the server),
    `batch_size` prompts decoded together."""
    concurrency = 1   # the engine serialises calls

    def __init__(self, model_dir: str, *, dtype: str = "float32", tokenizer: str | None = None,
                 threads: int | None = None, device: str = "auto", batch_size: int = 16):
        from ..serve import Engine, ServeError
        try:
            self.engine = Engine.load(model_dir, dtype=dtype, tokenizer=tokenizer, threads=threads,
                                      device=device)
        except (ServeError, OSError) as e:
            raise BackendError(str(e)) from None
        self.context, self.batch_size = self.engine.context, batch_size
        if threads is None and sum(p.numel() for p in self.engine.model.parameters()) < SMALL_MODEL:
            import torch
            torch.set_num_threads(1)

    def complete(self, prompt: str, *, max_tokens: int, temperature: float, top_p: float,
                 stop, seed: int) -> Completion:
        return self.complete_batch([(prompt, seed)], max_tokens=max_tokens, temperature=temperature,
                                   top_p=top_p, stop=stop)[0]

    def complete_batch(self, prompts: list[tuple[str, int]], *, max_tokens: int, temperature: float,
                       top_p: float, stop) -> list[Completion]:
        """prompts: (prompt, seed) pairs, decoded as one batch -> their completions in order."""
        from ..generation import Request
        reqs = []
        for prompt, seed in prompts:
            ids = self.engine.encode(prompt)
            room = self.context - len(ids)
            reqs.append(Request(ids, min(max_tokens, room), temperature, top_p, list(stop), seed))
        results = self.engine.generate_batch(reqs)
        return [Completion("", TOO_LONG, 0) if r.max_tokens < 1 else Completion(res.text, res.finish_reason, res.tokens)
                for r, res in zip(reqs, results)]


# What vLLM and snowtrain serve say when prompt + max_tokens exceed the context.
_CONTEXT_RE = re.compile(r"context(?: length)? is (\d+)")
_PROMPT_RE = re.compile(r"prompt has (\d+) tokens|prompt's (\d+)|\((\d+) in the (?:messages|prompt)"
                        r"|has (\d+) input tokens|(\d+) tokens in the prompt")


def _room(message: str) -> int | None:
    """Tokens left for the completion, read from a context-length error; None: not one."""
    ctx, prompt = _CONTEXT_RE.search(message), _PROMPT_RE.search(message)
    if not ctx or not prompt:
        return None
    return int(ctx.group(1)) - int(next(g for g in prompt.groups() if g))


class EndpointBackend:
    """POSTs to {url}/v1/completions, a few requests in flight; retries 429, 5xx and lost
    connections (data_prep's client); any other error stops the run."""

    def __init__(self, url: str, model: str | None = None, *, api_key: str | None = None,
                 concurrency: int = 16, timeout_s: float = 600.0):
        from data_prep.synth.client import Endpoint, EndpointError
        base = url.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        self.client = Endpoint(base, "completions", api_key=api_key, timeout_s=timeout_s)
        try:
            self.client.check_reachable()
        except EndpointError as e:
            raise BackendError(str(e)) from None
        names = self._models(base, api_key)
        if model is None:
            if not names:
                raise BackendError(f"{base}/models lists no model: pass --model NAME")
            model = names[0]
        elif names and model not in names:
            raise BackendError(f"{base} does not serve '{model}'; it serves {', '.join(names)}")
        self.model, self.url, self.concurrency = model, base, concurrency

    @staticmethod
    def _models(base: str, api_key: str | None) -> list[str]:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(base + "/models", headers=headers),
                                        timeout=30) as r:
                return [m["id"] for m in json.loads(r.read()).get("data", [])]
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise BackendError(f"{base}/models: HTTP {e.code}: check the API key (--api-key-env)") from None
            return []   # some servers do not list models; requests will tell
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise BackendError(f"cannot list models at {base}/models: {e}") from None

    def complete(self, prompt: str, *, max_tokens: int, temperature: float, top_p: float,
                 stop, seed: int) -> Completion:
        payload = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens,
                   "temperature": temperature, "top_p": top_p, "seed": seed, "n": 1}
        if stop:
            payload["stop"] = list(stop)
        reply = self.client.request(payload)
        if reply.error and reply.status == 400:
            room = _room(reply.error)
            if room is not None and room < 1:
                return Completion("", TOO_LONG, 0)
            if room is not None and room < max_tokens:   # as the local backend: cap to the context
                reply = self.client.request({**payload, "max_tokens": room})
        if reply.error:
            raise GenerationError(f"the endpoint failed a request: {reply.error}")
        text, stopped = cut_at_stop(reply.text, stop)
        return Completion(text, "stop" if stopped else reply.finish_reason or "length",
                          reply.completion_tokens)
