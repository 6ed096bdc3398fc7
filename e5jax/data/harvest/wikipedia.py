"""Wikipedia: MediaWiki XML dumps (`pages-articles*.xml.bz2`), wikitext parsed
with mwparserfromhell.

Pair = (entity name + section title, section passage); the lead section's
query is the entity name alone. Redirects, disambiguation pages, pages outside
the article namespace and boilerplate sections (References, See also…) are
skipped.

Speed: building mwparserfromhell's node tree costs ~1 µs per character, and a
whole article is mostly markup we throw away. So before parsing, blocks that
would be dropped whole are cut out with a linear bracket scan (comments,
templates, tables, refs, math/gallery/… tags, File/Image/Category links); the
article is then split into sections on its heading lines, boilerplate sections
are skipped unparsed, and of each kept section only as much is parsed as the
passage can use (`PASSAGE_WORDS`, the shared cleaning's default word bound).
mwparserfromhell still does the markup removal on everything that is kept.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import mwparserfromhell
from mwparserfromhell.nodes import Heading, Tag, Template, Wikilink
from mwparserfromhell.wikicode import Wikicode

from e5jax.data.harvest.cleaning import CleanConfig
from e5jax.data.harvest.streams import OVERSIZED, iter_xml_records, map_in_processes
from e5jax.data.harvest.types import Drop, Pair, Record, Source
from e5jax.errors import E5Error

_SKIP_SECTIONS = {
    "see also", "references", "external links", "further reading", "notes", "bibliography",
    "sources", "footnotes", "citations", "notes and references", "works cited", "gallery",
}
_DISAMBIG = re.compile(r"^(disambig|disambiguation|dab|hndis|geodis|surname|given name|set index)\b", re.I)
# Links that are media or categories, not prose: their "text" is layout (thumb|left|…).
_NON_PROSE_LINK = re.compile(r"^\s*:?\s*(file|image|category|media)\s*:", re.I)
# Bold/italic quote runs (left as text by skip_style_tags; removed afterwards).
_STYLE_QUOTES = re.compile(r"'{2,5}")
# Tags whose content is not prose.
_NON_PROSE_TAGS = {"ref", "table", "gallery", "math", "score", "timeline", "references", "syntaxhighlight"}

# Words of prose a passage needs: the shared cleaning cuts passages to this
# many words by default, so parsing further into a section is wasted work.
PASSAGE_WORDS = CleanConfig.max_passage_words
# Raw (pre-cut) characters parsed per missing word of prose: a section is
# parsed in chunks of about this many characters per word still needed,
# so most sections take one parse; a remainder under _CHUNK_SLACK is not split off.
_CHARS_PER_WORD = 7
_CHUNK_SLACK = 1000

WORKERS_ENV = "E5JAX_HARVEST_WORKERS"

# --- cheap pre-cut of blocks that are dropped whole ---------------------------
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
# <ref …/> and <math …/>-style empty tags, then paired non-prose tags (no nesting).
_EMPTY_TAG = re.compile(r"<(?:ref|references|gallery|math|score|timeline|syntaxhighlight)\b[^>]*/\s*>", re.I)
_PAIRED_TAG = re.compile(
    r"<(ref|references|gallery|math|score|timeline|syntaxhighlight|nowiki)\b[^>]*>"
    r"[^<]*(?:<(?!/?\1\b)[^<]*)*</\1\s*>", re.I)  # content: no nested open or close of itself
_BRACES = re.compile(r"\{\{|\}\}")
_TABLE_EDGES = re.compile(r"^[ \t:]*(\{\||\|\})", re.M)
_LINK_EDGES = re.compile(r"\[\[|\]\]")
_TEMPLATE_NAME = re.compile(r"\{\{\s*([^|{}\n]*)")
_MEDIA_LINK = re.compile(r"\[\[\s*:?\s*(?:file|image|category|media)\s*:", re.I)  # as _NON_PROSE_LINK
# Where a section may be cut: HTML tags (open, close, self-closing) and wikilink edges.
_CUT_EDGES = re.compile(r"<(/?)([A-Za-z][\w-]*)\b[^<>]*?(/?)>|\[\[|\]\]")
_VOID_TAGS = {"br", "hr", "wbr", "img", "source", "col", "area", "meta", "link", "input"}
_MARKUP_HINT = re.compile(r"[\[\]{}<>'&_]")  # characters that can start wikitext markup
_HEADING = re.compile(r"^(={1,6})(.+?)\1[ \t]*$", re.M)


def page_to_record(elem, max_chars: int) -> Record | Drop:
    ns = elem.findtext("{*}ns")
    if ns is not None and ns.strip() != "0":
        return Drop("not_article")
    if elem.find("{*}redirect") is not None:
        return Drop("redirect")
    text = elem.findtext("{*}revision/{*}text") or ""
    if len(text) > max_chars:
        return Drop(OVERSIZED)
    if text.lstrip()[:9].upper() == "#REDIRECT":
        return Drop("redirect")
    return {"title": elem.findtext("{*}title") or "", "id": elem.findtext("{*}id") or "", "text": text}


def workers() -> int:
    """Processes that parse pages: `E5JAX_HARVEST_WORKERS`, else one per CPU
    this process may use. 1 parses in the reading process."""
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise E5Error(f"{WORKERS_ENV}={env!r}: set it to a whole number of processes, 1 or more")
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def read(path: str, max_chars: int) -> Iterator[Record | Drop]:
    """Article records of a dump. With more than one worker the pages are
    also parsed here, in worker processes, while this process reads on: each
    record then carries its `pairs`, which `to_pairs` passes on."""
    records = iter_xml_records(path, "{*}page", lambda e: page_to_record(e, max_chars), max_chars)
    n = workers()
    yield from records if n <= 1 else map_in_processes(_with_pairs, records, n)


def _with_pairs(rec: Record | Drop) -> Record | Drop:
    if isinstance(rec, Drop):
        return rec
    return {"title": rec["title"], "id": rec["id"], "pairs": list(_parse_page(rec))}


def _balanced_spans(text: str, edges: re.Pattern, opener: str) -> list[tuple[int, int]]:
    """Outermost balanced spans between `edges` matches (group 0 or 1 is the
    opener or closer). An opener that never closes is literal text, as in
    MediaWiki; spans closed inside it still count."""
    stack: list[int] = []
    spans: list[tuple[int, int]] = []
    for m in edges.finditer(text):
        if m.group(m.lastindex or 0) == opener:
            stack.append(m.start())
        elif stack:
            spans.append((stack.pop(), m.end()))
    spans.sort()
    outer: list[tuple[int, int]] = []
    for s, e in spans:
        if not outer or s >= outer[-1][1]:
            outer.append((s, e))
    return outer


def _media_spans(text: str) -> list[tuple[int, int]]:
    """Spans of File:/Image:/Category:/Media: links, captions (with their own
    links) included; one that never closes is left alone."""
    spans: list[tuple[int, int]] = []
    for m in _MEDIA_LINK.finditer(text):
        if spans and m.start() < spans[-1][1]:
            continue  # inside the caption of the previous one
        depth = 0
        for e in _LINK_EDGES.finditer(text, m.start()):
            depth += 1 if e.group() == "[[" else -1
            if depth == 0:
                spans.append((m.start(), e.end()))
                break
    return spans


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return text
    parts, pos = [], 0
    for s, e in spans:
        parts.append(text[pos:s])
        pos = e
    parts.append(text[pos:])
    return "".join(parts)


def _precut(text: str) -> tuple[str, list[str]]:
    """`text` without the blocks `_prose` would drop whole, and the names of its
    top-level templates (for the disambiguation check)."""
    text = _COMMENT.sub("", text)
    text = _EMPTY_TAG.sub("", text)
    text = _PAIRED_TAG.sub("", text)
    spans = _balanced_spans(text, _BRACES, "{{")
    names = [m.group(1).strip() for m in (_TEMPLATE_NAME.match(text, s) for s, _ in spans) if m]
    text = _cut(text, spans)
    text = _cut(text, _balanced_spans(text, _TABLE_EDGES, "{|"))
    text = _cut(text, _media_spans(text))
    return text, names


def _is_disambiguation(title: str, template_names: list[str]) -> bool:
    return title.endswith("(disambiguation)") or any(_DISAMBIG.match(n) for n in template_names)


def _prose(code: Wikicode) -> str:
    """Plain text of parsed wikitext: templates, refs, tables, media links and
    headings removed; wikilinks become their visible text."""
    kept = [
        node
        for node in code.nodes  # top level only: nested markup is stripped below
        if not isinstance(node, (Heading, Template))
        and not (isinstance(node, Tag) and str(node.tag).lower() in _NON_PROSE_TAGS)
        and not (isinstance(node, Wikilink) and _NON_PROSE_LINK.match(str(node.title)))
    ]
    # A new Wikicode over the kept nodes: cheaper than Wikicode.remove, which
    # searches the whole tree for every node it removes.
    return _STYLE_QUOTES.sub("", Wikicode(kept).strip_code(normalize=True, collapse=True))


def _parse_prose(wikitext: str) -> str:
    # skip_style_tags: ''italic''/'''bold''' need no tree of their own to be stripped.
    return _prose(mwparserfromhell.parse(wikitext, skip_style_tags=True))


def _safe_cut(body: str, start: int, scan_from: int = 0) -> int:
    """The first line end at or after `start` that no HTML tag or wikilink
    opened after `scan_from` spans (so both sides parse as they would
    whole), or -1."""
    depth, prev = 0, scan_from
    for m in _CUT_EDGES.finditer(body, scan_from):
        if depth == 0 and m.start() > start:
            nl = body.find("\n", max(prev, start), m.start())
            if nl >= 0:
                return nl
        tok = m.group(0)
        if tok == "[[":
            depth += 1
        elif tok == "]]":
            depth = max(depth - 1, 0)
        elif not m.group(3) and m.group(2).lower() not in _VOID_TAGS:  # not <br>, <x/>
            depth = max(depth - 1, 0) if m.group(1) else depth + 1
        prev = m.end()
    return body.find("\n", max(prev, start)) if depth == 0 else -1


def _section_prose(body: str) -> str:
    """Prose of a section body, parsing only as much as a passage can use:
    chunks cut at safe line ends, sized by the words still missing."""
    pieces, words, pos = [], 0, 0
    while pos < len(body):
        budget = _CHARS_PER_WORD * (PASSAGE_WORDS - words)
        end = _safe_cut(body, pos + budget, pos) if len(body) - pos > budget + _CHUNK_SLACK else -1
        prose = _parse_prose(body[pos:] if end < 0 else body[pos:end])
        pieces.append(prose)
        words += len(prose.split())
        if end < 0 or words >= PASSAGE_WORDS:
            break
        pos = end
    return "\n".join(pieces)


def _sections(text: str) -> Iterator[tuple[str, str]]:
    """(heading title wikitext, body) of each section; the lead's heading is ""."""
    pos, heading = 0, ""
    for m in _HEADING.finditer(text):
        yield heading, text[pos:m.start()]
        pos, heading = m.end(), m.group(2)
    yield heading, text[pos:]


def to_pairs(rec: Record) -> Iterator[Pair | Drop]:
    """Pairs of one article record (`title`, `id`, `text`), or the pairs a
    worker already parsed for it (`pairs`, see `read`)."""
    if "pairs" in rec:
        return iter(rec["pairs"])
    return _parse_page(rec)


def _parse_page(rec: Record) -> Iterator[Pair | Drop]:
    title = rec["title"]
    text, template_names = _precut(rec["text"])
    if _is_disambiguation(title, template_names):
        yield Drop("disambiguation")
        return
    for raw_heading, body in _sections(text):
        heading = (mwparserfromhell.parse(raw_heading).strip_code() if _MARKUP_HINT.search(raw_heading)
                   else raw_heading).strip()
        if heading.lower() in _SKIP_SECTIONS:
            yield Drop("boilerplate_section")
            continue
        passage = _section_prose(body) if body.strip() else ""
        if not passage.strip():
            yield Drop("empty_section")
            continue
        query = f"{title} {heading}" if heading else title
        yield Pair(query, passage, {"title": title, "page_id": rec["id"], "section": heading})


SOURCE = Source("wikipedia", read, to_pairs=to_pairs, doc=__doc__)
