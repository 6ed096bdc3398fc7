"""Encoding throughput: e5jax `Encoder.encode` vs `SentenceTransformer.encode`.

    .venv/bin/python benchmarks/encode.py             # 2,000 passages, max length 128, batch 64
    .venv/bin/python benchmarks/encode.py --quick     # 256 passages, 1 timed run each

Same machine, same run, same model (all-MiniLM-L6-v2), same real passages
(Debian package descriptions). Each engine runs at its default precision and
both in fp32 (sentence-transformers' default is fp32; e5jax's default is
`e5jax.model.encoder.default_dtype()`: bf16 compute on hardware with native bf16,
such as this CPU's AVX512-BF16, else fp32). e5jax is timed after a
warm-up pass that compiles every bucket shape; the compile time is reported
separately. Prints passages/s (median of --repeat runs), the ratios, the
cosine between e5jax bf16 and fp32 embeddings (and to sentence-transformers),
the measured matmul peak and each engine's % of it.
"""

from __future__ import annotations

import argparse
import os
import time

from common import (
    FLOP_FORMULA, machine_note, median, matmul_peak, model_dir, model_flops, passages, print_peak, spread, timed,
)


def padded_lengths(token_lengths, batch_size: int, buckets=None) -> list[int]:
    """Per-sequence computed lengths when texts are sorted by length and batched
    (sentence-transformers: pad to the batch's longest; e5jax: to a bucket, full batches)."""
    ls = sorted(token_lengths, reverse=True)
    out = []
    for s in range(0, len(ls), batch_size):
        chunk = ls[s:s + batch_size]
        L = chunk[0] if buckets is None else next(b for b in buckets if b >= chunk[0])
        rows = len(chunk) if buckets is None else batch_size
        out += [L] * rows
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="passages")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per engine (median reported)")
    ap.add_argument("--quick", action="store_true", help="256 passages, 1 timed run")
    ap.add_argument("--no-peak", action="store_true", help="skip the matmul-peak measurement")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeat = 256, 1

    import jax
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from e5jax.model.encoder import Encoder, encode_lengths

    path = model_dir()
    texts = passages(args.n)
    print(f"machine: {machine_note()}")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"{args.n} Debian passages, max length {args.max_length}, batch {args.batch_size}, "
          f"model all-MiniLM-L6-v2, {args.repeat} timed run(s) each")

    peak = None if args.no_peak else matmul_peak()
    if peak:
        print_peak(peak)

    # ------------------------------------------------ sentence-transformers
    st = SentenceTransformer(str(path), device="cpu")
    st.max_seq_length = args.max_length

    def st_run():
        return st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=False)

    st.encode(texts[:128], batch_size=args.batch_size)  # warm-up (allocator, thread pool)
    st_times = timed(st_run, args.repeat - 1) if args.repeat > 1 else []
    t0 = time.perf_counter()
    st_emb = st_run()
    st_times.append(time.perf_counter() - t0)

    # ------------------------------------------------ e5jax
    results = {}
    for dtype in ("float32", "bfloat16"):
        enc = Encoder.from_pretrained(path, dtype=dtype)

        def run(enc=enc):
            return enc.encode(texts, max_length=args.max_length, batch_size=args.batch_size, show_progress=False)

        t0 = time.perf_counter()
        emb = run()  # compiles each bucket shape once
        first = time.perf_counter() - t0
        times = timed(run, args.repeat)
        results[dtype] = dict(emb=emb, times=times, compile=max(0.0, first - median(times)))

    # ------------------------------------------------ report
    tok = st.tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]
    lengths = [len(t) for t in tok]
    cfg = Encoder.from_pretrained(path).model.bert.cfg
    st_flops = model_flops(cfg, padded_lengths(lengths, args.batch_size), train=False)
    e5_flops = model_flops(cfg, padded_lengths(lengths, args.batch_size, encode_lengths(args.max_length)),
                           train=False)
    real_flops = model_flops(cfg, lengths, train=False)
    print(f"tokens: {sum(lengths)} real (mean {np.mean(lengths):.1f}); {FLOP_FORMULA}")
    print(f"model FLOPs of the real tokens: {real_flops / 1e9:.1f} GFLOP; computed (with padding): "
          f"sentence-transformers {st_flops / 1e9:.1f}, e5jax {e5_flops / 1e9:.1f}")

    def line(name, times, flops):
        ps = args.n / median(times)
        pct = f", {100 * flops / median(times) / peak['fp32_peak']:.0f}% of fp32 peak (computed FLOPs)" if peak else ""
        print(f"  {name:32s} {ps:8.1f} passages/s   {spread(times)}{pct}")
        return ps

    print("throughput:")
    st_ps = line("sentence-transformers fp32", st_times, st_flops)
    e5_ps = {d: line(f"e5jax {d}", r["times"], e5_flops) for d, r in results.items()}
    for d, r in results.items():
        print(f"  e5jax {d} compile (first pass - timed pass): {r['compile']:.2f} s")

    def cos(a, b):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return np.sum(a * b, axis=1)

    c_bf = cos(results["bfloat16"]["emb"], results["float32"]["emb"])
    c_st = cos(results["float32"]["emb"], st_emb)
    print(f"cosine e5jax bf16 vs fp32: min {c_bf.min():.5f}, mean {c_bf.mean():.6f}")
    print(f"cosine e5jax fp32 vs sentence-transformers: min {c_st.min():.6f}")
    print("ratios (e5jax / sentence-transformers, passages/s):")
    from e5jax.model.encoder import default_dtype

    os.environ.pop("E5JAX_DTYPE", None)  # the library's own choice for this machine
    d = default_dtype()
    print(f"  default precision (e5jax {d} vs ST fp32): {e5_ps[d] / st_ps:.2f}x")
    print(f"  fp32 vs fp32:                               {e5_ps['float32'] / st_ps:.2f}x")
    print(f"  e5jax bf16 vs ST fp32:                      {e5_ps['bfloat16'] / st_ps:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
