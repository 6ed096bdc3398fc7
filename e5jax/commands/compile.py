"""`e5jax compile --config configs/X.py --topology v4-32 [--set a.b=value ...] [--json PATH]`.

Compiles, without a TPU, the train step `e5jax train` would run on that slice
and reports per chip memory, FLOPs, collectives and a roofline projection.
Exits 1 with one line when the step does not fit the chip's HBM.
"""

from __future__ import annotations


def add_arguments(p):
    p.add_argument("--config", required=True, help="preset file defining get_config()")
    p.add_argument("--topology", required=True, help="Cloud TPU type: v4-8, v4-32, v5e-16, v5p-64, v6e-8, ...")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, as for e5jax train (repeatable)")
    p.add_argument("--arch", default="", help="HF config.json of the model when model.init is not on this "
                   "machine (default: the preset's model.arch)")
    p.add_argument("--text-tokens", type=int, default=0,
                   help="tokens per text of the synthetic batch (default: each tower's max length, the worst case)")
    p.add_argument("--json", default="", metavar="PATH", help="also write the full report as JSON")


def run(args) -> int:
    import json
    import sys

    from e5jax.aot.slices import parse_slice
    from e5jax.config import load_config, parse_overrides, replace

    s = parse_slice(args.topology)  # a bad name fails before JAX is imported
    cfg = replace(load_config(args.config), **parse_overrides(args.set))

    from e5jax.aot.build import DoesNotFit, compile_step
    from e5jax.aot.report import analyse, does_not_fit, format_report

    try:
        compiled = compile_step(cfg, s, text_tokens=args.text_tokens, arch=args.arch)
    except DoesNotFit as e:
        print(f"e5jax compile: does not fit: {e}", file=sys.stderr)
        return 1
    report = analyse(compiled)
    report["config"] = args.config
    report["overrides"] = list(args.set)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if not report["memory"]["fits"]:
        print(f"e5jax compile: {does_not_fit(report)}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0
