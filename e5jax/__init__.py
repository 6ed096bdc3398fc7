"""e5jax: the E5 text-embedding recipe in JAX / Flax NNX."""

__version__ = "0.1.0"
