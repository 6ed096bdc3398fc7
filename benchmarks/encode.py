"""Encoding throughput: e5jax `Encoder.encode` vs `SentenceTransformer.encode`, fp32 and bf16 each.

    .venv/bin/python benchmarks/encode.py             # 2,000 passages, max length 128, batch 64
    .venv/bin/python benchmarks/encode.py --quick     # 256 passages, 1 timed run each

Same machine, same process, same model (all-MiniLM-L6-v2), same real passages
(Debian package descriptions), same thread count for both engines. Four
engines: sentence-transformers 6.x in fp32 (its default) and in bf16
(`SentenceTransformer(path, model_kwargs={"torch_dtype": torch.bfloat16})`),
e5jax in fp32 and in bf16 compute (e5jax's default is
`e5jax.model.encoder.default_dtype()`: bf16 on hardware with native bf16 —
AVX512-BF16, AMX, TPU, GPU — else fp32). Every engine is warmed up first (e5jax
compiles its shapes there; the compile time is reported apart), then the timed
runs go round-robin over the engines, so a burst of load from elsewhere on the
machine hits all of them alike. Prints the CPU model and its bf16 flags,
passages/s (median, min-max of --repeat runs), the ratios the goals are stated
in, the cosine of each engine's embeddings to sentence-transformers fp32, the
measured matmul peak and each engine's share of it.
"""

from __future__ import annotations

import argparse
import os
import time

from common import FLOP_FORMULA, load_average, machine_note, matmul_peak, median, model_dir, model_flops, passages, print_peak

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2")


def cpu_flags() -> str:
    try:
        flags = next(line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    return ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in BF16_FLAGS)


def padded_lengths(token_lengths, batch_size: int) -> list[int]:
    """Per-sequence computed lengths when texts are sorted by length and each
    batch is padded to its longest (what sentence-transformers computes)."""
    ls = sorted(token_lengths, reverse=True)
    return [chunk[0] for s in range(0, len(ls), batch_size) for chunk in [ls[s:s + batch_size]] for _ in chunk]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="passages")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per engine (median reported)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="torch intra-op threads; XLA:CPU's own pool has one per core (default: the cores)")
    ap.add_argument("--quick", action="store_true", help="256 passages, 1 timed run")
    ap.add_argument("--no-peak", action="store_true", help="skip the matmul-peak measurement")
    ap.add_argument("--padded", action="store_true", help="also time e5jax's padded path (encode(packed=False))")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeat = 256, 1

    import jax
    import numpy as np
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    from e5jax.model.encoder import Encoder, default_dtype

    torch.set_num_threads(args.threads)
    path = model_dir()
    texts = passages(args.n)
    print(f"machine: {machine_note()}")
    print(f"cpu flags: {cpu_flags()}")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}, XLA:CPU pool of {os.cpu_count()} threads), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"sentence-transformers {sentence_transformers.__version__}")
    print(f"{args.n} Debian passages, max length {args.max_length}, batch {args.batch_size}, "
          f"model all-MiniLM-L6-v2, {args.repeat} timed run(s) per engine, round-robin")

    peak = None if args.no_peak else matmul_peak()
    if peak:
        print_peak(peak)

    # ------------------------------------------------ engines
    engines, embeddings, compile_s = {}, {}, {}
    for name, kwargs in (("fp32", {}), ("bf16", {"model_kwargs": {"torch_dtype": torch.bfloat16}})):
        st = SentenceTransformer(str(path), device="cpu", **kwargs)
        st.max_seq_length = args.max_length
        engines[f"sentence-transformers {name}"] = lambda st=st: st.encode(
            texts, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=False)
    e5_names = {"float32": "e5jax fp32", "bfloat16": "e5jax bf16"}
    encoders = {}
    for dtype, name in e5_names.items():
        enc = encoders[dtype] = Encoder.from_pretrained(path, dtype=dtype)
        engines[name] = lambda enc=enc: enc.encode(texts, max_length=args.max_length, batch_size=args.batch_size,
                                                   show_progress=False)
        if args.padded:
            engines[f"{name} padded"] = lambda enc=enc: enc.encode(
                texts, max_length=args.max_length, batch_size=args.batch_size, show_progress=False, packed=False)

    for name, run in engines.items():  # warm-up: allocator, thread pools, e5jax's compiles
        t0 = time.perf_counter()
        embeddings[name] = np.asarray(run(), np.float32)
        compile_s[name] = time.perf_counter() - t0
    times = {name: [] for name in engines}
    for i in range(args.repeat):
        for name, run in engines.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
            print(f"  round {i + 1}: {name:30s} {args.n / times[name][-1]:8.1f} passages/s "
                  f"(load average {load_average()})", flush=True)

    # ------------------------------------------------ work done
    enc = encoders["float32"]
    ids = enc.tokenize(texts, args.max_length)
    lengths = [len(t) for t in ids]
    cfg = enc.model.bert.cfg
    real = model_flops(cfg, lengths, train=False)
    st_flops = model_flops(cfg, padded_lengths(lengths, args.batch_size), train=False)
    rows = [p for packed, _, _ in enc.packed_plan(ids, args.max_length, args.batch_size)
            for p in [packed["input_ids"].shape[-1]] * int(np.prod(packed["input_ids"].shape[:2]))]
    e5_flops = model_flops(cfg, rows, train=False)  # packed rows: attention over the whole row (block-diagonal)
    print(f"tokens: {sum(lengths)} real (mean {np.mean(lengths):.1f}); {FLOP_FORMULA}")
    print(f"model FLOPs: real tokens {real / 1e9:.1f} GFLOP; computed: sentence-transformers "
          f"{st_flops / 1e9:.1f} (padded per batch), e5jax {e5_flops / 1e9:.1f} "
          f"(packed: {len(rows)} rows of {max(rows)})")

    # ------------------------------------------------ report
    ps = {name: args.n / median(ts) for name, ts in times.items()}
    print("throughput (passages/s; median, min-max over the timed runs):")
    for name, ts in times.items():
        flops = e5_flops if name.startswith("e5jax") and "padded" not in name else st_flops
        share = (f", {100 * flops / median(ts) / peak['fp32_peak']:.0f}% of fp32 peak" if peak else "")
        print(f"  {name:30s} {ps[name]:8.1f}   ({args.n / max(ts):.1f}-{args.n / min(ts):.1f}){share}")
    for name in e5_names.values():
        print(f"  {name} first pass (compiles) {compile_s[name]:.1f} s")

    def cos(a, b):
        return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    ref = embeddings["sentence-transformers fp32"]
    for name, emb in embeddings.items():
        if name != "sentence-transformers fp32":
            c = cos(emb, ref)
            print(f"  cosine {name} vs sentence-transformers fp32: min {c.min():.5f}, mean {c.mean():.6f}")

    os.environ.pop("E5JAX_DTYPE", None)  # the library's own choice for this machine
    default = e5_names[default_dtype()]
    st_best = max(("sentence-transformers fp32", "sentence-transformers bf16"), key=ps.get)
    print(f"ratios (passages/s; e5jax default here = {default}, peer's best here = {st_best}):")
    print(f"  e5jax default vs peer best precision: {ps[default] / ps[st_best]:.2f}x   (goal >= 1.0 with native bf16)")
    print(f"  fp32 vs fp32:                         {ps['e5jax fp32'] / ps['sentence-transformers fp32']:.2f}x"
          "   (goal >= 1.0)")
    print(f"  e5jax default vs peer default (fp32): {ps[default] / ps['sentence-transformers fp32']:.2f}x"
          "   (goal >= 1.3)")
    print(f"  bf16 vs bf16:                         {ps['e5jax bf16'] / ps['sentence-transformers bf16']:.2f}x")
    per_round = [times["sentence-transformers bf16"][i] / times[default][i] for i in range(args.repeat)]
    print(f"  default vs peer bf16, per round: {', '.join(f'{r:.2f}' for r in per_round)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
