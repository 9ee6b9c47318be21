"""Synthetic files from answers: the fenced code block of a chat answer, or the seed plus the
continuation of a base model; and why an answer gives no file."""
from __future__ import annotations

import re

from ..tokenizer import EOD, MARKERS
from .prompts import FENCE_TAGS

CODE_BLOCK_MODES = ("language", "first", "longest")
# Drop reasons of answers, before the filters (which add their own names).
ANSWER_REASONS = ("api_error", "truncated", "no_code_block", "empty")

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*([^\s`]*)[^`\n]*$")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(tag, content) of every closed fenced block, in order; an unclosed block is not one."""
    blocks, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, tag = m.group(1), m.group(2).lower()
        for j in range(i + 1, len(lines)):
            s = lines[j].strip()
            if s.startswith(fence[0] * len(fence)) and not s.strip(fence[0]):
                blocks.append((tag, "\n".join(lines[i + 1:j])))
                i = j + 1
                break
        else:
            break
    return blocks


def extract_code(text: str, lang: str, mode: str = "language") -> str | None:
    """The file inside a chat answer: `language`: the first block tagged with the language (or
    untagged); `first`: the first block; `longest`: the longest block. None: no such block."""
    blocks = code_blocks(text)
    if mode == "language":
        tags = FENCE_TAGS.get(lang, (lang,))
        blocks = [b for b in blocks if not b[0] or b[0] in tags]
    if not blocks:
        return None
    if mode == "longest":
        return max(blocks, key=lambda b: len(b[1]))[1]
    return blocks[0][1]


def cut_at_markers(code: str) -> str:
    """A marker inside a file would split it into other files when the dataset is read back (and
    a base model writes <file_sep> when it starts a new file): the file ends there."""
    cut = min((i for i in (code.find(m) for m in (*MARKERS, EOD)) if i >= 0), default=-1)
    return code if cut < 0 else code[:cut]


def finish_file(code: str) -> str:
    """The file as stored: up to the first marker, trailing blank lines trimmed, one final
    newline (empty if nothing but whitespace is left)."""
    code = cut_at_markers(code).rstrip()
    return code + "\n" if code else ""


def answer_file(answer: dict, api: str, finish_reasons, code_block: str = "language"):
    """(drop reason, None) or (None, file) for a saved answer record (see phase3's unit files)."""
    if answer.get("error") is not None:
        return "api_error", None
    reason = answer.get("finish_reason")
    if reason not in finish_reasons:
        return ("truncated" if reason == "length" else f"finish_reason:{reason}"), None
    if api == "chat":
        code = extract_code(answer["text"], answer["lang"], code_block)
        if code is None:
            return "no_code_block", None
        code = finish_file(code)
    else:
        code = finish_file(answer["seed_text"] + answer["text"])
        if code == finish_file(answer["seed_text"]):
            code = ""          # the model added nothing
    return ("empty", None) if not code else (None, code)
