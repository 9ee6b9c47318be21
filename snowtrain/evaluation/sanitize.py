"""EvalPlus's and BigCodeBench's `sanitize`: the code of a completion that the checks run.

Both tools pass every solution (prompt + completion for a base model) through a sanitizer before
executing it: the longest syntactically valid run of lines is kept, and from it the top-level
imports and the definitions the entry point reaches (functions, classes, assignments); other
top-level code (tests, prints, `if __name__` blocks, a broken tail cut at the token limit) goes.
They do this with tree-sitter; here the same rules are restated over Python's own `ast`, so
nothing beyond the standard library is needed (tests/test_sanitize.py compares both tools' own
sanitizers with this one). Their two versions differ in three details, kept apart by `flavor`:
EvalPlus keeps a function only if it has a `return` somewhere in it, BigCodeBench strips the text
first and drops a trailing top-level line that mentions the entry point (and what follows it).
"""
from __future__ import annotations

import ast
import re

FLAVORS = ("evalplus", "bigcodebench")


def _valid(source: str) -> bool:
    try:
        ast.parse(source)
        return True
    except (SyntaxError, MemoryError, ValueError, RecursionError):
        return False


def code_extract(text: str) -> str:
    """The span of at least two lines (the first line alone when none parses) with the most
    non-blank lines that parses; ties go to the earliest start, then the earliest end. Equal to
    the tools' exhaustive search over every span, with spans that cannot win skipped."""
    lines = text.split("\n")
    n = len(lines)
    before = [0]  # before[k]: non-blank lines among lines[:k]
    for line in lines:
        before.append(before[-1] + bool(line.strip()))

    def count(i, j):
        return before[j + 1] - before[i]

    def valid(i, j):
        return _valid("\n".join(lines[i:j + 1]))

    best, pair = 0, (0, 0)
    for i in range(n):
        if before[n] - before[i] <= best:
            break  # later starts hold fewer lines still
        for j in range(n - 1, i, -1):  # the first valid span from the end has this start's most lines
            c = count(i, j)
            if c <= best:
                break
            if valid(i, j):
                first = j  # the earliest end with as many lines (dropping trailing blank lines)
                while first - 1 > i and count(i, first - 1) == c:
                    first -= 1
                pair = (i, next(k for k in range(first, j + 1) if k == j or valid(i, k)))
                best = c
                break
    return "\n".join(lines[pair[0]:pair[1] + 1])


# ---- the tree-sitter node kinds the tools keep, as ast nodes ----

def _names_in(node: ast.AST) -> set[str]:
    """Every identifier in the node (tree-sitter `identifier` leaves): names, attribute names,
    parameters, keyword arguments, imported names, definitions' own names."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.arg):
            out.add(n.arg)
        elif isinstance(n, ast.keyword) and n.arg:
            out.add(n.arg)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, ast.alias):
            out.update(n.name.split("."))
            if n.asname:
                out.add(n.asname)
        elif isinstance(n, ast.ImportFrom) and n.module:
            out.update(n.module.split("."))
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            out.update(n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            out.add(n.name)
        elif isinstance(n, (ast.MatchAs, ast.MatchStar)) and n.name:
            out.add(n.name)
        elif isinstance(n, ast.MatchClass):
            out.update(n.kwd_attrs)
        elif isinstance(n, ast.MatchMapping) and n.rest:
            out.add(n.rest)
    return out


def _assigned_name(node: ast.Assign | ast.AnnAssign, data: bytes, at) -> str | None:
    """tree-sitter's first identifier child of an assignment: the target when it is a bare name
    (`(y) = 1` is a parenthesized expression), else the value when the assignment has one target
    and its value is a bare name (`obj.x = y` is named `y`; in `a.b = c = d` the value is another
    assignment), else none. `at(n)`: n's offset in `data`."""
    target = node.targets[0] if isinstance(node, ast.Assign) else node.target
    if isinstance(target, ast.Name) and at(target) == at(node):
        return target.id
    single = isinstance(node, ast.AnnAssign) or len(node.targets) == 1
    if single and isinstance(node.value, ast.Name) and data[:at(node.value)].rstrip().endswith(b"="):
        return node.value.id
    return None


_COMMENT_LINE = re.compile(rb"[ \t]*#[^\r\n]*")


def _block_end(data: bytes, starts: list[int], node, end: int) -> int:
    """Where tree-sitter's node of a function or class ends: after its last statement, the rest
    of that line when it is a comment, and the comment lines after it that are indented deeper
    than the definition (blank lines between them included)."""
    m = _COMMENT_LINE.match(data, end)
    if m and m.end() == len(data) or m and data[m.end():m.end() + 1] in (b"\r", b"\n"):
        end = m.end()
    line = node.end_lineno  # the next line's index in `starts`
    while line < len(starts):
        raw = data[starts[line]:starts[line + 1] if line + 1 < len(starts) else len(data)]
        body = raw.rstrip(b"\r\n")
        if not body.strip():
            line += 1
            continue
        indent = len(body) - len(body.lstrip(b" \t"))
        if body.lstrip(b" \t").startswith(b"#") and indent > node.col_offset:
            end = starts[line] + len(body)
            line += 1
            continue
        break
    return end


def _has_return(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Return) for n in ast.walk(node))


def _line_starts(data: bytes) -> list[int]:
    starts = [0]
    for m in re.finditer(rb"\r\n|\r|\n", data):
        starts.append(m.end())
    return starts


def _extract(code: str, entrypoint: str | None, flavor: str) -> str:
    code = code_extract(code.strip() if flavor == "bigcodebench" else code)
    try:
        tree = ast.parse(code)
    except (SyntaxError, MemoryError, ValueError, RecursionError):
        return ""  # nothing tree-sitter would find a statement in either
    data = code.encode("utf-8")
    starts = _line_starts(data)

    def at(node) -> int:
        return starts[node.lineno - 1] + node.col_offset

    def text(node) -> bytes:
        end = starts[node.end_lineno - 1] + node.end_col_offset
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            end = _block_end(data, starts, node, end)
        return data[at(node):end]

    imports, definitions, taken = [], [], set()
    for node in tree.body:
        if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom)
                                            and not (node.module == "__future__" and node.level == 0)):
            imports.append(node)
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.decorator_list:  # a decorated_definition: kept by neither tool
                continue
            name = node.name
            keep = name not in taken
            if keep and flavor == "evalplus" and not isinstance(node, ast.ClassDef):
                keep = _has_return(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            name = _assigned_name(node, data, at)
            keep = name not in taken
        else:
            continue
        if keep:
            definitions.append((name, node))
            taken.add(name)

    reachable = None
    if entrypoint:
        deps = {name: _names_in(node) for name, node in definitions}
        reachable, queue = {entrypoint}, [entrypoint]
        while queue:
            for dep in deps.get(queue.pop(0), ()):
                if dep not in reachable:
                    reachable.add(dep)
                    queue.append(dep)
    parts = [text(node) for node in imports]
    parts += [text(node) for name, node in definitions if reachable is None or name in reachable]
    out = b"\n".join(parts).decode("utf-8")
    if flavor == "bigcodebench" and entrypoint:
        # a trailing top-level line naming the entry point (a call, a print) goes, with what follows
        lines = out.splitlines()
        cut = None
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].startswith(" "):
                break
            if entrypoint in lines[i]:
                cut = i
        if cut is not None:
            out = "\n".join(lines[:cut])
    return out


def sanitize(code: str, entrypoint: str | None = None, flavor: str = "evalplus") -> str:
    """The sanitized solution; when nothing is kept, the longest parsing span of the text."""
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
    kept = _extract(code, entrypoint, flavor).strip()
    return kept if kept else code_extract(code)
