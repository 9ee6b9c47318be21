"""Streams of Records from raw code: repository trees on disk, parquet and JSONL shards."""
from .tree import TreeSource, embedded_roots
from .errors import Problem, SourceError
from .jsonl import JsonlSource
from .parquet import ParquetSource, normalise_language

__all__ = ["TreeSource", "embedded_roots"]
__all__ += ["SourceError", "Problem", "ParquetSource", "JsonlSource", "normalise_language"]
