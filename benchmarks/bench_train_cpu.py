#!/usr/bin/env python3
"""One CPU training step: snowtrain's Llama + DistributedOptimizer + train_step against Hugging
Face transformers' LlamaForCausalLM + torch.optim.AdamW(foreach=True), same shape, same batch.

Both sides run in fp32 with the same torch thread count, the same weights (ours copied into HF
under its names, as tests/test_model.py does), the same data and the same optimizer: AdamW with
identical lr, betas, eps and weight decay (decay on matrices, none on norms), clipping to the
same global gradient norm.

* ours: `snowtrain.step.train_step` (grad buckets filled by post-accumulate hooks, the global
  norm, fp32 masters updated by foreach AdamW, copied back) over one micro-batch of the whole
  batch; the loss is the vocab-parallel cross-entropy (TP=1).
* HF:   zero_grad(set_to_none) -> model(input_ids, labels=..., shift_labels=...).loss -> backward ->
  clip_grad_norm_(foreach) -> AdamW(foreach).step().

Before timing, the script checks that both compute the same loss from the same weights, and that
they still agree after a few optimizer steps (so the comparison is apples to apples). Then it
times `--warmup` + `--steps` steps of each, interleaved A B A B (ours first), with
time.perf_counter, and reports the median: tokens/s of a full step and of forward+backward only
(ours with its gradient hooks, as in training; and, for diagnosis, ours without them), and the
ratio ours / HF (> 1: ours is faster). It also records each step's process CPU time
(time.process_time): at 1 thread that ratio is the one to trust on a shared, loaded machine.
`--components` times the pieces where the two differ (cross-entropy, RMSNorm, RoPE + attention,
gradient norm, clip + AdamW update); `--profile` adds a torch.profiler table of one step of each.

Results are appended to benchmarks/results/train-cpu-<date>.md (one markdown row) and written to
train-cpu-<date>.json (a list of runs).

    .venv/bin/python benchmarks/bench_train_cpu.py [--layers 4 --hidden 256 --ffn 688 --heads 8
        --vocab 4096 --seq 256 --batch 4 --threads N --warmup 3 --steps 10 --components]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from snowtrain.config import ModelConfig, RunConfig  # noqa: E402
from snowtrain.export import hf_state_dict  # noqa: E402
from snowtrain.model import Llama  # noqa: E402
from snowtrain.model.llama import count_parameters  # noqa: E402
from snowtrain.optim import DistributedOptimizer  # noqa: E402
from snowtrain.plan import flops_per_token  # noqa: E402
from snowtrain.step import train_step  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=688)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--untied", action="store_true", help="separate lm_head (default: tied, as the recipe)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table per model")
    ap.add_argument("--components", action="store_true",
                    help="also time the pieces that differ (cross-entropy, RMSNorm, RoPE + attention, "
                         "grad norm, optimizer update), ours vs HF's, interleaved")
    ap.add_argument("--component-reps", type=int, default=30)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--no-write", action="store_true", help="print only, write no result files")
    return ap.parse_args(argv)


# --------------------------------------------------------------------------- the two models

def build_hf(cfg: ModelConfig, ours: Llama):
    import transformers
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False, mlp_bias=False, hidden_act="silu", attn_implementation="sdpa",
        use_cache=False)
    hf = transformers.LlamaForCausalLM(hf_cfg).float().train()
    missing, unexpected = hf.load_state_dict(hf_state_dict(ours), strict=False)
    tied_head = {"lm_head.weight"} if cfg.tie_embeddings else set()
    if unexpected or any("rotary" not in m and m not in tied_head for m in missing):
        raise RuntimeError(f"weight mapping failed: missing {missing}, unexpected {unexpected}")
    if cfg.tie_embeddings:
        assert hf.lm_head.weight is hf.model.embed_tokens.weight, "HF did not tie the embeddings"
    return hf


def run_config(args, mcfg: ModelConfig) -> RunConfig:
    cfg = RunConfig(name="bench", seed=args.seed)
    cfg.model = mcfg
    cfg.precision.compute_dtype = "fp32"
    cfg.precision.grad_reduce_dtype = "fp32"
    cfg.optim.lr = args.lr
    cfg.optim.grad_clip = args.grad_clip
    cfg.optim.impl = "auto"  # CPU: torch.optim.AdamW(foreach=True)
    return cfg


def hf_optimizer(hf, cfg: RunConfig):
    """The same AdamW as DistributedOptimizer builds: decay on >= 2-D tensors only."""
    o = cfg.optim
    params = [p for p in hf.parameters() if p.requires_grad]  # tied weights appear once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=o.lr, betas=tuple(o.betas), eps=o.eps, foreach=True)


def make_batches(args, n: int) -> list[dict]:
    g = torch.Generator().manual_seed(args.seed + 1)
    out = []
    for _ in range(n):
        x = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
        out.append({"tokens": x[:, :-1].contiguous(), "labels": x[:, 1:].contiguous(),
                    "loss_mask": torch.ones(args.batch, args.seq)})
    return out


# --------------------------------------------------------------------------- steps

class Ours:
    def __init__(self, model, opt, lr):
        self.model, self.opt, self.lr = model, opt, lr

    def step(self, mb) -> float:
        return train_step(self.model, self.opt, [mb], self.lr).loss

    def fwd_bwd(self, mb) -> float:
        """Forward + backward as train_step runs them (the bucket hooks fire), no optimizer."""
        self.opt.zero_grad()
        self.opt.last_microbatch = True
        loss_sum, count = self.model(mb["tokens"], mb["labels"], mb["loss_mask"])
        (loss_sum / count).backward()
        self.opt.finish_grad_sync()
        return (loss_sum / count).item()


class OursNoHooks:
    """Our model alone, gradients left in .grad (diagnosis: the cost of the bucket hooks)."""

    def __init__(self, model):
        self.model = model

    def fwd_bwd(self, mb) -> float:
        for p in self.model.parameters():
            p.grad = None
        loss_sum, count = self.model(mb["tokens"], mb["labels"], mb["loss_mask"])
        (loss_sum / count).backward()
        return (loss_sum / count).item()


class HF:
    def __init__(self, model, opt, clip, lr):
        self.model, self.opt, self.clip = model, opt, clip
        for g in opt.param_groups:
            g["lr"] = lr

    def _loss(self, mb):
        return self.model(input_ids=mb["tokens"], labels=mb["labels"], shift_labels=mb["labels"]).loss

    def step(self, mb) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss(mb)
        loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip, foreach=True)
        self.opt.step()
        return loss.item()

    def fwd_bwd(self, mb) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss(mb)
        loss.backward()
        return loss.item()


def paired(a: list, b: list) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def timed(fn, *a) -> tuple[float, float, float]:
    """(wall seconds by time.perf_counter, process CPU seconds, fn's result)."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - t0, time.process_time() - c0, out


def interleaved(fns: dict, batches, warmup: int, steps: int, cpu: dict | None = None) -> tuple[dict, dict]:
    """Runs fns (name -> fn(batch)) round-robin, A B A B ...; per fn the wall seconds of the
    steps after warmup (and their CPU seconds into `cpu`), and every step's result."""
    times = {k: [] for k in fns}
    losses = {k: [] for k in fns}
    for i in range(warmup + steps):
        mb = batches[i % len(batches)]
        for k, fn in fns.items():
            dt, dc, loss = timed(fn, mb)
            if i >= warmup:
                times[k].append(dt)
                if cpu is not None:
                    cpu.setdefault(k, []).append(dc)
            losses[k].append(loss)
    return times, losses


# --------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(args.seed)
    mcfg = ModelConfig(num_layers=args.layers, hidden_size=args.hidden, ffn_hidden_size=args.ffn,
                       num_attention_heads=args.heads, num_kv_heads=args.kv_heads,
                       vocab_size=args.vocab, max_seq_len=args.seq, tie_embeddings=not args.untied)
    cfg = run_config(args, mcfg)
    batches = make_batches(args, 4)
    tokens = args.batch * args.seq

    # 1. same weights -> same loss (forward only), and same training trajectory for a few steps
    ours_m = Llama(mcfg, seed=args.seed + 7).train()
    hf_m = build_hf(mcfg, ours_m)
    mb = batches[0]
    with torch.no_grad():
        ls, cnt = ours_m(mb["tokens"], mb["labels"], mb["loss_mask"])
        loss_ours0 = (ls / cnt).item()
        loss_hf0 = hf_m(input_ids=mb["tokens"], labels=mb["labels"], shift_labels=mb["labels"]).loss.item()
    diff0 = abs(loss_ours0 - loss_hf0)
    print(f"same weights: loss ours {loss_ours0:.6f}, HF {loss_hf0:.6f}, |diff| {diff0:.2e}")
    if diff0 > 1e-4:
        raise SystemExit(f"the models disagree on the loss ({diff0:.2e}): not a fair comparison")

    ours = Ours(ours_m, DistributedOptimizer(ours_m, cfg), args.lr)
    hf = HF(hf_m, hf_optimizer(hf_m, cfg), args.grad_clip, args.lr)
    n_ours = sum(p.numel() for p in ours_m.parameters())
    n_hf = sum(p.numel() for p in hf_m.parameters())
    assert n_ours == n_hf == count_parameters(mcfg), (n_ours, n_hf, count_parameters(mcfg))

    # 2. full training steps, A B A B; the first steps' losses must still agree
    cpu_times: dict = {}
    times, losses = interleaved({"ours": ours.step, "hf": hf.step}, batches, args.warmup, args.steps,
                                cpu_times)
    traj = max(abs(a - b) for a, b in zip(losses["ours"], losses["hf"]))
    print(f"training losses ours {[round(x, 4) for x in losses['ours'][:4]]} ... "
          f"HF {[round(x, 4) for x in losses['hf'][:4]]} ...; max |diff| over "
          f"{len(losses['ours'])} steps {traj:.2e}")
    if traj > 1e-2:
        raise SystemExit(f"the training trajectories diverge ({traj:.2e}): the optimizers differ")

    # 3. forward + backward only (ours with hooks, HF, ours without hooks), A B C A B C
    bare = Llama(mcfg, seed=args.seed + 7).train()
    fb_cpu: dict = {}
    fb_times, _ = interleaved({"ours": ours.fwd_bwd, "hf": hf.fwd_bwd,
                               "ours_no_hooks": OursNoHooks(bare).fwd_bwd},
                              batches, args.warmup, args.steps, fb_cpu)

    med = {k: statistics.median(v) for k, v in times.items()}
    fb = {k: statistics.median(v) for k, v in fb_times.items()}
    fpt = flops_per_token(cfg, args.seq)
    result = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT))
                             else sys.executable, "benchmarks/bench_train_cpu.py", *(argv or sys.argv[1:])]),
        "machine": {"nproc": os.cpu_count(), "sched_nproc": len(os.sched_getaffinity(0)),
                    "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "transformers": __import__("transformers").__version__,
                    "python": platform.python_version(), "torch_threads": threads},
        "shape": {"layers": args.layers, "hidden": args.hidden, "ffn": args.ffn, "heads": args.heads,
                  "kv_heads": mcfg.kv_heads, "vocab": args.vocab, "seq": args.seq, "batch": args.batch,
                  "tied": mcfg.tie_embeddings, "params": n_ours, "dtype": "fp32"},
        "optimizer": {"name": "AdamW foreach", "lr": args.lr, "betas": cfg.optim.betas,
                      "eps": cfg.optim.eps, "weight_decay": cfg.optim.weight_decay,
                      "grad_clip": args.grad_clip},
        "warmup": args.warmup, "steps": args.steps,
        "loss_check": {"ours": loss_ours0, "hf": loss_hf0, "abs_diff": diff0,
                       "train_traj_max_abs_diff": traj},
        "step_s": med, "fwd_bwd_s": fb,
        "step_s_all": times, "fwd_bwd_s_all": fb_times,
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "fwd_bwd_tokens_per_s": {k: tokens / v for k, v in fb.items()},
        "gflops_per_s": {k: tokens * fpt / v / 1e9 for k, v in med.items()},
        "ratio_ours_over_hf": {"step": med["hf"] / med["ours"], "fwd_bwd": fb["hf"] / fb["ours"],
                               "fwd_bwd_no_hooks": fb["hf"] / fb["ours_no_hooks"]},
        # robust to load drift: the median over iterations of HF time / ours time of the same
        # iteration (adjacent in time), and the ratio of the fastest steps
        "paired_ratio_ours_over_hf": {"step": paired(times["hf"], times["ours"]),
                                      "fwd_bwd": paired(fb_times["hf"], fb_times["ours"])},
        "min_ratio_ours_over_hf": {"step": min(times["hf"]) / min(times["ours"]),
                                   "fwd_bwd": min(fb_times["hf"]) / min(fb_times["ours"])},
        # process CPU seconds (time.process_time): with 1 thread, insensitive to the process
        # being descheduled on a loaded machine
        "cpu_step_s": {k: statistics.median(v) for k, v in cpu_times.items()},
        "cpu_fwd_bwd_s": {k: statistics.median(v) for k, v in fb_cpu.items()},
        "cpu_ratio_ours_over_hf": {
            "step": statistics.median(cpu_times["hf"]) / statistics.median(cpu_times["ours"]),
            "fwd_bwd": statistics.median(fb_cpu["hf"]) / statistics.median(fb_cpu["ours"])},
        "load_average": os.getloadavg(),
    }
    r = result["ratio_ours_over_hf"]
    print(f"shape: {args.layers} layers, hidden {args.hidden}, ffn {args.ffn}, {args.heads} heads, "
          f"vocab {args.vocab}, seq {args.seq}, batch {args.batch}, {n_ours / 1e6:.2f} M params, fp32, "
          f"{threads} threads")
    for k in ("ours", "hf"):
        print(f"  {k:5s} step {med[k] * 1e3:8.1f} ms  {tokens / med[k]:9,.0f} tok/s  "
              f"({result['gflops_per_s'][k]:.1f} GFLOP/s)   fwd+bwd {fb[k] * 1e3:8.1f} ms  "
              f"{tokens / fb[k]:9,.0f} tok/s")
    print(f"  ours fwd+bwd without the bucket hooks {fb['ours_no_hooks'] * 1e3:.1f} ms")
    print(f"  ratio ours/HF (tokens/s): step {r['step']:.3f}, fwd+bwd {r['fwd_bwd']:.3f} "
          f"(no hooks {r['fwd_bwd_no_hooks']:.3f}); paired step "
          f"{result['paired_ratio_ours_over_hf']['step']:.3f}, fwd+bwd "
          f"{result['paired_ratio_ours_over_hf']['fwd_bwd']:.3f}; fastest step "
          f"{result['min_ratio_ours_over_hf']['step']:.3f}, fwd+bwd "
          f"{result['min_ratio_ours_over_hf']['fwd_bwd']:.3f}; load average "
          f"{result['load_average'][0]:.2f} on {os.cpu_count()} CPUs")
    print(f"  CPU-time ratio ours/HF: step {result['cpu_ratio_ours_over_hf']['step']:.3f}, fwd+bwd "
          f"{result['cpu_ratio_ours_over_hf']['fwd_bwd']:.3f} (ours {result['cpu_step_s']['ours'] * 1e3:.1f} "
          f"ms, HF {result['cpu_step_s']['hf'] * 1e3:.1f} ms CPU per step)")

    if args.profile:
        profile(ours, hf, batches[0])
    if args.components:
        result["components"] = components(args, mcfg, ours, hf, batches[0])
    if not args.no_write:
        write(result, Path(args.out_dir))
    return result


def components(args, mcfg: ModelConfig, ours: Ours, hf: HF, mb, reps: int | None = None) -> dict:
    """Median ms of each piece where the two implementations differ, ours vs HF, interleaved."""
    import torch.nn.functional as F
    from transformers.models.llama import modeling_llama as ml

    from snowtrain import kernels

    reps = reps or args.component_reps
    b, s, h, V = args.batch, args.seq, args.hidden, args.vocab
    nh, hd = args.heads, args.hidden // args.heads
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(b, s, V, generator=g)).requires_grad_()
    labels, mask = mb["labels"], mb["loss_mask"]
    x = torch.randn(b, s, h, generator=g).requires_grad_()
    w = torch.ones(h, requires_grad=True)
    q, k, v = (torch.randn(b, s, nh, hd, generator=g).requires_grad_() for _ in range(3))
    cos, sin = kernels.rope_cos_sin(s, hd, mcfg.rope_theta)
    hf_norm = ml.LlamaRMSNorm(h, eps=mcfg.norm_eps)

    def ce_ours():
        loss = kernels.vocab_parallel_cross_entropy(logits, labels)
        ((loss * mask).sum() / mask.sum()).backward()

    def ce_hf():
        F.cross_entropy(logits.float().view(-1, V), labels.view(-1)).backward()

    def norm_ours():
        kernels.rmsnorm(x, w, mcfg.norm_eps).sum().backward()

    def norm_hf():
        hf_norm(x).sum().backward()

    def attn_ours():  # rope on [b, s, heads, d], then transpose (strided) into SDPA
        qq, kk = kernels.apply_rope(q, cos, sin), kernels.apply_rope(k, cos, sin)
        qq, kk, vv = (t.transpose(1, 2) for t in (qq, kk, v))
        out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True)
        out.transpose(1, 2).reshape(b, s, nh * hd).sum().backward()

    def attn_hf():  # transpose first, rope on [b, heads, s, d] (contiguous result) into SDPA
        qq, kk, vv = (t.transpose(1, 2) for t in (q, k, v))
        qq, kk = ml.apply_rotary_pos_emb(qq, kk, cos[None], sin[None])
        out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True)
        out.transpose(1, 2).reshape(b, s, nh * hd).sum().backward()

    # gradients in place for the norm / update pieces
    ours.fwd_bwd(mb)
    hf.fwd_bwd(mb)
    hf_params = [p for p in hf.model.parameters() if p.grad is not None]

    def gnorm_ours():
        ours.opt.grad_norm()

    def gnorm_hf():
        torch.nn.utils.get_total_norm([p.grad for p in hf_params], foreach=True).item()

    norm = ours.opt.grad_norm()

    def update_ours():  # clip + AdamW on the fp32 masters + copy back into the model
        ours.opt.step(ours.lr, norm)

    def update_hf():
        torch.nn.utils.clip_grad_norm_(hf_params, args.grad_clip, foreach=True)
        hf.opt.step()

    pieces = {"cross_entropy fwd+bwd": (ce_ours, ce_hf), "rmsnorm fwd+bwd": (norm_ours, norm_hf),
              "rope+sdpa fwd+bwd (1 layer)": (attn_ours, attn_hf),
              "grad norm": (gnorm_ours, gnorm_hf), "clip + AdamW update": (update_ours, update_hf)}
    out = {}
    print("\ncomponents (median ms of", reps, "interleaved reps):")
    for name, (fo, fh) in pieces.items():
        cpu: dict = {}
        times, _ = interleaved({"ours": lambda _mb: fo(), "hf": lambda _mb: fh()}, [None], 3, reps, cpu)
        for t in (logits, x, w, q, k, v):
            t.grad = None
        mo, mh = statistics.median(times["ours"]) * 1e3, statistics.median(times["hf"]) * 1e3
        co, ch = statistics.median(cpu["ours"]) * 1e3, statistics.median(cpu["hf"]) * 1e3
        out[name] = {"ours_ms": mo, "hf_ms": mh, "ours_cpu_ms": co, "hf_cpu_ms": ch}
        print(f"  {name:30s} wall: ours {mo:8.2f}  HF {mh:8.2f}  ({mo - mh:+7.2f})   "
              f"CPU: ours {co:8.2f}  HF {ch:8.2f}  ({co - ch:+7.2f}) ms")
    return out


def profile(ours, hf, mb, rows: int = 25) -> None:
    from torch.profiler import ProfilerActivity, profile as tprofile
    for name, fn in (("ours", ours.step), ("hf", hf.step)):
        fn(mb)
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            fn(mb)
        print(f"\n=== torch.profiler, one training step: {name} ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def write(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    day = result["date"][:10]
    js = out_dir / f"train-cpu-{day}.json"
    runs = json.loads(js.read_text()) if js.exists() else []
    runs.append(result)
    js.write_text(json.dumps(runs, indent=2) + "\n")
    md = out_dir / f"train-cpu-{day}.md"
    if not md.exists():
        md.write_text(
            "# CPU training step: snowtrain vs Hugging Face LlamaForCausalLM (fp32, AdamW foreach)\n\n"
            "Median of timed steps after warmup, the two interleaved. Ratio = ours tokens/s / HF "
            "tokens/s (> 1: ours faster). Command, torch version and nproc per row; full numbers in "
            f"{js.name}.\n\n"
            "| date | machine | shape | ours step tok/s | HF step tok/s | ratio step | ours fwd+bwd tok/s "
            "| HF fwd+bwd tok/s | ratio fwd+bwd | paired ratio step / fwd+bwd | CPU-time ratio step / fwd+bwd | load avg "
            "| loss diff | command |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    m, s, t, f = result["machine"], result["shape"], result["tokens_per_s"], result["fwd_bwd_tokens_per_s"]
    r = result["ratio_ours_over_hf"]
    row = (f"| {result['date']} | nproc {m['nproc']}, {m['torch_threads']} threads, torch {m['torch']}, "
           f"transformers {m['transformers']} | {s['layers']}L h{s['hidden']} f{s['ffn']} {s['heads']}H "
           f"V{s['vocab']} s{s['seq']} b{s['batch']}{'' if s['tied'] else ' untied'} "
           f"({s['params'] / 1e6:.2f} M) | {t['ours']:,.0f} | {t['hf']:,.0f} | {r['step']:.3f} | "
           f"{f['ours']:,.0f} | {f['hf']:,.0f} | {r['fwd_bwd']:.3f} | "
           f"{result['paired_ratio_ours_over_hf']['step']:.3f} / "
           f"{result['paired_ratio_ours_over_hf']['fwd_bwd']:.3f} | "
           f"{result['cpu_ratio_ours_over_hf']['step']:.3f} / {result['cpu_ratio_ours_over_hf']['fwd_bwd']:.3f} | "
           f"{result['load_average'][0]:.2f} | "
           f"{result['loss_check']['abs_diff']:.1e} | `{result['command']}` |\n")
    with open(md, "a") as fh:
        fh.write(row)
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
