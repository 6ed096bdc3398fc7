"""Pair and fine-tuning datasets as TFDS ArrayRecord folders (`e5jax build`).

- `records`: pure line parsing / split assignment / drop counting (no TFDS).
- `builder`: the TFDS builders, `build_dataset`, `load_source`, `load_summary`.

Nothing is imported here so that `import e5jax.data.ccpairs.records` stays light.
"""
