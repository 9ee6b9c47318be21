"""Synthetic code files from seed snippets through an OpenAI-compatible endpoint (phase 3)."""
