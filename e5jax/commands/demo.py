"""`e5jax demo --workdir DIR`: the whole recipe end to end on a small real corpus."""

from __future__ import annotations


def add_arguments(p):
    p.add_argument("--workdir", default="demo_out", help="where every stage keeps its output (reused on rerun)")
    p.add_argument("--steps", type=int, default=60, help="pre-training steps")
    p.add_argument("--batch-size", type=int, default=32, help="global batch (pairs)")
    p.add_argument("--debian-limit", type=int, default=6000, help="Debian packages harvested (0 = no limit)")
    p.add_argument("--heldout-fraction", type=float, default=0.1, help="pairs held out for evaluation, in (0, 1)")
    p.add_argument("--pool-size", type=int, default=1000, help="consistency filter: random passages per pair")
    p.add_argument("--top-k", type=int, default=2, help="consistency filter: keep if own passage ranks <= k")
    p.add_argument("--max-length", type=int, default=64, help="tokens per text")
    p.add_argument("--debian", default=None, help="a decompressed Debian Translation-en file (skips apt)")


def run(args) -> int:
    from e5jax.demo import run_demo

    return run_demo(args.workdir, steps=args.steps, batch_size=args.batch_size, debian_limit=args.debian_limit,
                    heldout_fraction=args.heldout_fraction, pool_size=args.pool_size, top_k=args.top_k,
                    max_length=args.max_length, debian_file=args.debian)
