"""Jupyter notebooks (.ipynb JSON, as The Stack v1 stores them) to the text a code model should
read: a percent-format script (jupytext's `py:percent`, as StarCoder's "jupyter-scripts" were
made). Each code cell becomes a `# %%` line and its source, IPython magics and shell escapes
(`%matplotlib`, `!pip`) commented out; each markdown cell a `# %% [markdown]` line and its lines
as comments; raw cells are dropped, as are outputs, execution counts, metadata and embedded
images (base64), which are most of a notebook's bytes. The comment mark follows the kernel's
language (`#` for Python, R, Julia, shell; `//` for C-like languages; `--` for SQL, ...).

The percent format cannot tell a markdown line that starts with "%%" from a cell marker (jupytext's
own writer loses such a line too); it stays as text here.

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


def _source(src) -> str:
    """A cell's source (a string or a list of strings; anything else in it is skipped), with
    CRLF and CR line ends made LF."""
    if isinstance(src, list):
        src = "".join(part for part in src if isinstance(part, str))
    elif not isinstance(src, str):
        return ""
    return src.replace("\r\n", "\n").replace("\r", "\n")


def _dict(d, key: str) -> dict:
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, dict) else {}


def _language(nb: dict) -> str:
    meta = _dict(nb, "metadata")
    name = _dict(meta, "language_info").get("name") or _dict(meta, "kernelspec").get("language") or "python"
    name = str(name).lower()
    return "cpp" if name.startswith("c++") else name


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
    language = _language(nb)
    mark = _COMMENT.get(language, "#")
    python = language.startswith("python")   # IPython's magics and shell escapes
    parts, has_code = [], False
    for cell in cells:
        if not isinstance(cell, dict):
            continue
        kind = cell.get("cell_type")
        # nbformat 3 kept a code cell's source under "input"
        src = _source(cell.get("source") if "source" in cell else cell.get("input"))
        lines = src.split("\n")   # not splitlines(): \x0c or U+2028 inside a string literal stay
        while lines and not lines[-1].strip():
            lines.pop()
        if kind == "code":
            if not lines:
                continue
            has_code = True
            if python:   # magics and shell escapes are not code: as jupytext, comment them out
                lines = [f"# {line}" if line.lstrip().startswith(("%", "!")) else line for line in lines]
            parts.append("\n".join([f"{mark} %%", *lines]))
        elif kind in ("markdown", "heading") and lines:
            parts.append("\n".join([f"{mark} %% [markdown]", *_commented(lines, mark)]))
    if not has_code:
        return None, "notebook_no_code"
    return "\n\n".join(parts) + "\n", None
