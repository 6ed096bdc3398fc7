"""Mutated records fed to every source never crash a harvest."""

from __future__ import annotations

import json
import pathlib
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e5jax.data.harvest import harvest
from tests.harvest import formats

# Values of any JSON type where a field is expected, plus awkward strings.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)
    | st.sampled_from(["[deleted]", "[removed]", "", "t3_a1", "1", "<p>", "&amp;", "\x00"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)


def _mutate_json(records: list[dict], data) -> list[dict]:
    out = []
    for rec in records:
        rec = dict(rec)
        if data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(rec) + ["extra"]))
            if data.draw(st.booleans()):
                rec[key] = data.draw(json_values)
            else:
                rec.pop(key, None)
        out.append(rec)
    return out


def _mutate_bytes(blob: bytes, data) -> bytes:
    """Overwrite, delete or insert a few bytes anywhere."""
    b = bytearray(blob)
    for _ in range(data.draw(st.integers(0, 4))):
        # A position drawn independently of the length: WARC record ids and
        # dates make the files' sizes differ from run to run.
        i = data.draw(st.integers(0, 2**20)) % max(len(b), 1)
        op = data.draw(st.sampled_from(["set", "del", "ins"]))
        byte = data.draw(st.sampled_from([0, 10, 34, 38, 60, 62, 0xFF, 0x80, 32, 46]))
        if op == "set" and b:
            b[i] = byte
        elif op == "del" and b:
            del b[i]
        else:
            b.insert(i, byte)
    return bytes(b)


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


def _harvest(source: str, files: list[pathlib.Path]) -> None:
    with tempfile.TemporaryDirectory() as out:
        summary = harvest(source, [str(f) for f in files], pathlib.Path(out) / "o")
        assert summary.kept >= 0


@SETTINGS
@given(st.data())
def test_json_sources_survive_mutated_fields(data):
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        for source, records in (("reddit", formats.REDDIT_POSTS + formats.REDDIT_COMMENTS),
                                ("s2orc", formats.S2ORC), ("jsonl", formats.USER)):
            f = d / f"{source}.jsonl"
            f.write_text("".join(json.dumps(r) + "\n" for r in _mutate_json(records, data)))
            _harvest(source, [f])


@SETTINGS
@given(st.data())
def test_every_source_survives_mutated_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        for source, write in formats.WRITERS.items():
            (d / source).mkdir()
            files = [pathlib.Path(p) for p in write(d / source)]
            for f in files:
                f.write_bytes(_mutate_bytes(f.read_bytes(), data))
            _harvest(source, files)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_wikipedia_survives_mutated_wikitext(data):
    from e5jax.data.harvest.wikipedia import to_pairs

    text = "'''Foo''' is a [[bar|baz]].\n== History ==\n{{cite web|url=x}} Some words here.<ref>r</ref>\n"
    for _ in range(3):
        text = _mutate_bytes(text.encode(), data).decode("utf-8", "replace")
        list(to_pairs({"title": "Foo", "id": "1", "text": text}))
