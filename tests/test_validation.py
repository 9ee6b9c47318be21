"""Validation loss on the held-out splits: the numbers against a plain loop over megatron-core's
own validation datasets, the same under DP=2 and TP=2 (gloo), logged at the interval and at the
phase end without changing training, drawn by `snowtrain plot`, and config mistakes."""
from __future__ import annotations

import json

import pytest
import torch

from snowtrain.config import ConfigError, validate_config
from snowtrain.data import PhaseData
from snowtrain.data.samples import gpt_config
from snowtrain.metrics import plot_loss
from snowtrain.model import Llama, TPGroup
from snowtrain.testing import run_distributed
from snowtrain.train import train_phase
from snowtrain.validation import Validator
from train_helpers import losses, make_datasets, recipe

SEQUENCES = 7  # odd: data-parallel ranks get different numbers of sequences


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_datasets(tmp_path_factory.mktemp("data"), n=2, docs=80)


def held_out_recipe(root, data, **kw):
    cfg = recipe(root, data, **kw)
    cfg.data.valid_fraction = 0.2
    cfg.validation.sequences = SEQUENCES
    return cfg


def megatron_valid_split(prefix: str, cfg, cache_dir):
    """The validation split as megatron-core's own builder makes it (train/valid/test sizes
    None: one epoch each)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    config = gpt_config(seed=cfg.seed, seq_len=cfg.phases[0].seq_len, prefix=prefix,
                        cache_dir=str(cache_dir), valid_fraction=cfg.data.valid_fraction)
    _train, valid, _test = BlendedMegatronDatasetBuilder(GPTDataset, [None, None, None],
                                                         lambda: True, config).build()
    return valid


def plain_validation_loss(model, split, n: int) -> float:
    total = count = 0.0
    with torch.no_grad():
        for i in range(n):
            s = split[i]
            loss_sum, c = model(s["tokens"][None], s["labels"][None], s["loss_mask"][None])
            total, count = total + loss_sum.double().item(), count + c.item()
    return total / count


def test_validation_loss_is_the_plain_loss_over_megatron_held_out_sequences(tmp_path, data):
    cfg = held_out_recipe(tmp_path, data)
    phase_data = PhaseData.from_config(cfg, "p1")
    model = Llama(cfg.model, seed=5)
    got = Validator(phase_data, _single(), sequences=SEQUENCES, micro_batch_size=3).run(model)
    weights = phase_data.weights
    want = {}
    for name, prefix in zip(phase_data.names, data):
        split = megatron_valid_split(prefix, cfg, tmp_path / "megatron_cache")
        want[name] = plain_validation_loss(model, split, min(SEQUENCES, len(split)))
        assert got[f"valid_loss/{name}"] == pytest.approx(want[name], rel=1e-6), name
    mean = sum(weights[n] * v for n, v in want.items()) / sum(weights[n] for n in want)
    assert got["valid_loss"] == pytest.approx(mean, rel=1e-6)
    assert model.training  # left as it was


def _single():
    from snowtrain.distributed import ParallelState
    return ParallelState(rank=0, world_size=1, tp_rank=0, tp_size=1, dp_rank=0, dp_size=1,
                         tp_group=None, dp_group=None, tp_ranks=[0], dp_ranks=[0],
                         device=torch.device("cpu"), backend="none", local_rank=0)


def _distributed_validation(root: str, data, tp: int) -> dict:
    from pathlib import Path

    from snowtrain.distributed import init_distributed
    ps = init_distributed(tensor_parallel=tp)
    root = Path(root)
    cfg = held_out_recipe(root, data, tp=tp)
    phase_data = PhaseData.from_config(cfg, "p1", cache_dir=str(root / "cache"))
    model = Llama(cfg.model, TPGroup.from_state(ps), seed=5)
    return Validator(phase_data, ps, sequences=SEQUENCES, micro_batch_size=2).run(model)


@pytest.mark.parametrize("tp", [1, 2], ids=["dp2", "tp2"])
def test_data_and_tensor_parallel_validation_equals_one_process(tmp_path, data, tp):
    cfg = held_out_recipe(tmp_path / "one", data)
    want = Validator(PhaseData.from_config(cfg, "p1"), _single(), sequences=SEQUENCES,
                     micro_batch_size=2).run(Llama(cfg.model, seed=5))
    for got in run_distributed(_distributed_validation, 2, str(tmp_path / "two"), data, tp,
                               timeout_s=300):
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-5), k


def test_trainer_validates_at_the_interval_and_the_phase_end_without_changing_training(tmp_path, data):
    plain = held_out_recipe(tmp_path / "plain", data)
    train_phase(plain, "p1")
    cfg = held_out_recipe(tmp_path / "valid", data)
    cfg.validation.interval = 5
    assert train_phase(cfg, "p1").status == "complete"
    assert losses(tmp_path / "valid/logs") == losses(tmp_path / "plain/logs")
    records = [json.loads(line) for line in (tmp_path / "valid/logs/metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if "valid_loss" in r]
    assert [r["step"] for r in valid] == [5, 10, 12]  # the interval, then the phase end
    names = [k for k in valid[0] if k.startswith("valid_loss/")]
    assert len(names) == 2 and all(0 < r["valid_loss"] < 20 for r in valid)
    plain_records = (tmp_path / "plain/logs/metrics.jsonl").read_text()
    assert plain_records.count('"valid_loss"') == 1  # interval 0: the phase end only
    png = plot_loss([tmp_path / "valid/logs/metrics.jsonl"], tmp_path / "loss.png")
    assert png.stat().st_size > 0


def test_validation_config_mistakes_are_clear_errors(tmp_path, data):
    cfg = recipe(tmp_path, data)
    cfg.validation.interval = 10
    with pytest.raises(ConfigError, match="nothing is held out"):
        validate_config(cfg)
    cfg.data.valid_fraction = 0.1
    cfg.validation.sequences = 0
    with pytest.raises(ConfigError, match="sequences >= 1"):
        validate_config(cfg)
