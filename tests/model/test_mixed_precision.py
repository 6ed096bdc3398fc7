"""The bf16 matmul VJPs (bf16 cotangents, fp32 accumulation) against autodiff of
the same product in fp32 (the whole bf16 step: tests/train/test_bf16_step.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from e5jax.model.bert import batched_matmul, dense_dot, matmul_f32


def _rel(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.abs(a - b).max() / np.abs(b).max()


def test_dense_dot_value_and_grads_match_fp32_autodiff():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 5, 16)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((3, 5, 8)), jnp.float32)

    def ref(x, w):  # the same product in fp32 on the bf16-rounded operands
        return jnp.dot(x.astype(jnp.float32), w.astype(jnp.bfloat16).astype(jnp.float32))

    y, vjp = jax.vjp(dense_dot, x, w)
    y_ref, vjp_ref = jax.vjp(ref, x, w)
    assert y.dtype == jnp.float32 and _rel(y, y_ref) < 1e-6
    (dx, dw), (dx_ref, dw_ref) = vjp(cot), vjp_ref(cot)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32  # the master weight's gradient stays fp32
    assert _rel(dx, dx_ref) < 1e-2 and _rel(dw, dw_ref) < 1e-2  # bf16 rounding of the cotangent only


def test_batched_matmul_grads_match_fp32_autodiff():
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.standard_normal((2, 3, 7, 4)), jnp.bfloat16)
    b = jnp.asarray(rng.standard_normal((2, 3, 4, 6)), jnp.bfloat16)
    cot = jnp.asarray(rng.standard_normal((2, 3, 7, 6)), jnp.float32)
    y, vjp = jax.vjp(batched_matmul, a, b)
    y_ref, vjp_ref = jax.vjp(lambda p, q: jnp.matmul(p.astype(jnp.float32), q.astype(jnp.float32)), a, b)
    assert _rel(y, y_ref) < 1e-6
    for g, g_ref in zip(vjp(cot), vjp_ref(cot)):
        assert g.dtype == jnp.bfloat16 and _rel(g, g_ref) < 1e-2
    # fp32 operands take plain autodiff
    a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
    np.testing.assert_array_equal(jax.grad(lambda p: matmul_f32(p, b32).sum())(a32),
                                  jax.grad(lambda p: jnp.matmul(p, b32).sum())(a32))
