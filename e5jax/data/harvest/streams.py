"""Streaming readers shared by the sources: decompression, bounded lines,
JSON lines and XML elements — each yielding `Drop`s for what is malformed.

Nothing here holds more than one record (plus a read buffer) in memory, so a
harvest's footprint does not grow with the size of the dump.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import IO, Any

import zstandard
from lxml import etree

# Decompression by suffix, local or gs://, is `e5jax.data.compressed`'s, the one
# reader every input goes through (the sources import `open_binary` from here).
# A cut stream raises its `TruncatedInput`, an EOFError, which the readers below
# count as `truncated_stream`.
from e5jax.data.compressed import CHUNK, open_binary  # noqa: F401
from e5jax.data.harvest.types import Drop, Record

# Reasons counted when input is malformed (documented in docs/harvest.md).
TRUNCATED = "truncated_stream"
BAD_JSON = "bad_json"
BAD_XML = "bad_xml"
NON_UTF8 = "non_utf8"
OVERSIZED = "oversized_record"
CORRUPT = "corrupt_stream"
# What the decompressors raise on corrupt (not merely truncated) data
# (`compressed.CorruptInput` is an OSError; bz2 raises a plain one).
CORRUPT_ERRORS = (OSError, zlib.error, zstandard.ZstdError)


def iter_lines(stream: IO[bytes], max_bytes: int, keep_blank: bool = False) -> Iterator[str | Drop]:
    """Decoded lines of `stream` (newline stripped; blank ones skipped unless
    `keep_blank`); a line longer than `max_bytes` is skipped without being
    held in memory, bytes that are not UTF-8 skip their line, and a truncated
    compressed stream ends the file."""
    try:
        while True:
            line = stream.readline(max_bytes + 1)
            if not line:
                return
            if len(line) > max_bytes and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # drain the rest, chunk by chunk
                    line = stream.readline(CHUNK)
                yield Drop(OVERSIZED)
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                yield Drop(NON_UTF8)
                continue
            text = text.rstrip("\r\n")
            if keep_blank or text.strip():
                yield text
    except EOFError:
        yield Drop(TRUNCATED)
    except CORRUPT_ERRORS:
        yield Drop(CORRUPT)


def iter_json_records(path: str, max_bytes: int) -> Iterator[Record | Drop]:
    """JSON objects, one per line (NDJSON / JSONL), compressed or not."""
    with open_binary(path) as stream:
        for line in iter_lines(stream, max_bytes):
            if isinstance(line, Drop):
                yield line
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                yield Drop(BAD_JSON)
                continue
            yield obj if isinstance(obj, dict) else Drop(BAD_JSON)


def iter_xml_records(
    path: str, tag: str, to_record: Callable[[Any], Record | Drop], max_chars: int
) -> Iterator[Record | Drop]:
    """Stream the `tag` elements of an XML file through `to_record`.

    lxml's recovering parser carries on past a broken element; its error log
    says on which line each error was, and an element that contains an error
    line is dropped as `bad_xml` instead of being passed on half-repaired. An
    error belongs to the element that starts on or before its line, so an
    element is judged once the next one (in line order) has been seen.
    """
    pending: list[tuple[int, Record | Drop]] = []  # (start line, record), sorted
    error_lines: list[int] = []
    seen_errors = 0

    def judged(upto: int | None) -> Iterator[Record | Drop]:
        # Yield every pending element but the last-starting one (or all at EOF).
        while pending and (upto is None or len(pending) > 1):
            line, rec = pending.pop(0)
            end = pending[0][0] if pending else None
            bad = any(line <= e and (end is None or e < end) for e in error_lines)
            yield Drop(BAD_XML) if bad and not isinstance(rec, Drop) else rec
        if pending:  # errors before the oldest pending element are settled
            error_lines[:] = [e for e in error_lines if e >= pending[0][0]]

    with open_binary(path) as stream:
        ctx = etree.iterparse(stream, events=("end",), tag=tag, recover=True, huge_tree=True)
        try:
            for _, elem in ctx:
                log = ctx.error_log
                if len(log) > seen_errors:
                    error_lines.extend(e.line for e in list(log)[seen_errors:])
                    seen_errors = len(log)
                too_big = any(len(v) > max_chars for v in elem.attrib.values()) or (
                    elem.text is not None and len(elem.text) > max_chars
                )
                rec = Drop(OVERSIZED) if too_big else to_record(elem)
                line = elem.sourceline or 0
                # Free the element and the already-seen siblings: constant memory.
                elem.clear(keep_tail=True)
                parent = elem.getparent()
                if parent is not None:
                    while elem.getprevious() is not None:
                        del parent[0]
                pending.append((line, rec))
                pending.sort(key=lambda p: p[0])
                yield from judged(line)
            yield from judged(None)
        except EOFError:
            yield from judged(None)
            yield Drop(TRUNCATED)
        except CORRUPT_ERRORS:
            yield from judged(None)
            yield Drop(CORRUPT)
        except etree.XMLSyntaxError:  # unrecoverable even in recover mode
            yield from judged(None)
            yield Drop(BAD_XML)


def _apply_all(fn: Callable[[Any], Any], items: list) -> list:
    return [fn(x) for x in items]


def _start_method() -> str | None:
    """"fork" when it is safe and available, else the safest the platform has."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else None


def map_in_processes(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int, batch: int = 2, ahead: int = 8
) -> Iterator[Any]:
    """`map(fn, items)` in `workers` processes, results in input order.

    Memory stays flat: at most `workers * ahead` batches of `batch` items are
    in flight (unlike `Pool.imap`, whose feeder thread drains `items` eagerly).
    `items` is consumed in this process; `fn` must be a module-level function.
    Workers are forked where the platform can and this process runs no other
    thread (a pool starts in milliseconds, where spawning costs a fresh
    interpreter each); a process with threads (JAX, grain or TensorFlow
    imported and started, e.g. in a notebook) gets a forkserver instead, since a
    fork copies the locks those threads hold and can deadlock. Closing the
    generator early terminates the workers.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    ctx = multiprocessing.get_context(_start_method())
    it = iter(items)
    pending: deque = deque()
    with ctx.Pool(workers) as pool:  # __exit__ terminates the workers

        def submit() -> bool:
            chunk = list(islice(it, batch))
            if chunk:
                pending.append(pool.apply_async(_apply_all, (fn, chunk)))
            return bool(chunk)

        more = True
        while more and len(pending) < workers * ahead:
            more = submit()
        while pending:
            done = pending.popleft().get()
            if more:
                more = submit()
            yield from done
