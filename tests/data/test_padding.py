"""The one padding helper the pipeline, `Encoder.encode` and the teacher share."""

from __future__ import annotations

import numpy as np
import pytest

from e5jax.data.padding import bucket_for, bucket_lengths, pad_rows, pad_to_bucket


def test_bucket_lengths_are_multiples_of_8_ending_at_the_max():
    assert bucket_lengths(128, 8) == (16, 32, 48, 64, 80, 96, 112, 128)  # what encode used before (step 16)
    assert bucket_lengths(512, 8) == tuple(range(64, 513, 64))
    assert bucket_lengths(64, 4) == (16, 32, 48, 64)
    assert bucket_lengths(30, 8) == (8, 16, 24, 30)  # rounding merges buckets of short maxima


def test_pad_to_bucket_fixed_row_count_and_masks():
    ids, mask = pad_to_bucket([[5, 6, 7], [8]], (2, 4, 8), pad_id=0, num_rows=3)
    assert ids.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0], [0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert ids.dtype == mask.dtype == np.int32
    assert pad_rows([[1, 1]], 3, 0, 2).tolist() == [[1, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="exceeds the largest bucket 8"):
        bucket_for(9, (4, 8))
