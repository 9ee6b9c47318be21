"""The recipe's quality annotator: a frozen BERT-style encoder with a linear head, trained on
high-quality positives against random phase-1 files, scoring a file on its top, middle and
bottom windows."""
from .encoder import Encoder, default_encoder_path, file_windows, length_batches, window_starts
from .head import Head, classification_metrics, load_head, roc_auc, save_head, train_head
from .score import score_texts

__all__ = ["Encoder", "Head", "classification_metrics", "default_encoder_path", "file_windows",
           "length_batches", "load_head", "roc_auc", "save_head", "score_texts", "train_head",
           "window_starts"]
