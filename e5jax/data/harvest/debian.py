"""Debian package descriptions: `Translation-en` files from the archive.

Get them with `apt-get update -o Acquire::Languages=en` (see docs/harvest.md);
the files are deb822 stanzas:

    Package: 0ad
    Description-md5: d943033bedada21853d2ae54a2578a7b
    Description-en: Real-time strategy game of ancient warfare
     0 A.D. (pronounced "zero ey-dee") is a free, open-source, …
     .
     This package contains the 0 A.D. game executable.

Pair = (short description, long description); " ." lines are paragraph breaks.
"""

from __future__ import annotations

from collections.abc import Iterator

from e5jax.data.harvest.streams import OVERSIZED, iter_lines, open_binary
from e5jax.data.harvest.types import Drop, Pair, Record, Source


def _stanza(lines: list[str]) -> Record | Drop:
    package, short, body, in_desc = "", None, [], False
    for line in lines:
        if line[:1] in (" ", "\t"):
            if in_desc:  # continuation of Description-en
                s = line[1:]
                body.append("\n" if s.strip() == "." else s)
            continue
        name, _, value = line.partition(":")
        in_desc = name == "Description-en"
        if name == "Package":
            package = value.strip()
        elif in_desc:
            short = value.strip()
    if short is None:
        return Drop("no_description")
    if not body:
        return Drop("no_long_description")
    # Paragraph breaks become blank lines; continuation lines join with spaces.
    long = "\n".join(body).replace("\n\n\n", "\n\n")
    return {"package": package, "short": short, "long": long}


def read(path: str, max_chars: int) -> Iterator[Record | Drop]:
    with open_binary(path) as stream:
        lines: list[str] = []
        size, oversized = 0, False
        for line in iter_lines(stream, max_chars, keep_blank=True):
            if isinstance(line, Drop):
                yield line
            elif line.strip():
                size += len(line)
                if size > max_chars and not oversized:  # a runaway stanza: skip to its end
                    yield Drop(OVERSIZED)
                    oversized = True
                if not oversized:
                    lines.append(line)
            else:  # a blank line ends the stanza
                if lines:
                    yield _stanza(lines)
                lines, size, oversized = [], 0, False
        if lines:
            yield _stanza(lines)


def to_pairs(rec: Record) -> Iterator[Pair]:
    yield Pair(rec["short"], rec["long"], {"package": rec["package"]})


SOURCE = Source("debian", read, to_pairs=to_pairs, doc=__doc__)
