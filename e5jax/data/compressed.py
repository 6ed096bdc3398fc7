"""One reader for every input file: local or on an object store (gs://, through
etils.epath), decompressed by suffix (.gz, .bz2, .xz, .zst/.zstd or plain).

A compressed file that ends mid-stream (a cut download or copy) raises
`TruncatedInput`, a one-line `E5Error` naming the file. zstandard's own
`stream_reader` would return the partial content as if it were complete, and
gzip / bz2 / lzma raise a bare `EOFError` that names nothing. `TruncatedInput`
is an `EOFError` as well and `CorruptInput` an `OSError`, so that readers
which count a damaged file and carry on (the harvest, the TFDS build) keep
catching what they caught before, while everyone else stops with a message.

Pure Python, no JAX: the harvest's worker processes import it.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import zlib
from typing import IO

import zstandard
from etils import epath

from e5jax.errors import E5Error

SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zstd")
# Pushshift .zst dumps are compressed with --long=31: the decoder must accept a
# 2 GiB window or it refuses the frame.
ZSTD_MAX_WINDOW = 2**31
CHUNK = 1 << 20
# What the decompressors raise on damaged (not merely cut) data. bz2 raises a
# plain OSError, which cannot be told from a read error of the file itself, so
# it passes through unchanged (still an OSError to the harvest).
_DECODE_ERRORS = (zlib.error, gzip.BadGzipFile, lzma.LZMAError, zstandard.ZstdError)


class TruncatedInput(E5Error, EOFError):
    """A compressed input that ends inside its stream."""


class CorruptInput(E5Error, OSError):
    """A compressed input whose bytes do not decode."""


class _ZstdReader(io.RawIOBase):
    """Multi-frame zstd decoder that raises `EOFError` on a truncated frame
    (a decompressor object tells, through `eof`, where `stream_reader` does not)."""

    def __init__(self, raw: IO[bytes]):
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        self._obj = self._dctx.decompressobj()
        self._in_frame = False  # bytes of an unfinished frame were fed
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            chunk = self._raw.read(CHUNK)
            if not chunk:
                if self._in_frame:
                    raise EOFError("zstd stream ended inside a frame")
                return 0
            while chunk:
                self._in_frame = True
                self._buf += self._obj.decompress(chunk)
                chunk = b""
                if self._obj.eof:  # frame done; the rest starts the next frame
                    chunk = self._obj.unused_data
                    self._obj = self._dctx.decompressobj()
                    self._in_frame = False
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


class _Named(io.RawIOBase):
    """Turns a decompressor's EOFError / decode error into one naming the file,
    and closes the file under it (a decompressor given a `fileobj` does not)."""

    def __init__(self, stream: IO[bytes], raw: IO[bytes], name: str):
        self._stream, self._raw, self._name = stream, raw, name

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            if isinstance(self._stream, io.RawIOBase):
                return self._stream.readinto(b)
            # One decompressed chunk at a time: a buffered decompressor's own
            # `readinto` fills the whole buffer in a loop and, when the stream is
            # cut, drops what that loop had read along with the EOFError.
            # (A URL's file object, e.g. gcsfs's, has no read1: plain read.)
            read = getattr(self._stream, "read1", self._stream.read)
            data = read(len(b))
            b[: len(data)] = data
            return len(data)
        except EOFError as e:
            raise TruncatedInput(
                f"{self._name}: compressed file ends mid-stream (cut download or copy?); fetch it again"
            ) from e
        except _DECODE_ERRORS as e:
            raise CorruptInput(f"{self._name}: compressed data does not decode ({type(e).__name__}: {e})") from e

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._raw.close()
            super().close()


def open_raw(path: str | os.PathLike) -> IO[bytes]:
    """The file's bytes as stored; gs:// and other URLs through epath (pathlib
    would fold `gs://b` into `gs:/b`)."""
    return epath.Path(path).open("rb")


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """`path` for binary reading, decompressed by suffix."""
    name = os.fspath(path)
    raw = open_raw(path)
    if name.endswith((".zst", ".zstd")):
        stream: IO[bytes] = _ZstdReader(raw)
    elif name.endswith(".gz"):
        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    elif name.endswith(".bz2"):
        stream = bz2.BZ2File(raw, "rb")
    elif name.endswith(".xz"):
        stream = lzma.LZMAFile(raw, "rb")
    elif isinstance(raw, io.BufferedIOBase):  # a local file: already buffered
        return raw
    else:
        # A URL's file object (gcsfs) is buffered but its readline takes no size
        # limit, which the harvest readers need: buffer it here like the rest.
        stream = raw
    return io.BufferedReader(_Named(stream, raw, name), buffer_size=CHUNK)


def open_text(path: str | os.PathLike) -> IO[str]:
    """`path` as UTF-8 text, decompressed by suffix. Line endings come back as
    stored (newline=""): callers strip them, and none is translated away."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", newline="")
