"""`snowtrain samples`: a step's samples are the ones the trainer's batches of that step hold
(same global indices, datasets, per-dataset indices and tokens), shown with the run's tokenizer;
a step outside the phase is exit 2."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from snowtrain import cli
from snowtrain.config import save_config
from snowtrain.data import PhaseData
from snowtrain.data.preview import step_samples
from train_helpers import make_datasets, recipe


def test_a_steps_samples_are_what_the_trainer_takes(tmp_path):
    cfg = recipe(tmp_path, make_datasets(tmp_path / "data"), weights=[0.5, 0.3, 0.2])
    ref = PhaseData.from_config(cfg, "p1")
    want = None
    for step, microbatches in enumerate(ref.batches(num_steps=3), start=1):
        if step == 3:
            want = [(int(g), ref.names[int(d)], int(j), t)
                    for mb in microbatches for (g, d, j), t in zip(mb["sample_ids"].tolist(), mb["tokens"])]
    got = step_samples(PhaseData.from_config(cfg, "p1"), 3)
    assert [(s.sample, s.dataset, s.index) for s in got] == [w[:3] for w in want]
    assert all(np.array_equal(s.tokens, w[3]) for s, w in zip(got, want))
    assert {s.dataset for s in got} <= {"ds0_text_document", "ds1_text_document", "ds2_text_document"}


def test_the_command_shows_decoded_samples_and_refuses_other_steps(tmp_path, capsys):
    from tiny_hf import train_code_tokenizer
    cfg = recipe(tmp_path, make_datasets(tmp_path / "data"))
    cfg.tokenizer = str(train_code_tokenizer(tmp_path / "tok"))
    path = save_config(cfg, tmp_path / "r.yaml")
    assert cli.main(["samples", "--config", str(path), "--phase", "p1", "--step", "12", "--count", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("p1 step 12/12: samples 88-95, 32 tokens each, weights from tokens x repeat")
    assert len([line for line in out if line.startswith("  sample ")]) == 3
    assert out[-2] == "  ... 5 more (--count 0 shows all)" and out[-1].startswith("  this step: ")
    assert sum(int(part.split()[-1]) for part in out[-1].split(": ", 1)[1].split(", ")) == 8
    assert cli.main(["samples", "--config", str(path), "--phase", "p1", "--step", "13"]) == 2
    assert "outside the phase's steps 1..12" in capsys.readouterr().err
    assert Path(cfg.tokenizer).is_file()


def test_with_a_checkpoint_the_samples_follow_a_blend_changed_at_resume(tmp_path, capsys):
    """Weights changed at a resume from step 4: the samples shown for steps 5-8 are what the
    resumed trainer consumed (the counters of its step-8 checkpoint minus those of step 4), and
    steps before the checkpoint keep the old blend."""
    import json
    from snowtrain.data.preview import load_checkpoint_data
    from snowtrain.train import train_phase
    data_dirs = make_datasets(tmp_path / "data")
    old = recipe(tmp_path, data_dirs, weights=[0.5, 0.3, 0.2])
    train_phase(old, "p1", max_steps=4)
    new = recipe(tmp_path, data_dirs, weights=[0.1, 0.1, 0.8])
    ck4 = tmp_path / "ckpt" / "p1" / "step_00000004"
    shown = PhaseData.from_config(new, "p1")
    assert "blend change" in load_checkpoint_data(shown, ck4)
    predicted = {}
    for step in range(5, 9):
        for s in step_samples(shown, step):
            predicted[s.dataset] = predicted.get(s.dataset, 0) + 1
    before = step_samples(PhaseData.from_config(old, "p1"), 2)
    assert [(s.sample, s.dataset, s.index) for s in step_samples(shown, 2)] == \
        [(s.sample, s.dataset, s.index) for s in before]
    train_phase(new, "p1", max_steps=4)
    consumed = [json.loads((tmp_path / "ckpt" / "p1" / f"step_0000000{k}" / "extra.json").read_text())
                ["data"]["per_dataset_consumed"] for k in (4, 8)]
    assert predicted == {k: consumed[1][k] - consumed[0].get(k, 0) for k in consumed[1]
                         if consumed[1][k] != consumed[0].get(k, 0)}
    path = save_config(new, tmp_path / "r.yaml")
    assert cli.main(["samples", "--config", str(path), "--phase", "p1", "--step", "6",
                     "--checkpoint", str(ck4)]) == 0
    out = capsys.readouterr().out
    assert f"the blend of {ck4} and after it" in out and "blend change at step 4" in out
    assert cli.main(["samples", "--config", str(path), "--phase", "p1", "--checkpoint", str(tmp_path)]) == 2
    assert "cannot take the data position from it" in capsys.readouterr().err
