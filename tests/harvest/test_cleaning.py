"""Shared cleaning: ids, bounds, markup, de-duplication, streams."""

from __future__ import annotations

import pytest

from e5jax.data.harvest.cleaning import CleanConfig, Deduper, clean_pair, pair_id, strip_html
from e5jax.data.harvest.types import Drop, Pair
from e5jax.errors import E5Error

CFG = CleanConfig(min_query_words=2, max_query_words=4, min_passage_words=3, max_passage_words=5)


def test_pair_id_is_deterministic_and_separates_fields():
    assert pair_id("reddit", "a b", "c") == pair_id("reddit", "a b", "c")
    assert len(pair_id("reddit", "a b", "c")) == 16
    assert pair_id("reddit", "ab", "c") != pair_id("reddit", "a", "bc")
    assert pair_id("reddit", "q", "p") != pair_id("wikipedia", "q", "p")


def test_bounds_whitespace_and_truncation():
    rec = clean_pair("t", Pair("  two\n\twords ", "one\u00a0two  three four five six seven", {"k": 1}), CFG)
    assert rec["query"] == "two words" and rec["passage"] == "one two three four five"
    assert rec["meta"] == {"k": 1} and rec["id"] == pair_id("t", "two words", "one two three four five")
    assert clean_pair("t", Pair("one", "a b c", {}), CFG) == Drop("query_too_short")
    assert clean_pair("t", Pair("a b", "c d", {}), CFG) == Drop("passage_too_short")
    strict = CleanConfig(max_query_words=2, truncate=False)
    assert clean_pair("t", Pair("a b c", "c d e f", {}), strict) == Drop("query_too_long")
    assert clean_pair("t", Pair("Same  words here", "same words HERE", {}), CFG) == Drop("query_equals_passage")


def test_strip_html():
    assert strip_html("<p>a &amp; b</p><p>c</p><script>x()</script>").split() == ["a", "&", "b", "c"]
    assert strip_html("plain &lt;text&gt;") == "plain <text>"


def test_deduper():
    d = Deduper()
    assert d.first_time("00000000000000ff") and not d.first_time("00000000000000ff")
    assert d.first_time("00000000000000fe")


def test_config_checks():
    with pytest.raises(E5Error, match="min_query_words"):
        CleanConfig(min_query_words=5, max_query_words=2)
