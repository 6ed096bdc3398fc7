"""Element-wise pieces of the encoder with hand-written backward passes.

Autodiff of GELU, the attention softmax and LayerNorm is correct but slow on
XLA:CPU, where these element-wise passes are bound by memory traffic: the
LayerNorm and softmax gradients come out as several separate passes over the
activations, and jax.nn.gelu's erfc is a piecewise polynomial evaluated
twice per layer. Each function here writes its derivative as one expression
over the fewest saved values, so its backward is one or two passes.

They compute the same functions as the plain formulas `softmax_reference`
and `layer_norm_reference` below and jax.nn.gelu (tests/model/test_fused.py
checks values and gradients against autodiff of those); only the order of a
few fp32 operations differs. Measured on the project's 2-core CPU (benchmarks/step_ablation.py,
MiniLM, 32 packed pairs): see the README's training-step section.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from e5jax.model.axes import active_platform

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ------------------------------------------------------------------ GELU (erf)
# HF "gelu" (and torch.nn.functional.gelu) is x·Φ(x) with Φ(x) = (1 + erf(x/√2))/2.
# jax.nn.gelu(approximate=False) writes it with erfc, whose XLA expansion is a
# longer, piecewise polynomial than erf's; erf is what torch uses.
# Computed in fp32 whatever the input dtype, returned in the input dtype.


def _cdf(x32: jax.Array) -> jax.Array:
    return 0.5 * (1.0 + jax.lax.erf(x32 * _SQRT_HALF))


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU."""
    x32 = x.astype(jnp.float32)
    return (x32 * _cdf(x32)).astype(x.dtype)


def _gelu_fwd(x):
    # Keep only x: recomputing Φ(x) in the backward is cheaper than storing it,
    # since these passes are bound by memory traffic, not by erf's arithmetic
    # (a scratch A/B of the MiniLM step: ~20 ms less than saving Φ(x)).
    return gelu(x), x


def _gelu_bwd(x, g):
    # d/dx x·Φ(x) = Φ(x) + x·φ(x).
    if x.dtype != jnp.float32 and active_platform() == "tpu":
        # Left to itself, XLA:TPU materialises the fp32 upcast of the bf16 [rows, L, 4H]
        # input once and reads it from both consumers (the bias gradient and the
        # recomputed GELU of the next matmul's weight gradient): 4 bytes an element
        # written and read three times where 2 would do. The barrier keeps the upcast
        # inside each consumer. E5-base pre-training on v4-32 (benchmarks/hbm_breakdown.py):
        # 2.41e12 -> 2.14e12 HBM bytes per step per chip.
        x = jax.lax.optimization_barrier(x)
    x32 = x.astype(jnp.float32)
    pdf = jnp.exp(-0.5 * x32 * x32) * _INV_SQRT_2PI
    return ((g.astype(jnp.float32) * (_cdf(x32) + x32 * pdf)).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


# --------------------------------------------------------------------- softmax


def softmax_reference(s: jax.Array) -> jax.Array:
    """The plain formula (max-shifted softmax over the last axis), for autodiff."""
    e = jnp.exp(s - jax.lax.stop_gradient(s.max(-1, keepdims=True)))
    return e / e.sum(-1, keepdims=True)


@jax.custom_vjp
def softmax(s: jax.Array) -> jax.Array:
    """Softmax over the last axis (the caller passes fp32 scores)."""
    return softmax_reference(s)


def _softmax_fwd(s):
    p = softmax(s)
    return p, p


def _softmax_bwd(p, g):
    # d s = p ⊙ (g − Σ_j g_j p_j): one product, one row sum, one fused pass.
    return (p * (g - (g * p).sum(-1, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


# ------------------------------------------------------------------- LayerNorm


def _normalise(x, scale, bias, eps):
    """(LayerNorm of x in x's dtype, row means, row 1/std), statistics in fp32."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.square(x32 - mean).mean(-1, keepdims=True) + eps)
    return ((x32 - mean) * rstd * scale + bias).astype(x.dtype), mean, rstd


def layer_norm_reference(x, scale, bias, eps: float) -> jax.Array:
    """The plain formula, for autodiff."""
    return _normalise(x, scale, bias, eps)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis with fp32 statistics (bf16 variance loses
    too much); scale and bias are fp32, the result has x's dtype."""
    return layer_norm_reference(x, scale, bias, eps)


def _layer_norm_fwd(x, scale, bias, eps):
    y, mean, rstd = _normalise(x, scale, bias, eps)
    # Residuals: x itself and two numbers per row; the normalised x is recomputed
    # inside the backward's fused pass rather than stored.
    return y, (x, mean, rstd, scale)


def _layer_norm_bwd(eps, res, g):
    x, mean, rstd, scale = res
    xhat = (x.astype(jnp.float32) - mean) * rstd
    g32 = g.astype(jnp.float32)
    rows = tuple(range(g.ndim - 1))
    dscale = (g32 * xhat).sum(rows)
    dbias = g32.sum(rows)
    dxhat = g32 * scale
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx.astype(x.dtype), dscale, dbias


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)
