"""Training data: megatron-core GPTDataset streams, blended in resumable segments.

- :class:`PhaseData` — a phase's datasets, blend, position (``state_dict``/``load_state_dict``)
  and per-step micro-batches (``batches``).
- :class:`BlendSchedule`, :class:`Segment`, :class:`DataPosition` — the blend bookkeeping.
- :func:`steps_for_phase`, :func:`weights_from_tokens`, :func:`normalize_weights`.
"""
import warnings

# megatron-core warns at import about optional accelerators we do not use from it.
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="megatron")

from snowtrain.data.blend import (BlendCursor, BlendSchedule, DataPosition, Segment,
                                  greedy_picks, normalize_weights, steps_for_phase,
                                  weights_from_tokens)
from snowtrain.data.phase import STATE_VERSION, PhaseData
from snowtrain.data.samples import DatasetStream, StreamTokenizer, epoch_seed, gpt_config
from snowtrain.data.sources import DatasetSource, check_token_ids, open_sources, scan_token_range

__all__ = [
    "BlendCursor", "BlendSchedule", "DataPosition", "DatasetSource", "DatasetStream",
    "PhaseData", "STATE_VERSION", "Segment", "StreamTokenizer", "check_token_ids",
    "epoch_seed", "gpt_config", "greedy_picks", "normalize_weights", "open_sources",
    "scan_token_range", "steps_for_phase", "weights_from_tokens",
]
