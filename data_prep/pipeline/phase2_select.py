"""Which files phase 2 keeps: per language, the best-scored files until the language's share
of the token target is met, the share being its share of the input's tokens (the phase-1
language mix)."""
from __future__ import annotations

import numpy as np


def language_targets(tokens_in: dict[str, int], total: float) -> dict[str, float]:
    all_tokens = sum(tokens_in.values())
    return {lang: total * n / all_tokens if all_tokens else 0.0 for lang, n in tokens_in.items()}


def rank_order(doc: np.ndarray, index: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Positions from best to worst score; ties in input order (document, then file)."""
    return np.lexsort((index, doc, -score))


def select_top(doc, index, score, tokens, target: float) -> np.ndarray:
    """A boolean mask of the fewest best-ranked files whose tokens reach `target` (all files
    when they do not)."""
    order = rank_order(doc, index, score)
    reached = np.cumsum(np.asarray(tokens, dtype=np.int64)[order])
    take = min(int(np.searchsorted(reached, target, side="left")) + 1, len(order)) if target > 0 else 0
    keep = np.zeros(len(order), dtype=bool)
    keep[order[:take]] = True
    return keep
