"""`Encoder.encode` packs texts into rows (first-fit, block-diagonal attention,
pooling per text) and gives what the plain padded path gives, one text per row,
on one device and sharded over eight."""

import jax
import numpy as np
import pytest

from e5jax.config import MeshConfig
from e5jax.model import axes as ax
from e5jax.model.encoder import Encoder

MAX_LEN = 128  # the real sentences include texts far longer: truncated here


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _rows_computed(enc):
    """Wrap the packed forward to count the rows (of any length) it is given."""
    rows = []
    inner = enc._forward_packed

    def spy(state, ids, seg, pos, slots):
        rows.append(ids.shape[0] * ids.shape[1])
        return inner(state, ids, seg, pos, slots)

    enc._forward_packed = spy
    return rows


@pytest.fixture(scope="module")
def texts(real_sentences):
    # Empty, one-word, non-ASCII, truncated-long and ordinary texts (tests/fixtures/real_text.py).
    lengths = [len(t) for t in real_sentences]
    assert min(lengths) == 0 and max(lengths) > 4 * MAX_LEN
    return real_sentences


@pytest.mark.parametrize("devices", [1, 8])
def test_packed_encode_equals_padded(minilm_dir, texts, devices):
    mesh = ax.make_mesh(MeshConfig(), jax.devices()[:devices])
    enc = Encoder.from_pretrained(minilm_dir, dtype="float32", mesh=mesh)
    rows = _rows_computed(enc)
    # batch 8 over 60 texts: several full calls and a smaller last one.
    packed = enc.encode(texts, prefix="passage: ", max_length=MAX_LEN, batch_size=8)
    padded = enc.encode(texts, prefix="passage: ", max_length=MAX_LEN, batch_size=8, packed=False)
    assert packed.shape == padded.shape == (len(texts), enc.dim)
    cos = _cos(packed, padded)
    assert cos.min() >= 0.99999, (cos.min(), int(cos.argmin()))
    # Packing happened: texts shared rows, so fewer rows than texts were computed.
    assert len(rows) >= 3 and sum(rows) < len(texts), rows
    # Input order is kept: a text alone equals its place in the batch.
    alone = enc.encode([texts[20]], prefix="passage: ", max_length=MAX_LEN)[0]
    np.testing.assert_allclose(alone, padded[20], atol=1e-5)
