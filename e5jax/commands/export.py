"""`e5jax export --workdir DIR --output DIR`: a checkpoint → transformers / sentence-transformers folder."""

from __future__ import annotations


def add_arguments(p):
    p.add_argument("--workdir", required=True, help="training workdir (its newest checkpoint is exported)")
    p.add_argument("--output", required=True, help="folder to write")
    p.add_argument("--step", type=int, default=None, help="export this step instead of the newest")
    p.add_argument("--max-seq-length", type=int, default=512)


def run(args) -> int:
    from e5jax.export import check_output, export
    from e5jax.loading import load

    check_output(args.output)  # before the (slow) restore
    enc = load(args.workdir, step=args.step)
    out = export(enc.model, enc.tokenizer, args.output, max_seq_length=args.max_seq_length)
    print(f"exported to {out}")
    print("load it with:\n" + load_snippet(out))
    return 0


def load_snippet(path) -> str:
    return (f"from sentence_transformers import SentenceTransformer\n"
            f"model = SentenceTransformer({str(path)!r})\n"
            f"emb = model.encode(['how to resize a partition'], prompt_name='query')")
