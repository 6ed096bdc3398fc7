"""Consistency filter end to end: pairs/s of `e5jax.filter` (embedding + ranking).

    .venv/bin/python benchmarks/filter.py                       # 2,048 Debian pairs, pool 1,000, top-2
    .venv/bin/python benchmarks/filter.py --pairs 500 --pool 200 # quick

Real Debian (short -> long description) pairs are built into a TFDS dataset,
then filtered with all-MiniLM-L6-v2 (no prefixes, as that model expects) on
every local device. A warm-up filter of a small dataset compiles the encoder's
bucket shapes first, so the figure is the steady state. Prints:

- pairs/s end to end: the ranking phase (pool draw + embedding the pool and
  its reserve, embedding every pair, `rank_of`, progress records) / pairs;
- pairs/s without the pool: the same minus embedding the 2N pool passages —
  the rate that matters when the pool is 1M and the pairs 1.3B;
- the finalize time (shards + TFDS build) separately.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import time

from common import machine_note, model_dir, pairs


# ------------------------------------------------------------------ consistency filter


class TimedEncoder:
    """Wraps an Encoder; adds up the seconds spent in `encode`, split by what was encoded."""

    def __init__(self, encoder):
        self._enc = encoder
        self.seconds = 0.0

    def encode(self, texts, **kw):
        t0 = time.perf_counter()
        out = self._enc.encode(texts, **kw)
        self.seconds += time.perf_counter() - t0
        return out


def build_pairs(root: pathlib.Path, name: str, n: int, offset: int = 0) -> None:
    from e5jax.data.ccpairs.builder import build_dataset

    shard = root / f"{name}.jsonl"
    shard.write_text("".join(json.dumps({"query": q, "passage": p, "source": "debian"}) + "\n"
                             for q, p in pairs(n, offset)))
    build_dataset([shard], data_dir=root / "tfds", name=name, heldout_fraction=0.0)


def filter_section(args) -> dict:
    import jax

    from e5jax import filter as filt

    cfg = filt.FilterConfig(pool_size=args.pool, top_k=args.top_k, query_prefix="", passage_prefix="",
                            max_length=args.max_length, batch_size=args.batch_size, block_size=args.block_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        build_pairs(root, "warmup", 256, offset=3000)
        build_pairs(root, "bench", args.pairs)
        encoder = filt.load_encoder(model_dir())
        print(f"filter: {args.pairs} pairs, pool {args.pool} (+ reserve {args.pool}), top-{args.top_k}, "
              f"max length {args.max_length}, batch {args.batch_size}, block {args.block_size}; "
              f"jax {jax.__version__} on {jax.local_device_count()} x {jax.devices()[0].platform}")
        t0 = time.perf_counter()
        warm = dataclass_replace(cfg, pool_size=64)
        filt.filter_dataset(encoder, data_dir=root / "tfds", name="warmup", output_name="warmup_f", cfg=warm,
                            model_id="bench", progress=False)
        print(f"  warm-up (compiles): {time.perf_counter() - t0:.1f} s")
        timed = TimedEncoder(encoder)
        # Time the pool's embedding alone: the filter embeds it first, in its own encode calls.
        pool_seconds = {}
        orig_load_pools = filt.load_pools

        def load_pools(*a, **kw):
            before, t = timed.seconds, time.perf_counter()
            out = orig_load_pools(*a, **kw)
            pool_seconds["embed"], pool_seconds["all"] = timed.seconds - before, time.perf_counter() - t
            return out

        filt.load_pools = load_pools
        t0 = time.perf_counter()
        try:
            rep = filt.filter_dataset(timed, data_dir=root / "tfds", name="bench", output_name="bench_f", cfg=cfg,
                                      model_id="bench", progress=False)
        finally:
            filt.load_pools = orig_load_pools
        total = time.perf_counter() - t0
    rank_phase = rep["this_run"]["seconds"]
    out = {
        "pairs": rep["pairs"], "pool": args.pool, "kept_fraction": rep["kept_fraction"],
        "pairs_per_s": rep["pairs"] / rank_phase,
        "pairs_per_s_without_pool": rep["pairs"] / (rank_phase - pool_seconds["all"]),
        "seconds": {"rank_phase": rank_phase, "pool": pool_seconds["all"],
                    "encode_pairs": timed.seconds - pool_seconds["embed"],
                    "rank_and_io": rank_phase - pool_seconds["all"] - (timed.seconds - pool_seconds["embed"]),
                    "finalize": total - rank_phase},
    }
    s = out["seconds"]
    print(f"  end to end (embed + rank): {out['pairs_per_s']:.1f} pairs/s ({rank_phase:.1f} s); "
          f"without the pool: {out['pairs_per_s_without_pool']:.1f} pairs/s")
    print(f"  time: pool (2 x {args.pool} passages) {s['pool']:.1f} s, embedding pairs {s['encode_pairs']:.1f} s, "
          f"ranking + records {s['rank_and_io']:.1f} s, finalize (shards + TFDS build) {s['finalize']:.1f} s")
    print(f"  kept {rep['kept']} of {rep['pairs']} ({rep['kept_fraction']:.1%}); ranks {rep['rank_histogram']}")
    return out


def dataclass_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2048)  # >= 2 x pool distinct passages
    ap.add_argument("--pool", type=int, default=1000)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--devices", type=int, default=0, help="emulate this many CPU devices (0: the real ones)")
    args = ap.parse_args()
    if args.devices:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    print(machine_note())
    filter_section(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
