"""`snowtrain serve`: an OpenAI-compatible HTTP server for a trained model, on CPU or one GPU.

  GET  /health                200 once the model is loaded
  GET  /v1/models             the one served model
  POST /v1/completions        prompt (string or list of strings), max_tokens, temperature,
                              top_p, stop, seed, n (1 only)
  POST /v1/chat/completions   messages rendered to a plain prompt by CHAT_TEMPLATE

It is meant for small-scale work (the quickstart's phase-3 data prep, quick evaluations): the
requests waiting when the model becomes free are decoded as one batch (up to --max-batch);
production runs use vLLM (continuous batching, paged attention), which speaks the same protocol. Generation stops at `<eod>` (config.json's eos_token_id), a stop string, or
max_tokens.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from .generation import BatchQueue, Decoder, Request, Result

# The model is a base model: a chat is rendered to plain text, every message's content in order
# (system, user and earlier assistant turns alike) joined by a blank line, in place of
# "{messages}"; the model then writes the assistant turn. --chat-template FILE replaces this.
CHAT_TEMPLATE = "{messages}\n"
MESSAGE_SEPARATOR = "\n\n"
DEFAULT_MAX_TOKENS = 256
DEFAULT_MAX_BATCH = 16
INSTALL_HINT = "pip install 'snowtrain[serve]'"


class ServeError(Exception):
    """A user error at startup: a bad model folder, a missing dependency or setting."""


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def render_chat(messages: list[dict], template: str = CHAT_TEMPLATE) -> str:
    """The prompt a chat request becomes (str.replace, so braces in code need no escaping)."""
    return template.replace("{messages}", MESSAGE_SEPARATOR.join(m["content"] for m in messages))


class Engine:
    """A Hugging Face Llama and its sentencepiece tokenizer; generate() is thread-safe."""

    def __init__(self, model, sp, eos_id: int | None, context: int):
        self.model, self.sp, self.eos_id, self.context = model, sp, eos_id, context
        self.device = next(model.parameters()).device
        self.vocab = min(sp.get_piece_size(), model.config.vocab_size)  # never emit undecodable ids
        self.lock = threading.Lock()
        # transformers 5 renamed past_key_values to cache, in the call and in its output.
        cache_key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.decoder = Decoder(model, sp, eos_id, self.vocab, cache_key)

    @classmethod
    def load(cls, model_dir: str | os.PathLike, *, dtype: str = "float32", tokenizer: str | None = None,
             threads: int | None = None, device: str = "auto") -> "Engine":
        """model_dir: a folder written by `snowtrain export`, or a checkpoint folder (exported to a
        temporary folder first, in float32). device auto: the GPU when there is one."""
        try:
            from transformers import LlamaForCausalLM
        except ImportError as e:
            raise ServeError(f"serving needs transformers ({e}): {INSTALL_HINT}") from None
        import sentencepiece as spm

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not torch.cuda.is_available():
            raise ServeError(f"device {device} asked for, but torch sees no CUDA device: use --device cpu")
        src, tmp = Path(model_dir), None
        try:
            if (src / "config.yaml").is_file():
                from .export import export_checkpoint
                tmp = Path(tempfile.mkdtemp(prefix="snowtrain-serve-"))
                src = export_checkpoint(src, tmp / "hf", dtype=torch.float32, tokenizer=tokenizer)
            elif not (src / "config.json").is_file():
                raise ServeError(f"{src} is neither a Hugging Face folder (config.json) written by "
                                 "snowtrain export nor a checkpoint folder (config.yaml)")
            tok = Path(tokenizer) if tokenizer else src / "tokenizer.model"
            if not tok.is_file():
                raise ServeError(f"no tokenizer.model in {model_dir} (nor at the checkpoint config's "
                                 "tokenizer path): pass --tokenizer PATH/tokenizer.model")
            sp = spm.SentencePieceProcessor(model_file=str(tok))
            model = LlamaForCausalLM.from_pretrained(str(src)).to(device, getattr(torch, dtype)).eval()
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        if sp.get_piece_size() > model.config.vocab_size:
            raise ServeError(f"the tokenizer has {sp.get_piece_size()} pieces but the model only "
                             f"{model.config.vocab_size}: wrong tokenizer")
        eos = model.config.eos_token_id
        eos = eos[0] if isinstance(eos, list) else eos
        if eos is None and sp.piece_to_id("<eod>") != sp.unk_id():
            eos = sp.piece_to_id("<eod>")
        return cls(model, sp, eos, model.config.max_position_embeddings)

    def encode(self, text: str) -> list[int]:
        # An empty prompt starts a new document, as in training.
        return self.sp.encode(text) or ([self.eos_id] if self.eos_id is not None else [0])

    def generate(self, prompt: list[int], max_tokens: int, *, temperature: float = 1.0,
                 top_p: float = 1.0, stop: list[str] = (), seed: int | None = None) -> tuple[str, int, str]:
        """-> (text, completion tokens, finish_reason "stop" | "length"); the text excludes
        `<eod>` and the stop string, the token count includes them."""
        r = self.generate_batch([Request(prompt, max_tokens, temperature, top_p, list(stop), seed)])[0]
        return r.text, r.tokens, r.finish_reason

    def generate_batch(self, requests: list[Request]) -> list[Result]:
        """Decodes the requests together (one batch, each with its own settings)."""
        with self.lock:
            return self.decoder.run(requests)


# ---- request validation: every error names the field, as OpenAI's do ----

def _get(body: dict, name: str, types, default=None):
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in _tuple(types)):
        names = " or ".join(t.__name__ for t in _tuple(types))
        raise APIError(400, f"'{name}' must be {names}, got {type(v).__name__}", name)
    return v


def _tuple(t):
    return t if isinstance(t, tuple) else (t,)


def _sampling(body: dict, engine: Engine, limit: int | None, prompt_len: int) -> dict:
    if _get(body, "n", int, 1) != 1:
        raise APIError(400, "only n=1 is supported", "n")
    for name in ("stream", "echo", "logprobs", "suffix", "tools"):
        if body.get(name) not in (None, False):
            raise APIError(400, f"'{name}' is not supported by snowtrain serve", name)
    given = _get(body, "max_tokens", int, None)
    if given is None:
        given = _get(body, "max_completion_tokens", int, None)
    room = engine.context - prompt_len
    if room < 1:
        raise APIError(400, f"the prompt has {prompt_len} tokens; the model's context is "
                            f"{engine.context}", "prompt")
    max_tokens = given if given is not None else min(DEFAULT_MAX_TOKENS, room, limit or room)
    if max_tokens < 1:
        raise APIError(400, "'max_tokens' must be at least 1", "max_tokens")
    if limit and max_tokens > limit:
        raise APIError(400, f"'max_tokens' is {max_tokens}; this server allows at most {limit}", "max_tokens")
    if max_tokens > room:
        raise APIError(400, f"this model's context is {engine.context} tokens: the prompt's "
                            f"{prompt_len} plus max_tokens={max_tokens} do not fit", "max_tokens")
    temperature = float(_get(body, "temperature", (int, float), 1.0))
    top_p = float(_get(body, "top_p", (int, float), 1.0))
    if temperature < 0:
        raise APIError(400, "'temperature' must be >= 0", "temperature")
    if not 0 < top_p <= 1:
        raise APIError(400, "'top_p' must be in (0, 1]", "top_p")
    stop = _get(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, "'stop' must be a string or a list of non-empty strings", "stop")
    return dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop,
                seed=_get(body, "seed", int, None))


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty list of {role, content}", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise APIError(400, f"messages[{i}] needs a role: system, user or assistant", f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts; text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise APIError(400, f"messages[{i}].content parts must be text", f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string", f"messages[{i}].content")
        out.append({"role": m["role"], "content": content})
    return out


def _json_object(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as HTTP client pools expect
    server: "Server"

    def do_GET(self):
        self._handle(lambda: self.server.get(self.path))

    def do_POST(self):
        # Read the whole body before anything can fail, so a kept-alive connection stays in step.
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit():
            self.close_connection, length = True, "0"
        raw = self.rfile.read(int(length))
        self._handle(lambda: self.server.post(self.path, _json_object(raw)))

    def _handle(self, call):
        start, status = time.monotonic(), 200
        try:
            key = self.server.api_key
            if key and self.path != "/health" and self.headers.get("Authorization") != f"Bearer {key}":
                raise APIError(401, "missing or wrong API key (Authorization: Bearer ...)", code="invalid_api_key")
            payload = call()
        except APIError as e:
            status, payload = e.status, e.body()
        except Exception as e:  # a bug must not kill the server; the client sees a 500
            status, payload = 500, APIError(500, f"{type(e).__name__}: {e}").body()
        usage = payload.get("usage") if status == 200 else None
        tokens = f" tokens={usage['prompt_tokens']}+{usage['completion_tokens']}" if usage else ""
        print(f"{self.command} {self.path} {status}{tokens} {time.monotonic() - start:.2f}s",
              file=sys.stderr, flush=True)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # _handle logs one line per request instead
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True  # in-flight requests do not hold up shutdown

    def __init__(self, engine: Engine, address: tuple[str, int], *, name: str, chat_template: str = CHAT_TEMPLATE,
                 api_key: str | None = None, max_new_tokens_limit: int | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH):
        super().__init__(address, Handler)
        self.engine, self.name, self.chat_template = engine, name, chat_template
        self.batches = BatchQueue(engine.generate_batch, max_batch)
        self.api_key, self.limit = api_key, max_new_tokens_limit

    def server_close(self):
        super().server_close()
        self.batches.close()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def get(self, path: str) -> dict:
        if path == "/health":
            return {"status": "ok"}
        if path == "/v1/models":
            return {"object": "list", "data": [{"id": self.name, "object": "model", "created": 0,
                                                "owned_by": "snowtrain",
                                                "max_model_len": self.engine.context}]}
        raise APIError(404, f"no route GET {path}")

    def post(self, path: str, body: dict) -> dict:
        if path not in ("/v1/completions", "/v1/chat/completions"):
            raise APIError(404, f"no route POST {path}")
        model = _get(body, "model", str, self.name)
        if model != self.name:
            raise APIError(404, f"model '{model}' is not served here; this server serves '{self.name}'",
                           "model", "model_not_found")
        chat = path == "/v1/chat/completions"
        if chat:
            prompts = [render_chat(_messages(body), self.chat_template)]
        else:
            prompts = body.get("prompt")
            prompts = [prompts] if isinstance(prompts, str) else prompts
            if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise APIError(400, "'prompt' must be a string or a non-empty list of strings", "prompt")
        encoded = [self.engine.encode(p) for p in prompts]
        params = [_sampling(body, self.engine, self.limit, len(ids)) for ids in encoded]  # all checked first
        results = self.batches.submit([Request(ids, **kw) for ids, kw in zip(encoded, params)])
        choices = [{"index": i, "finish_reason": r.finish_reason, "logprobs": None,
                    **({"message": {"role": "assistant", "content": r.text}} if chat else {"text": r.text})}
                   for i, r in enumerate(results)]
        used = sum(r.tokens for r in results)
        prompt_tokens = sum(map(len, encoded))
        return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": self.name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": used,
                          "total_tokens": prompt_tokens + used}}


def start_server(model: str | os.PathLike | Engine, *, host: str = "127.0.0.1", port: int = 0,
                 name: str | None = None, dtype: str = "float32", chat_template: str = CHAT_TEMPLATE,
                 api_key: str | None = None, max_new_tokens_limit: int | None = None,
                 tokenizer: str | None = None, threads: int | None = None, device: str = "auto",
                 max_batch: int = DEFAULT_MAX_BATCH):
    """Loads the model (unless given an Engine) and serves it on a daemon thread.
    -> (server, thread, url); stop with server.shutdown(); server.server_close()."""
    engine = model if isinstance(model, Engine) else Engine.load(model, dtype=dtype, tokenizer=tokenizer,
                                                                 threads=threads, device=device)
    server = Server(engine, (host, port), name=name or str(model), chat_template=chat_template,
                    api_key=api_key, max_new_tokens_limit=max_new_tokens_limit, max_batch=max_batch)
    thread = threading.Thread(target=server.serve_forever, name="snowtrain-serve", daemon=True)
    thread.start()
    return server, thread, server.url


def serve_command(args) -> int:
    """`snowtrain serve`: runs until Ctrl-C or SIGTERM; 2 on a user error."""
    try:
        if args.max_batch < 1:
            raise ServeError(f"--max-batch must be at least 1, got {args.max_batch}")
        template = CHAT_TEMPLATE
        if args.chat_template:
            template = Path(args.chat_template).read_text()
            if "{messages}" not in template:
                raise ServeError(f"{args.chat_template} has no {{messages}} placeholder")
        api_key = None
        if args.api_key_env:
            api_key = os.environ.get(args.api_key_env)
            if not api_key:
                raise ServeError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
        engine = Engine.load(args.model, dtype=args.dtype, tokenizer=args.tokenizer, threads=args.threads,
                             device=args.device)
        server = Server(engine, (args.host, args.port), name=args.name or args.model, chat_template=template,
                        api_key=api_key, max_new_tokens_limit=args.max_new_tokens_limit,
                        max_batch=args.max_batch)
    except (ServeError, OSError) as e:
        print(f"snowtrain serve: {e}", file=sys.stderr)
        return 2

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # also where the shell started us with SIGINT ignored
    print(f"serving {args.model} as {server.name} on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("snowtrain serve: stopped", file=sys.stderr, flush=True)
    return 0
