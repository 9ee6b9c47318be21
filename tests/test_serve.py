"""`snowtrain serve` against an independent reference: greedy text equals transformers'
generate() on the same exported model; usage counts, stop strings, the chat template, errors,
concurrency, API keys, a checkpoint folder as the model, and the real command line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from snowtrain import serve  # noqa: E402
from tiny_hf import train_code_tokenizer, write_tiny_hf_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = 96
PROMPTS = ["def add(a, b):\n    return", "import torch\n\nclass Model:", "x = 1\n"]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_code_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tokenizer_path):
    """A random-init model written as snowtrain export writes it, with the real tokenizer."""
    return write_tiny_hf_model(tmp_path_factory.mktemp("hf"), tokenizer_path, CONTEXT)


@pytest.fixture(scope="module")
def ref(hf_dir):
    """The reference: transformers' own greedy generate(), decoded with sentencepiece."""
    import sentencepiece as spm
    model = transformers.LlamaForCausalLM.from_pretrained(str(hf_dir)).float().eval()
    sp = spm.SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
    eod = model.config.eos_token_id

    def greedy(prompt: str, k: int) -> tuple[str, list[int]]:
        ids = torch.tensor([sp.encode(prompt)])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k,
                                 do_sample=False, eos_token_id=eod, pad_token_id=eod)
        new = out[0, ids.shape[1]:].tolist()
        return sp.decode([t for t in new if t != eod]), new

    greedy.sp, greedy.eod = sp, eod
    return greedy


@pytest.fixture(scope="module")
def server(hf_dir):
    srv, thread, url = serve.start_server(hf_dir, name="tiny")
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def call(url: str, path: str, body=None, *, raw: bytes | None = None, headers=None):
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json",
                                                                 **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def complete(server, prompt, **kw):
    status, body = call(server.url, "/v1/completions", {"model": "tiny", "prompt": prompt, **kw})
    assert status == 200, body
    return body


def test_greedy_text_equals_transformers_generate(server, ref):
    body = complete(server, PROMPTS, max_tokens=12, temperature=0)
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    completion = 0
    for prompt, choice in zip(PROMPTS, body["choices"]):
        text, new = ref(prompt, 12)
        assert choice["text"] == text
        assert choice["finish_reason"] == ("stop" if ref.eod in new else "length")
        completion += len(new)
    prompt_tokens = sum(len(ref.sp.encode(p)) for p in PROMPTS)
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                             "total_tokens": prompt_tokens + completion}


def test_length_gives_exactly_max_tokens(server, ref):
    text, new = ref(PROMPTS[0], 20)
    assert ref.eod not in new  # the random model must not end the document for this test
    body = complete(server, PROMPTS[0], max_tokens=20, temperature=0)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["text"] == text
    assert body["usage"]["completion_tokens"] == 20
    assert body["usage"]["prompt_tokens"] == len(ref.sp.encode(PROMPTS[0]))


def plain_pair(text: str) -> int | None:
    """Where a plain two-character string starts, past the first character (a random model also
    writes odd bytes), preferring the second half of the text; None if there is none."""
    spots = [i for i in range(1, len(text) - 1) if text[i:i + 2].isascii() and text[i:i + 2].strip()]
    later = [i for i in spots if i >= len(text) // 2]
    return (later or spots or [None])[0]


def test_stop_string_truncates_and_gives_stop(server, ref):
    # the random model's greedy text depends on the tokenizer, itself trained on this repository's
    # sources: take the first prompt whose text has a plain two-character string to stop at
    found = ((p, *ref(p, 30)) for p in PROMPTS)
    prompt, text, _new = next((p, t, n) for p, t, n in found if plain_pair(t) is not None)
    at = plain_pair(text)
    stop = text[at:at + 2]
    body = complete(server, prompt, max_tokens=30, temperature=0, stop=["\x00never", stop])
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == text[:text.find(stop)]
    assert body["usage"]["completion_tokens"] < 30
    assert complete(server, prompt, max_tokens=30, temperature=0, stop=stop)["choices"][0] == choice


def test_chat_renders_the_documented_template(server, ref):
    messages = [{"role": "system", "content": "You write Python."},
                {"role": "user", "content": [{"type": "text", "text": "Write a function {f}."}]}]
    status, body = call(server.url, "/v1/chat/completions",
                        {"model": "tiny", "messages": messages, "max_tokens": 8, "temperature": 0})
    assert status == 200, body
    rendered = "You write Python.\n\nWrite a function {f}.\n"
    assert serve.render_chat([{"content": "You write Python."}, {"content": "Write a function {f}."}]) == rendered
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["usage"]["prompt_tokens"] == len(ref.sp.encode(rendered))
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": ref(rendered, 8)[0]}
    # no max_tokens: the default, clamped to the room the context leaves
    long = [{"role": "user", "content": "x = 1\n" * 14}]
    status, body = call(server.url, "/v1/chat/completions", {"messages": long, "temperature": 0})
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] <= CONTEXT


def test_seeded_sampling_is_reproducible(server):
    a = complete(server, PROMPTS[2], max_tokens=10, temperature=0.8, top_p=0.9, seed=5)
    b = complete(server, PROMPTS[2], max_tokens=10, temperature=0.8, top_p=0.9, seed=5)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


def test_errors_are_openai_shaped_and_name_the_field(server, ref):
    n = len(ref.sp.encode(PROMPTS[0]))
    status, body = call(server.url, "/v1/completions", {"prompt": PROMPTS[0], "max_tokens": CONTEXT - n + 1})
    assert status == 400 and body["error"]["param"] == "max_tokens"
    assert body["error"]["type"] == "invalid_request_error"
    assert complete(server, PROMPTS[0], max_tokens=CONTEXT - n)["usage"]["total_tokens"] <= CONTEXT
    status, body = call(server.url, "/v1/completions", {"prompt": "x = 1\n" * CONTEXT, "max_tokens": 1})
    assert status == 400 and body["error"]["param"] == "prompt"
    status, body = call(server.url, "/v1/completions", raw=b'{"prompt": "x", ')
    assert status == 400 and "JSON" in body["error"]["message"]
    for bad, param in [({}, "prompt"), ({"prompt": 3}, "prompt"), ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
                       ({"prompt": "x", "max_tokens": True}, "max_tokens"), ({"prompt": "x", "n": 2}, "n"),
                       ({"prompt": "x", "temperature": -1}, "temperature"), ({"prompt": "x", "stop": [1]}, "stop"),
                       ({"prompt": "x", "stream": True}, "stream")]:
        status, body = call(server.url, "/v1/completions", bad)
        assert (status, body["error"]["param"]) == (400, param), bad
    status, body = call(server.url, "/v1/chat/completions", {"messages": [{"role": "user"}]})
    assert status == 400 and body["error"]["param"] == "messages[0].content"
    status, body = call(server.url, "/v1/completions", {"model": "other", "prompt": "x"})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert call(server.url, "/v1/nothing")[0] == 404
    assert call(server.url, "/v1/nothing", {"prompt": "x"})[0] == 404
    assert call(server.url, "/health") == (200, {"status": "ok"})
    status, body = call(server.url, "/v1/models")
    assert status == 200 and [m["id"] for m in body["data"]] == ["tiny"]


def test_concurrent_requests_match_sequential(server):
    prompts = PROMPTS + ["for i in range(10):"]
    sequential = [complete(server, p, max_tokens=8, temperature=0)["choices"][0]["text"] for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda p: complete(server, p, max_tokens=8, temperature=0), prompts))
    assert [b["choices"][0]["text"] for b in concurrent] == sequential


def test_api_key(server):
    srv, thread, url = serve.start_server(server.engine, name="tiny", api_key="s3cret")
    try:
        status, body = call(url, "/v1/completions", {"prompt": "x", "max_tokens": 1})
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert call(url, "/v1/models", headers={"Authorization": "Bearer wrong"})[0] == 401
        status, body = call(url, "/v1/completions", {"prompt": "x", "max_tokens": 1},
                            headers={"Authorization": "Bearer s3cret"})
        assert status == 200 and body["usage"]["completion_tokens"] == 1
        assert call(url, "/health")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_checkpoint_folder_as_model(tmp_path, tokenizer_path):
    from snowtrain.train import train_phase
    from train_helpers import make_datasets, recipe
    cfg = recipe(tmp_path, make_datasets(tmp_path, n=1, docs=10), steps=2, save_interval=2)
    cfg.tokenizer = str(tokenizer_path)
    train_phase(cfg, "p1")
    ckpt = tmp_path / "ckpt/p1/step_00000002"
    srv, thread, url = serve.start_server(ckpt)
    try:
        assert srv.name == str(ckpt)
        status, body = call(url, "/v1/completions", {"prompt": "def f():", "max_tokens": 4, "temperature": 0})
        assert status == 200, body
        assert body["usage"]["completion_tokens"] <= 4 and body["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        srv.shutdown()
        srv.server_close()


def test_command_line_serves_and_stops_on_sigterm(hf_dir, ref):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "snowtrain", "serve", str(hf_dir), "--port", "0",
                             "--name", "cli", "--api-key-env", "KEY", "--threads", "1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving {hf_dir} as cli on http://127.0.0.1:"), (line, proc.stderr.read())
        url = line.split(" on ")[1].strip()
        assert not url.endswith(":0")
        status, body = call(url, "/v1/completions", {"model": "cli", "prompt": PROMPTS[0], "max_tokens": 6,
                                                     "temperature": 0}, headers={"Authorization": "Bearer k"})
        assert status == 200 and body["choices"][0]["text"] == ref(PROMPTS[0], 6)[0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "POST /v1/completions 200 tokens=" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_token_limit_and_custom_chat_template(server, ref):
    srv, thread, url = serve.start_server(server.engine, name="tiny", max_new_tokens_limit=4,
                                          chat_template="### Task\n{messages}\n### Answer\n")
    try:
        status, body = call(url, "/v1/completions", {"prompt": "x", "max_tokens": 5})
        assert status == 400 and body["error"]["param"] == "max_tokens"
        status, body = call(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "sum"}],
                                                         "temperature": 0})
        assert status == 200, body
        assert body["usage"]["prompt_tokens"] == len(ref.sp.encode("### Task\nsum\n### Answer\n"))
        assert body["usage"]["completion_tokens"] <= 4  # the default max_tokens, capped by the limit
    finally:
        srv.shutdown()
        srv.server_close()


def test_device_choice(hf_dir, ref):
    """A GPU asked for where there is none is a clear error; where there is one, greedy text
    on it equals the CPU reference."""
    if not torch.cuda.is_available():
        with pytest.raises(serve.ServeError, match="no CUDA device"):
            serve.Engine.load(hf_dir, device="cuda")
        assert serve.Engine.load(hf_dir, device="auto").device.type == "cpu"
        return
    engine = serve.Engine.load(hf_dir, device="cuda")
    text, _, _ = engine.generate(engine.encode("def add(a, b):"), 12, temperature=0)
    assert text == ref("def add(a, b):", 12)[0]
