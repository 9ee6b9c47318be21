"""One dataset's sample stream: megatron-core GPTDatasets, one per epoch, end to end.

Each epoch is a megatron-core ``GPTDataset`` over the dataset's training documents, built with
``num_samples=None`` (exactly one epoch: every token once, the last partial sample dropped) and
the seed ``epoch_seed(seed, e)``. Sample ``n`` of the stream is item ``n % spe`` of epoch
``n // spe`` (``spe`` samples per epoch, the same for every epoch). The stream therefore depends
only on the data, the seed and seq_len: never on the blend weights or the phase's token budget,
which is what lets a blend change continue every dataset exactly where it stopped.

Epochs are built (rank 0 first, writing megatron's index cache, then the others after a barrier,
by megatron's own ``build_generic_dataset``) when the phase knows it will need them.
"""
from __future__ import annotations

import logging
from typing import Optional

from snowtrain.data.sources import DatasetSource, split_string

logger = logging.getLogger("snowtrain.data")

__all__ = ["DatasetStream", "StreamTokenizer", "epoch_seed", "gpt_config"]


def epoch_seed(seed: int, epoch: int) -> int:
    """Shuffle seed of an epoch: the run seed for epoch 0, a different one for each later one."""
    return int(seed) % 2**32 if epoch == 0 else (int(seed) + 0x9E3779B9 * int(epoch)) % 2**32


class StreamTokenizer:
    """The little megatron's GPTDataset needs of a tokenizer (the data is already tokenized).

    ``vocab_size`` is None so the token dtype comes from the .idx; ``unique_identifiers`` goes
    into megatron's index-cache key, so a regenerated dataset never reuses stale indices.
    """

    def __init__(self, fingerprint: Optional[dict] = None, eod: int = 0):
        self.vocab_size = None
        self.eod = eod
        self.unique_identifiers = {"class": "snowtrain.StreamTokenizer", **(fingerprint or {})}

    def __repr__(self) -> str:
        return f"StreamTokenizer({self.unique_identifiers})"


def gpt_config(*, seed: int, seq_len: int, prefix: str, cache_dir: Optional[str],
               valid_fraction: float = 0.0, tokenizer=None):
    """The GPTDatasetConfig of one epoch (plain causal LM samples, no attention mask)."""
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=int(seed), sequence_length=int(seq_len), blend=([prefix], None),
        split=split_string(valid_fraction), path_to_cache=cache_dir,
        tokenizer=tokenizer or StreamTokenizer(), reset_position_ids=False,
        reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False,
        mmap_bin_files=True)


class DatasetStream:
    """The endless sample stream of one dataset, epoch after epoch."""

    def __init__(self, source: DatasetSource, *, seed: int, seq_len: int,
                 cache_dir: Optional[str], valid_fraction: float = 0.0):
        from megatron.core.datasets.gpt_dataset import GPTDataset

        self.source, self.seed, self.seq_len = source, int(seed), int(seq_len)
        self.cache_dir, self.valid_fraction = cache_dir, float(valid_fraction)
        self.tokenizer = StreamTokenizer(source.fingerprint)
        # Megatron's IndexedDataset (mmap'd .bin/.idx), shared by every epoch.
        self.low_level = GPTDataset.build_low_level_dataset(source.prefix, self._config(0))
        self.samples_per_epoch = source.samples_per_epoch(self.seq_len)
        self.epochs: list = []
        self.valid = None

    @property
    def name(self) -> str:
        return self.source.name

    def _config(self, epoch: int):
        return gpt_config(seed=epoch_seed(self.seed, epoch), seq_len=self.seq_len,
                          prefix=self.source.prefix, cache_dir=self.cache_dir,
                          valid_fraction=self.valid_fraction, tokenizer=self.tokenizer)

    def _build(self, split, indices_range, seed_epoch: int):
        """One GPTDataset, via megatron's distributed-aware builder step (collective)."""
        import numpy as np
        from megatron.core.datasets.blended_megatron_dataset_builder import (
            BlendedMegatronDatasetBuilder)
        from megatron.core.datasets.gpt_dataset import GPTDataset

        beg, end = indices_range
        indices = np.arange(beg, end, dtype=np.int32)
        return BlendedMegatronDatasetBuilder.build_generic_dataset(
            GPTDataset, lambda: True, True, self.low_level, self.source.prefix, indices, None,
            split, self._config(seed_epoch))

    def ensure_epochs(self, num_epochs: int) -> None:
        """Builds epochs up to ``num_epochs``. Collective in a distributed run: every rank must
        call it with the same argument."""
        from megatron.core.datasets.utils import Split

        while len(self.epochs) < num_epochs:
            e = len(self.epochs)
            ds = self._build(Split.train, self.source.train_range, e)
            if len(ds) != self.samples_per_epoch:
                raise RuntimeError(f"dataset '{self.name}' epoch {e}: megatron built {len(ds)} "
                                   f"samples, expected {self.samples_per_epoch}")
            self.epochs.append(ds)

    def ensure_samples(self, num_samples: int) -> None:
        """Makes samples [0, num_samples) of the stream available (collective)."""
        if num_samples > 0:
            self.ensure_epochs((num_samples - 1) // self.samples_per_epoch + 1)

    def build_valid(self):
        """The validation split's GPTDataset (one epoch, the run seed), or None (collective)."""
        from megatron.core.datasets.utils import Split

        if self.valid is None and self.source.valid_range is not None:
            self.valid = self._build(Split.valid, self.source.valid_range, 0)
        return self.valid

    def __getitem__(self, n: int) -> dict:
        e, i = divmod(int(n), self.samples_per_epoch)
        if e >= len(self.epochs):
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                raise RuntimeError(
                    f"dataset '{self.name}': sample {n} is in epoch {e}, which was not built "
                    f"({len(self.epochs)} built); ask PhaseData.batches() for the steps you "
                    "will run so every rank builds it in step")
            self.ensure_epochs(e + 1)
        return self.epochs[e][i]
