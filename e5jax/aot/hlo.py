"""One reader of compiled HLO text (`compiled.as_text()`), shared by the compile
report (`e5jax.aot.report`) and the GPU op profile (`benchmarks/profile_ops.py`).

It knows: computations and their instructions, which computation calls which
(while bodies and conditions, fusions, branches, reducers), how many times each
computation runs per step (while loops' trip counts), and the FLOPs of every
dot and convolution from operand / result shapes. TPU programs print no operand
shapes and express matmuls as convolutions (batched matmuls with base dilation),
so shapes come from a module-wide name -> type table and a convolution's MACs
are counted tap by tap over its window.
"""

from __future__ import annotations

import collections
import math
import re

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8}

# `%name = type opcode(...)`; `ROOT` and the `%` are optional across XLA versions.
INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<rest>.*)$")
# The first `opcode(` of an instruction's right-hand side (layouts' `T(8,128)` are upper case).
OPCODE = re.compile(r"(?<![\w\-.])(?P<op>[a-z][a-z0-9\-]*)\(")
ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
CALLEE = re.compile(r"\b(body|condition|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
TARGET = re.compile(r'custom_call_target="(?P<t>[^"]+)"')
OPNAME = re.compile(r'op_name="(?P<n>[^"]+)"')
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CONST = re.compile(r"= s32\[\]\S* constant\((\d+)\)")
_DIMS = re.compile(r"(lhs_contracting_dims|lhs_batch_dims)=\{([\d,]*)\}")


def arrays(type_str: str) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, shape) of every array in a type (a tuple type has several)."""
    return [(dt, tuple(int(d) for d in dims.split(",") if d)) for dt, dims in ARRAY.findall(type_str)
            if dt in DTYPE_BYTES]


def nbytes(arrs) -> int:
    return sum(DTYPE_BYTES[dt] * math.prod(shape) for dt, shape in arrs)


def computations(hlo: str) -> list[tuple[str, list[str]]]:
    """(name, instruction lines) per computation, in the order printed (callees first, ENTRY last)."""
    comps, name, body = [], None, []
    for line in hlo.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            name = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            body = []
        elif line.startswith("}") and name is not None:
            comps.append((name, body))
            name = None
        elif name is not None:
            body.append(line)
    return comps


def instruction(line: str) -> tuple[str, str, str, str] | None:
    """(name, result type, opcode, text after the opcode's parenthesis) of one instruction line."""
    m = INSTR.match(line)
    if not m:
        return None
    rest = m.group("rest")
    op = OPCODE.search(rest)
    if not op:
        return None
    return m.group("name"), rest[:op.start()].strip(), op.group("op"), rest[op.end():]


def trip_counts(comps) -> dict[str, int]:
    """condition computation -> its loop's trip count: `i < N` against a constant (jax's scans
    count from 0 by 1); libtpu's HLO carries no known_trip_count."""
    out = {}
    for name, body in comps:
        consts = [int(m.group(1)) for line in body for m in [_CONST.search(line)] if m]
        if any("direction=LT" in line for line in body) and len(consts) == 1:
            out[name] = consts[0]
    return out


def multiplicity(comps) -> tuple[dict[str, int], list[int]]:
    """How many times each computation runs per step (a while body: its loop's trip count times
    its caller's; a fusion's or reducer's computation: as often as its caller), and the trip
    count of every while loop."""
    mult = {name: 0 for name, _ in comps}
    if comps:
        mult[comps[-1][0]] = 1  # ENTRY is printed last
    trips = trip_counts(comps)
    loops = []
    for name, body in reversed(comps):  # callers before callees
        m = mult.get(name, 0)
        if not m:
            continue
        for line in body:
            known = _TRIP.search(line)
            callees = dict(CALLEE.findall(line))
            trip = int(known.group(1)) if known else trips.get(callees.get("condition", ""), 1)
            if "body" in callees:
                loops.append(trip)
            for kind, callee in callees.items():
                if callee in mult:
                    mult[callee] += m * (trip if kind == "body" else 1)
            for branches in BRANCHES.findall(line):
                for callee in (b.strip().lstrip("%") for b in branches.split(",")):
                    if callee in mult:
                        mult[callee] += m
    return mult, loops


# ------------------------------------------------------------------ FLOPs of dots and convolutions


def _window(text: str) -> list[dict]:
    """A convolution's window={size=.. stride=.. pad=.. lhs_dilate=.. rhs_dilate=..}, per spatial dim."""
    m = re.search(r"window=\{([^}]*)\}", text)
    fields = dict(f.split("=", 1) for f in m.group(1).split()) if m else {}
    size = [int(x) for x in fields.get("size", "").split("x") if x]
    n = len(size)

    def per_dim(key, default):
        v = fields.get(key)
        return [int(x) for x in v.split("x")] if v else [default] * n

    pads = [tuple(int(x) for x in p.split("_")) for p in fields["pad"].split("x")] if "pad" in fields else [(0, 0)] * n
    return [dict(size=size[d], stride=per_dim("stride", 1)[d], pad_lo=pads[d][0],
                 lhs_dilate=per_dim("lhs_dilate", 1)[d], rhs_dilate=per_dim("rhs_dilate", 1)[d]) for d in range(n)]


def _taps(in_size: int, out_size: int, w: dict) -> int:
    """Multiply-adds along one spatial dim, summed over its output positions: window taps that
    land on an input element (not on padding, not on a hole of the lhs dilation). TPU programs
    write batched matmuls as convolutions whose lhs dilation equals the window, where only one
    tap in `size` is real: counting every tap would overstate them by that factor."""
    span = (in_size - 1) * w["lhs_dilate"] + 1
    if w["lhs_dilate"] == 1 and w["pad_lo"] == 0 and (out_size - 1) * w["stride"] + (w["size"] - 1) * w["rhs_dilate"] < span:
        return out_size * w["size"]  # a plain valid convolution: every tap is real
    total = 0
    for p in range(out_size):
        for k in range(w["size"]):
            x = p * w["stride"] - w["pad_lo"] + k * w["rhs_dilate"]
            total += 0 <= x < span and x % w["lhs_dilate"] == 0
    return total


def conv_flops(out_shape, lhs_shape, rhs_shape, rest: str) -> int:
    """2 x multiply-adds of a convolution: output batch x output features x input features per
    group (the kernel's `i` dim) x the real taps of each spatial dim."""
    m = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", rest)
    if not m:
        return 0
    lhs_l, rhs_l, out_l = m.groups()
    win = _window(rest)
    spatial = 1
    for d, w in enumerate(win):
        c = str(d)
        spatial *= _taps(lhs_shape[lhs_l.index(c)], out_shape[out_l.index(c)], w)
    return 2 * out_shape[out_l.index("b")] * out_shape[out_l.index("f")] * rhs_shape[rhs_l.index("i")] * spatial


def _args(rest: str) -> str:
    """The operand list: `rest` up to the parenthesis that closes the opcode's."""
    depth = 0
    for i, ch in enumerate(rest):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth < 0:
            return rest[:i]
    return rest


def _names(args: str) -> list[str]:
    """Operand names of an operand list (`/*index=5*/` comments and `%` dropped)."""
    return [a.split()[-1].lstrip("%") for a in re.sub(r"/\*.*?\*/", "", args).split(",") if a.strip()]


def dot_flops(out_shape, lhs_shape, rest: str) -> int:
    """2 x result elements x the product of the lhs contracting dims."""
    dims = dict(_DIMS.findall(rest))
    contracting = [int(x) for x in dims.get("lhs_contracting_dims", "").split(",") if x]
    return 2 * math.prod(out_shape) * math.prod(lhs_shape[d] for d in contracting)


def matmul_flops(hlo: str) -> dict:
    """FLOPs of every dot and convolution in the program, each counted as often as its
    computation runs per step (`multiplicity`): what XLA's cost analysis would give if it
    multiplied while-loop bodies by their trip counts. Elementwise work is left out (it is a
    few percent of a transformer's FLOPs and none of the roofline's compute bound).
    Returns {"flops": per step, "flops_once": every op once (trip counts ignored),
    "ops": dots + convolutions in the program, "by_computation": {name: flops per run}}."""
    comps = computations(hlo)
    mult, _ = multiplicity(comps)
    types: dict[str, str] = {}
    for _, body in comps:
        for line in body:
            ins = instruction(line)
            if ins:
                types[ins[0]] = ins[1]
    total = once = n_ops = 0
    per_comp: dict[str, int] = {}
    for name, body in comps:
        f = 0
        for line in body:
            ins = instruction(line)
            if not ins or ins[2] not in ("dot", "convolution"):
                continue
            _, type_str, op, rest = ins
            args = _args(rest)
            out = arrays(type_str)
            inline = arrays(args)  # XLA prints operand types on some backends (not on TPU)
            shapes = ([[a] for a in inline[:2]] if len(inline) >= 2 else
                      [arrays(types.get(o, "")) for o in _names(args)[:2]])
            if not out or len(shapes) < 2 or not all(shapes):
                raise ValueError(f"cannot read the shapes of {op} {ins[0]} in the HLO text")
            if op == "dot":
                f += dot_flops(out[0][1], shapes[0][0][1], rest)
            else:
                f += conv_flops(out[0][1], shapes[0][0][1], shapes[1][0][1], rest)
            n_ops += 1
        if f:
            per_comp[name] = f
            total += f * mult.get(name, 0)
            once += f
    return {"flops": total, "flops_once": once, "ops": n_ops, "by_computation": per_comp}


# ------------------------------------------------------------------ per-instruction table (profiles)


def parse_hlo(text: str) -> dict[str, dict]:
    """Instruction name -> {opcode, calls, target, op_name}, and computation
    name -> {"ops": set of opcodes inside, "calls": computations it calls}."""
    instrs: dict[str, dict] = {}
    comps: dict[str, dict] = {}
    for cname, body in computations(text):
        current = comps.setdefault(cname, {"ops": set(), "calls": set()})
        for line in body:
            ins = instruction(line)
            if not ins:
                continue
            name, _, opcode, rest = ins
            info = {"opcode": opcode}
            called = dict(CALLEE.findall(rest))
            if "calls" in called:
                info["calls"] = called["calls"]
            if t := TARGET.search(rest):
                info["target"] = t.group("t")
            if n := OPNAME.search(rest):
                info["op_name"] = n.group("n")
            instrs[name] = info
            current["ops"].add(opcode)
            if "calls" in info:
                current["calls"].add(info["calls"])
            if "target" in info:
                current["ops"].add("custom-call:" + info["target"])
    return {"instrs": instrs, "comps": comps}


# ------------------------------------------------------------------ HBM traffic

# Instructions that move no data of their own (aliases, control flow, tuple plumbing).
_NO_TRAFFIC = {"parameter", "tuple", "get-tuple-element", "bitcast", "constant", "while", "call", "conditional",
               "after-all", "partition-id", "replica-id", "opt-barrier"}
SCOPES = ("dropout", "attention", "mlp", "layer_norm", "rms_norm", "embeddings", "lora", "loss", "optimizer")


def hbm_traffic(hlo: str) -> dict:
    """HBM bytes per step of a compiled program: every top-level instruction's operand +
    result bytes (fusion bodies and reducers run in on-chip memory and count nothing), times
    the runs of its computation per step (`multiplicity`).

    XLA's own "bytes accessed" counts a while body once; this counts it per trip, but takes
    whole operands where a fusion reads part of one (a gather, a slice), so it runs above
    XLA's: the roofline uses only its ratio, per trip over once, as the loops' factor.
    Returns {"bytes", "bytes_once" (each instruction of the step once), "by_scope"
    {(named scope, "fwd"|"bwd"): bytes}, "by_op" {opcode: bytes}, "by_array"
    {("read"|"written", dtype, shape): bytes}}."""
    comps = computations(hlo)
    mult, _ = multiplicity(comps)
    types, inner = {}, set()
    for _, body in comps:
        for line in body:
            ins = instruction(line)
            if ins:
                types[ins[0]] = ins[1]
                inner.update(v for k, v in CALLEE.findall(ins[3]) if k in ("calls", "to_apply"))
    by_scope, by_op, by_array = collections.Counter(), collections.Counter(), collections.Counter()
    once = 0
    for cname, body in comps:
        m = mult.get(cname, 0)
        if not m or cname in inner:  # not run by the step, or run on chip inside its caller
            continue
        for line in body:
            ins = instruction(line)
            if not ins or ins[2] in _NO_TRAFFIC:
                continue
            _, typ, op, rest = ins
            out = arrays(typ)
            operands = [a for o in _names(_args(rest)) for a in arrays(types.get(o, ""))]
            n = OPNAME.search(rest)
            name = n.group("n") if n else ""
            scope = next((s for s in SCOPES if f"/{s}/" in name or name.endswith("/" + s)), "other")
            b = nbytes(out) + nbytes(operands)
            once += b
            by_scope[(scope, "bwd" if "transpose(" in name else "fwd")] += b * m
            by_op[op] += b * m
            for role, arrs in (("written", out), ("read", operands)):
                for a in arrs:
                    by_array[(role, a[0], a[1])] += nbytes([a]) * m
    return {"bytes": sum(by_scope.values()), "bytes_once": once, "by_scope": by_scope, "by_op": by_op,
            "by_array": by_array}
