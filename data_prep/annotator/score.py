"""A file's quality score: the mean of the head's probabilities over the file's windows."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .encoder import Encoder
from .head import Head


def score_texts(encoder: Encoder, head: Head, texts: Sequence[str],
                batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(score, number of windows) per text. The batches depend only on `texts`."""
    windows, owner = [], []
    for i, ids in enumerate(encoder.token_ids(texts)):
        for w in encoder.windows(ids):
            windows.append(w)
            owner.append(i)
    if not windows:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    p = head.probabilities(encoder.embed_batched(windows, batch_size))
    counts = np.bincount(owner, minlength=len(texts))
    return np.bincount(owner, weights=p, minlength=len(texts)) / counts, counts
