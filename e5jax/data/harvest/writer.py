"""Pair shards: JSONL files of a fixed number of lines, optionally gzip/zstd.

A shard is written under a temporary name and renamed when closed, so every
`pairs-NNNNN.jsonl*` on disk is complete — also after an error mid-harvest
(the writer closes its open shard on the way out).
"""

from __future__ import annotations

import gzip
import json
import os
from types import TracebackType
from typing import IO

import zstandard

from e5jax.paths import local

SUFFIX = {None: ".jsonl", "gz": ".jsonl.gz", "zst": ".jsonl.zst"}


def shard_name(index: int, compress: str | None) -> str:
    return f"pairs-{index:05d}{SUFFIX[compress]}"


def dumps(rec: dict) -> str:
    """One JSONL line; key order fixed so identical pairs give identical lines."""
    return json.dumps(
        {k: rec[k] for k in ("id", "query", "passage", "source", "meta")}, ensure_ascii=False, sort_keys=False
    )


class ShardWriter:
    """Write records to `out_dir/pairs-00000.jsonl`, … `lines_per_shard` each."""

    def __init__(self, out_dir: str | os.PathLike, lines_per_shard: int, compress: str | None = None):
        if compress not in SUFFIX:
            raise ValueError(f"compress must be one of {list(SUFFIX)}, got {compress!r}")
        self.out_dir = local(out_dir, "--output", "shard files are written and renamed with local-file APIs")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.lines_per_shard = lines_per_shard
        self.compress = compress
        self.shards: list[str] = []
        self.count = 0
        self._file: IO[bytes] | None = None
        self._raw: IO[bytes] | None = None
        self._lines = 0

    def _open(self) -> None:
        name = shard_name(len(self.shards), self.compress)
        self._tmp = self.out_dir / (name + ".tmp")
        self._final = self.out_dir / name
        self._raw = open(self._tmp, "wb")
        if self.compress == "gz":
            self._file = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0)
        elif self.compress == "zst":
            self._file = zstandard.ZstdCompressor(level=3).stream_writer(self._raw, closefd=False)
        else:
            self._file = self._raw
        self._lines = 0

    def _close_shard(self) -> None:
        if self._file is None:
            return
        if self._file is not self._raw:
            self._file.close()  # writes the compressed stream's trailer
        self._raw.close()
        os.replace(self._tmp, self._final)
        self.shards.append(self._final.name)
        self._file = self._raw = None

    def write(self, rec: dict) -> None:
        if self._file is None:
            self._open()
        self._file.write((dumps(rec) + "\n").encode("utf-8"))
        self._lines += 1
        self.count += 1
        if self._lines >= self.lines_per_shard:
            self._close_shard()

    def close(self) -> None:
        self._close_shard()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
