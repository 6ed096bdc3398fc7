"""`e5jax mine`: hard negatives for fine-tuning, from BEIR-layout inputs.

Examples::

    e5jax mine --bm25 --queries beir/msmarco/queries.jsonl --corpus beir/msmarco/corpus.jsonl \\
        --qrels beir/msmarco/qrels/train.tsv --output ft/msmarco-bm25.jsonl
    e5jax mine --model runs/e5-small-pt/export --queries ... --corpus ... --qrels ... \\
        --output ft/msmarco-dense.jsonl --top-n 100 --rank-window 10:100 --num-negatives 7

Dense mining encodes queries as query-prefix + text and passages as
passage-prefix + "title text" (E5's convention) and ranks them exactly with
the sharded retrieval core; `--bm25` uses bm25s instead. A decoder embedder
(E5-mistral) takes `--query-instruction TASK`: queries get "Instruct: TASK\\nQuery: ",
passages no prefix.
"""

from __future__ import annotations

import argparse
import itertools

from e5jax import mine
from e5jax.commands import add_prefix_arguments, resolve_prefixes
from e5jax.data.finetune import beir
from e5jax.data.finetune.records import Stats, write_records
from e5jax.errors import E5Error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--model", help="encoder for dense mining: an exported folder or a training workdir")
    how.add_argument("--bm25", action="store_true", help="mine with BM25 (bm25s) instead of a model")
    parser.add_argument("--queries", required=True, help="BEIR queries.jsonl")
    parser.add_argument("--corpus", required=True, help="BEIR corpus.jsonl")
    parser.add_argument("--qrels", required=True, help="qrels TSV (query-id, corpus-id, score); score > 0 = positive")
    parser.add_argument("--output", required=True, help="fine-tuning JSONL file to write")
    parser.add_argument("--top-n", type=int, default=100, help="non-positive passages to retrieve per query")
    parser.add_argument(
        "--rank-window", default="10:100", help="LO:HI slice of the positive-free ranking to sample from"
    )
    parser.add_argument("--num-negatives", type=int, default=7, help="negatives per query")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (combined with each query id)")
    add_prefix_arguments(parser, note="dense: ")
    parser.add_argument("--max-length", type=int, default=512, help="dense: max tokens per text")
    parser.add_argument("--batch-size", type=int, default=64, help="dense: texts per encoder batch")
    parser.add_argument("--source", default="mined", help="value of the records' 'source' field")


def run(args: argparse.Namespace) -> int:
    resolve_prefixes(args)
    window = mine.parse_window(args.rank_window)
    if args.top_n < 1 or args.num_negatives < 1:
        raise E5Error("--top-n and --num-negatives must be >= 1")
    stats = Stats()
    queries = beir.read_queries(args.queries, stats)
    corpus = beir.read_corpus(args.corpus, stats)
    qrels = beir.read_qrels(args.qrels, stats)
    if not corpus:
        raise E5Error(f"--corpus {args.corpus} holds no documents")
    if not any(q in queries for q in qrels):  # checked before a model is loaded
        raise E5Error(
            f"no query id of --qrels {args.qrels} ({len(qrels)} queries) is in --queries {args.queries} "
            f"({len(queries)} queries); give the queries and qrels of the same dataset"
        )
    encoder = None
    if args.model:
        from e5jax.loading import load  # JAX only for dense mining

        encoder = load(args.model)
    records = mine.mine(
        queries, corpus, qrels,
        method="bm25" if args.bm25 else "dense",
        top_n=args.top_n, window=window, k=args.num_negatives, seed=args.seed, source=args.source,
        stats=stats, encoder=encoder, query_prefix=args.query_prefix, passage_prefix=args.passage_prefix,
        max_length=args.max_length, batch_size=args.batch_size,
    )  # fmt: skip
    records = iter(records)
    first = next(records, None)
    if first is None:  # an empty output would look like a finished mining run
        seen = stats.nonzero() or "no query with a positive"
        raise E5Error(f"no record mined ({seen}): are the --qrels positives in --corpus {args.corpus}? "
                      f"{args.output} was not written")
    n = write_records(itertools.chain([first], records), args.output, stats)
    print(f"e5jax mine ({'bm25' if args.bm25 else 'dense'}): wrote {n} records to {args.output}")
    print(stats.summary())
    return 0
