"""Memory of InfoNCE at the paper's batch: 32,768 pairs without the 4.3 GB logit matrix.

One loss + gradient evaluation of `e5jax.loss.info_nce` on random unit
vectors (no model), on one CPU device, with the logit rows processed
`--block-size` at a time and recomputed in the backward pass. Prints the
compile time, the run time, XLA's planned temporary memory and the process's
peak RSS. Run:

    .venv/bin/python benchmarks/loss_memory.py                   # B=32768, D=384, block 1024
    .venv/bin/python benchmarks/loss_memory.py --block-size 0    # dense, for comparison (large!)
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from e5jax.loss import info_nce  # noqa: E402

GIB = 2**30


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32_768)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--temperature", type=float, default=0.01)
    args = ap.parse_args()
    b, d = args.batch, args.dim

    kq, kp = jax.random.split(jax.random.key(0))
    q = jax.random.normal(kq, (b, d), jnp.float32)
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    # Positives weakly correlated with their queries (cosine ~0.16), so that at
    # tau = 0.01 the loss is far from 0 and all 32k candidates matter.
    p = q + 6.0 * jax.random.normal(kp, (b, d), jnp.float32) / jnp.sqrt(d)
    p = p / jnp.linalg.norm(p, axis=-1, keepdims=True)
    jax.block_until_ready((q, p))
    rss_inputs = peak_rss_gib()

    def loss(q, p):
        return info_nce(q, p, temperature=args.temperature, block_size=args.block_size)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    t0 = time.perf_counter()
    compiled = step.lower(q, p).compile()
    t_compile = time.perf_counter() - t0
    mem = compiled.memory_analysis()

    t0 = time.perf_counter()
    (value, metrics), grads = compiled(q, p)
    jax.block_until_ready((value, grads))
    t_run = time.perf_counter() - t0

    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.device_count()} device)")
    print(f"B={b} D={d} block_size={args.block_size} tau={args.temperature}")
    print(f"full fp32 logit matrix would be {b * b * 4 / GIB:.2f} GiB")
    print(
        f"loss={float(value):.4f} accuracy={float(metrics['accuracy']):.4f} "
        f"pos={float(metrics['pos_score']):.4f} neg={float(metrics['neg_score']):.4f}"
    )
    if mem is not None:
        print(f"XLA temp buffers: {mem.temp_size_in_bytes / GIB:.3f} GiB")
    print(f"compile {t_compile:.1f} s, loss+grad {t_run:.1f} s")
    print(f"peak RSS: {rss_inputs:.2f} GiB after inputs, {peak_rss_gib():.2f} GiB overall")


if __name__ == "__main__":
    main()
