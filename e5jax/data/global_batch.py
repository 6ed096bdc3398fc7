"""Host numpy batches -> global `jax.Array`s split over the batch mesh axes.

Each process holds its own slice of the global batch (`pipeline.py`) and pads
it to a bucket length chosen from *its* longest sequence (or packs it into as
many rows as *its* texts need). A global array needs one shape everywhere, so
the processes first agree on each sequence length and packed row count (the
max over processes, one tiny all-gather) and pad to it; then
`jax.make_array_from_process_local_data` stitches the slices together, rows
laid out along `batch_axes` (process 0's rows first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from e5jax.data.packing import pad_rows
from e5jax.errors import E5Error

# Arrays whose last axis is a (bucketed) token length; every other array keeps its shape.
_SEQUENCE_SUFFIXES = ("_input_ids", "_attention_mask")


_PACKED_FIELDS = ("_input_ids", "_segment_ids", "_positions")  # [G, R, P]: R (rows) varies by host


def _packed_towers(host_batch: Mapping[str, np.ndarray]) -> list[str]:
    return sorted(k.removesuffix("_segment_ids") for k in host_batch if k.endswith("_segment_ids"))


def _is_sequence(key: str, x: np.ndarray, packed: list[str]) -> bool:
    return key.endswith(_SEQUENCE_SUFFIXES) and x.ndim >= 2 and key.removesuffix("_input_ids") not in packed


def agree_lengths(host_batch: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Per padded sequence array, the longest last-axis length over all processes;
    per packed tower (key "<tower>_rows"), the most packed rows.

    Keys are visited in sorted order so every process gathers the same vector.
    One process: the local lengths, no communication.
    """
    packed = _packed_towers(host_batch)
    keys = sorted(k for k, v in host_batch.items() if _is_sequence(k, np.asarray(v), packed))
    local = [np.shape(host_batch[k])[-1] for k in keys]
    keys += [f"{t}_rows" for t in packed]
    local += [np.shape(host_batch[f"{t}_segment_ids"])[1] for t in packed]
    local = np.asarray(local, np.int32)
    if jax.process_count() > 1 and keys:
        from jax.experimental import multihost_utils

        local = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, len(keys)).max(axis=0)
    return {k: int(n) for k, n in zip(keys, local)}


def pad_last_axis(x: np.ndarray, length: int) -> np.ndarray:
    """Right-pad with zeros (mask 0; id 0 exists in every vocabulary and is masked out)."""
    extra = length - x.shape[-1]
    if extra < 0:
        raise ValueError(f"cannot pad length {x.shape[-1]} down to {length}")
    if extra == 0:
        return x
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])


def _present(mesh: Mesh, batch_axes: Sequence[str]) -> tuple[str, ...]:
    return tuple(a for a in batch_axes if a in mesh.axis_names)


def batch_sharding(mesh: Mesh, batch_axes: Sequence[str] = ("data", "fsdp")) -> NamedSharding:
    """Leading dim split over those of `batch_axes` the mesh has; other dims replicated."""
    axes = _present(mesh, batch_axes)
    return NamedSharding(mesh, P(axes if axes else None))


def to_global(
    host_batch: Mapping[str, np.ndarray],
    mesh: Mesh,
    batch_axes: Sequence[str] = ("data", "fsdp"),
) -> dict[str, jax.Array]:
    """This process's rows -> global arrays of `process_count * b` rows, batch-sharded."""
    sharding = batch_sharding(mesh, batch_axes)
    axes = _present(mesh, batch_axes)
    shards = int(np.prod([mesh.shape[a] for a in axes]))
    lengths = agree_lengths(host_batch)
    out = {}
    for key in sorted(host_batch):
        x = np.asarray(host_batch[key])
        global_rows = x.shape[0] * jax.process_count()
        if global_rows % shards:
            raise E5Error(
                f"global batch of {global_rows} rows ({key}) is not divisible by the {shards} devices "
                f"along mesh axes {axes}; change train.batch_size or the mesh"
            )
        if key in lengths:
            x = pad_last_axis(x, lengths[key])
        tower = next((key.removesuffix(f) for f in _PACKED_FIELDS if key.endswith(f)), None)
        if f"{tower}_rows" in lengths:
            x = pad_rows(x, lengths[f"{tower}_rows"])
        out[key] = jax.make_array_from_process_local_data(sharding, x)
    return out
