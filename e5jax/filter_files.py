"""The consistency filter's files (`e5jax.filter` runs the filter itself).

- the work folder's name, block bounds, text hashes and the rank histogram;
- the progress log: one fsynced record per ranked block (header, int32 ranks,
  uint8 kept flags, CRC32), read back up to the first torn or corrupt record,
  each block counted once;
- the output shards: kept pairs of the filtered split plus every other split,
  written under temporary names and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import socket
import struct
import zlib
from collections.abc import Sequence

import numpy as np

from e5jax.errors import E5Error
from e5jax.paths import is_url

# (label, lowest rank): the report's rank histogram; each bin ends where the next starts.
RANK_BINS = (("1", 1), ("2", 2), ("3-5", 3), ("6-10", 6), ("11-100", 11), (">100", 101))


# ------------------------------------------------------------------ small pure helpers


def work_dir(data_dir: str | os.PathLike, output_name: str) -> pathlib.Path:
    """DATA_DIR/OUTPUT_NAME.work. Its progress logs are appended and fsynced, which
    object stores cannot do: a URL data dir is refused, naming the fix."""
    if is_url(data_dir):
        raise E5Error(f"--data-dir {data_dir}: the filter appends and fsyncs its progress logs next to the "
                      "data, which needs a POSIX file system (shared by all hosts on a pod): give a local or "
                      "mounted folder (e.g. the bucket mounted with gcsfuse), not a URL")
    return pathlib.Path(data_dir) / f"{output_name}.work"


def text_hash(text: bytes | str) -> int:
    """Stable 64-bit hash of a text: pool membership without keeping the texts."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def block_bounds(n: int, block_size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + block_size, n)) for lo in range(0, n, block_size)]


def rank_histogram(ranks: np.ndarray) -> dict[str, int]:
    """Counts of ranks per RANK_BINS label."""
    edges = [lo for _, lo in RANK_BINS[1:]]  # a rank r falls in bin #(edges <= r)
    counts = np.bincount(np.searchsorted(edges, np.asarray(ranks, np.int64), side="right"), minlength=len(RANK_BINS))
    return {label: int(c) for (label, _), c in zip(RANK_BINS, counts)}


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    """Write + fsync a temporary file, then rename: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")  # hosts share the folder
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------ progress log

_MAGIC = b"E5FB"
_HEAD = struct.Struct("<4sIqqI")  # magic, block index, lo, hi, crc32 of (lo, hi, payload)


def block_record(block: int, lo: int, hi: int, ranks: np.ndarray, kept: np.ndarray) -> bytes:
    """One block's decisions: header, int32 ranks, uint8 kept flags."""
    payload = np.asarray(ranks, "<i4").tobytes() + np.asarray(kept, np.uint8).tobytes()
    crc = zlib.crc32(payload, zlib.crc32(struct.pack("<Iqq", block, lo, hi)))
    return _HEAD.pack(_MAGIC, block, lo, hi, crc) + payload


def read_log(path: pathlib.Path) -> tuple[dict[int, tuple[int, int, np.ndarray, np.ndarray]], int]:
    """({block: (lo, hi, ranks, kept)}, bytes of valid records). Stops at the first torn/corrupt record."""
    data = path.read_bytes() if path.exists() else b""
    out, pos = {}, 0
    while pos + _HEAD.size <= len(data):
        magic, block, lo, hi, crc = _HEAD.unpack_from(data, pos)
        m = hi - lo
        end = pos + _HEAD.size + 5 * m
        if magic != _MAGIC or m < 0 or end > len(data):
            break
        payload = data[pos + _HEAD.size : end]
        if zlib.crc32(payload, zlib.crc32(struct.pack("<Iqq", block, lo, hi))) != crc:
            break
        ranks = np.frombuffer(payload[: 4 * m], "<i4").astype(np.int64)
        out.setdefault(block, (lo, hi, ranks, np.frombuffer(payload[4 * m :], np.uint8).astype(bool)))
        pos = end
    return out, pos


def repair_log(path: pathlib.Path) -> None:
    """Cut a torn tail left by a writer killed mid-record, so that appends start on a record boundary.

    Only the log's owner calls this (at start-up), never while another process appends to it."""
    if path.exists() and path.stat().st_size != (valid := read_log(path)[1]):
        with open(path, "r+b") as f:
            f.truncate(valid)


def append_record(path: pathlib.Path, record: bytes) -> None:
    """Append one record and fsync: once this returns, the block survives a kill."""
    with open(path, "ab") as f:
        f.write(record)
        f.flush()
        os.fsync(f.fileno())


def read_progress(work: pathlib.Path, bounds: Sequence[tuple[int, int]]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Finished blocks from every process's log, each once, checked against the plan's bounds."""
    done: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for path in sorted(work.glob("progress-p*.log")):
        for block, (lo, hi, ranks, kept) in read_log(path)[0].items():
            if block >= len(bounds) or bounds[block] != (lo, hi):
                raise E5Error(f"{path}: block {block} covers [{lo}, {hi}), not the plan's; delete {work}")
            done.setdefault(block, (ranks, kept))
    return done


# ------------------------------------------------------------------ output


def _json_line(r: dict) -> str:
    d = {k: _text(r[k]) for k in ("query", "passage", "source", "id")}
    return json.dumps(d, ensure_ascii=False) + "\n"


def write_shards(work: pathlib.Path, source, keep: np.ndarray, ranks: np.ndarray, others: dict, shard_size: int,
                 hash_a: set) -> dict:
    """Kept pairs of the filtered split + every record of the other splits -> work/kept/*.jsonl.

    Returns the report's counts: per source, pairs ranked against the reserve pool, copied splits."""
    out_dir = work / "kept"
    out_dir.mkdir(exist_ok=True)
    for old in out_dir.glob("*.jsonl"):  # a finalize killed half-way: write the shards again
        old.unlink()
    lines: list[str] = []
    shard_no = 0

    def flush(final: bool = False) -> None:
        nonlocal lines, shard_no
        if lines and (final or len(lines) >= shard_size):
            _atomic_write(out_dir / f"part-{shard_no:05d}.jsonl", "".join(lines).encode("utf-8"))
            lines, shard_no = [], shard_no + 1

    source_ids: dict[str, int] = {}
    src_of = np.zeros(len(source), np.int32)  # a small int per pair, not a string: 1e9 pairs fit
    reserve = 0
    for lo, hi in block_bounds(len(source), 4096):
        for i, r in zip(range(lo, hi), source.__getitems__(list(range(lo, hi)))):
            src_of[i] = source_ids.setdefault(_text(r["source"]), len(source_ids))
            reserve += text_hash(r["passage"]) in hash_a
            if keep[i]:
                lines.append(_json_line(r))
                flush()
    copied = {}
    for split, src in others.items():
        copied[split] = len(src)
        for lo, hi in block_bounds(len(src), 4096):
            lines += [_json_line(r) for r in src.__getitems__(list(range(lo, hi)))]
            flush()
    flush(final=True)
    per_source = {}
    for name, sid in sorted(source_ids.items()):
        m = src_of == sid
        per_source[name] = {"pairs": int(m.sum()), "kept": int(keep[m].sum()), "kept_fraction": float(keep[m].mean()),
                            "rank_histogram": rank_histogram(ranks[m])}
    return {"per_source": per_source, "ranked_against_reserve_pool": int(reserve), "copied_splits": copied}
