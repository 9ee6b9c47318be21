"""Bad input to export, plot and plan: a ConfigError (exit 2) naming the folder, file or key and
what to do; nothing the user had is deleted, nothing half-written is left."""
import json
import os
import shutil

import pytest

from snowtrain.cli import main
from snowtrain.config import ConfigError
from snowtrain.export import EXPORT_MARKER, export_checkpoint
from snowtrain.metrics import MetricsLogger, plot_loss, read_records
from snowtrain.plan import plan_text
from snowtrain.train import train_phase
from train_helpers import make_datasets, recipe


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step run trained in its own cwd with relative checkpoint and tokenizer paths (as the
    quickstart records them), then moved: {root, ckpt, tokenizer}."""
    base = tmp_path_factory.mktemp("run")
    data = make_datasets(base / "data", n=1, docs=20)
    cwd = base / "train_cwd"
    (cwd / "run/tok").mkdir(parents=True)
    (cwd / "run/tok/tokenizer.model").write_bytes(b"not a real sentencepiece model")
    (cwd / "run/tok/special_tokens.json").write_text(json.dumps({"eod": 2, "pad": 0}))
    cfg = recipe(base, data, steps=3)
    cfg.checkpoint.dir, cfg.tokenizer = "run/ckpt", "run/tok/tokenizer.model"
    old = os.getcwd()
    os.chdir(cwd)
    try:
        assert train_phase(cfg, "p1").status == "complete"
    finally:
        os.chdir(old)
    root = base / "moved/elsewhere"
    shutil.copytree(cwd / "run", root)  # the run root renamed: the recorded paths no longer resolve
    shutil.rmtree(cwd)
    return {"root": root, "ckpt": root / "ckpt/p1/step_00000003", "tokenizer": root / "tok/tokenizer.model"}


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------------------------- export --out

def test_export_refuses_a_folder_with_other_files_and_keeps_them(run, elsewhere):
    out = elsewhere / "hf"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt") as e:
        export_checkpoint(run["ckpt"], out)
    assert "hf" in str(e.value) and "--out" in str(e.value)
    assert (out / "notes.txt").read_text() == "mine" and (out / "sub").is_dir()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["hf"]  # no temporary folder left
    assert main(["export", str(run["ckpt"]), "--out", str(out)]) == 2


def test_export_replaces_an_earlier_export_or_an_empty_folder(run, elsewhere):
    (elsewhere / "hf").mkdir()
    out = export_checkpoint(run["ckpt"], "hf")
    assert (out / "config.json").is_file() and (out / EXPORT_MARKER).is_file()
    (out / "config.json").write_text("{}")
    export_checkpoint(run["ckpt"], "hf")  # an earlier export: replaced
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["hf"]


def test_export_to_the_current_folder_is_refused_clearly(run, elsewhere):
    with pytest.raises(ConfigError, match="current folder") as e:
        export_checkpoint(run["ckpt"], ".")
    assert "--out" in str(e.value)
    assert list(elsewhere.iterdir()) == []


# ------------------------------------------------------------------------------- export tokenizer

def test_export_with_a_missing_tokenizer_fails_naming_it(run, elsewhere):
    with pytest.raises(ConfigError, match="/nope/tokenizer.model") as e:
        export_checkpoint(run["ckpt"], "hf", tokenizer="/nope/tokenizer.model")
    assert "--tokenizer" in str(e.value)
    assert not (elsewhere / "hf").exists()
    assert main(["export", str(run["ckpt"]), "--out", "hf", "--tokenizer", "/nope/tokenizer.model"]) == 2


def test_export_finds_the_recorded_tokenizer_below_the_moved_run_root(run, elsewhere):
    out = export_checkpoint(run["ckpt"], "hf")
    assert (out / "tokenizer.model").read_bytes() == run["tokenizer"].read_bytes()
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 2


def test_export_with_the_recorded_tokenizer_gone_says_pass_tokenizer(run, tmp_path, elsewhere):
    copy = tmp_path / "copy"
    shutil.copytree(run["root"], copy)
    shutil.rmtree(copy / "tok")
    with pytest.raises(ConfigError, match="run/tok/tokenizer.model") as e:
        export_checkpoint(copy / "ckpt/p1/step_00000003", "hf")
    assert "--tokenizer" in str(e.value) and "config.yaml" in str(e.value)
    out = export_checkpoint(copy / "ckpt/p1/step_00000003", "hf", tokenizer=str(run["tokenizer"]))
    assert (out / "tokenizer.model").is_file()


# ------------------------------------------------------------------------ export of a non-checkpoint

@pytest.mark.parametrize("which", ["root", "phase"])
def test_export_of_a_checkpoint_root_or_phase_lists_its_checkpoints(run, elsewhere, which):
    folder = run["root"] / "ckpt" if which == "root" else run["root"] / "ckpt/p1"
    with pytest.raises(ConfigError, match="holds checkpoints") as e:
        export_checkpoint(folder, "hf")
    assert str(run["ckpt"]) in str(e.value) and f"snowtrain export {run['ckpt']}" in str(e.value)


def test_export_of_an_hf_folder_or_a_missing_path_is_a_config_error(run, elsewhere):
    hf = export_checkpoint(run["ckpt"], "hf")
    with pytest.raises(ConfigError, match="Hugging Face"):
        export_checkpoint(hf, "hf2")
    with pytest.raises(ConfigError, match="no such checkpoint folder"):
        export_checkpoint(elsewhere / "missing", "hf2")
    assert main(["export", str(elsewhere / "missing"), "--out", "hf2"]) == 2


# ----------------------------------------------------------------------------------------- plot

def test_plot_skips_a_torn_line_with_one_warning(tmp_path, capsys):
    f = tmp_path / "metrics.jsonl"
    good = [{"phase": "p1", "step": s, "global_step": s, "loss": 5.0 - s} for s in (1, 2, 3)]
    torn = json.dumps(good[1])[:20] + json.dumps(good[2])  # killed mid-write, then resumed
    f.write_text(json.dumps(good[0]) + "\n" + torn + "\n" + json.dumps(good[2]) + "\n{\n")
    rows = read_records([f])
    assert [r["step"] for r in rows] == [1, 3]
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and f"{f}:2, 4" in err
    assert plot_loss([f], tmp_path / "loss.png").is_file()


def test_metrics_logger_starts_a_torn_file_on_a_new_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n" + '{"step": 2, "lo')
    m = MetricsLogger(tmp_path, enabled=True)
    m.log({"step": 2, "loss": 0.5})
    m.close()
    assert [r["step"] for r in read_records([f])] == [1, 2]
    MetricsLogger(tmp_path, enabled=True).close()  # a file ending in a newline gets no blank line
    assert not f.read_text().endswith("\n\n")


# ----------------------------------------------------------------------------------------- plan

@pytest.mark.parametrize("gpus, tp, key, fix", [
    (48, 1, "phases.p1.global_batch_size", "32, 64"),   # 512 / 48 is not whole
    (3, 1, "phases.p1.global_batch_size", "2, 4"),      # 512 / 3 either
    (2, 4, "parallel.tensor_parallel", "multiple of 4"),
    (0, 1, "--gpus", "give one of"),
])
def test_plan_refuses_a_layout_train_would_refuse(tmp_path, gpus, tp, key, fix):
    cfg = recipe(tmp_path, ["unused"])
    cfg.phases[0].global_batch_size, cfg.phases[0].micro_batch_size = 512, 1
    cfg.parallel.tensor_parallel = tp
    with pytest.raises(ConfigError) as e:
        plan_text(cfg, "p1", gpus)
    assert f"key '{key}'" in str(e.value) and fix in str(e.value)


@pytest.mark.parametrize("mfu", [0, -0.5, 1.5])
def test_plan_needs_a_positive_mfu(tmp_path, mfu):
    cfg = recipe(tmp_path, ["unused"])
    with pytest.raises(ConfigError, match="--mfu"):
        plan_text(cfg, "p1", 4, mfu=mfu)


def test_plan_of_a_valid_layout_still_prints(tmp_path):
    cfg = recipe(tmp_path, ["unused"])
    cfg.phases[0].global_batch_size, cfg.phases[0].micro_batch_size = 512, 1
    cfg.parallel.tensor_parallel = 2
    text = plan_text(cfg, "p1", 64)
    assert "TP=2, DP=32" in text and "16 per rank" in text


def test_plan_shows_the_blend_with_the_epochs_the_trainer_plans(tmp_path):
    """Each dataset's epochs in the plan (from .idx files alone) against the trainer's own data
    (megatron-core's samples per epoch); over 4 epochs is pointed out; missing data is one line."""
    from snowtrain.data import PhaseData
    from train_helpers import make_datasets
    cfg = recipe(tmp_path, make_datasets(tmp_path / "data"), weights=[0.7, 0.2, 0.1])
    cfg.phases[0].tokens = 200 * 8 * 32   # 200 steps: dataset 0 is drawn many times over
    cfg.data.valid_fraction = 0.1
    text = plan_text(cfg, "p1", 1)
    data = PhaseData.from_config(cfg, "p1")
    rows = [line for line in text.splitlines() if line.startswith("    ds")]
    assert len(rows) == 3 and "weights from explicit" in text
    for row, stream, w in zip(rows, data.streams, (0.7, 0.2, 0.1)):
        assert row.split()[0] == stream.name and f"weight {w:.4f}" in row
        epochs = float(row.split("~")[1].split()[0])
        want = w * data.budget_samples / stream.samples_per_epoch
        assert epochs == pytest.approx(want, rel=0.02), (row, want)
        assert ("<- over 4 epochs" in row) == (want > 4)
    assert "<- over 4 epochs" in rows[0]
    cfg.phases[0].datasets[0].path = str(tmp_path / "gone" / "ds_text_document")
    assert "data                 not read yet (" in plan_text(cfg, "p1", 1)


def test_plot_of_a_missing_file_is_exit_2_naming_it(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "x.png")]) == 2
    assert "nope.jsonl does not exist" in capsys.readouterr().err
