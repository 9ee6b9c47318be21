"""The unit every data_prep stage passes along: one source file and where it came from."""
from __future__ import annotations

from dataclasses import dataclass, field

# File extension -> language, for the recipe's 18 languages (and C/C++ headers).
EXTENSION_LANGUAGE = {
    ".py": "python", ".java": "java", ".c": "c", ".h": "c",
    ".cpp": "cpp", ".cc": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
    ".cu": "cpp", ".cuh": "cpp", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".php": "php", ".cs": "csharp", ".go": "go", ".ts": "typescript", ".tsx": "typescript",
    ".sql": "sql", ".rb": "ruby", ".rs": "rust", ".ipynb": "jupyter", ".scala": "scala",
    ".kt": "kotlin", ".kts": "kotlin", ".sh": "shell", ".bash": "shell", ".dart": "dart",
    ".swift": "swift",
}
LANGUAGES = sorted(set(EXTENSION_LANGUAGE.values()))


def language_of(path: str) -> str | None:
    dot = path.rfind(".")
    return EXTENSION_LANGUAGE.get(path[dot:].lower()) if dot >= 0 else None


@dataclass(slots=True)
class Record:
    id: str                 # stable and unique within a run: "<source>:<path>" or the file's hash
    content: str
    lang: str
    repo: str
    path: str               # path inside the repository
    stars: int = 0
    licenses: tuple[str, ...] = ()
    source: str = ""        # the shard or folder it was read from, for error messages
    meta: dict = field(default_factory=dict)
