"""The annotator's linear head on frozen embeddings: class-balanced logistic regression, its
holdout metrics, and the head file.

Training standardises the features (better conditioned, and the L2 penalty then means the same
for every encoder) and folds the scaling back in, so the saved head is a plain
`p = sigmoid(embedding @ weight + bias)`.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ..store import write_bytes


@dataclass
class Head:
    weight: np.ndarray   # float64 [dim]
    bias: float
    info: dict           # what it was trained on: encoder, pooling, window, layers

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.weight + self.bias

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(x)))


def train_head(x: np.ndarray, y: np.ndarray, *, optimizer: str = "lbfgs", lr: float = 1.0,
               epochs: int = 200, batch_size: int = 256, weight_decay: float = 0.01,
               seed: int = 0, info: dict | None = None) -> Head:
    """Fits a one-output linear head with the logistic loss, each class weighing half."""
    import torch
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"training the head needs both classes; got {n_pos} positives and "
                         f"{n_neg} negatives")
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y)
    sw = torch.from_numpy(np.where(y > 0, 0.5 / n_pos, 0.5 / n_neg))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def loss_on(idx=None):
        xi, yi, si = (xs, yt, sw) if idx is None else (xs[idx], yt[idx], sw[idx] * len(y) / len(idx))
        return (bce(xi @ w + b, yi, reduction="none") * si).sum()

    if optimizer == "lbfgs":
        # Full batch, deterministic; weight_decay is an L2 penalty here.
        opt = torch.optim.LBFGS([w, b], lr=lr, max_iter=epochs, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

        def closure():
            opt.zero_grad()
            loss = loss_on() + 0.5 * weight_decay * (w * w).sum()
            loss.backward()
            return loss
        opt.step(closure)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            perm = torch.randperm(len(y), generator=gen)
            for s in range(0, len(y), batch_size):
                opt.zero_grad()
                loss_on(perm[s:s + batch_size]).backward()
                opt.step()
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; use lbfgs or adamw")
    wr = w.detach().numpy() / std
    return Head(weight=wr, bias=float(b.detach().numpy()[0] - (wr * mean).sum()), info=dict(info or {}))


def roc_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney; ties count half); None without both classes."""
    y = np.asarray(y) > 0
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return None
    _, inverse, counts = np.unique(np.asarray(p), return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0          # 1-based, ties averaged
    ranks = average_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict:
    y = np.asarray(y) > 0
    pred = np.asarray(p) >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "samples": int(len(y)), "positives": int(y.sum()), "negatives": int((~y).sum()),
        "accuracy": (tp + tn) / len(y) if len(y) else None,
        "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "roc_auc": roc_auc(y, p), "threshold": threshold,
    }


def save_head(head: Head, path) -> None:
    import torch
    buf = io.BytesIO()
    torch.save({"weight": torch.from_numpy(head.weight), "bias": head.bias, "info": head.info}, buf)
    write_bytes(path, buf.getvalue())


def load_head(path, dim: int | None = None) -> Head:
    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        head = Head(weight=state["weight"].double().numpy().reshape(-1), bias=float(state["bias"]),
                    info=dict(state.get("info", {})))
    except (OSError, RuntimeError, KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"{path} is not a head written by data-prep phase2 ({e})") from None
    if dim is not None and head.weight.shape[0] != dim:
        raise ValueError(f"{path}: the head expects {head.weight.shape[0]}-dimensional embeddings, "
                         f"the encoder gives {dim}; train a head for this encoder")
    return head
