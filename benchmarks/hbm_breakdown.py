"""Where a compiled TPU train step's HBM bytes go, by model scope.

`e5jax compile` reports one HBM figure per step: XLA's cost analysis, whose
while-loop bodies count once, times the loops' factor on the program's traffic
(`e5jax.aot.hlo.hbm_traffic`: every top-level instruction's operand + result
bytes, times its runs per step). This script compiles the same step (deviceless,
libtpu on PYTHONPATH) and splits that traffic by the named scope its ops came
from (attention, mlp, layer_norm, ...), forward or backward, by opcode, and by
the arrays moved. It found the two
fixes of 2026-12-06 for E5-base pre-training on v4-32: the fp32 [rows, L, L]
attention-mask bias every layer re-read (now bf16 in bf16 models) and the fp32 copy of
the GELU input XLA materialised (now kept inside each consumer, `fused.gelu`).

    PYTHONPATH=.venv/libtpu JAX_PLATFORMS=cpu .venv/bin/python benchmarks/hbm_breakdown.py \\
        configs/e5_base_pretrain.py v4-32 [--set KEY=VALUE ...] [--hlo OUT.hlo]
"""

from __future__ import annotations

import argparse
import time

from e5jax.aot.hlo import hbm_traffic


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("topology")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--hlo", default="", help="also write the compiled HLO text here")
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()

    from e5jax.aot.build import compile_step
    from e5jax.aot.slices import parse_slice
    from e5jax.config import load_config, parse_overrides, replace

    s = parse_slice(args.topology)
    cfg = replace(load_config(args.config), **parse_overrides(args.set))
    t0 = time.perf_counter()
    text = compile_step(cfg, s).compiled.as_text()
    if args.hlo:
        with open(args.hlo, "w") as f:
            f.write(text)
    r = hbm_traffic(text)
    tot = r["bytes"]
    print(f"{args.config} on {s.name}, compiled in {time.perf_counter() - t0:.0f} s")
    print(f"HBM bytes per step per chip: {tot:.3e} ({tot / s.chip.hbm_bw:.2f} s at {s.chip.hbm_bw / 1e12:.2f} TB/s)")
    for (scope, side), b in r["by_scope"].most_common():
        print(f"  {scope:<11} {side}  {b:.3e}  {100 * b / tot:5.1f}%")
    print("by opcode:")
    for op, b in r["by_op"].most_common(6):
        print(f"  {op:<16} {b:.3e}  {100 * b / tot:5.1f}%")
    print("largest arrays moved:")
    for (role, dt, shape), b in r["by_array"].most_common(args.top):
        print(f"  {role:<7} {dt}{list(shape)}  {b:.3e}  {100 * b / tot:5.1f}%")


if __name__ == "__main__":
    main()
