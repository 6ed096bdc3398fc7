"""`e5jax filter`: consistency-based filtering of a pair dataset (E5 §3.1).

    e5jax filter --model runs/e5-small-pt/export --data-dir data --name ccpairs \\
        --pool-size 1000000 --top-k 2 --output-name ccpairs_filtered

Ranks each pair's own passage among N random passages of the dataset for its
query and keeps the pair if it lands in the top k; writes the kept pairs as the
TFDS dataset --output-name (held-out split copied unchanged) and
DATA_DIR/OUTPUT_NAME.work/report.json. Run the same command again to resume a
killed run. Multi-host: start it on every host (like training) with a shared
--data-dir; see `e5jax.filter` for the rules. A decoder embedder (E5-mistral) takes
`--query-instruction TASK` (queries "Instruct: TASK\\nQuery: ", passages no prefix).
"""

from __future__ import annotations

import argparse

from e5jax.commands import add_prefix_arguments, resolve_prefixes
from e5jax.errors import E5Error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF / e5jax-export folder, or an e5jax training workdir")
    parser.add_argument("--data-dir", required=True, help="TFDS data dir holding --name")
    parser.add_argument("--name", required=True, help="pair dataset to filter")
    parser.add_argument("--split", default="train", help="split to filter; the others are copied (default train)")
    parser.add_argument("--pool-size", type=int, required=True, help="random passages per ranking (paper: 1M)")
    parser.add_argument("--top-k", type=int, default=2, help="keep a pair whose passage ranks <= k (default 2)")
    parser.add_argument("--output-name", required=True, help="name of the filtered dataset to build")
    add_prefix_arguments(parser)
    parser.add_argument("--max-length", type=int, default=128, help="max tokens per text (default 128)")
    parser.add_argument("--batch-size", type=int, default=256, help="texts per encoder batch (default 256)")
    parser.add_argument("--block-size", type=int, default=4096, help="pairs per saved progress block (default 4096)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pool draw (default 0)")
    parser.add_argument("--shard-size", type=int, default=1_000_000, help="kept pairs per JSONL shard")
    parser.add_argument("--beam-runner", default=None, help="build the output with Apache Beam (e.g. DirectRunner)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output-name dataset")
    parser.add_argument("--pool-embeddings", default=None, metavar="DIR",
                        help="an `e5jax embed --input-format pairs` folder of this split's passages: the pool is "
                             "read from it instead of encoded")
    parser.add_argument("--coordinator", default="", help="multi-host: jax.distributed coordinator HOST:PORT")
    parser.add_argument("--num-processes", type=int, default=0, help="multi-host: number of processes")
    parser.add_argument("--process-id", type=int, default=-1, help="multi-host: this process's id")


def run(args: argparse.Namespace) -> int:
    from e5jax import filter as filt
    from e5jax.train.loop import maybe_initialize_distributed

    resolve_prefixes(args)
    cfg = filt.FilterConfig(
        pool_size=args.pool_size, top_k=args.top_k, split=args.split, query_prefix=args.query_prefix,
        passage_prefix=args.passage_prefix, max_length=args.max_length, batch_size=args.batch_size,
        block_size=args.block_size, seed=args.seed,
    )  # fmt: skip
    if args.shard_size < 1:
        raise E5Error("--shard-size must be >= 1")
    filt.work_dir(args.data_dir, args.output_name)  # a data dir the filter cannot use fails first
    maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    from e5jax.data.ccpairs.builder import dataset_dir

    dataset_dir(args.data_dir, args.name)  # a missing dataset fails before the model loads
    if args.pool_embeddings is not None:
        filt.check_pool_embeddings(args.pool_embeddings, args.model, cfg, args.data_dir, args.name)
    encoder = filt.load_encoder(args.model)
    report = filt.filter_dataset(
        encoder, data_dir=args.data_dir, name=args.name, output_name=args.output_name, cfg=cfg,
        model_id=filt.model_fingerprint(args.model), overwrite=args.overwrite, shard_size=args.shard_size,
        beam_runner=args.beam_runner, pool_embeddings=args.pool_embeddings,
    )  # fmt: skip
    if report is not None:  # process 0
        print(format_report(report))
        run_ = report["this_run"]
        if run_["pairs_ranked"]:
            print(f"  this run: {run_['pairs_ranked']} pairs in {run_['seconds']:.1f} s "
                  f"({run_['pairs_per_second']:.1f} pairs/s)")
        print(f"  report: {filt.work_dir(args.data_dir, args.output_name) / 'report.json'}")
    return 0


def format_report(rep: dict) -> str:
    lines = [f"filter {rep['dataset']}[{rep['split']}] -> {rep['output']}: kept {rep['kept']} of {rep['pairs']} "
             f"pairs ({100 * rep['kept_fraction']:.1f}%), pool {rep['pool_size']}, top-{rep['top_k']}"]
    for src, s in rep["per_source"].items():
        lines.append(f"  {src}: kept {s['kept']} of {s['pairs']} ({100 * s['kept_fraction']:.1f}%)")
    hist = rep["rank_histogram"]
    total = max(1, rep["pairs"])
    lines.append("  rank: " + " | ".join(f"{k}: {v} ({100 * v / total:.1f}%)" for k, v in hist.items()))
    if rep["copied_splits"]:
        lines.append("  copied unchanged: " + ", ".join(f"{k} ({v})" for k, v in rep["copied_splits"].items()))
    return "\n".join(lines)
