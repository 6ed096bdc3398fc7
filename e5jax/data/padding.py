"""Padding token rows to a few bucket lengths: the one helper the input
pipeline, `Encoder.encode` and the cross-encoder teacher share.

A jitted function compiles once per input shape, so rows are right-padded to
the smallest of a handful of lengths that holds the batch's longest row, not
to the longest row itself. NumPy only: the model and the data packages both
import it, and neither pulls the other in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bucket_lengths(max_length: int, num_buckets: int) -> tuple[int, ...]:
    """`num_buckets` lengths evenly spaced up to `max_length`, rounded up to multiples of 8.

    Multiples of 8 keep matmul tiles full; the last bucket is `max_length` itself.
    (Fewer come back when rounding makes two equal: short maxima.)
    """
    out = set()
    for i in range(1, num_buckets + 1):
        even = -(-max_length * i // num_buckets)  # ceil(max * i / n)
        out.add(min(max_length, -(-even // 8) * 8))
    return tuple(sorted(out))


def bucket_for(longest: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds a row of `longest` tokens."""
    length = next((b for b in buckets if b >= longest), None)
    if length is None:  # the tokenizer truncates to the max, so this is a bug upstream
        raise ValueError(f"row of {longest} tokens exceeds the largest bucket {buckets[-1]}")
    return length


def pad_rows(rows: Sequence[Sequence[int]], length: int, value: int, num_rows: int | None = None) -> np.ndarray:
    """int32 [num_rows, length]: `rows` left-aligned, `value` elsewhere; rows
    past len(rows) are all `value` (a fixed row count keeps the batch shape)."""
    out = np.full((len(rows) if num_rows is None else num_rows, length), value, np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def pad_to_bucket(
    rows: Sequence[Sequence[int]], buckets: Sequence[int], pad_id: int, num_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token rows to the smallest bucket >= the longest row -> (ids, mask) int32,
    with `num_rows` rows (default: one per row given; the extra ones are all padding)."""
    length = bucket_for(max((len(r) for r in rows), default=1), buckets)
    ids = pad_rows(rows, length, pad_id, num_rows)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        mask[i, : len(r)] = 1
    return ids, mask
