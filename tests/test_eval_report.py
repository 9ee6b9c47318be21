"""`snowtrain eval-report`: summaries of several evaluations (one written by a real `snowtrain
eval` run) in one table, the latest of repeated evaluations, the paper's numbers for the same
phase beside HumanEval+ / MBPP+, a chart, and exit 2 for nothing to report or a broken file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from snowtrain import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _summary(folder: Path, model: str, benchmark: str, passed: float, base=None, problems=164,
             finished="2026-11-27T10:00:00") -> None:
    folder.mkdir(parents=True)
    s = {"model": model, "benchmark": benchmark, "problems": problems, "pass@k": {"pass@1": passed},
         "finished_at": finished}
    if base is not None:
        s["base_pass@k"] = {"pass@1": base}
    (folder / "summary.json").write_text(json.dumps(s))


@pytest.mark.usefixtures("keep_torch_threads")
def test_the_table_puts_each_model_beside_the_paper(tmp_path, hf_dir, capsys):
    ev = tmp_path / "evals"
    p1, p2 = "/ck/snowcoder/phase1/step_00119210", "/ck/snowcoder/phase2/step_00011921"
    _summary(ev / "a", p1, "HumanEvalPlus-v0.1.10", 0.125, base=0.15)
    _summary(ev / "b", p1, "MbppPlus-v0.2.0", 0.30, base=0.35, problems=378)
    _summary(ev / "c", p2, "HumanEvalPlus-v0.1.10", 0.1, finished="2026-11-27T09:00:00")   # older
    _summary(ev / "d", p2, "HumanEvalPlus-v0.1.10", 0.2, base=0.25)
    # and a real evaluation of a tiny model, in a phase-named folder
    assert cli.main(["eval", str(hf_dir), "--limit", "2", "--max-new-tokens", "8", "--quiet",
                     "--out", str(ev / "eval-phase3" / "humaneval")]) == 0
    capsys.readouterr()
    assert cli.main(["eval-report", str(ev), "--out", str(tmp_path / "r.md"),
                     "--plot", str(tmp_path / "r.png")]) == 0
    out = capsys.readouterr().out
    assert out.startswith((tmp_path / "r.md").read_text())
    lines = out.splitlines()
    assert lines[0] == "| model | HumanEvalPlus-v0.1.10 | paper HumanEval+ | MbppPlus-v0.2.0 | paper MBPP+ | humaneval |"
    assert lines[2] == "| phase1/step_00119210 (phase 1) | 12.5 (base 15.0) /164 | 14.0 | 30.0 (base 35.0) /378 | 27.8 | - |"
    assert lines[3] == "| phase2/step_00011921 (phase 2) | 20.0 (base 25.0) /164 | 21.3 | - | 34.7 | - |"
    real = json.loads((ev / "eval-phase3" / "humaneval" / "summary.json").read_text())
    name = "/".join(Path(real["model"]).parts[-2:])
    assert lines[4] == f"| {name} (phase 3) | - | 28.0 | - | 42.9 | {100 * real['pass@k']['pass@1']:.1f} /2 |"
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC


def test_paths_names_and_times_pick_the_right_row(tmp_path):
    from snowtrain.evaluation.report import collect, table
    ev = tmp_path / "ev"
    # the innermost phase counts; a subset is not the paper's benchmark; the later run wins
    # across time zones (10:00+02:00 is before 09:30Z)
    _summary(ev / "a", "/runs/phase1-ablation/ckpt/phase3/step_9", "HumanEvalPlus-Mini-v0.1.10", 0.5)
    _summary(ev / "b", "/m/phase2/step_1", "EvoEval_difficult", 0.1)
    _summary(ev / "c", "/m/phase2/step_1", "MbppPlus-v0.2.0", 0.4, finished="2026-11-27T10:00:00+0200")
    _summary(ev / "d", "/m/phase2/step_1", "MbppPlus-v0.2.0", 0.1, finished="2026-11-27T09:30:00+0000")
    records = collect([ev])
    assert [(r["phase"], r["benchmark"], r["pass@1"]) for r in records] == [
        (2, "EvoEval_difficult", 0.1), (2, "MbppPlus-v0.2.0", 0.1), (3, "HumanEvalPlus-Mini-v0.1.10", 0.5)]
    head = table(records).splitlines()[0]
    assert head == "| model | EvoEval_difficult | HumanEvalPlus-Mini-v0.1.10 | MbppPlus-v0.2.0 | paper MBPP+ |"


def test_nothing_to_report_or_a_broken_summary_exits_2(tmp_path, capsys):
    assert cli.main(["eval-report", str(tmp_path)]) == 2
    assert "no summary.json under" in capsys.readouterr().err
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "summary.json").write_text('{"model": "m"}')
    assert cli.main(["eval-report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"skipping {tmp_path / 'x' / 'summary.json'}: not a summary written by snowtrain eval" in err
    assert "no readable summary among" in err
    _summary(tmp_path / "y", "/m/phase1/s", "humaneval", 0.25)   # one broken file skipped, the rest shown
    assert cli.main(["eval-report", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "| phase1/s (phase 1) | 25.0 /164 |" in out and "skipping" in err
    assert cli.main(["eval-report", str(tmp_path / "missing")]) == 2


def test_evoeval_column_is_the_mean_of_its_five_benchmarks(tmp_path):
    """All five EvoEval benchmarks of a model give an "EvoEval" column beside the paper's; four of
    them do not; an evaluated "EvoEval" file of its own is not replaced."""
    from snowtrain.evaluation.report import EVOEVAL_PARTS, collect, table
    ev = tmp_path / "ev"
    scores = dict(zip(EVOEVAL_PARTS, (0.10, 0.20, 0.30, 0.05, 0.15)))
    for part, score in scores.items():
        _summary(ev / "p3" / part, "/m/phase3/step_9", f"EvoEval_{part}", score, problems=100)
        if part != "combine":
            _summary(ev / "p2" / part, "/m/phase2/step_5", f"EvoEval_{part}-v0.1.0", score / 2, problems=100)
    # a part evaluated again under its versioned name: the later evaluation counts
    _summary(ev / "p3" / "again", "/m/phase3/step_9", "EvoEval_difficult-v0.1.0", 0.60, problems=100,
             finished="2026-11-28T10:00:00")
    _summary(ev / "own" / "x", "/m/phase1/step_1", "EvoEval", 0.07, problems=500)
    for part in EVOEVAL_PARTS:
        _summary(ev / "own" / part, "/m/phase1/step_1", f"EvoEval_{part}", 0.5, problems=100)
    records = collect([ev])
    means = {r["model"]: r for r in records if r["benchmark"] == "EvoEval"}
    assert set(means) == {"/m/phase3/step_9", "/m/phase1/step_1"}
    assert means["/m/phase3/step_9"]["pass@1"] == pytest.approx(0.26) and means["/m/phase3/step_9"]["problems"] == 500
    assert means["/m/phase1/step_1"]["pass@1"] == 0.07
    lines = table(records).splitlines()
    head = lines[0].split(" | ")
    col = head.index("EvoEval")
    assert head[col + 1] == "paper EvoEval"
    row3 = next(line for line in lines if "(phase 3)" in line).split(" | ")
    assert row3[col] == "26.0 /500" and row3[col + 1] == "18.0"
    row2 = next(line for line in lines if "(phase 2)" in line).split(" | ")
    assert row2[col] == "-" and row2[col + 1] == "12.8"
