"""Reading harvest output back, for assertions."""

from __future__ import annotations

import gzip
import json
import pathlib

import zstandard


def read_pairs(out: str | pathlib.Path) -> list[dict]:
    pairs = []
    for shard in sorted(pathlib.Path(out).glob("pairs-*")):
        data = shard.read_bytes()
        if shard.name.endswith(".gz"):
            data = gzip.decompress(data)
        elif shard.name.endswith(".zst"):
            data = zstandard.ZstdDecompressor().stream_reader(data).read()
        pairs += [json.loads(line) for line in data.decode().splitlines()]
    return pairs


def summary(out: str | pathlib.Path) -> dict:
    return json.loads((pathlib.Path(out) / "summary.json").read_text())


def dropped(out: str | pathlib.Path, source: str) -> dict:
    return summary(out)["sources"][source]["dropped"]
