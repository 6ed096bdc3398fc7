"""Wikipedia: MediaWiki XML dumps (`pages-articles*.xml.bz2`), wikitext parsed
with mwparserfromhell.

Pair = (entity name + section title, section passage); the lead section's
query is the entity name alone. Redirects, disambiguation pages, pages outside
the article namespace and boilerplate sections (References, See also…) are
skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import mwparserfromhell
from mwparserfromhell.nodes import Heading, Tag, Template, Wikilink
from mwparserfromhell.wikicode import Wikicode

from e5jax.data.harvest.streams import OVERSIZED, iter_xml_records
from e5jax.data.harvest.types import Drop, Pair, Record, Source

_SKIP_SECTIONS = {
    "see also", "references", "external links", "further reading", "notes", "bibliography",
    "sources", "footnotes", "citations", "notes and references", "works cited", "gallery",
}
_DISAMBIG = re.compile(r"^(disambig|disambiguation|dab|hndis|geodis|surname|given name|set index)\b", re.I)
# Links that are media or categories, not prose: their "text" is layout (thumb|left|…).
_NON_PROSE_LINK = re.compile(r"^\s*:?\s*(file|image|category|media)\s*:", re.I)
# Tags whose content is not prose.
# Bold/italic quote runs (left as text by skip_style_tags; removed afterwards).
_STYLE_QUOTES = re.compile(r"'{2,5}")
_NON_PROSE_TAGS = {"ref", "table", "gallery", "math", "score", "timeline", "references", "syntaxhighlight"}


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


def read(path: str, max_chars: int) -> Iterator[Record | Drop]:
    yield from iter_xml_records(path, "{*}page", lambda e: page_to_record(e, max_chars), max_chars)


def _is_disambiguation(title: str, code) -> bool:
    if title.endswith("(disambiguation)"):
        return True
    return any(_DISAMBIG.match(str(t.name).strip()) for t in code.filter_templates(recursive=False))


def _prose(section) -> str:
    """Plain text of a section: templates, refs, tables, media links and the
    heading removed; wikilinks become their visible text."""
    kept = [
        node
        for node in section.nodes  # top level only: nested markup is stripped below
        if not isinstance(node, (Heading, Template))
        and not (isinstance(node, Tag) and str(node.tag).lower() in _NON_PROSE_TAGS)
        and not (isinstance(node, Wikilink) and _NON_PROSE_LINK.match(str(node.title)))
    ]
    # A new Wikicode over the kept nodes: cheaper than Wikicode.remove, which
    # searches the whole tree for every node it removes.
    return _STYLE_QUOTES.sub("", Wikicode(kept).strip_code(normalize=True, collapse=True))


def to_pairs(rec: Record) -> Iterator[Pair | Drop]:
    title = rec["title"]
    # skip_style_tags: ''italic''/'''bold''' need no tree of their own to be stripped.
    code = mwparserfromhell.parse(rec["text"], skip_style_tags=True)
    if _is_disambiguation(title, code):
        yield Drop("disambiguation")
        return
    for section in code.get_sections(flat=True, include_lead=True):
        headings = section.filter_headings(recursive=False)
        heading = headings[0].title.strip_code().strip() if headings else ""
        if heading.lower() in _SKIP_SECTIONS:
            yield Drop("boilerplate_section")
            continue
        passage = _prose(section)
        if not passage.strip():
            yield Drop("empty_section")
            continue
        query = f"{title} {heading}" if heading else title
        yield Pair(query, passage, {"title": title, "page_id": rec["id"], "section": heading})


SOURCE = Source("wikipedia", read, to_pairs=to_pairs, doc=__doc__)
