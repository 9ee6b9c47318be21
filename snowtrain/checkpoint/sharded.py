"""Sharded save/load of DTensor state dicts with torch.distributed.checkpoint (DCP).

Every rank writes only its own shards (``FileSystemWriter``, one file per rank); a load fills a
template with the same keys but any mesh shape or placements, and DCP reshards. Without an
initialised process group everything runs in one process on plain tensors (``no_dist``).

Placement convention (verified with torch 2.13): on the ``("dp", "tp")`` mesh built by
:func:`device_mesh`, placements are applied left to right. ``[Shard(0), Shard(0)]`` therefore
splits dim 0 over "dp" first and splits each dp chunk over "tp": the rank at mesh coordinate
``(dp_rank, tp_rank)`` holds chunk ``dp_rank * tp + tp_rank`` of ``world`` (= its global rank).
That is NOT "the tp-local shard split again over dp" (Megatron-style ZeRO of a column-parallel
weight); that layout is ``[_StridedShard(0, split_factor=tp), Shard(0)]`` (what FSDP2 + TP uses,
and DCP reshards it too), or shard the optimizer state over dp along another dim, e.g.
``[Shard(1), Shard(0)]``. Shards follow ``torch.chunk``: ``ceil(n / k)`` per shard, the last ones
smaller or empty. :func:`shard_range` / :func:`local_shard` give a rank's piece.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from concurrent.futures import Future
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter

try:  # torch >= 2.5
    from torch.distributed.tensor import DTensor, Placement, Replicate, Shard
except ImportError:  # pragma: no cover - torch 2.4
    from torch.distributed._tensor import DTensor, Placement, Replicate, Shard  # type: ignore

from torch.distributed.device_mesh import DeviceMesh

__all__ = [
    "DTensor",
    "Replicate",
    "Shard",
    "async_save_state",
    "device_mesh",
    "is_distributed",
    "checkpoint_keys",
    "load_state",
    "local_shard",
    "read_metadata",
    "save_state",
    "shard_range",
    "storage_files",
    "to_dtensor",
]

# DCP says this on every no-dist call; running in one process without a group is intended here.
_NO_DIST_WARNING = r"torch\.distributed is disabled, unavailable or uninitialized"
warnings.filterwarnings("ignore", message=_NO_DIST_WARNING)


@contextlib.contextmanager
def _quiet():
    if is_distributed():
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_DIST_WARNING)
        yield


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


# --------------------------------------------------------------------------- mesh / DTensor


def device_mesh(state, device_type: str | None = None) -> DeviceMesh:
    """The 2-D ``("dp", "tp")`` DeviceMesh of a ParallelState: ``arange(world).reshape(dp, tp)``.

    Reuses the state's dp/tp process groups when it has them (no new groups); otherwise builds
    them with the DeviceMesh constructor (a collective: call it on every rank). Needs an
    initialised process group; without one use plain tensors.
    """
    if not is_distributed():
        raise RuntimeError(
            "device_mesh() needs an initialised process group (snowtrain.distributed."
            "init_distributed()); in a single process without torch.distributed use plain tensors"
        )
    if state.dp_size * state.tp_size != state.world_size:
        raise ValueError(f"dp_size={state.dp_size} x tp_size={state.tp_size} != world_size={state.world_size}")
    device_type = device_type or torch.device(state.device).type
    grid = torch.arange(state.world_size, dtype=torch.int).reshape(state.dp_size, state.tp_size)
    names = ("dp", "tp")
    if state.dp_group is not None and state.tp_group is not None and hasattr(DeviceMesh, "from_group"):
        try:
            return DeviceMesh.from_group(
                [state.dp_group, state.tp_group], device_type, mesh=grid, mesh_dim_names=names
            )
        except (TypeError, ValueError, NotImplementedError):  # pragma: no cover - older torch
            pass
    return DeviceMesh(device_type, mesh=grid, mesh_dim_names=names)


def _contiguous_stride(shape: Sequence[int]) -> tuple[int, ...]:
    stride, acc = [], 1
    for n in reversed(list(shape)):
        stride.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(stride))


def shard_range(
    global_shape: Sequence[int], mesh: DeviceMesh, placements: Sequence[Placement]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(local shape, global offset) of this rank's shard, exactly as DTensor/DCP compute it."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(
        torch.Size(global_shape), mesh, list(placements)
    )
    return tuple(int(s) for s in shape), tuple(int(o) for o in offset)


def local_shard(full: torch.Tensor, mesh: DeviceMesh | None, placements: Sequence[Placement]) -> torch.Tensor:
    """This rank's piece of a full (global) tensor, as a contiguous copy."""
    if mesh is None:
        return full.clone()
    shape, offset = shard_range(full.shape, mesh, placements)
    index = tuple(slice(o, o + s) for o, s in zip(offset, shape))
    return full[index].contiguous().clone()


def to_dtensor(
    local: torch.Tensor,
    mesh: DeviceMesh | None,
    placements: Sequence[Placement],
    global_shape: Sequence[int] | None,
) -> torch.Tensor:
    """Wrap this rank's shard as a DTensor, uneven shards included.

    ``global_shape`` is the full tensor's shape; the local shard must be the piece DTensor
    assigns to this rank (see :func:`shard_range`), else a ValueError says what was expected.
    ``global_shape=None`` infers it assuming even shards (wrong for uneven ones).
    ``mesh=None`` (single process, no torch.distributed) returns ``local`` unchanged.
    """
    placements = list(placements)
    if mesh is None:
        if global_shape is not None and tuple(local.shape) != tuple(global_shape):
            raise ValueError(
                f"without a mesh the tensor must be whole: got shape {tuple(local.shape)}, "
                f"global shape {tuple(global_shape)}"
            )
        return local
    if len(placements) != mesh.ndim:
        raise ValueError(f"{len(placements)} placements {placements} for a {mesh.ndim}-D mesh")
    if global_shape is None:
        return DTensor.from_local(local, mesh, placements, run_check=False)
    global_shape = tuple(int(n) for n in global_shape)
    expected, offset = shard_range(global_shape, mesh, placements)
    if tuple(local.shape) != expected:
        coord = mesh.get_coordinate()
        raise ValueError(
            f"local shard of shape {tuple(local.shape)} does not match the shard {expected} "
            f"(at offset {offset}) that DTensor assigns to mesh coordinate {coord} "
            f"(mesh dims {mesh.mesh_dim_names}) for global shape {global_shape} and placements "
            f"{placements}. DTensor splits like torch.chunk (ceil(n/k) rows per shard, the last "
            "shards smaller or empty) and, when two mesh dims shard the same tensor dim, mesh dim "
            "0 ('dp') splits first; cut the shard with snowtrain.checkpoint.local_shard()"
        )
    return DTensor.from_local(
        local, mesh, placements, run_check=False,
        shape=torch.Size(global_shape), stride=_contiguous_stride(global_shape),
    )


# --------------------------------------------------------------------------- save / load


def _dist_kwargs(process_group) -> dict[str, Any]:
    if is_distributed():
        return {"process_group": process_group, "no_dist": False}
    return {"process_group": None, "no_dist": True}


def _writer(path: str | os.PathLike) -> FileSystemWriter:
    return FileSystemWriter(
        str(path), single_file_per_rank=True, sync_files=True, thread_count=1, overwrite=True
    )


def save_state(state_dict: Mapping[str, Any], path: str | os.PathLike, *, process_group=None) -> None:
    """Every rank writes its shards of ``state_dict`` into the folder ``path`` (collective).

    Returns when all ranks have written and fsynced their files and rank 0 the ``.metadata``.
    """
    with _quiet():
        dcp.save(dict(state_dict), storage_writer=_writer(path), **_dist_kwargs(process_group))


def async_save_state(
    state_dict: Mapping[str, Any], path: str | os.PathLike, *, process_group=None
) -> Future:
    """Like :func:`save_state`, but returns once the state is copied to CPU memory (staging);
    the files are written in a background thread. ``future.result()`` waits (every rank).

    In a distributed run ``process_group`` must have a CPU backend (gloo); use a group that
    nothing else uses concurrently, since the background thread runs collectives on it.
    """
    out = dcp.async_save(dict(state_dict), storage_writer=_writer(path), **_dist_kwargs(process_group))
    # Newer torch may return an AsyncSaveResponse(staging_completion, upload_completion).
    return getattr(out, "upload_completion", out)


def load_state(state_dict: dict[str, Any], path: str | os.PathLike, *, process_group=None) -> None:
    """Fill ``state_dict`` (tensors/DTensors of any placement) in place from ``path`` (collective)."""
    with _quiet():
        dcp.load(state_dict, storage_reader=FileSystemReader(str(path)), **_dist_kwargs(process_group))


def read_metadata(path: str | os.PathLike):
    """The DCP ``Metadata`` of a checkpoint folder (raises if missing or unreadable)."""
    return FileSystemReader(str(path)).read_metadata()


def storage_files(metadata) -> dict[str, int]:
    """File name -> minimum size in bytes that the metadata's storage entries need."""
    need: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        rel = getattr(info, "relative_path", None)
        if rel is None:
            continue
        end = int(getattr(info, "offset", 0)) + int(getattr(info, "length", 0))
        need[rel] = max(need.get(rel, 0), end)
    return need


def checkpoint_keys(path: str | os.PathLike) -> list[str]:
    """Flattened keys stored in a checkpoint (e.g. ``model.layers.0.w``)."""
    return sorted(read_metadata(path).state_dict_metadata)
