"""`e5jax score-teacher`: fill `teacher_scores` in a fine-tuning records file.

Each record gets [score(query, positive), score(query, neg_1), ...] from a
cross-encoder (a local HF `*ForSequenceClassification` folder). Records that
already carry teacher scores keep them. The output is written atomically.
"""

from __future__ import annotations


def add_arguments(p):
    p.add_argument("--model", required=True, help="local HF *ForSequenceClassification folder (the teacher)")
    p.add_argument("--input", required=True, help="fine-tuning records JSONL (.gz/.bz2/.zst ok)")
    p.add_argument("--output", required=True, help="output JSONL; may be the input file")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per forward pass")
    p.add_argument("--max-length", type=int, default=192, help="tokens of query + passage together (paper: 192)")
    p.add_argument("--label", default=None,
                   help="logit column used as the score when the model has several labels (index or name)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument("--chunk", type=int, default=1024, help="records scored per round (bounds memory)")


def run(args) -> int:
    from e5jax.errors import E5Error
    from e5jax.teacher import score_file

    if args.batch_size < 1 or args.max_length < 8 or args.chunk < 1:
        raise E5Error("--batch-size and --chunk must be >= 1 and --max-length >= 8")
    counts = score_file(args.model, args.input, args.output, batch_size=args.batch_size,
                        max_length=args.max_length, label=args.label, dtype=args.dtype, chunk=args.chunk)
    print(f"wrote {counts['records']} records to {args.output}: {counts['scored']} scored "
          f"({counts['pairs']} pairs), {counts['kept']} kept their precomputed teacher scores")
    return 0
