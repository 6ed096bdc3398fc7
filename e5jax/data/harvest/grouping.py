"""Join records by key on disk (SQLite), for sources whose pairs need two
kinds of records — a Reddit post and its comments, a question and its answers.

The dumps do not promise any order (Pushshift ships posts and comments in
separate files), so a harvest must see the whole input before it can pair.
Holding it in a dict would grow with the dump; SQLite keeps it on disk and
sorts it with bounded memory (its page cache), which is the constant-memory
version of Beam's GroupByKey that the scale-out path uses.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator

from e5jax.data.harvest.types import Record

_BATCH = 10_000
_CACHE_KIB = 32 * 1024  # SQLite page cache (and sorter) budget


class DiskGrouper:
    """Add (key, record) pairs, then iterate (key, records) grouped by key."""

    def __init__(self, tmp_dir: str | None = None):
        self._dir = tempfile.TemporaryDirectory(prefix="e5jax-harvest-", dir=tmp_dir)
        self._db = sqlite3.connect(os.path.join(self._dir.name, "group.sqlite"))
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE", f"cache_size=-{_CACHE_KIB}"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE r (k TEXT NOT NULL, v TEXT NOT NULL)")
        self._batch: list[tuple[str, str]] = []

    def add(self, key: str, record: Record) -> None:
        self._batch.append((key, json.dumps(record, ensure_ascii=False)))
        if len(self._batch) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            self._db.executemany("INSERT INTO r VALUES (?, ?)", self._batch)
            self._batch.clear()

    def groups(self) -> Iterator[tuple[str, Iterable[Record]]]:
        """Groups in key order; each group's records are streamed, not listed."""
        self._flush()
        self._db.commit()
        rows = self._db.execute("SELECT k, v FROM r ORDER BY k")
        for key, group in itertools.groupby(rows, key=lambda row: row[0]):
            yield key, (json.loads(v) for _, v in group)

    def close(self) -> None:
        self._db.close()
        self._dir.cleanup()

    def __enter__(self) -> DiskGrouper:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
