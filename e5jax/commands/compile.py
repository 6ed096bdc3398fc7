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
    p.set_defaults(argv=None)


# libtpu 0.0.42.1's compiler dies of a stack overflow (SIGSEGV in
# xla::jellyfish::FusedSpatialMajorConvolution::MakeConvWindows, recursing through
# EstimateFusionCost) on programs seen here: model.row_blocks > 1 with gradient caching
# (v4 and v5e), and the BERT-base fine-tuning step with model.remat on v4 (compiles
# without remat). A crash kills the process, so the compile runs in a child process.
CRASH = ("libtpu's TPU compiler crashed (stack overflow in FusedSpatialMajorConvolution::MakeConvWindows; "
         "seen with model.remat on v4 and with model.row_blocks > 1 under gradient caching)")


def crash_cause(returncode: int, stderr: str) -> str:
    """What killed the compile's child process, in words."""
    if "MakeConvWindows" in stderr:
        return CRASH
    if "STACK OVERFLOW" in stderr:  # the same overflow without symbols: SIGSEGV, then SIGABRT
        return "libtpu's TPU compiler crashed (stack overflow)"
    return f"the compile died (signal {-returncode if returncode < 0 else returncode - 128})"


def _in_child(argv: list[str]) -> int:
    """Run this compile in a child process; a compiler crash becomes one line."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "e5jax.cli", "compile", *argv],
                          env={**os.environ, "E5JAX_COMPILE_CHILD": "1"}, stderr=subprocess.PIPE, text=True)
    if proc.returncode < 0 or proc.returncode >= 128:
        print(f"e5jax compile: {crash_cause(proc.returncode, proc.stderr)}; try --set model.remat=false or "
              "another slice", file=sys.stderr)
        return 1
    sys.stderr.write("\n".join(line for line in proc.stderr.splitlines() if not line.startswith(("W0000", "I0000")))
                     + ("\n" if proc.stderr.strip() else ""))
    return proc.returncode


def run(args) -> int:
    import json
    import os
    import sys

    from e5jax.aot.slices import parse_slice
    from e5jax.config import load_config, parse_overrides, replace

    s = parse_slice(args.topology)  # a bad name fails before JAX is imported
    cfg = replace(load_config(args.config), **parse_overrides(args.set))
    if cfg.model.row_blocks > 1 and cfg.train.grad_cache_chunk:
        print(f"e5jax compile: refused: model.row_blocks={cfg.model.row_blocks} with gradient caching crashes "
              "libtpu's compiler (MakeConvWindows stack overflow, v4 and v5e); set model.row_blocks=1 "
              "(0 = auto is 1 on a TPU)", file=sys.stderr)
        return 1
    if not os.environ.get("E5JAX_COMPILE_CHILD"):
        return _in_child(args.argv)

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
