"""Streams of Records from raw code: repository trees on disk (and, later, parquet/JSONL shards)."""
from .tree import TreeSource, embedded_roots

__all__ = ["TreeSource", "embedded_roots"]
