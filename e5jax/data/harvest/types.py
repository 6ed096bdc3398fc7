"""The values that flow through a harvest: records in, pairs or drops out.

Every source is described by one `Source`: how to read its files (streaming),
how to turn records into raw pairs, and — for sources whose pairs join two
kinds of records (a post and its comments) — the join key. The local runner
and the Beam pipeline drive the very same functions, so both produce the same
pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

Record = dict[str, Any]


class Pair(NamedTuple):
    """A raw (query, passage) pair, before shared cleaning."""

    query: str
    passage: str
    meta: dict[str, Any]


class Drop(NamedTuple):
    """Something skipped, with the reason counted in the summary."""

    reason: str


# Per-record sources: record -> pairs. Keyed sources: (key, records) -> pairs.
RecordFn = Callable[[Record], Iterator[Pair | Drop]]
GroupFn = Callable[[str, Iterable[Record]], Iterator[Pair | Drop]]


@dataclass(frozen=True)
class Source:
    """One dump format.

    `read(path, max_chars)` streams a file's records (or `Drop`s for what is
    malformed; a field over `max_chars` is malformed input).
    Exactly one of `to_pairs` (per record) or `key` + `group_to_pairs` (join
    the records sharing a key, e.g. a question and its answers) is set.
    """

    name: str
    read: Callable[[str, int], Iterator[Record | Drop]]
    to_pairs: RecordFn | None = None
    key: Callable[[Record], str] | None = None
    group_to_pairs: GroupFn | None = None
    doc: str = field(default="", compare=False)

    def __post_init__(self):
        if (self.to_pairs is None) == (self.group_to_pairs is None or self.key is None):
            raise ValueError(f"source {self.name}: set to_pairs, or key and group_to_pairs")

    @property
    def keyed(self) -> bool:
        return self.group_to_pairs is not None
