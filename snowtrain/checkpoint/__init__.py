"""Sharded, resharding-capable checkpoints (torch.distributed.checkpoint) with atomic commits.

``sharded``: DTensor helpers (``device_mesh``, ``to_dtensor``, ``local_shard``) and DCP
save/load. ``manager``: the on-disk layout, atomic commit, retention, async saves and resume.
"""

from snowtrain.checkpoint.manager import (
    CheckpointError,
    CheckpointInfo,
    CheckpointManager,
    verify_checkpoint,
)
from snowtrain.checkpoint.sharded import (
    DTensor,
    Replicate,
    Shard,
    async_save_state,
    device_mesh,
    is_distributed,
    load_state,
    local_shard,
    save_state,
    shard_range,
    to_dtensor,
)

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointManager",
    "DTensor",
    "Replicate",
    "Shard",
    "async_save_state",
    "device_mesh",
    "is_distributed",
    "load_state",
    "local_shard",
    "save_state",
    "shard_range",
    "to_dtensor",
    "verify_checkpoint",
]
