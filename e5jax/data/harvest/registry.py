"""Source name -> `Source`, imported lazily (trafilatura and mwparserfromhell
are only loaded for the sources that need them)."""

from __future__ import annotations

import importlib

from e5jax.errors import E5Error
from e5jax.data.harvest.types import Source

_SOURCES: dict[str, str] = {
    "reddit": "e5jax.data.harvest.reddit:SOURCE",
    "stackexchange": "e5jax.data.harvest.stackexchange:SOURCE",
    "wikipedia": "e5jax.data.harvest.wikipedia:SOURCE",
    "s2orc": "e5jax.data.harvest.s2orc:SOURCE",
    "commoncrawl": "e5jax.data.harvest.commoncrawl:SOURCE",
    "jsonl": "e5jax.data.harvest.userpairs:JSONL",
    "tsv": "e5jax.data.harvest.userpairs:TSV",
    "debian": "e5jax.data.harvest.debian:SOURCE",
}
SOURCE_NAMES: tuple[str, ...] = tuple(_SOURCES)


def get_source(name: str) -> Source:
    if name not in _SOURCES:
        raise E5Error(f"unknown harvest source {name!r}; choose from {', '.join(SOURCE_NAMES)}")
    module, attr = _SOURCES[name].split(":")
    return getattr(importlib.import_module(module), attr)
