"""init_from a Hugging Face Llama folder: a model made and saved by transformers itself gives the
same loss in snowtrain at TP=1, TP=2 and DP=2 with ZeRO-1 (its weights exactly, at TP=1); an
fp32 export read back continues exactly as the checkpoint does; a folder of another shape, a
RoPE variant, a missing tensor or another tokenizer is a ConfigError naming it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from snowtrain.config import ConfigError  # noqa: E402
from snowtrain.export import export_checkpoint, hf_state_dict  # noqa: E402
from snowtrain.testing import run_distributed  # noqa: E402
from snowtrain.train import Trainer, train_phase  # noqa: E402
from train_helpers import VOCAB, losses, make_datasets, recipe  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_datasets(tmp_path_factory.mktemp("data"))


def save_hf_llama(folder: Path, cfg, **over) -> "transformers.LlamaForCausalLM":
    """A random LlamaForCausalLM of the run's shape, made and saved by transformers (sharded)."""
    m = cfg.model
    conf = transformers.LlamaConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.kv_heads, max_position_embeddings=m.max_seq_len, rms_norm_eps=m.norm_eps,
        rope_theta=m.rope_theta, tie_word_embeddings=m.tie_embeddings, initializer_range=0.2, **over)
    torch.manual_seed(11)
    model = transformers.LlamaForCausalLM(conf).float().eval()
    model.save_pretrained(folder, max_shard_size="100KB")   # several files and an index
    return model


def batch() -> torch.Tensor:
    return torch.randint(1, VOCAB, (2, 33), generator=torch.Generator().manual_seed(5))


def hf_loss(model, x: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids=x[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1)).item()


def _our_loss(root: str, data, folder: str, tp: int, zero1: bool) -> float:
    cfg = recipe(Path(root), data, tp=tp, zero1=zero1)
    cfg.phases[0].init_from = folder
    trainer = Trainer(cfg, "p1")
    try:
        trainer.restore()
        x = batch().to(trainer.pstate.device)
        with torch.no_grad():
            loss_sum, n = trainer.model(x[:, :-1], x[:, 1:], torch.ones_like(x[:, 1:], dtype=torch.float32))
        return (loss_sum / n).item()
    finally:
        trainer.close()


def test_a_transformers_model_gives_its_loss_in_every_layout(tmp_path, data):
    folder = tmp_path / "hf"
    ref_model = save_hf_llama(folder, recipe(tmp_path, data))
    assert (folder / "model.safetensors.index.json").exists()
    ref = hf_loss(ref_model, batch())
    assert _our_loss(str(tmp_path / "tp1"), data, str(folder), 1, False) == pytest.approx(ref, abs=1e-5)
    for tp, zero1 in ((2, False), (1, True)):
        got = run_distributed(_our_loss, 2, str(tmp_path / f"tp{tp}z{zero1}"), data, str(folder), tp, zero1,
                              timeout_s=300)
        assert got[0] == got[1] == pytest.approx(ref, abs=1e-5), (tp, zero1)
    # TP=1: the weights themselves, exactly
    cfg = recipe(tmp_path / "exact", data)
    cfg.phases[0].init_from = str(folder)
    trainer = Trainer(cfg, "p1")
    try:
        trainer.restore()
        ours, theirs = hf_state_dict(trainer.model), ref_model.state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours) and ours.keys() <= theirs.keys()
        assert any("starts from the Hugging Face weights" in json.loads(line).get("event", "")
                   for line in (tmp_path / "exact/logs/metrics.jsonl").read_text().splitlines())
    finally:
        trainer.close()


def test_an_fp32_export_continues_exactly_as_the_checkpoint(tmp_path, data):
    direct = recipe(tmp_path / "direct", data, phases=2, steps=6)
    train_phase(direct, "p1")
    train_phase(direct, "p2")
    final = sorted((tmp_path / "direct/ckpt/p1").glob("step_*"))[-1]
    export_checkpoint(final, tmp_path / "export", dtype=torch.float32)
    via = recipe(tmp_path / "via", data, phases=2, steps=6)
    via.phases[1].init_from = str(tmp_path / "export")
    train_phase(via, "p2")
    assert losses(tmp_path / "via/logs", "p2") == losses(tmp_path / "direct/logs", "p2")


def test_folders_that_do_not_fit_the_run_are_config_errors(tmp_path, data):
    def refused(folder, match, **cfg_over):
        cfg = recipe(tmp_path / f"run-{folder.name}", data)
        cfg.phases[0].init_from = str(folder)
        for k, v in cfg_over.items():
            setattr(cfg, k, v)
        trainer = Trainer(cfg, "p1")
        try:
            with pytest.raises(ConfigError, match=match):
                trainer.restore()
        finally:
            trainer.close()

    cfg = recipe(tmp_path, data)
    wide = tmp_path / "wide"
    cfg.model.hidden_size = 128
    save_hf_llama(wide, cfg)
    refused(wide, r"hidden_size=128 but the run's model has hidden_size=64")

    cfg = recipe(tmp_path, data)
    scaled = tmp_path / "scaled"
    save_hf_llama(scaled, cfg, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    refused(scaled, "rope_type='linear'")

    holey = tmp_path / "holey"
    model = save_hf_llama(holey, cfg)
    from safetensors.torch import save_file
    for f in holey.glob("model*.safetensors*"):
        f.unlink()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()
          if "layers.1.mlp.up_proj" not in k and k != "lm_head.weight"}   # lm_head: tied
    save_file(sd, str(holey / "model.safetensors"))
    refused(holey, r"has no tensor model\.layers\.1\.mlp\.up_proj\.weight \(snowtrain's layers\.1\.mlp\.up\.weight\)")

    other_tok = tmp_path / "other-tok"
    save_hf_llama(other_tok, cfg)
    (other_tok / "tokenizer.model").write_bytes(b"their tokenizer")
    (tmp_path / "ours.model").write_bytes(b"our tokenizer")
    refused(other_tok, "is not the run's tokenizer", tokenizer=str(tmp_path / "ours.model"))
    refused(tmp_path / "nowhere", "does not exist")
