"""The training loop end to end on tiny data: stop-and-resume equality, resharding, blend
changes, phase chaining, non-finite losses, corrupted checkpoints, bad input."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from snowtrain.config import ConfigError, DatasetConfig
from snowtrain.step import NonFiniteLoss
from snowtrain.testing import run_distributed
from snowtrain.train import train_phase
from train_helpers import events, losses, make_datasets, recipe


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_datasets(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_stop_and_resume_reproduces_the_uninterrupted_run(tmp_path, data, async_save):
    full = recipe(tmp_path / "full", data)
    res = train_phase(full, "p1")
    assert (res.status, res.step) == ("complete", 12)
    ref = losses(tmp_path / "full/logs")

    cut = recipe(tmp_path / "cut", data)
    cut.checkpoint.async_save = async_save
    assert train_phase(cut, "p1", max_steps=6).status == "max_steps"   # last checkpoint: step 4
    res = train_phase(cut, "p1")
    assert res.status == "complete" and res.step == 12
    got = losses(tmp_path / "cut/logs")
    assert got == ref  # exactly: same data position, weights, moments, LR
    assert any("resumed p1" in e and "at step 4" in e for e in events(tmp_path / "cut/logs"))
    # a finished phase is not trained again
    assert train_phase(cut, "p1").status == "complete"


def test_blend_change_on_resume_starts_a_new_segment(tmp_path, data):
    cfg = recipe(tmp_path, data, weights=[0.5, 0.3, 0.2])
    train_phase(cfg, "p1", max_steps=4)
    cfg2 = recipe(tmp_path, data, weights=[0.1, 0.1, 0.8])
    train_phase(cfg2, "p1")
    ev = events(tmp_path / "logs")
    assert any(e.startswith("blend change at step 4") for e in ev), ev
    final = sorted((tmp_path / "ckpt/p1").glob("step_*"))[-1]
    segs = json.loads((final / "extra.json").read_text())["data"]["segments"]
    assert [s["step"] for s in segs] == [0, 4]
    consumed = json.loads((final / "extra.json").read_text())["data"]["per_dataset_consumed"]
    # 4 steps x 8 at (.5,.3,.2) then 8 steps x 8 at (.1,.1,.8): every dataset continued
    assert sum(consumed.values()) == 96
    assert consumed["ds2_text_document"] == pytest.approx(0.2 * 32 + 0.8 * 64, abs=2)


def test_phase_two_starts_from_phase_one_final_weights(tmp_path, data):
    cfg = recipe(tmp_path, data, phases=2, steps=6)
    train_phase(cfg, "p1")
    train_phase(cfg, "p2")
    ev = events(tmp_path / "logs")
    assert any("p2 starts from the weights of" in e and "p1/step_00000006" in e for e in ev)
    # phase 2 without phase 1's checkpoint is a clear error
    cfg3 = recipe(tmp_path / "other", data, phases=2, steps=6)
    with pytest.raises(ConfigError, match="p2 starts from p1's final checkpoint") as e:
        train_phase(cfg3, "p2")
    assert e.value.key == "phases[1].init_from"
    # a mistyped checkpoint path names the folders beside it
    cfg3.phases[1].init_from = str(tmp_path / "ckpt/p1/step_0000006")
    with pytest.raises(ConfigError, match="does not exist") as e:
        train_phase(cfg3, "p2")
    assert "step_00000006" in e.value.fix


def test_resuming_another_run_or_shape_or_only_damaged_checkpoints_is_refused(tmp_path, data):
    cfg = recipe(tmp_path, data)
    train_phase(cfg, "p1", max_steps=5)                       # a checkpoint at step 4
    for change, key in ((lambda c: setattr(c.model, "hidden_size", 128), "model.hidden_size"),
                        (lambda c: setattr(c.phases[0], "seq_len", 16), "phases[0].seq_len"),
                        (lambda c: setattr(c, "name", "other"), "name")):
        other = recipe(tmp_path, data)
        change(other)
        with pytest.raises(ConfigError) as e:
            train_phase(other, "p1")
        assert e.value.key == key and "checkpoint.dir" in e.value.fix
    ckpt = tmp_path / "ckpt/p1/step_00000004"
    victim = next(p for p in ckpt.iterdir() if p.suffix == ".distcp")
    victim.write_bytes(victim.read_bytes()[:10])
    with pytest.raises(ConfigError, match="no complete checkpoint of p1") as e:
        train_phase(cfg, "p1")                                # not silently from step 0
    assert e.value.key == "checkpoint.dir" and ckpt.exists()


def _layout_worker(root, data):
    cfg = recipe(Path(root), data)
    cfg.phases[0].global_batch_size, cfg.phases[0].micro_batch_size = 6, 2   # 3 per rank
    train_phase(cfg, "p1", max_steps=1)


def test_a_global_batch_that_is_not_whole_micro_batches_per_rank_is_a_config_error(tmp_path, data):
    with pytest.raises(Exception, match="global_batch_size=6 over 2 data-parallel ranks") as e:
        run_distributed(_layout_worker, 2, str(tmp_path), data, timeout_s=120)
    assert "multiple of data_parallel x micro_batch_size = 4 (e.g. 4)" in str(e.value)


def test_ctrl_c_requests_a_stop_and_a_second_one_interrupts():
    import os
    import signal
    from snowtrain.train import StopRequest
    stop = StopRequest()
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.uninstall()


def _reshard_worker(root, data, tp, zero1, max_steps):
    cfg = recipe(Path(root), data, tp=tp, zero1=zero1)
    res = train_phase(cfg, "p1", max_steps=max_steps)
    return res.step


def test_resharding_tp2_to_dp2_and_back_continues_with_matching_loss(tmp_path, data):
    ref_dir = tmp_path / "ref"
    train_phase(recipe(ref_dir, data), "p1")
    ref = losses(ref_dir / "logs")
    a = tmp_path / "a"
    run_distributed(_reshard_worker, 2, str(a), data, 2, False, 5, timeout_s=300)   # TP=2: ckpt at 4
    run_distributed(_reshard_worker, 2, str(a), data, 1, True, 4, timeout_s=300)    # TP=1,DP=2,ZeRO: 8
    run_distributed(_reshard_worker, 2, str(a), data, 2, False, None, timeout_s=300)  # TP=2 again
    got = losses(a / "logs")
    assert sorted(got) == list(range(1, 13))
    resumed = [e for e in events(a / "logs") if e.startswith("resumed p1")]
    assert len(resumed) == 2 and "at step 4" in resumed[0] and "at step 8" in resumed[1]
    for step, loss in ref.items():
        assert got[step] == pytest.approx(loss, rel=1e-4), step


def test_nonfinite_loss_stops_with_the_last_good_state_or_skips(tmp_path, data, monkeypatch):
    from snowtrain.model import llama

    real = llama.Llama.forward
    calls = {"n": 0}

    def poisoned(self, tokens, labels=None, loss_mask=None):
        calls["n"] += 1
        out = real(self, tokens, labels, loss_mask)
        if labels is not None and calls["n"] in (13, 14, 15, 16):  # step 4's micro-batches
            return out[0] * float("nan"), out[1]
        return out

    monkeypatch.setattr(llama.Llama, "forward", poisoned)
    cfg = recipe(tmp_path / "stop", data, save_interval=100)
    with pytest.raises(NonFiniteLoss, match="at step 4 of p1; the last good weights are saved"):
        train_phase(cfg, "p1")
    assert (tmp_path / "stop/ckpt/p1/step_00000004").is_dir()
    # a resumed run skips the bad batch and finishes the phase
    calls["n"] = 100
    res = train_phase(cfg, "p1")
    assert (res.status, res.step) == ("complete", 12)
    assert any("resumed p1" in e and "at step 4" in e for e in events(tmp_path / "stop/logs"))
    calls["n"] = 0
    cfg = recipe(tmp_path / "skip", data, save_interval=100)
    cfg.training.on_nonfinite = "skip"
    res = train_phase(cfg, "p1")
    assert res.status == "complete"
    recs = [json.loads(x) for x in (tmp_path / "skip/logs/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r.get("skipped")] == [4]


def test_corrupted_latest_checkpoint_falls_back_to_the_previous(tmp_path, data):
    cfg = recipe(tmp_path, data)
    train_phase(cfg, "p1", max_steps=9)            # checkpoints at 4 and 8
    latest = tmp_path / "ckpt/p1/step_00000008"
    victim = next(p for p in latest.iterdir() if p.suffix == ".distcp")
    victim.write_bytes(victim.read_bytes()[:10])   # truncated
    res = train_phase(cfg, "p1")
    assert res.status == "complete"
    assert any("resumed p1" in e and "at step 4" in e for e in events(tmp_path / "logs"))


def test_bad_input_is_a_clear_error(tmp_path, data):
    cfg = recipe(tmp_path, data)
    cfg.phases[0].datasets.append(DatasetConfig(path=str(tmp_path / "missing_text_document")))
    with pytest.raises(ConfigError, match="missing_text_document.bin and"):
        train_phase(cfg, "p1")
    cfg = recipe(tmp_path, data)
    cfg.model.vocab_size = 256                      # the data holds ids up to 511
    with pytest.raises(Exception, match="vocab"):
        train_phase(cfg, "p1")


def test_export_to_hugging_face_matches_our_logits(tmp_path, data):
    transformers = pytest.importorskip("transformers")
    from snowtrain.export import export_checkpoint
    from snowtrain.model import Llama
    cfg = recipe(tmp_path, data, steps=3, zero1=False)
    train_phase(cfg, "p1")
    ckpt = tmp_path / "ckpt/p1/step_00000003"
    out = export_checkpoint(ckpt, tmp_path / "hf", dtype=torch.float32)
    hf = transformers.LlamaForCausalLM.from_pretrained(str(out)).eval()
    ours = Llama(cfg.model, seed=cfg.seed)
    from snowtrain.checkpoint import CheckpointManager
    from snowtrain.optim import DistributedOptimizer
    from snowtrain.train import checkpoint_state
    opt = DistributedOptimizer(ours, cfg)
    CheckpointManager(cfg.checkpoint).load(ckpt, checkpoint_state(ours, opt, None, {}))
    tokens = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, ours(tokens), rtol=1e-4, atol=1e-4)
