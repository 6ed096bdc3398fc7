"""`e5jax eval-sts`: Pearson / Spearman of cosine similarity on STS pairs.

    e5jax eval-sts --model DIR --pairs pairs.tsv [--prefix "query: "] [--output FILE.json]

The pairs file: sentence1 <TAB> sentence2 <TAB> gold score, header optional.
"""

from __future__ import annotations

import argparse
import json
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (HF / sentence-transformers layout)")
    parser.add_argument("--pairs", required=True, help="TSV: sentence1, sentence2, score (header optional)")
    parser.add_argument("--prefix", default="", help='prepended to both sentences (E5 models: "query: ")')
    parser.add_argument("--max-length", type=int, default=512, help="max tokens per sentence (default 512)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default 64)")
    parser.add_argument("--output", default=None, help="also write the result as JSON here")


def run(args: argparse.Namespace) -> int:
    from e5jax.errors import E5Error
    from e5jax.eval import sts
    from e5jax.model.encoder import Encoder
    from e5jax.paths import check_file, local

    if args.max_length < 2 or args.batch_size < 1:
        raise E5Error(f"--max-length must be >= 2, --batch-size >= 1; got {args.max_length} and {args.batch_size}")
    output = check_file(args.output) if args.output else None  # before the work, not after it
    sts.read_pairs(args.pairs)  # fail on a bad file before loading the model
    if not local(args.model, "--model", "a Hugging Face model folder is read with local-file APIs").is_dir():
        raise E5Error(f"--model {args.model} is not a folder")
    encoder = Encoder.from_pretrained(args.model)
    res = sts.evaluate_sts(encoder.encode, args.pairs, prefix=args.prefix,
                           max_length=args.max_length, batch_size=args.batch_size)
    print(f"{os.path.basename(args.pairs)}: {res['n_pairs']} pairs  "
          f"pearson {100 * res['pearson']:.2f}  spearman {100 * res['spearman']:.2f}")
    if output is not None:
        out = {"model": encoder.name, "pairs": str(args.pairs), "prefix": args.prefix} | res
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0
