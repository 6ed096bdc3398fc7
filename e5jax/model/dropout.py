"""Dropout as a hash: functional and per token.

The encoder's `__call__` takes an explicit `dropout_key` (None = deterministic)
— one key, or one key per row — or, for packed rows, a seed per token. Every
mask bit is a hash of (its text's seed, the dropout site, the token's position
*in its text*, the feature), never of where the text sits in the batch. So
gradient caching (which re-runs the batch chunk by chunk), any padding length
and sequence packing (several texts per row) all see exactly the masks of the
plain padded step. The hash (a Weyl counter through Wellons' lowbias32) costs a
few integer ops per element, far less than threefry bits: on a CPU, threefry
masks took ~20% of a train step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class TokenNoise(NamedTuple):
    """The dropout stream of each token: its text's seed and its position in that text."""

    seed: jax.Array  # [N, L] uint32
    pos: jax.Array  # [N, L] int32, 0 at the text's first token


_WEYL = 0x9E3779B9  # 2^32 / golden ratio: consecutive counters land far apart before mixing


def mix32(x: jax.Array) -> jax.Array:
    """Wellons' lowbias32 integer hash (uint32 -> uint32, full avalanche)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def row_seeds(keys: jax.Array) -> jax.Array:
    """One uint32 dropout seed per row from one PRNG key per row."""
    return jax.vmap(lambda k: jax.random.bits(k, dtype=jnp.uint32))(keys)


def _site_seed(noise: TokenNoise, site: int) -> jax.Array:
    return mix32(noise.seed + jnp.uint32((site * _WEYL) & 0xFFFFFFFF))


def _apply(x: jax.Array, rate: float, seed: jax.Array, counter: jax.Array) -> jax.Array:
    with jax.named_scope("dropout"):
        bits = mix32(seed + counter.astype(jnp.uint32) * jnp.uint32(_WEYL))
        keep = bits >= jnp.uint32(min(round(rate * 2.0**32), 2**32 - 1))
        return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def hidden_dropout(x: jax.Array, rate: float, noise: TokenNoise | None, site: int) -> jax.Array:
    """Inverted dropout on token features [N, L, F]."""
    if noise is None or rate <= 0.0:
        return x
    F = x.shape[-1]
    counter = noise.pos[..., None] * F + jnp.arange(F, dtype=jnp.int32)
    return _apply(x, rate, _site_seed(noise, site)[..., None], counter)


def attention_dropout(p: jax.Array, rate: float, noise: TokenNoise | None, site: int) -> jax.Array:
    """Inverted dropout on attention probabilities [N, heads, L(query), L(key)].

    A bit depends on (query text's seed, head, query position, key position):
    entries between two texts packed in one row are masked out anyway."""
    if noise is None or rate <= 0.0:
        return p
    nh = p.shape[1]
    head = jnp.arange(nh, dtype=jnp.int32)[None, :, None, None]
    counter = (head * 1024 + noise.pos[:, None, :, None]) * 1024 + noise.pos[:, None, None, :]
    return _apply(p, rate, _site_seed(noise, site)[:, None, :, None], counter)


def split_keys(keys: jax.Array | None, n: int) -> list[jax.Array | None]:
    """Per-row keys [B] → n independent per-row key arrays [B]."""
    if keys is None:
        return [None] * n
    s = jax.vmap(lambda k: jax.random.split(k, n))(keys)
    return [s[:, i] for i in range(n)]


def dropout(x: jax.Array, rate: float, keys: jax.Array | None) -> jax.Array:
    """Inverted dropout from threefry bits; `keys` holds one key per row of `x`
    (leading dim). The classification head's; the encoder body uses the hash."""
    if keys is None or rate <= 0.0:
        return x
    keep = jax.vmap(lambda k, xi: jax.random.bernoulli(k, 1.0 - rate, xi.shape))(keys, x)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)
