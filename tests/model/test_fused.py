"""The hand-written backward passes of `e5jax.model.fused` against autodiff of
the plain formulas they replace (jax.nn.gelu and the module's `*_reference`) (the whole model against transformers:
test_parity.py; the whole step against the gradient-cached one: tests/train)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e5jax.model import fused


def _rel(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.abs(a - b).max() / np.abs(b).max()


def _check(fn, ref, args, cot, tol):
    y, vjp = jax.vjp(fn, *args)
    y_ref, vjp_ref = jax.vjp(ref, *args)
    assert y.dtype == y_ref.dtype and _rel(y, y_ref) < tol
    grads, grads_ref = vjp(cot), vjp_ref(cot)
    for g, g_ref in zip(grads, grads_ref):
        assert g.dtype == g_ref.dtype and g.shape == g_ref.shape
        assert _rel(g, g_ref) < tol, (_rel(g, g_ref), tol)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 2e-6), (jnp.bfloat16, 1e-2)])
def test_gelu_value_and_grad_match_autodiff_of_the_exact_form(dtype, tol):
    # Includes the tails, where x·Φ(x) → 0 or x, and exact zeros.
    x = jnp.asarray(np.concatenate([np.linspace(-9, 9, 721), [0.0, -0.0]]), dtype)
    cot = jnp.asarray(np.random.default_rng(0).standard_normal(x.shape), dtype)
    ref = lambda v: jax.nn.gelu(v.astype(jnp.float32), approximate=False).astype(v.dtype)  # noqa: E731
    _check(fused.gelu, ref, (x,), cot, tol)


@pytest.mark.parametrize("masked", [False, True])
def test_softmax_grad_matches_autodiff(masked):
    rng = np.random.default_rng(1)
    s = rng.standard_normal((2, 3, 5, 7)).astype(np.float32) * 4
    if masked:  # what the encoder feeds it: padding columns carry a -1e9 bias
        s[..., 5:] += -1e9
    cot = jnp.asarray(rng.standard_normal(s.shape), jnp.float32)
    _check(fused.softmax, fused.softmax_reference, (jnp.asarray(s),), cot, 2e-6)
    e = np.exp(s.astype(np.float64) - s.max(-1, keepdims=True))  # the value, independently
    np.testing.assert_allclose(fused.softmax(jnp.asarray(s)), e / e.sum(-1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 1e-2)])
def test_layer_norm_value_and_grads_match_autodiff(dtype, tol):
    rng = np.random.default_rng(2)
    # An offset and a spread like real hidden states, where a careless
    # formula loses precision.
    x = jnp.asarray(rng.standard_normal((3, 4, 32)) * 3 + 5, dtype)
    scale = jnp.asarray(rng.standard_normal(32) + 1, jnp.float32)
    bias = jnp.asarray(rng.standard_normal(32), jnp.float32)
    cot = jnp.asarray(rng.standard_normal(x.shape), dtype)
    _check(lambda a, b, c: fused.layer_norm(a, b, c, 1e-12),
           lambda a, b, c: fused.layer_norm_reference(a, b, c, 1e-12), (x, scale, bias), cot, tol)
    x64 = np.asarray(x, np.float64)  # the value, independently
    want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-12) * np.asarray(scale) \
        + np.asarray(bias)
    assert _rel(fused.layer_norm(x, scale, bias, 1e-12), want) < tol


def test_fused_ops_compose_under_jit_grad_and_remat():
    x = jnp.linspace(-3, 3, 64, dtype=jnp.float32).reshape(4, 16)
    scale, bias = jnp.ones(16), jnp.zeros(16)

    def f(v):
        return (fused.softmax(fused.gelu(fused.layer_norm(v, scale, bias, 1e-12))) ** 2).sum()

    def f_ref(v):
        h = fused.layer_norm_reference(v, scale, bias, 1e-12)
        return (fused.softmax_reference(jax.nn.gelu(h, approximate=False)) ** 2).sum()

    g = jax.jit(jax.grad(jax.checkpoint(f)))(x)
    np.testing.assert_allclose(g, jax.grad(f_ref)(x), rtol=1e-4, atol=1e-7)


def test_gelu_backward_keeps_the_upcast_in_its_consumers_on_tpu(monkeypatch):
    """For a TPU target the bf16 GELU backward puts an optimization barrier on its input
    (so XLA cannot share one materialised fp32 copy of it between consumers); the
    gradient is bit-identical to the CPU form's."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32)), jnp.bfloat16)
    out, jaxprs = {}, {}
    for platform in (None, "tpu"):
        monkeypatch.setattr(fused, "active_platform", lambda: platform)
        jax.clear_caches()  # the platform is read at trace time
        grad = lambda v: jax.grad(lambda t: jnp.sum(fused.gelu(t).astype(jnp.float32) * 1.5))(v)  # noqa: E731
        out[platform] = np.asarray(jax.jit(grad)(x), np.float32)
        jaxprs[platform] = jax.jit(grad).lower(x).as_text()  # the backward is traced at lowering
    assert "optimization_barrier" in jaxprs["tpu"] and "optimization_barrier" not in jaxprs[None]
    np.testing.assert_array_equal(out["tpu"], out[None])
    # fp32 has no upcast to keep: no barrier
    assert "optimization_barrier" not in jax.jit(grad).lower(x.astype(jnp.float32)).as_text()


@pytest.mark.parametrize("dtype,bias", [("bfloat16", jnp.bfloat16), ("float16", jnp.float32), ("float32", jnp.float32)])
def test_attention_mask_bias_dtype_and_padded_rows_stay_finite(dtype, bias):
    """bf16 models add a bf16 mask bias (half the bytes of the [rows, L, L] array); fp16 keeps
    fp32, where -1e9 would be -inf and a fully padded row's softmax NaN."""
    from flax import nnx

    from e5jax.model.bert import BertConfig, BertModel

    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32)
    model = BertModel(cfg, dtype=dtype, with_pooler=False, rngs=nnx.Rngs(0))
    assert model._bias_dtype() == bias
    ids = jnp.asarray([[5, 6, 7, 0], [0, 0, 0, 0]], jnp.int32)  # the second row is all padding
    seg = jnp.asarray([[1, 1, 2, 0], [0, 0, 0, 0]], jnp.int32)
    pos = jnp.asarray([[0, 1, 0, 0], [0, 0, 0, 0]], jnp.int32)
    for out in (model(ids, (ids > 0).astype(jnp.int32)), model(ids, None, segment_ids=seg, positions=pos)):
        assert np.isfinite(np.asarray(out, np.float32)).all()
