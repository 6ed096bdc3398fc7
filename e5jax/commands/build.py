"""`e5jax build`: JSONL pair shards -> a named TFDS (ArrayRecord) dataset.

    e5jax build --pairs shards/ --data-dir ~/e5data --name ccpairs_small
    e5jax build --kind finetune --pairs msmarco.jsonl.gz --data-dir ~/e5data --name msmarco_ft
    e5jax build --pairs gs://bucket/shards/ ... --beam-runner DataflowRunner \\
        --beam-options "--project=P --region=R --temp_location=gs://bucket/tmp"

Reads back with `e5jax.data.ccpairs.builder.load_source(data_dir, name, split)`
or `tfds.data_source(name, data_dir=data_dir)`.
"""

from __future__ import annotations

import argparse
import json
import shlex

from e5jax.data.ccpairs.records import DEFAULT_MAX_CHARS, KINDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pairs", "--input", dest="inputs", nargs="+", required=True, metavar="PATH",
        help="JSONL shard files (plain, .gz, .zst) or folders holding *.jsonl[.gz|.zst]",
    )
    parser.add_argument("--data-dir", required=True, help="TFDS data dir; the dataset goes to DATA_DIR/NAME/1.0.0")
    parser.add_argument("--name", required=True, help="dataset name (snake_case), used again by `train --set data.name=`")
    parser.add_argument(
        "--kind", choices=KINDS, default="pairs",
        help="pairs: {query, passage, source}; finetune: {query, positive, negatives, teacher_scores?, source}",
    )
    parser.add_argument(
        "--heldout-fraction", type=float, default=0.01,
        help="share of pairs in the 'heldout' split, decided by a hash of the pair (default 0.01)",
    )
    parser.add_argument(
        "--max-chars", type=int, default=DEFAULT_MAX_CHARS,
        help=f"drop records with any text longer than this many characters (default {DEFAULT_MAX_CHARS})",
    )
    parser.add_argument("--beam-runner", default=None, help="build with Apache Beam on this runner, e.g. DirectRunner")
    parser.add_argument("--beam-options", default="", help="Beam pipeline flags as one string (Dataflow / Flink / Spark)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild if DATA_DIR/NAME already exists")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")


def run(args: argparse.Namespace) -> int:
    import tensorflow_datasets as tfds  # heavy: imported only when the command runs

    from e5jax.data.ccpairs import builder, records
    from e5jax.storage import check_reachable

    check_reachable(args.data_dir, "--data-dir")  # a bucket that does not answer: one line, bounded time
    tfds.disable_progress_bar()
    summary = builder.build_dataset(
        args.inputs,
        data_dir=args.data_dir,
        name=args.name,
        kind=args.kind,
        heldout_fraction=args.heldout_fraction,
        max_chars=args.max_chars,
        beam_runner=args.beam_runner,
        beam_options=shlex.split(args.beam_options),
        overwrite=args.overwrite,
    )
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(records.format_summary(args.name, summary))
    return 0
