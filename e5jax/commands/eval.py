"""`e5jax eval`: BEIR-format retrieval evaluation of an embedding model.

    e5jax eval --model DIR --beir DATA/scifact --beir DATA/nfcorpus \
        --output results.json [--split test] [--query-prefix "query: "] \
        [--passage-prefix "passage: "] [--query-instruction TASK] [--max-length 512] [--cache-dir DIR] \
        [--corpus-embeddings EMB/scifact --corpus-embeddings EMB/nfcorpus]

Prints a table (values x100) and writes JSON: settings, per-dataset metrics,
their average, and per-query values. --corpus-embeddings reads each corpus from
an `e5jax embed --output-dir` folder (same model, passage prefix, max length)
instead of encoding it.
"""

from __future__ import annotations

import argparse
import json

from e5jax.commands import add_prefix_arguments, resolve_prefixes  # noqa: F401  (resolve_prefixes: also for tests)
from e5jax.errors import E5Error
from e5jax.paths import check_file, local


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model: an exported folder (HF / sentence-transformers layout) or a training workdir")
    parser.add_argument("--beir", required=True, action="append", metavar="DIR",
                        help="BEIR-format dataset folder; repeat for several")
    parser.add_argument("--split", default="test", help="qrels split: qrels/<split>.tsv (default: test)")
    add_prefix_arguments(parser, passages="documents")
    parser.add_argument("--max-length", type=int, default=512, help="max tokens per text (default 512)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default 64)")
    parser.add_argument("--top-k", type=int, default=1000, help="documents retrieved per query (default 1000)")
    parser.add_argument("--cache-dir", default=None, help="cache encoded corpora here (second runs are fast)")
    parser.add_argument("--corpus-embeddings", action="append", metavar="DIR", default=None,
                        help="an `e5jax embed --output-dir` folder of a --beir's corpus.jsonl, used instead of "
                             "encoding it; one per --beir, in the same order")
    parser.add_argument("--output", required=True, help="write the results to this JSON file")


def run(args: argparse.Namespace) -> int:
    from e5jax.eval import beir
    from e5jax.loading import load

    resolve_prefixes(args)

    if args.max_length < 2 or args.batch_size < 1 or args.top_k < 1:
        raise E5Error("--max-length must be >= 2, --batch-size and --top-k >= 1")
    path = check_file(args.output)  # fail before the evaluation, not after it
    beir.check_cache_dir(args.cache_dir)
    for folder in args.beir:  # fail before loading the model
        beir.load_beir(folder, args.split)
    if not local(args.model, "--model", "a Hugging Face model folder is read with local-file APIs").is_dir():
        raise E5Error(f"--model {args.model} is not a folder")
    embedded = args.corpus_embeddings or [None] * len(args.beir)
    if len(embedded) != len(args.beir):
        raise E5Error(f"give one --corpus-embeddings per --beir ({len(args.beir)}), in the same order; "
                      f"got {len(embedded)}")
    from e5jax.embed import check_embedded

    for folder in filter(None, embedded):  # made with this model, prefix, length: checked before loading it
        check_embedded(folder, flag="--corpus-embeddings", model=args.model, prefix=args.passage_prefix,
                       max_length=args.max_length)
    encoder = load(args.model)
    results = []
    for folder, emb_dir in zip(args.beir, embedded):
        r = beir.evaluate_dataset(
            encoder.encode, folder, model_name=encoder.name, split=args.split,
            query_prefix=args.query_prefix, passage_prefix=args.passage_prefix,
            max_length=args.max_length, batch_size=args.batch_size,
            cache_dir=args.cache_dir, top_k=args.top_k, corpus_embeddings=emb_dir,
        )
        src = f" (corpus embeddings from {emb_dir})" if emb_dir else " (corpus embeddings from cache)" if r["cached"] else ""
        left_out = r["docs_without_embedding"]
        print(f"{r['name']}: {r['n_queries']} queries, {r['n_docs']} docs{src}"
              + (f"; {left_out} documents left out: bad lines when embedded (see its manifest.json)"
                 if left_out else ""), flush=True)
        results.append(r)
    avg = beir.average(results)
    print(beir.format_table(results, avg))
    out = {
        "model": encoder.name,
        "settings": {k: getattr(args, k) for k in
                     ("split", "query_prefix", "passage_prefix", "max_length", "batch_size", "top_k")},
        "datasets": {r["name"]: {k: r[k] for k in ("n_docs", "n_queries", "metrics")} for r in results},
        "average": avg,
        "per_query": {r["name"]: r["per_query"] for r in results},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0
