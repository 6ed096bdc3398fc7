"""The same harvest as an Apache Beam pipeline, for dumps too big for one
machine: DirectRunner locally; Dataflow, Flink or Spark at scale (README,
"Scale-out: Apache Beam", has the commands).

Every step calls the functions the local path calls — `Source.read`,
`to_pairs` / `key` + `group_to_pairs`, `clean_pair` — so both paths produce
the same set of pairs. Beam supplies what the local path does by hand on one
machine: GroupByKey instead of the SQLite join, a GroupByKey on the pair id
instead of the digest set, and parallel reads and writes. Counts (kept,
dropped by reason) are Beam metrics, turned into the same `summary.json`.

Beam is imported only here: the local path never needs it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from etils import epath

from e5jax.data.harvest.cleaning import CleanConfig, clean_pair
from e5jax.data.harvest.registry import get_source
from e5jax.data.harvest.summary import Summary
from e5jax.data.harvest.types import Drop, Pair, Record
from e5jax.data.harvest.writer import dumps

_NS = "e5jax.harvest"
_COMPRESSION = {None: CompressionTypes.UNCOMPRESSED, "gz": CompressionTypes.GZIP, "zst": CompressionTypes.ZSTD}


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
    suffix = {None: ".jsonl", "gz": ".jsonl.gz", "zst": ".jsonl.zst"}[compress]
    (
        pairs
        | "Clean" >> beam.ParDo(Clean(source.name, cfg))
        | "Dedup" >> beam.GroupByKey()
        | "OnePerId" >> beam.Map(_first_of_duplicates)
        | "Write" >> beam.io.WriteToText(
            # String join, not pathlib: pathlib would turn gs://b into gs:/b.
            output.rstrip("/") + "/pairs", file_name_suffix=suffix, shard_name_template="-SSSSS",
            compression_type=_COMPRESSION[compress])
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
    if summary.kept == 0:  # WriteToText still writes (empty) shards: none should pass for a harvest
        for f in out.glob("pairs-*"):
            f.unlink()
    summary.shards = sorted(f.name for f in out.glob("pairs-*"))
    summary.write(out)
    return summary
