"""Where a compiled step's time goes, op by op, from a `jax.profiler` trace.

A GPU lease is short: one traced step has to say which kernels hold the time.
This reads the trace's XSpace (`*.xplane.pb`), sums the duration of every
event that carries an `hlo_op` stat (on a GPU: the kernels of each stream,
tagged by XLA with the HLO instruction they run; on a CPU: the thunks), and
classes each instruction from the compiled HLO text (`compiled.as_text()`):
matmul (a dot, a cuBLAS/cuDNN call, or a fusion holding a dot), reduction,
elementwise, copy/transpose, collective. The JAX op name in the HLO metadata
says which part of the model an op came from.

    python benchmarks/profile_ops.py TRACE_DIR [--hlo HLO.txt] [--top 30]

`benchmarks/gpu_step.py run --profile DIR` writes one traced step and its
HLO text per variant and prints this summary (module docstring there).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os

from e5jax.aot.hlo import COLLECTIVES as _KINDS, parse_hlo  # the one HLO-text reader (also e5jax compile's)

COLLECTIVES = set(_KINDS) | {k + "-start" for k in ("all-reduce", "all-gather", "collective-permute")}
MOVES = {"copy", "transpose", "bitcast", "parameter", "constant", "broadcast", "reshape", "slice",
         "dynamic-slice", "dynamic-update-slice", "concatenate", "pad", "tuple", "get-tuple-element"}


def _ops_within(comps: dict, name: str, seen: set | None = None) -> set[str]:
    seen = set() if seen is None else seen
    if name in seen or name not in comps:
        return set()
    seen.add(name)
    ops = set(comps[name]["ops"])
    for c in comps[name]["calls"]:
        ops |= _ops_within(comps, c, seen)
    return ops


def classify(name: str, hlo: dict | None) -> str:
    """A coarse class for HLO instruction `name` (an event's hlo_op)."""
    info = (hlo or {}).get("instrs", {}).get(name)
    if info is None:
        low = name.lower()
        for key, cls in (("gemm", "matmul"), ("dot", "matmul"), ("cudnn", "matmul"), ("fmha", "attention"),
                         ("all-reduce", "collective"), ("all-gather", "collective"), ("copy", "copy/transpose"),
                         ("transpose", "copy/transpose"), ("reduce", "reduction"), ("fusion", "fusion (unknown)")):
            if key in low:
                return cls
        return "other"
    opcode = info["opcode"]
    if opcode in COLLECTIVES or opcode.endswith("-done") and opcode.removesuffix("-done") + "-start" in COLLECTIVES:
        return "collective"
    ops = {opcode}
    if "target" in info:
        ops.add("custom-call:" + info["target"])
    if "calls" in info:
        ops |= _ops_within(hlo["comps"], info["calls"])
    targets = " ".join(o for o in ops if o.startswith("custom-call:")).lower()
    if "fmha" in targets or "attention" in targets:
        return "attention (fused)"
    if {"dot", "convolution"} & ops or "gemm" in targets or "matmul" in targets:
        return "matmul"
    if ops & COLLECTIVES:
        return "collective"
    if {"reduce", "reduce-window", "scatter", "sort"} & ops:
        return "reduction"
    if ops <= MOVES | {"fusion"}:
        return "copy/transpose"
    return "elementwise"


def find_xplane(trace_dir: str) -> str:
    found = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not found:
        raise SystemExit(f"no *.xplane.pb under {trace_dir}: trace a step with jax.profiler.trace(DIR) first")
    return found[-1]


def op_times(xplane: str) -> dict:
    """{"ops": {hlo_op: [total_ns, count]}, "lines": {plane/line: total_ns}, "source": ...}.

    Device planes (`/device:GPU:0`, `/device:TPU:0`) when the trace has events
    with `hlo_op` there; else the host's (XLA:CPU runs its thunks on host threads)."""
    import jax

    pd = jax.profiler.ProfileData.from_file(xplane)
    per_plane: dict[str, dict] = {}
    for plane in pd.planes:
        ops: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
        lines: dict[str, float] = collections.defaultdict(float)
        for line in plane.lines:
            for ev in line.events:
                stats = dict(ev.stats)
                op = stats.get("hlo_op")
                if not op or isinstance(op, (int, float)):
                    continue
                ops[op][0] += ev.duration_ns
                ops[op][1] += 1
                lines[line.name] += ev.duration_ns
        if ops:
            per_plane[plane.name] = {"ops": dict(ops), "lines": dict(lines)}
    if not per_plane:
        raise SystemExit(f"{xplane}: no event carries an hlo_op stat (was a jitted step traced?)")
    device = [p for p in per_plane if p.startswith("/device:")]
    chosen = device or list(per_plane)
    ops: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    lines = {}
    for p in chosen:
        for op, (ns, n) in per_plane[p]["ops"].items():
            ops[op][0] += ns
            ops[op][1] += n
        lines.update({f"{p} {name}": ns for name, ns in per_plane[p]["lines"].items()})
    return {"ops": dict(ops), "lines": lines, "source": ", ".join(chosen)}


def summarise(trace_dir: str, hlo_text: str | None = None, top: int = 30, steps: int = 1) -> dict:
    """Per-class and top-op device time (ms per step) of a traced run."""
    times = op_times(find_xplane(trace_dir))
    hlo = parse_hlo(hlo_text) if hlo_text else None
    by_class: dict[str, float] = collections.defaultdict(float)
    rows = []
    for op, (ns, n) in times["ops"].items():
        cls = classify(op, hlo)
        by_class[cls] += ns
        info = (hlo or {}).get("instrs", {}).get(op, {})
        rows.append(dict(op=op, cls=cls, ms=ns / 1e6 / steps, calls=n // steps, op_name=info.get("op_name", "")))
    rows.sort(key=lambda r: -r["ms"])
    total = sum(by_class.values())
    return dict(source=times["source"], total_ms=total / 1e6 / steps,
                classes={c: ns / 1e6 / steps for c, ns in sorted(by_class.items(), key=lambda kv: -kv[1])},
                lines={k: v / 1e6 / steps for k, v in times["lines"].items()}, top=rows[:top])


def format_summary(s: dict) -> str:
    out = [f"op time from {s['source']}: {s['total_ms']:.1f} ms per step (sum over streams/threads)"]
    for c, ms in s["classes"].items():
        out.append(f"  {c:<20} {ms:9.1f} ms  {100 * ms / max(s['total_ms'], 1e-9):5.1f}%")
    out.append("  by line: " + ", ".join(f"{k} {v:.1f} ms" for k, v in sorted(s["lines"].items(), key=lambda kv: -kv[1])[:6]))
    out.append(f"  top {len(s['top'])} ops:")
    for r in s["top"]:
        out.append(f"    {r['ms']:8.2f} ms  x{r['calls']:<4} {r['cls']:<16} {r['op'][:40]:<40} {r['op_name'][-90:]}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace_dir")
    ap.add_argument("--hlo", default="", help="the compiled step's HLO text (default: TRACE_DIR/hlo.txt if there)")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--steps", type=int, default=1, help="steps in the trace (figures are per step)")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    hlo_path = a.hlo or os.path.join(a.trace_dir, "hlo.txt")
    hlo_text = open(hlo_path).read() if os.path.exists(hlo_path) else None
    s = summarise(a.trace_dir, hlo_text, a.top, a.steps)
    print(format_summary(s))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(s, f, indent=1)


if __name__ == "__main__":
    main()
