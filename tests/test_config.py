from pathlib import Path

import pytest
import yaml

from snowtrain.config import (ConfigError, RunConfig, check_dataset_paths, diff_configs,
                              load_config, save_config)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs/recipe/snowcoder.yaml"


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.fixture
def recipe(tmp_path):
    """A small recipe that includes a model file, with real dataset paths under tmp_path."""
    write(tmp_path / "model.yaml", {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 176,
                                    "num_attention_heads": 4, "vocab_size": 4096, "max_seq_len": 128})
    data = {
        "model": {"include": "model.yaml", "num_layers": 3},
        "phases": [{"name": "p1", "tokens": "1M", "global_batch_size": 8, "micro_batch_size": 2,
                    "seq_len": 64, "datasets": [{"path": str(tmp_path / "d/a_text_document")}]}],
    }
    return write(tmp_path / "recipe.yaml", data)


def test_recipe_shape_matches_the_paper():
    cfg = load_config(RECIPE)
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads) == (24, 2048, 5632, 16)
    assert (m.kv_heads, m.head_dim, m.vocab_size, m.max_seq_len, m.tie_embeddings) == (16, 128, 64000, 8192, True)
    p1, p2, p3 = cfg.phases
    assert (p1.tokens, p2.tokens, p3.tokens) == (500 * 10**9, 50 * 10**9, 5 * 10**9)
    assert p1.global_batch_size * p1.seq_len == 512 * 8192
    assert (p1.schedule.kind, p1.schedule.warmup_steps, p1.schedule.peak_lr, p1.schedule.min_lr) == \
        ("cosine", 600, 5.3e-4, 5.3e-5)
    assert (p2.schedule.kind, p2.schedule.warmup_steps, p2.schedule.min_lr) == ("linear", 1000, 0.0)
    assert all(d.repeat == 4 for d in p2.datasets) and len(p1.datasets) == 18
    assert p1.init_from is None and p2.init_from == "previous"


def test_include_and_local_override(recipe):
    cfg = load_config(recipe)
    assert cfg.model.hidden_size == 64 and cfg.model.num_layers == 3
    assert cfg.phases[0].tokens == 10**6


def test_round_trip_is_lossless(recipe, tmp_path):
    for src in (recipe, RECIPE):
        cfg = load_config(src, ["optim.lr=3e-4", "parallel.zero1=true"])
        out = save_config(cfg, tmp_path / "saved.yaml")
        again = load_config(out)
        assert again == cfg
        assert out.read_text() == save_config(again, tmp_path / "saved2.yaml").read_text()


def test_dotted_overrides(recipe):
    cfg = load_config(recipe, ["optim.lr=3e-4", "phases.p1.schedule.warmup_steps=7",
                               "phases.0.tokens=2M", "model.num_kv_heads=2"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.phases[0].schedule.warmup_steps == 7 and cfg.phases[0].tokens == 2 * 10**6
    assert cfg.model.kv_heads == 2
    diff = diff_configs(load_config(recipe), cfg)
    assert "optim.lr: 0.00053 -> 0.0003" in diff
    assert "phases[0].schedule.warmup_steps: 0 -> 7" in diff


def test_unknown_key_names_the_included_file_and_suggests(recipe, tmp_path):
    write(tmp_path / "model.yaml", "num_layers: 2\nhiden_size: 64\n")
    with pytest.raises(ConfigError) as e:
        load_config(recipe)
    msg = str(e.value)
    assert "model.yaml" in msg and "model.hiden_size" in msg and "did you mean 'hidden_size'" in msg


def test_unknown_key_from_override_names_the_override(recipe):
    with pytest.raises(ConfigError, match=r"(?s)--set optim\.lrr=1.*did you mean 'lr'"):
        load_config(recipe, ["optim.lrr=1"])


@pytest.mark.parametrize("override, key, needle", [
    ("optim.lr=fast", "optim.lr", "expected float"),
    ("model.num_layers=2.5", "model.num_layers", "expected int"),
    ("model.tie_embeddings=3", "model.tie_embeddings", "expected bool"),
    ("parallel.backend=ncl", "parallel.backend", "did you mean 'nccl'"),
    ("phases.0.datasets=abc", "phases.datasets", "expected list"),
])
def test_wrong_types(recipe, override, key, needle):
    with pytest.raises(ConfigError) as e:
        load_config(recipe, [override])
    assert needle in str(e.value) and "fix:" in str(e.value)
    assert key.split(".")[0] in e.value.key


@pytest.mark.parametrize("override, key, needle", [
    ("model.num_attention_heads=5", "model.num_attention_heads", "does not divide hidden_size=64"),
    ("parallel.tensor_parallel=8", "parallel.tensor_parallel", "does not divide model.num_attention_heads=4"),
    ("model.num_kv_heads=3", "model.num_kv_heads", "does not divide num_attention_heads"),
    ("model.vocab_size=4099", "parallel.tensor_parallel", None),
    ("phases.0.seq_len=4096", "phases[0].seq_len", "exceeds model.max_seq_len"),
    ("phases.0.micro_batch_size=3", "phases[0].global_batch_size", "does not divide"),
])
def test_inconsistent_values(recipe, override, key, needle):
    overrides = [override] + (["parallel.tensor_parallel=2"] if "vocab" in override else [])
    with pytest.raises(ConfigError) as e:
        load_config(recipe, overrides)
    assert e.value.key == key and str(recipe) in str(e.value) and e.value.fix
    if needle:
        assert needle in str(e.value)


def test_missing_dataset_paths(recipe, tmp_path, monkeypatch):
    cfg = load_config(recipe)
    with pytest.raises(ConfigError, match="a_text_document.bin and .*a_text_document.idx") as e:
        check_dataset_paths(cfg, "p1", file=recipe)
    assert e.value.key == "phases[0].datasets[0].path"
    (tmp_path / "d").mkdir()
    for ext in (".bin", ".idx"):
        (tmp_path / f"d/a_text_document{ext}").write_bytes(b"")
    check_dataset_paths(cfg, "p1")
    # ${VAR} placeholders: unset is a clear error, set resolves
    cfg.phases[0].datasets[0].path = "${SNOWTRAIN_TEST_DATA}/a_text_document"
    monkeypatch.delenv("SNOWTRAIN_TEST_DATA", raising=False)
    with pytest.raises(ConfigError, match="SNOWTRAIN_TEST_DATA is not set"):
        check_dataset_paths(cfg)
    monkeypatch.setenv("SNOWTRAIN_TEST_DATA", str(tmp_path / "d"))
    check_dataset_paths(cfg)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = write(tmp_path / "bad.yaml", "model: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML") as e:
        load_config(bad)
    assert "bad.yaml" in str(e.value)
    write(tmp_path / "a.yaml", "include: b.yaml\n")
    write(tmp_path / "b.yaml", "include: a.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(tmp_path / "a.yaml")


def test_unknown_phase_suggests(recipe):
    with pytest.raises(ConfigError, match="did you mean 'p1'"):
        load_config(recipe).phase("p11")


def test_defaults_are_the_recipe_model():
    assert RunConfig().model.hidden_size == 2048


@pytest.mark.parametrize("name", ["phase1.yaml", "quickstart.yaml"])
def test_shipped_phase1_configs_load_and_dump(name, monkeypatch):
    """Nested free-form sections (filters.per_language) load, take overrides and dump as the run
    stamp does: plain dicts all the way down (phase 3's filters go through the same loader)."""
    from data_prep.pipeline.config import dump, load_phase1_config
    monkeypatch.setenv("STACK_DIR", "/data/stack")
    monkeypatch.setenv("SNOWTRAIN_DATA", "/data/snowtrain")
    cfg = load_phase1_config(ROOT / "configs/data_prep" / name, ["filters.per_language.python.xml=false"])
    assert yaml.safe_load(dump(cfg))["filters"]["per_language"]["python"]["xml"] is False


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: x\noptim:\n  lr: 1.0e-3\nmodel:\n  num_layers: 2\noptim:\n  lr: 3.0e-3\n")
    with pytest.raises(ConfigError, match=r"key 'optim' is given twice \(lines 2 and 6\)"):
        load_config(path)


def test_a_corrupt_manifest_is_a_config_error(tmp_path):
    from snowtrain.config import DatasetConfig, expand_dataset_folders
    (tmp_path / "phase1").mkdir()
    (tmp_path / "phase1" / "manifest.json").write_text('{"datasets": {"python": ')
    with pytest.raises(ConfigError, match="not a readable data-prep manifest") as e:
        expand_dataset_folders([DatasetConfig(path=str(tmp_path / "phase1"))], "phases[0]", None)
    assert e.value.key == "phases[0].datasets[0].path"
