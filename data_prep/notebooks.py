"""Jupyter notebooks (.ipynb JSON, as The Stack v1 stores them) to the text a code model should
read: a percent-format script (jupytext's `py:percent`, as StarCoder's "jupyter-scripts" were
made). Each code cell becomes a `# %%` line and its source, IPython magics and shell escapes
(`%matplotlib`, `!pip`) commented out; each markdown cell a `# %% [markdown]` line and its lines
as comments; raw cells are dropped, as are outputs, execution counts, metadata and embedded
images (base64), which are most of a notebook's bytes. The comment mark follows the kernel's
language (`#` for Python, R, Julia, shell; `//` for C-like languages; `--` for SQL, ...).

notebook_to_script(text) -> (script, None), or (None, reason): "notebook_unreadable" (not JSON
or not a notebook) or "notebook_no_code" (no code cell with code in it).
"""
from __future__ import annotations

import json

# A kernel's language -> its line comment.
_COMMENT = {"python": "#", "r": "#", "julia": "#", "bash": "#", "sh": "#", "shell": "#",
            "ruby": "#", "perl": "#", "powershell": "#", "scala": "//", "java": "//", "c": "//",
            "c++": "//", "cpp": "//", "c#": "//", "csharp": "//", "javascript": "//", "typescript": "//",
            "go": "//", "rust": "//", "kotlin": "//", "swift": "//", "dart": "//", "sql": "--",
            "haskell": "--", "lua": "--", "matlab": "%", "octave": "%"}


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src if isinstance(src, str) else ""


def _language(nb: dict) -> str:
    meta = nb.get("metadata") or {}
    info = meta.get("language_info") or {}
    kernel = meta.get("kernelspec") or {}
    return str(info.get("name") or kernel.get("language") or "python").lower()


def _commented(lines: list[str], mark: str) -> list[str]:
    return [f"{mark} {line}".rstrip() if line.strip() else mark for line in lines]


def notebook_to_script(text: str) -> tuple[str | None, str | None]:
    try:
        nb = json.loads(text)
    except (ValueError, RecursionError):
        return None, "notebook_unreadable"
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if cells is None and isinstance(nb, dict) and isinstance(nb.get("worksheets"), list):
        # nbformat 3: cells inside worksheets
        cells = [c for ws in nb["worksheets"] if isinstance(ws, dict) for c in ws.get("cells") or []]
    if not isinstance(cells, list):
        return None, "notebook_unreadable"
    mark = _COMMENT.get(_language(nb), "#")
    python = mark == "#"
    parts, has_code = [], False
    for cell in cells:
        if not isinstance(cell, dict):
            continue
        kind = cell.get("cell_type")
        # nbformat 3 kept a code cell's source under "input"
        src = _source(cell) if "source" in cell else _source({"source": cell.get("input", "")})
        lines = src.splitlines()
        if kind == "code":
            if not src.strip():
                continue
            has_code = True
            if python:   # magics and shell escapes are not code: as jupytext, comment them out
                lines = [f"# {line}" if line.lstrip().startswith(("%", "!")) else line for line in lines]
            parts.append("\n".join([f"{mark} %%", *lines]))
        elif kind in ("markdown", "heading") and src.strip():
            parts.append("\n".join([f"{mark} %% [markdown]", *_commented(lines, mark)]))
    if not has_code:
        return None, "notebook_no_code"
    return "\n\n".join(parts) + "\n", None
