"""A bf16 step's gradient (fast bf16 VJPs, packed towers) against the fp32 padded step's."""

import jax
import numpy as np
from flax import nnx

from e5jax.model import axes as ax
from e5jax.train.state import create_state
from e5jax.train.step import plain_loss
from tests.train.test_packed_step import to_packed
from tests.train.test_step import _batch, _cfg


def test_bf16_step_gradient_close_to_fp32(tiny_overrides):
    padded = _batch(np.random.default_rng(4))
    key = jax.random.key(0)
    grads = {}
    for dt, batch in (("float32", padded), ("bfloat16", to_packed(padded, groups=1))):
        cfg = _cfg(tiny_overrides, **{"model.dtype": dt, "train.batch_size": 16})
        mesh = ax.make_mesh(cfg.mesh, jax.devices()[:1])
        graphdef, state = create_state(cfg, mesh)
        model, _ = nnx.merge(graphdef, state)
        g = jax.jit(lambda m: nnx.grad(lambda mm: plain_loss(mm, batch, key, cfg, None)[0])(m))(model)
        grads[dt] = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(g)}
    for k, ref in grads["float32"].items():
        got = grads["bfloat16"][k]
        assert got.dtype == np.float32
        if np.abs(ref).max() > 1e-6:  # same direction and size, to bf16 accuracy
            cos = (got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref)
            size = np.linalg.norm(got) / np.linalg.norm(ref)
            assert cos > 0.98 and 0.95 < size < 1.05, (k, cos, size)


def test_auto_dtype_follows_the_hardware_default(tiny_overrides, monkeypatch):
    from e5jax.train.state import abstract_state

    for forced in ("bfloat16", "float32"):
        monkeypatch.setenv("E5JAX_DTYPE", forced)  # what default_dtype() reports
        cfg = _cfg(tiny_overrides, **{"model.dtype": "auto"})
        mesh = ax.make_mesh(cfg.mesh, jax.devices()[:1])
        graphdef, state = create_state(cfg, mesh)
        model, _ = nnx.merge(graphdef, state)
        assert str(model.bert.dtype) == forced
        abstract_graphdef, _, _ = abstract_state(cfg, mesh)  # the restore target agrees
        assert str(nnx.merge(abstract_graphdef, state)[0].bert.dtype) == forced
