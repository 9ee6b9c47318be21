"""Training equivalences over real gloo processes: TP=2 == TP=1, DP=2 == DP=1 with doubled
accumulation, ZeRO-1 == plain AdamW (torch.optim.AdamW on the whole model as the reference)."""
import pytest
import torch

from snowtrain.config import ModelConfig, RunConfig
from snowtrain.model import Llama, TPGroup
from snowtrain.optim import DistributedOptimizer
from snowtrain.step import train_step
from snowtrain.testing import run_distributed

MODEL = dict(num_layers=2, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4,
             num_kv_heads=2, vocab_size=512, max_seq_len=64)
STEPS, GLOBAL_BATCH, SEQ = 4, 4, 32


def run_config(zero1=False, tp=1, clip=1.0):
    cfg = RunConfig(model=ModelConfig(**MODEL))
    cfg.precision.compute_dtype = "fp32"
    cfg.parallel.zero1, cfg.parallel.tensor_parallel = zero1, tp
    cfg.parallel.grad_bucket_mb = 0.05   # several buckets even for the tiny model
    cfg.optim.lr, cfg.optim.grad_clip = 3e-3, clip
    return cfg


def batches():
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(STEPS):
        tokens = torch.randint(0, 512, (GLOBAL_BATCH, SEQ + 1), generator=g)
        mask = (torch.rand(GLOBAL_BATCH, SEQ, generator=g) > 0.1).float()
        out.append({"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": mask})
    return out


def split(batch, start, stop, micro):
    part = {k: v[start:stop] for k, v in batch.items()}
    n = stop - start
    return [{k: v[i:i + micro] for k, v in part.items()} for i in range(0, n, micro)]


def full_params(model, pstate):
    out = {}
    for name, p in model.named_parameters():
        t = p.detach()
        if pstate is not None and pstate.tp_size > 1 and p.tp_dim is not None:
            parts = [torch.empty_like(t) for _ in range(pstate.tp_size)]
            torch.distributed.all_gather(parts, t.contiguous(), group=pstate.tp_group)
            t = torch.cat(parts, p.tp_dim)
        out[name] = t.clone()
    return out


def train(tp=1, zero1=False, micro=2, clip=1.0):
    """Runs STEPS steps; this process takes its DP rank's contiguous share of each batch."""
    pstate = None
    if torch.distributed.is_available() and "RANK" in __import__("os").environ:
        from snowtrain.distributed import init_distributed
        pstate = init_distributed(tensor_parallel=tp)
    cfg = run_config(zero1, tp, clip)
    model = Llama(cfg.model, TPGroup.from_state(pstate) if pstate else TPGroup(), seed=9)
    opt = DistributedOptimizer(model, cfg, pstate)
    dp, r = (pstate.dp_size, pstate.dp_rank) if pstate else (1, 0)
    per = GLOBAL_BATCH // dp
    losses, norms = [], []
    for step, batch in enumerate(batches()):
        res = train_step(model, opt, split(batch, r * per, (r + 1) * per, micro), 3e-3 * (step + 1) / STEPS, pstate)
        losses.append(res.loss)
        norms.append(res.grad_norm)
    return losses, norms, full_params(model, pstate)


def reference_adamw(clip=1.0):
    """The same training with torch.optim.AdamW on the whole fp32 model in one process."""
    cfg = run_config(clip=clip)
    model = Llama(cfg.model, seed=9)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    losses = []
    for step, batch in enumerate(batches()):
        opt.zero_grad()
        total = batch["loss_mask"].sum()
        loss_sum, _ = model(batch["tokens"], batch["labels"], batch["loss_mask"])
        (loss_sum / total).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for g in opt.param_groups:
            g["lr"] = 3e-3 * (step + 1) / STEPS
        opt.step()
        losses.append((loss_sum / total).item())
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same(a, b, rtol=2e-4, atol=2e-5):
    (la, pa), (lb, pb) = a, b
    assert la == pytest.approx(lb, rel=rtol)
    for name in pb:
        torch.testing.assert_close(pa[name], pb[name], rtol=rtol, atol=atol, msg=name)


@pytest.fixture(scope="module")
def reference():
    return reference_adamw()


def test_single_process_matches_torch_adamw(reference):
    losses, _, params = train(micro=1)
    assert_same((losses, params), reference)


@pytest.mark.parametrize("tp, zero1", [(2, False), (1, True), (2, True)], ids=["tp2", "dp2-zero1", "tp2-dp2-zero1"])
def test_parallel_layouts_match_reference(reference, tp, zero1):
    world = 4 if (tp == 2 and zero1) else 2
    results = run_distributed(train, world, tp=tp, zero1=zero1, micro=1, timeout_s=240)
    for losses, norms, params in results:
        assert_same((losses, params), reference)
    assert all(r[1] == pytest.approx(results[0][1], rel=1e-5) for r in results)


def test_data_parallel_matches_doubled_accumulation():
    single = train(micro=1)          # 1 rank, 4 micro-batches of 1
    results = run_distributed(train, 2, micro=1)  # 2 ranks x 2 micro-batches of 1
    for losses, norms, params in results:
        assert_same((losses, params), (single[0], single[2]))
        assert norms == pytest.approx(single[1], rel=1e-5)
