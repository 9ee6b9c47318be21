"""snowtrain.evaluation.sanitize against the tools' own tree-sitter sanitizers (evalplus 0.3.1 and
bigcodebench 0.2.5, which scripts/setup.sh installs for the tests without their dependencies):
the same output on hand-written completions of the usual shapes (stray tests, prints, a broken
tail at the token limit, prose, fences, helpers, classes, decorators, multi-byte text) and on
hundreds of seeded random mixes of them."""
from __future__ import annotations

import random

import pytest
from reference_tools import tool_sanitize

from snowtrain.evaluation.sanitize import code_extract, sanitize


@pytest.fixture(scope="module")
def evalplus_sanitize():
    return tool_sanitize("evalplus")


@pytest.fixture(scope="module")
def bigcodebench_sanitize():
    return tool_sanitize("bigcodebench")


PROMPT = 'import math\nfrom typing import List\n\n\ndef solve(xs: List[int]) -> int:\n    """Sum of squares."""\n'

CASES = [
    # a clean body
    PROMPT + "    return sum(x * x for x in xs)\n",
    # stray tests and prints after the function
    PROMPT + "    return sum(x * x for x in xs)\n\n\nprint(solve([1, 2]))\nassert solve([3]) == 9\n",
    PROMPT + "    return sum(x * x for x in xs)\n\nif __name__ == '__main__':\n    print(solve([1]))\n",
    # cut mid-statement at the token limit
    PROMPT + "    total = 0\n    for x in xs:\n        total += x * x\n    return total\n\n\ndef other(y):\n    return [y,",
    PROMPT + "    return helper(xs)\n\n\ndef helper(xs):\n    return sum(x * x for x in xs)\n\n\ndef unused():\n    return 1\n",
    # prose and markdown fences around the code
    "Here is the solution:\n```python\n" + PROMPT + "    return sum(x * x for x in xs)\n```\nThis works because...\n",
    # a helper without a return (EvalPlus drops it, BigCodeBench keeps it)
    PROMPT + "    log(xs)\n    return sum(x * x for x in xs)\n\n\ndef log(xs):\n    print(xs)\n",
    # classes, module constants, tuple and attribute assignments, annotations
    PROMPT + "    return Acc(SCALE).run(xs)\n\n\nSCALE = 1\nA, B = 1, 2\nobj = Acc\nobj.x = SCALE\n"
             "LIMIT: int = 10\nNAME: str\n\n\nclass Acc:\n    def __init__(self, k):\n        self.k = k\n\n"
             "    def run(self, xs):\n        return self.k * sum(x * x for x in xs)\n",
    # decorated, async and nested definitions, a future import, a re-definition
    "from __future__ import annotations\n" + PROMPT + "    return cached(tuple(xs))\n\n\n"
    "import functools\n\n\n@functools.lru_cache\ndef cached(t):\n    return sum(x * x for x in t)\n\n\n"
    "async def fetch():\n    return 1\n\n\ndef solve(xs):\n    return 0\n",
    # multi-byte text before the kept code (byte offsets)
    "# café ünïcode — ok\n" + PROMPT + "    s = 'naïve ✓'\n    return sum(x * x for x in xs) + len(s) * 0\n",
    # nothing parses beyond one line
    "this is not code at all\nnor is this line (\n",
    "",
    "def solve(",
    # the entry point named at the end (BigCodeBench's trailing trim)
    PROMPT + "    return sum(x * x for x in xs)\nresult = solve([1, 2, 3])\nsolve_value = 3\n",
    # blank and whitespace-only lines around the code
    "\n\n   \n" + PROMPT + "    return sum(x * x for x in xs)\n\n   \n\n",
    # indentation errors in the middle
    PROMPT + "    return sum(x * x for x in xs)\n  bad indent\n\ndef tail():\n    return 2\n",
    # global state, lambdas, comprehensions and keyword names reaching helpers
    PROMPT + "    f = lambda v: weight(v=v)\n    return sum(f(x) for x in xs if keep(x))\n\n\n"
             "def weight(v):\n    return v * v * FACTOR\n\n\ndef keep(x):\n    return True\n\n\nFACTOR = 1\n",
    # try/except and with at top level, and an f-string naming a helper
    PROMPT + "    return int(f'{helper2(xs)}')\n\n\ntry:\n    import numpy\nexcept ImportError:\n    numpy = None\n\n\n"
             "def helper2(xs):\n    return sum(x * x for x in xs)\n",
]

_FRAGMENTS = [
    "import os\n", "from collections import Counter\n", "import numpy as np\n",
    "def helper(v):\n    return v * 2\n", "def noisy(v):\n    print(v)\n", "class Box:\n    size = 3\n",
    "CONST = 7\n", "a = b = CONST\n", "x, y = 1, 2\n", "items: list = []\n", "Box.size = CONST\n",
    "print(solve([1]))\n", "assert solve([2]) == 4\n", "if __name__ == '__main__':\n    solve([])\n",
    "for i in range(3):\n    print(i)\n", "@staticmethod\ndef deco(v):\n    return v\n",
    "async def later():\n    return helper(1)\n", "def solve(xs):\n    return -1\n",
    "Here is some prose about the code.\n", "```python\n", "```\n", "\n", "   \n", "def broken(:\n",
    "    return helper(CONST)\n", "result = solve([4])\n", "# a comment line\n",
    "def uses_box():\n    return Box().size + helper(1)\n", "solve_alias = solve\n",
    "def ünï(v):\n    return 'ü' + str(v)\n", "data = {'k': [1, 2,\n", "    3]}\n",
]


def _random_cases(n: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        parts = [PROMPT + rng.choice(["    return helper(sum(xs))\n", "    return uses_box()\n",
                                       "    return CONST\n", "    pass\n", "    return ünï(1)\n"])]
        for _ in range(rng.randint(0, 7)):
            parts.insert(rng.randint(0, len(parts)), rng.choice(_FRAGMENTS))
        yield "".join(parts)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_same_as_evalplus(evalplus_sanitize, case):
    assert sanitize(CASES[case], "solve", "evalplus") == evalplus_sanitize(CASES[case], "solve")


@pytest.mark.parametrize("case", range(len(CASES)))
def test_same_as_bigcodebench(bigcodebench_sanitize, case):
    assert sanitize(CASES[case], "solve", "bigcodebench") == bigcodebench_sanitize(CASES[case], "solve")


def test_random_mixes_match_both_tools(evalplus_sanitize, bigcodebench_sanitize):
    mismatches = []
    for i, code in enumerate(_random_cases(300)):
        for flavor, ref in (("evalplus", evalplus_sanitize), ("bigcodebench", bigcodebench_sanitize)):
            want = ref(code, "solve")
            got = sanitize(code, "solve", flavor)
            if got != want:
                mismatches.append((i, flavor, code, want, got))
    assert not mismatches, "first mismatch: case %d (%s)\n--- code\n%s\n--- tool\n%s\n--- ours\n%s" % mismatches[0]


def test_code_extract_is_the_exhaustive_search():
    """The pruned search equals the tools' plain double loop on mixes of valid and broken lines."""
    import ast

    def exhaustive(text):
        lines = text.split("\n")
        best, pair = 0, (0, 0)
        for i in range(len(lines)):
            for j in range(i + 1, len(lines)):
                chunk = "\n".join(lines[i:j + 1])
                try:
                    ast.parse(chunk)
                except SyntaxError:
                    continue
                c = sum(1 for ln in lines[i:j + 1] if ln.strip())
                if c > best:
                    best, pair = c, (i, j)
        return "\n".join(lines[pair[0]:pair[1] + 1])

    rng = random.Random(1)
    pool = ["x = 1", "def f(:", "    return 2", "", "  ", "print(x)", "if x:", "    y = 3", "(",
            ")", "z = [", "1, 2]", "class C:", "    pass", "# note", "else:", "'''", "x +"]
    for _ in range(400):
        text = "\n".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        assert code_extract(text) == exhaustive(text), text


def test_unknown_flavor_is_refused():
    with pytest.raises(ValueError, match="flavor"):
        sanitize("x = 1\n", "f", "other")
