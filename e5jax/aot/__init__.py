"""Ahead-of-time (deviceless) compilation of the real train step for a TPU slice.

`slices.py` — the one table of slices and chips; `build.py` — the abstract state
and batch `e5jax train` would feed, lowered and compiled over the slice's
devices; `report.py` — memory, FLOPs, collectives and a roofline, read from the
compiled TPU program. Needs libtpu (`pip install ".[tpu]"`), no TPU.
"""
