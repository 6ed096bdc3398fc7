"""Harvest (query, passage) pairs from public dumps — pure Python, no JAX.

One module per source format (reddit, stackexchange, wikipedia, s2orc,
commoncrawl, userpairs for jsonl/tsv, debian); shared cleaning, writer and
summary; `local.harvest` runs it on one machine, `beam.build_pipeline` at scale.
"""

from e5jax.data.harvest.cleaning import CleanConfig
from e5jax.data.harvest.local import harvest
from e5jax.data.harvest.registry import SOURCE_NAMES, get_source

__all__ = ["CleanConfig", "SOURCE_NAMES", "get_source", "harvest"]
