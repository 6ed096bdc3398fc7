"""`e5jax harvest SOURCE --input PATH... --output DIR`: dumps -> pair shards.

Example (the end-to-end demo's data):
    e5jax harvest debian --input Translation-en --output pairs/debian
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from e5jax.data.harvest.cleaning import CleanConfig
from e5jax.data.harvest.registry import SOURCE_NAMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=SOURCE_NAMES, help="dump format to read")
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="dump files (.zst/.bz2/.gz or plain; WARC: .warc.gz or .warc)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for pairs-NNNNN.jsonl + summary.json")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N pairs kept")
    parser.add_argument("--compress", nargs="?", const="gz", choices=("gz", "zst"), default=None,
                        help="compress shards (gzip by default, or zst)")
    parser.add_argument("--beam", action="store_true",
                        help="run as an Apache Beam pipeline (DirectRunner unless --beam-arg --runner=...)")
    parser.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                        help="pipeline option passed to Beam, e.g. --beam-arg=--runner=DataflowRunner")
    parser.add_argument("--tmp-dir", default=None, help="where the on-disk join of keyed sources lives")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes that parse Wikipedia pages (default: $E5JAX_HARVEST_WORKERS, else one "
                             "per CPU; 1 parses in the reading process); the other sources read in one process")
    defaults = CleanConfig()
    for f in dataclasses.fields(CleanConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=getattr(defaults, f.name))
        else:
            parser.add_argument(flag, type=int, default=getattr(defaults, f.name), metavar="N")


def run(args: argparse.Namespace) -> int:
    if args.workers is not None:
        import os

        from e5jax.data.harvest.wikipedia import WORKERS_ENV
        from e5jax.errors import E5Error

        if args.workers < 1:
            raise E5Error(f"--workers {args.workers}: want 1 or more processes")
        os.environ[WORKERS_ENV] = str(args.workers)  # the harvest's worker processes inherit it
    from e5jax.data.harvest.local import check_limit, require_pairs
    from e5jax.errors import E5Error

    check_limit(args.limit)
    if args.beam and args.limit is not None:  # Beam reads every file in parallel: no global first-N
        raise E5Error("--limit does not apply to --beam runs; drop it (or harvest locally)")
    cfg = CleanConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CleanConfig)})
    if args.beam:
        from e5jax.data.harvest.beam import run_pipeline

        summary = run_pipeline(args.source, args.input, args.output, cfg, compress=args.compress,
                               beam_args=args.beam_arg)
    else:
        from e5jax.data.harvest.local import harvest

        summary = harvest(args.source, args.input, args.output, cfg, limit=args.limit,
                          compress=args.compress, tmp_dir=args.tmp_dir)
    print(summary.format())
    require_pairs(summary)  # after the summary: its drop counts say why nothing was kept
    print(f"wrote {len(summary.shards)} shard(s) and summary.json to {args.output}", file=sys.stderr)
    return 0
