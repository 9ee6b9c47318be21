"""data-prep's answers to user mistakes: a clear ConfigError (exit 2) naming the file, key and
what to do, found before hours of work; nothing lost or half-written."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from snowtrain.config import ConfigError
from data_prep.pipeline import Phase1, load_phase1_config
from data_prep.sources import SourceError

BIN = Path(sys.executable).parent


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _phase1_cfg(tmp_path, **extra) -> Path:
    shard = _jsonl(tmp_path / "shard.jsonl", [{"content": f"x = {i}\n", "path": f"r/m{i}.py",
                                               "repo": "r"} for i in range(3)])
    cfg = {"output": str(tmp_path / "o"), "sources": [{"type": "jsonl", "paths": [str(shard)]}],
           "buckets": 2, "funnel_png": False, **extra}
    path = tmp_path / "p1.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args, timeout=120):
    return subprocess.run([str(BIN / "data-prep"), *map(str, args), "--no-progress"],
                          capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- the run stamp

def test_failed_run_does_not_block_its_corrected_rerun(tmp_path):
    cfg = _phase1_cfg(tmp_path)
    bad = load_phase1_config(cfg, [f'sources.0.paths=["{tmp_path}/*.jsnol"]'])
    with pytest.raises(SourceError, match="jsnol"):
        Phase1(bad, progress=False).run()
    work = tmp_path / "o" / ".work"
    assert (work / "config.yaml").exists()
    Phase1(load_phase1_config(cfg), progress=False)          # nothing done yet: replaced
    assert "jsnol" not in (work / "config.yaml").read_text()


def test_changed_config_after_work_names_the_keys(tmp_path):
    cfg = _phase1_cfg(tmp_path)
    Phase1(load_phase1_config(cfg), progress=False)
    work = tmp_path / "o" / ".work"
    (work / "read").mkdir()
    (work / "read" / "u000000.json").write_text("{}")        # a finished unit
    # keys that cannot change the outputs
    Phase1(load_phase1_config(cfg, ["workers=3", "funnel_png=true"]), progress=False)
    with pytest.raises(ConfigError) as e:
        Phase1(load_phase1_config(cfg, ["languages=[python]", "buckets=3"]), progress=False,
               config_file=cfg)
    msg = str(e.value)
    assert "buckets: 2 -> 3" in msg and "languages: None -> ['python']" in msg
    assert "--restart" in msg and str(cfg) in msg
    assert (work / "read" / "u000000.json").exists()
    Phase1(load_phase1_config(cfg, ["buckets=3"]), progress=False, restart=True)
    assert not (work / "read").exists()


def test_cli_changed_config_is_exit_2(tmp_path):
    cfg = _phase1_cfg(tmp_path)
    Phase1(load_phase1_config(cfg), progress=False)
    (tmp_path / "o" / ".work" / "dedup.pkl").write_bytes(b"x")
    r = _cli("phase1", "--config", cfg, "--set", "max_file_bytes=1000")
    assert r.returncode == 2 and "max_file_bytes: 1048576 -> 1000" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- output vs input

def test_output_inside_input_is_refused(tmp_path):
    from data_prep.pipeline.run import PipelineRun

    class Cfg:
        work_dir = None

        def __init__(self, input, output):
            self.input, self.output = str(input), str(output)

    inp = tmp_path / "p1"
    for out in (inp, inp / "p2", tmp_path):
        with pytest.raises(ConfigError, match="(?s)output.*input"):
            PipelineRun(Cfg(inp, out))
    PipelineRun(Cfg(inp, tmp_path / "p2"))


# ----------------------------------------------------------------------------- files checked at load

@pytest.mark.parametrize("case", ["missing", "not_sentencepiece"])
def test_tokenizer_model_is_checked_when_the_config_is_loaded(tmp_path, case):
    model = tmp_path / "tokenizer.model"
    if case == "not_sentencepiece":
        model.write_text("not a model\n")
    cfg = _phase1_cfg(tmp_path, tokenizer={"model": str(model)})
    with pytest.raises(ConfigError, match=f"(?s)key 'tokenizer.model'.*{model}"):
        load_phase1_config(cfg)
    r = _cli("phase1", "--config", cfg)
    assert r.returncode == 2 and "tokenizer.model" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", [None, "{not json\n", '{"task_id": "t1"}\n'])
def test_benchmark_files_are_checked_when_the_config_is_loaded(tmp_path, content):
    bench = tmp_path / "bench.jsonl"
    if content is not None:
        bench.write_text(content)
    cfg = _phase1_cfg(tmp_path, decontamination={"options": {"humaneval": False,
                                                             "benchmarks": [str(bench)]}})
    with pytest.raises(ConfigError, match=r"(?s)decontamination.options.benchmarks\[0\].*bench.jsonl"):
        load_phase1_config(cfg)
    load_phase1_config(cfg, ["decontamination.enabled=false"])


# ----------------------------------------------------------------------------- source typos

@pytest.mark.parametrize("override,key,hint", [
    ("languages=[pyhton]", "key 'languages'", "did you mean 'python'"),
    ("sources.0.columns.contnt=text", "key 'sources[0].columns'", "did you mean 'content'"),
])
def test_source_typos_are_config_errors(tmp_path, override, key, hint):
    cfg = _phase1_cfg(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_phase1_config(cfg, [override])
    assert key in str(e.value) and hint in str(e.value)
    r = _cli("phase1", "--config", cfg, "--set", override)
    assert r.returncode == 2 and hint in r.stderr and "Traceback" not in r.stderr


def test_parquet_source_languages_typo_suggests(tmp_path):
    from data_prep.sources import ParquetSource
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="did you mean 'python'"):
        ParquetSource([tmp_path / "x.parquet"], languages=["pyhton"])


# ----------------------------------------------------------------------------- nothing kept

def test_nothing_kept_is_exit_2_naming_the_drop_reasons(tmp_path):
    cfg = _phase1_cfg(tmp_path)
    with pytest.raises(ConfigError) as e:
        Phase1(load_phase1_config(cfg, ["languages=[java]"]), progress=False).run()
    assert "key 'languages'" in str(e.value) and "other_language 3" in str(e.value)
    assert not (tmp_path / "o" / "manifest.json").exists()
    # the corrected config is not blocked by the empty results
    Phase1(load_phase1_config(cfg), progress=False)

    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["x = 1\n", "y = 2\n"]}), tmp_path / "s.parquet")
    r = _cli("phase1", "--config", cfg, "--set", f'sources.0.paths=["{tmp_path}/s.parquet"]',
             "--set", "sources.0.type=parquet", "--set", "sources.0.columns.content=text")
    assert r.returncode == 2 and "unknown_language 2" in r.stderr, r.stderr
    assert "columns.lang" in r.stderr and "Traceback" not in r.stderr


def test_an_input_missing_a_dataset_file_is_named(tmp_path):
    from data_prep.dataset_files import PhaseOutput
    (tmp_path / "manifest.json").write_text(json.dumps({"datasets": {"python": "x"}}))
    (tmp_path / "python_text_document.idx").write_bytes(b"")
    with pytest.raises(ConfigError, match="(?s)key 'input'.*python_text_document.bin is missing"):
        PhaseOutput(tmp_path)


def test_funnel_png_is_claimed_only_when_written(tmp_path, capsys):
    from phase1_corpus import make_corpus, write_config
    make_corpus(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    (out / "funnel.png").write_bytes(b"from an earlier run")
    Phase1(load_phase1_config(write_config(tmp_path, out)), progress=False).run()
    log = capsys.readouterr().out
    assert "wrote " in log and "funnel.png" not in log


def test_ctrl_c_is_a_short_message_with_exit_130(monkeypatch, capsys):
    from data_prep import cli

    def interrupted(argv=None):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_main", interrupted)
    assert cli.main(["phase1", "--config", "x.yaml"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err


def test_a_missing_tree_source_folder_is_exit_2(tmp_path):
    path = _phase1_cfg(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["sources"] = [{"type": "tree", "paths": [str(tmp_path / "no_such_repos")]}]
    path.write_text(yaml.safe_dump(cfg))
    r = _cli("phase1", "--config", path)
    assert r.returncode == 2, r.stderr
    assert "no_such_repos does not exist" in r.stderr and "Traceback" not in r.stderr
