"""The same harvest as an Apache Beam pipeline, for dumps too big for one
machine: DirectRunner locally; Dataflow, Flink or Spark at scale (README,
"Scale-out: Apache Beam", has the commands).

Every step calls the functions the local path calls — `Source.read`,
`to_pairs` / `key` + `group_to_pairs`, `clean_pair` — so both paths produce
the same set of pairs. Beam supplies what the local path does by hand on one
machine: GroupByKey instead of the SQLite join, a GroupByKey on the pair id
instead of the digest set, and parallel reads and writes. Counts (kept,
dropped by reason) are Beam metrics, turned into the same `summary.json`.

Shards are written by `WriteShard` through etils.epath (gcsfs for gs://), not
Beam's `WriteToText`: that one reaches gs:// through Beam's own GCS client,
which needs the `apache-beam[gcp]` extra and finalises with batched copy
requests, where this writes each shard once, whole, with the client every
other gs:// path here uses (tests/gcs proves it against a server).

Beam is imported only here: the local path never needs it.
"""

from __future__ import annotations

import gzip
import io
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
import zstandard
from etils import epath

from e5jax.data.harvest.cleaning import CleanConfig, clean_pair
from e5jax.data.harvest.registry import get_source
from e5jax.data.harvest.summary import Summary
from e5jax.data.harvest.types import Drop, Pair, Record
from e5jax.data.harvest.writer import dumps, shard_name

_NS = "e5jax.harvest"
# Output shards (a pair goes to the shard its id hashes to): enough for a
# runner to write in parallel, few enough that a small harvest is not dust.
SHARDS = 16


def _count(name: str, n: int = 1) -> None:
    Metrics.counter(_NS, name).inc(n)


def _pass_or_count(items: Iterator) -> Iterator:
    """Pass records/pairs on; count each `Drop` under its reason."""
    for item in items:
        if isinstance(item, Drop):
            _count("dropped:" + item.reason)
        else:
            yield item


class ReadFile(beam.DoFn):
    """One input file -> its records (a file is read by one worker, streaming)."""

    def __init__(self, source: str, max_chars: int):
        self.source, self.max_chars = source, max_chars

    def process(self, path: str) -> Iterator[Record]:
        for rec in get_source(self.source).read(path, self.max_chars):
            _count("records")
            if isinstance(rec, Drop):
                _count("dropped:" + rec.reason)
            else:
                yield rec


class ToPairs(beam.DoFn):
    def __init__(self, source: str):
        self.source = source

    def process(self, rec: Record) -> Iterator[Pair]:
        yield from _pass_or_count(get_source(self.source).to_pairs(rec))


class GroupToPairs(beam.DoFn):
    def __init__(self, source: str):
        self.source = source

    def process(self, kv: tuple[str, list[Record]]) -> Iterator[Pair]:
        yield from _pass_or_count(get_source(self.source).group_to_pairs(kv[0], kv[1]))


class Clean(beam.DoFn):
    def __init__(self, source: str, cfg: CleanConfig):
        self.source, self.cfg = source, cfg

    def process(self, pair: Pair) -> Iterator[tuple[str, dict]]:
        rec = clean_pair(self.source, pair, self.cfg)
        if isinstance(rec, Drop):
            _count("dropped:" + rec.reason)
        else:
            yield rec["id"], rec


def _first_of_duplicates(kv: tuple[str, list[dict]]) -> str:
    recs = sorted(dumps(r) for r in kv[1])  # same id, same texts; keep one deterministically
    if len(recs) > 1:
        _count("dropped:duplicate", len(recs) - 1)
    _count("kept")
    return recs[0]


def _shard_of(pair_id: str, shards: int) -> int:
    # crc32, not hash(): Python's str hash differs from one worker process to the next.
    return zlib.crc32(pair_id.encode("utf-8")) % shards


class WriteShard(beam.DoFn):
    """Write one shard's lines (sorted: the output does not depend on the runner's
    order) to `output/pairs-NNNNN.jsonl*`, under a temporary name renamed when
    complete, so a `pairs-*` object is always whole."""

    def __init__(self, output: str, compress: str | None):
        self.output, self.compress = output, compress

    def process(self, kv: tuple[int, list[str]]) -> Iterator[str]:
        index, lines = kv
        data = "".join(line + "\n" for line in sorted(lines)).encode("utf-8")
        if self.compress == "gz":
            buf = io.BytesIO()
            with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
                f.write(data)
            data = buf.getvalue()
        elif self.compress == "zst":
            data = zstandard.ZstdCompressor(level=3).compress(data)
        out = epath.Path(self.output)
        out.mkdir(parents=True, exist_ok=True)
        final = out / shard_name(index, self.compress)
        tmp = out / f".{final.name}.{uuid.uuid4().hex}.tmp"  # unique: a retried bundle writes its own
        tmp.write_bytes(data)
        tmp.rename(final)
        yield final.name


def build_pipeline(p: beam.Pipeline, source_name: str, inputs: Sequence[str], output: str,
                   cfg: CleanConfig, compress: str | None = None) -> None:
    """Add the harvest of `inputs` to pipeline `p`, writing `output/pairs-NNNNN.jsonl*`."""
    source = get_source(source_name)
    records = (
        p
        | "Inputs" >> beam.Create(list(inputs))
        | "Read" >> beam.ParDo(ReadFile(source.name, cfg.max_record_chars))
    )
    if source.keyed:
        pairs = (
            records
            | "Key" >> beam.Map(lambda r, s=source.name: (get_source(s).key(r), r))
            | "Join" >> beam.GroupByKey()
            | "GroupToPairs" >> beam.ParDo(GroupToPairs(source.name))
        )
    else:
        # Files are read by one worker each; spread the per-record work.
        pairs = records | "Spread" >> beam.Reshuffle() | "ToPairs" >> beam.ParDo(ToPairs(source.name))
    (
        pairs
        | "Clean" >> beam.ParDo(Clean(source.name, cfg))
        | "Dedup" >> beam.GroupByKey()
        | "OnePerId" >> beam.Map(lambda kv: (_shard_of(kv[0], SHARDS), _first_of_duplicates(kv)))
        | "GroupShards" >> beam.GroupByKey()
        | "Write" >> beam.ParDo(WriteShard(output, compress))
    )


def run_pipeline(source_name: str, inputs: Sequence[str], output: str, cfg: CleanConfig = CleanConfig(),
                 compress: str | None = None, beam_args: Sequence[str] = ()) -> Summary:
    """Run the harvest on the runner named in `beam_args` (DirectRunner by
    default), then write `summary.json` from the pipeline's metrics."""
    source = get_source(source_name)
    start = time.perf_counter()
    options = PipelineOptions(list(beam_args) or ["--runner=DirectRunner"])
    p = beam.Pipeline(options=options)
    build_pipeline(p, source_name, inputs, str(output), cfg, compress)
    result = p.run()
    result.wait_until_finish()
    summary = Summary(source.name, inputs=[str(i) for i in inputs], config=cfg.to_dict())
    for c in result.metrics().query(MetricsFilter().with_namespace(_NS))["counters"]:
        name, value = c.key.metric.name, c.committed or 0
        if name == "kept":
            summary.kept += value
        elif name == "records":
            summary.records += value
        elif name.startswith("dropped:"):
            summary.drop(name.removeprefix("dropped:"), value)
    summary.seconds = time.perf_counter() - start
    out = epath.Path(output)  # a local folder or gs:// (read through gcsfs)
    out.mkdir(parents=True, exist_ok=True)
    summary.shards = sorted(f.name for f in out.glob("pairs-*"))
    summary.write(out)
    return summary
