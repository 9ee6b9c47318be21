"""Prompts from seeds.

Templates are plain strings with placeholders: {seed} (the seed lines), {language} (display name,
e.g. C++), {lang} (our name, e.g. cpp), {fence} (the code-fence tag, e.g. cpp), {ext} (".cpp"),
{path} and {repo} (where the seed comes from). {{ and }} are literal braces. Substitution is one
pass, so braces inside a seed are never read as placeholders.
"""
from __future__ import annotations

import re

# OSS-Instruct (Magicoder) adapted to pretraining: one whole file instead of a problem and a
# solution. The wording is ours.
DEFAULT_SYSTEM = ("You are exceptionally skilled at writing high-quality, self-contained code "
                  "that solves well-defined programming problems.")
DEFAULT_USER = """\
Please gain inspiration from the following random code snippet to write one complete, \
high-quality {language} file that solves a programming problem.

Code snippet for inspiration:
```
{seed}```

Guidelines:
1. The file is completely self-contained: it defines everything it uses beyond the {language} \
standard library and widely used packages, and it never refers to the snippet.
2. It is problem-solving oriented: a short comment or docstring at the top states the problem, \
and the code solves it correctly and efficiently.
3. It is clean and idiomatic, with meaningful names, concise comments where they help, and a \
small usage example or tests where natural.
4. Take only inspiration from the snippet; do not copy it.

Reply with the whole file in a single ```{fence} code block and nothing else."""
# Base models (api: completions) continue a file that starts with the seed.
DEFAULT_COMPLETION = "<file_sep>{path}\n{seed}"

PLACEHOLDERS = ("seed", "language", "lang", "fence", "ext", "path", "repo")

LANGUAGE_NAMES = {
    "python": "Python", "java": "Java", "cpp": "C++", "c": "C", "javascript": "JavaScript",
    "php": "PHP", "csharp": "C#", "go": "Go", "typescript": "TypeScript", "sql": "SQL",
    "ruby": "Ruby", "rust": "Rust", "jupyter": "Python (Jupyter notebook)", "scala": "Scala",
    "kotlin": "Kotlin", "shell": "Shell", "dart": "Dart", "swift": "Swift",
}
# Fence tags accepted as "this language"; the first is the one the prompt asks for.
FENCE_TAGS = {
    "python": ("python", "py", "python3"), "jupyter": ("python", "py", "python3", "ipython"),
    "java": ("java",), "cpp": ("cpp", "c++", "cxx", "cc", "hpp"), "c": ("c", "h"),
    "javascript": ("javascript", "js", "jsx", "mjs", "node"), "php": ("php",),
    "csharp": ("csharp", "cs", "c#"), "go": ("go", "golang"),
    "typescript": ("typescript", "ts", "tsx"), "sql": ("sql", "mysql", "postgresql", "sqlite"),
    "ruby": ("ruby", "rb"), "rust": ("rust", "rs"), "scala": ("scala",),
    "kotlin": ("kotlin", "kt", "kts"), "shell": ("bash", "sh", "shell", "zsh"),
    "dart": ("dart",), "swift": ("swift",),
}
# Synthetic notebooks are written as plain Python, so they get .py.
EXTENSIONS = {
    "python": ".py", "jupyter": ".py", "java": ".java", "cpp": ".cpp", "c": ".c",
    "javascript": ".js", "php": ".php", "csharp": ".cs", "go": ".go", "typescript": ".ts",
    "sql": ".sql", "ruby": ".rb", "rust": ".rs", "scala": ".scala", "kotlin": ".kt",
    "shell": ".sh", "dart": ".dart", "swift": ".swift",
}

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(\w+)\}")


def template_problem(template: str, required: tuple[str, ...] = ("seed",)) -> str | None:
    """What is wrong with a template (an unknown or missing placeholder), or None."""
    names = {m.group(1) for m in _PLACEHOLDER.finditer(template) if m.group(1)}
    unknown = sorted(names - set(PLACEHOLDERS))
    if unknown:
        return (f"unknown placeholder {{{unknown[0]}}}; known: "
                + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS) + " (write {{ }} for literal braces)")
    missing = [r for r in required if r not in names]
    if missing:
        return f"the template lacks {{{missing[0]}}}"
    return None


def render(template: str, values: dict[str, str]) -> str:
    def sub(m):
        if m.group(0) == "{{":
            return "{"
        if m.group(0) == "}}":
            return "}"
        return values.get(m.group(1), m.group(0))
    return _PLACEHOLDER.sub(sub, template)


def seed_values(lang: str, seed: str, path: str = "", repo: str = "") -> dict[str, str]:
    return {"seed": seed, "language": LANGUAGE_NAMES.get(lang, lang), "lang": lang,
            "fence": FENCE_TAGS.get(lang, (lang,))[0], "ext": EXTENSIONS.get(lang, ".txt"),
            "path": path, "repo": repo}
