"""The Llama model against independent references: Hugging Face's LlamaForCausalLM, a float64
cross-entropy, and itself at TP=1 (for TP=2 over real gloo processes)."""
import math

import pytest
import torch

from snowtrain.config import ModelConfig
from snowtrain.kernels import vocab_parallel_cross_entropy
from snowtrain.export import hf_state_dict
from snowtrain.model import Llama, TPGroup
from snowtrain.testing import run_distributed

TINY = dict(num_layers=2, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4,
            vocab_size=512, max_seq_len=64, norm_eps=1e-5, rope_theta=10000.0)


@pytest.mark.parametrize("kv_heads, tied", [(4, True), (2, False)])
def test_matches_hugging_face_llama(kv_heads, tied):
    transformers = pytest.importorskip("transformers")
    cfg = ModelConfig(**TINY, num_kv_heads=kv_heads, tie_embeddings=tied)
    ours = Llama(cfg, seed=7).double()
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=tied,
        attention_bias=False, mlp_bias=False, hidden_act="silu")
    hf = transformers.LlamaForCausalLM(hf_cfg).double().eval()
    missing, unexpected = hf.load_state_dict(hf_state_dict(ours), strict=False)
    assert not unexpected and all("rotary" in m or (tied and m == "lm_head.weight") for m in missing)
    tokens = torch.randint(0, cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(tokens).logits
        got = ours(tokens)
    # rotary tables are fp32 in both models: agreement to ~1e-7, far below any real defect
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    labels = torch.roll(tokens, -1, 1)
    loss_sum, count = ours(tokens, labels)
    ref_loss = torch.nn.functional.cross_entropy(ref.reshape(-1, cfg.vocab_size), labels.reshape(-1))
    assert abs((loss_sum / count).item() - ref_loss.item()) < 1e-7


def test_cross_entropy_matches_float64_reference():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(37, 1000, generator=g) * 5).requires_grad_()
    target = torch.randint(0, 1000, (37,), generator=g)
    loss = vocab_parallel_cross_entropy(logits, target)
    ref_logits = logits.detach().double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(ref_logits, target, reduction="none")
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
    w = torch.rand(37, generator=g)
    (loss * w).sum().backward()
    (ref * w.double()).sum().backward()
    torch.testing.assert_close(logits.grad.double(), ref_logits.grad, rtol=1e-6, atol=1e-7)


def _vocab_parallel_ce_worker(logits, target, weights):
    from snowtrain.distributed import init_distributed
    st = init_distributed(tensor_parallel=2)
    shard = logits.chunk(2, dim=-1)[st.tp_rank].clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(shard, target, st.tp_rank * shard.shape[-1], st.tp_group, 2)
    (loss * weights).sum().backward()
    return loss.detach(), shard.grad


def test_vocab_parallel_cross_entropy_over_two_ranks_matches_float64():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(64, 1000, generator=g, dtype=torch.float64) * 4
    target = torch.randint(0, 1000, (64,), generator=g)
    weights = torch.rand(64, generator=g, dtype=torch.float64)
    results = run_distributed(_vocab_parallel_ce_worker, 2, logits.float(), target, weights.float())
    ref_logits = logits.clone().requires_grad_()
    ref = torch.nn.functional.cross_entropy(ref_logits, target, reduction="none")
    (ref * weights).sum().backward()
    for loss, _ in results:
        torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    grad = torch.cat([g for _, g in results], dim=-1)
    torch.testing.assert_close(grad.double(), ref_logits.grad, rtol=1e-5, atol=1e-6)


def _tp_forward_backward_worker(cfg_kwargs, tokens, labels):
    from snowtrain.distributed import init_distributed
    st = init_distributed(tensor_parallel=2)
    model = Llama(ModelConfig(**cfg_kwargs), TPGroup.from_state(st), seed=3)
    loss_sum, count = model(tokens, labels)
    (loss_sum / count).backward()
    if model.cfg.compile:  # the blocks did run compiled
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad
        if p.tp_dim is not None:  # gather the full gradient of a sharded weight
            parts = [torch.empty_like(g) for _ in range(2)]
            torch.distributed.all_gather(parts, g.contiguous(), group=st.tp_group)
            g = torch.cat(parts, dim=p.tp_dim)
        grads[name] = g
    return (loss_sum / count).item(), grads


@pytest.mark.parametrize("kv_heads, tied", [(4, True), (2, False)])
def test_tensor_parallel_matches_single_rank(kv_heads, tied):
    cfg = dict(TINY, num_kv_heads=kv_heads, tie_embeddings=tied)
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, 512, (2, 32), generator=g)
    labels = torch.randint(0, 512, (2, 32), generator=g)
    ref_model = Llama(ModelConfig(**cfg), seed=3)
    loss_sum, count = ref_model(tokens, labels)
    (loss_sum / count).backward()
    for loss, grads in run_distributed(_tp_forward_backward_worker, 2, cfg, tokens, labels):
        assert math.isclose(loss, (loss_sum / count).item(), rel_tol=1e-5)
        for name, p in ref_model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_compiled_blocks_with_tp_and_checkpointing_match_the_eager_single_rank_model():
    """model.compile (inductor, per block) over 2 gloo ranks with activation checkpointing and
    GQA: the loss and every gradient of the plain single-process model."""
    cfg = dict(TINY, num_kv_heads=2, tie_embeddings=False)
    g = torch.Generator().manual_seed(8)
    tokens, labels = (torch.randint(0, 512, (2, 32), generator=g) for _ in range(2))
    ref_model = Llama(ModelConfig(**cfg), seed=3)
    loss_sum, count = ref_model(tokens, labels)
    (loss_sum / count).backward()
    compiled = dict(cfg, compile=True, activation_checkpointing=True)
    for loss, grads in run_distributed(_tp_forward_backward_worker, 2, compiled, tokens, labels,
                                       timeout_s=400):
        assert math.isclose(loss, (loss_sum / count).item(), rel_tol=1e-5)
        for name, p in ref_model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_same_global_weights_for_any_tp_size():
    full = Llama(ModelConfig(**TINY), seed=11)
    halves = [Llama(ModelConfig(**TINY), TPGroup(rank=r, size=2), seed=11) for r in range(2)]
    for (name, p), p0, p1 in zip(full.named_parameters(), halves[0].parameters(), halves[1].parameters()):
        joined = p0.detach() if p.tp_dim is None else torch.cat([p0.detach(), p1.detach()], p.tp_dim)
        assert torch.equal(joined, p.detach()), name


def test_activation_checkpointing_gives_the_same_gradients():
    cfg = ModelConfig(**TINY)
    g = torch.Generator().manual_seed(6)
    tokens = torch.randint(0, 512, (2, 32), generator=g)
    grads = []
    for ckpt in (False, True):
        cfg.activation_checkpointing = ckpt
        model = Llama(cfg, seed=5)
        loss_sum, count = model(tokens, tokens.roll(-1, 1))
        (loss_sum / count).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=0, msg=name)


def test_bf16_compute_tracks_fp32():
    """bf16 weights and activations (fp32 norms, rotary and loss inside) stay close to fp32."""
    cfg = ModelConfig(**TINY)
    tokens = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(8))
    ref = Llama(cfg, seed=5)
    low = Llama(cfg, seed=5, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in low.parameters())
    l32 = (lambda s, n: s / n)(*ref(tokens, tokens.roll(-1, 1)))
    l16 = (lambda s, n: s / n)(*low(tokens, tokens.roll(-1, 1)))
    assert l16.dtype == torch.float32  # the loss is accumulated in fp32
    assert abs(l16.item() - l32.item()) < 2e-2
    l16.backward()
    assert all(torch.isfinite(p.grad.float()).all() for p in low.parameters())
