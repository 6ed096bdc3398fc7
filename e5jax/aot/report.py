"""What a compiled TPU step costs, per chip: memory against HBM, compiled FLOPs
against the model's, the collectives in the program, and a roofline projection.

Collectives are read from `compiled.as_text()` (the TPU HLO after SPMD
partitioning, read by `e5jax.aot.hlo`): each op's result shape gives its bytes,
its replica groups the number of chips it spans, and the trip counts of the
while loops around it (gradient caching's scans) how often it runs per step.
The same loop multiplicity gives a loop-aware count of the dots' FLOPs, which
XLA's cost analysis lacks (it counts a loop body once).
"""

from __future__ import annotations

import math
import re

from e5jax.aot.build import Compiled
from e5jax.aot.hlo import COLLECTIVES, arrays as _arrays, computations as _computations, hbm_traffic, matmul_flops
from e5jax.aot.hlo import multiplicity as _multiplicity, nbytes as _nbytes

_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+ = (.+?) (" + "|".join(COLLECTIVES) + r")(-start)?\(")
_GROUPS_LIST = re.compile(r"replica_groups=\{\{([\d,]*)\}")
_GROUPS_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]")


def _group_size(line: str, chips: int) -> int:
    m = _GROUPS_LIST.search(line)
    if m:
        return max(1, len([x for x in m.group(1).split(",") if x]))
    m = _GROUPS_IOTA.search(line)
    return int(m.group(2)) if m else chips


def _traffic(op: str, nbytes: int, n: int) -> float:
    """Bytes a chip sends for one op on a ring of n chips (result of `nbytes`)."""
    if n <= 1:
        return 0.0
    return {"all-gather": nbytes * (n - 1) / n, "reduce-scatter": nbytes * (n - 1),
            "all-reduce": 2 * nbytes * (n - 1) / n, "all-to-all": nbytes * (n - 1) / n}.get(op, nbytes)


def collectives(hlo: str, chips: int) -> dict:
    """Per kind: ops in the program, executions per step, bytes per step (results), ring traffic;
    and every distinct (kind, array) moved, for checks such as 'no [B x C] logits move'."""
    comps = _computations(hlo)
    mult, loops = _multiplicity(comps)
    out = {k: {"ops": 0, "executions": 0, "bytes": 0, "traffic_bytes": 0.0} for k in COLLECTIVES}
    arrays: dict[tuple, int] = {}
    for name, body in comps:
        m = mult.get(name, 0)
        for line in body:
            hit = _OP.match(line)
            if not hit:
                continue
            type_str, op, start = hit.groups()
            arrs = _arrays(type_str)
            if start and op in ("all-gather", "collective-permute") and len(arrs) > 1:
                arrs = arrs[len(arrs) // 2:]  # (operands, results): count the results
            nbytes = _nbytes(arrs)
            rec = out[op]
            rec["ops"] += 1
            rec["executions"] += m
            rec["bytes"] += nbytes * m
            rec["traffic_bytes"] += _traffic(op, nbytes, _group_size(line, chips)) * m
            for dt, shape in arrs:
                arrays[(op, dt, shape)] = arrays.get((op, dt, shape), 0) + max(m, 1)
    moved = [{"op": op, "dtype": dt, "shape": list(shape), "executions": n}
             for (op, dt, shape), n in sorted(arrays.items(), key=lambda kv: -_nbytes([kv[0][1:]]) * kv[1])]
    return {"by_kind": out, "arrays": moved, "loops": loops}


# ------------------------------------------------------------------ FLOPs


def _tower_texts(c: Compiled) -> dict[str, tuple[int, int]]:
    """tower -> (texts in the global batch, tokens per text) of the synthetic batch."""
    d, b = c.cfg.data, c.batch
    out = {}
    for t in ("query", "passage", "negative"):
        if f"{t}_lengths" in b:
            n = b[f"{t}_lengths"].shape[0]
        elif f"{t}_input_ids" in b:
            n = math.prod(b[f"{t}_input_ids"].shape[:-1])
        else:
            continue
        longest = d.max_query_length if t == "query" else d.max_passage_length
        out[t] = (n, min(c.text_tokens or max(d.max_query_length, d.max_passage_length), longest))
    return out


def _row_blocks(c: Compiled) -> list[tuple[int, int]]:
    """(rows, row length) of every set of rows the encoder computes (padding included)."""
    out = []
    for k, v in c.batch.items():
        if k.endswith("_input_ids"):
            out.append((math.prod(v.shape[:-1]), v.shape[-1]))
    return out


def _architecture(c: Compiled) -> dict:
    """Non-embedding parameter counts and the attention width of the model a Config trains.

    BERT: four H x H projections, a 2-matrix GELU MLP, biases and LayerNorms. Decoders
    (Llama / Mistral / Qwen): grouped-query projections (K and V only num_key_value_heads
    wide), a 3-matrix SwiGLU MLP, RMSNorms; with LoRA the base is frozen and the trainable
    parameters are the adapters' A (r x in) and B (out x r) on the targeted projections."""
    from e5jax.train.state import bert_config, model_family

    arch = bert_config(c.cfg)
    H, I, layers = arch.hidden_size, arch.intermediate_size, arch.num_hidden_layers
    if model_family(c.cfg) != "decoder":
        per_layer = 4 * H * H + 2 * H * I + 9 * H + I  # attention, MLP, biases, norms
        return {"params": layers * per_layer, "adapter_params": 0, "frozen_params": 0, "attention_width": H,
                "layers": layers, "hidden": H}
    q, kv = arch.num_attention_heads * arch.head_dim, arch.num_key_value_heads * arch.head_dim
    shapes = {"q_proj": (H, q), "k_proj": (H, kv), "v_proj": (H, kv), "o_proj": (q, H),
              "gate_proj": (H, I), "up_proj": (H, I), "down_proj": (I, H)}
    per_layer = sum(i * o for i, o in shapes.values()) + 2 * H  # projections + the two RMSNorms
    per_layer += (q + 2 * kv if arch.qkv_bias else 0) + (H if arch.o_bias else 0) + (3 * I if arch.mlp_bias else 0)
    per_layer += 2 * arch.head_dim if arch.qk_norm else 0
    m = c.cfg.model
    rank = m.lora_rank
    adapters = layers * sum(rank * (i + o) for name, (i, o) in shapes.items() if name in m.lora_targets) if rank else 0
    base = layers * per_layer
    return {"params": base + adapters, "adapter_params": adapters, "frozen_params": base if rank else 0,
            "attention_width": q, "layers": layers, "hidden": H}


def flops(c: Compiled) -> dict:
    """Model FLOPs (MFU's count: 6 * non-embedding params * real tokens + attention + the loss's
    logits) and what the configured step computes by design (padding, remat, gradient caching).

    A frozen parameter (LoRA's base) costs 4 FLOPs per token, not 6: forward and the
    backward pass to its input, no gradient of its own."""
    a = _architecture(c)
    n_params, frozen, layers, H = a["params"], a["frozen_params"], a["layers"], a["hidden"]
    towers = _tower_texts(c)
    B = towers["query"][0]
    candidates = B + (towers["negative"][0] if "negative" in towers else 0)
    loss = 6 * B * candidates * H  # logits forward (2BCH) and backward (4BCH)
    tokens = sum(n * L for n, L in towers.values())
    width = a["attention_width"]
    attn = lambda n, L: 4 * layers * width * n * L * L  # noqa: E731  forward: scores + context
    model = (6 * n_params - 2 * frozen) * tokens + 3 * sum(attn(n, L) for n, L in towers.values()) + loss
    rows = _row_blocks(c)
    computed = sum(r * L for r, L in rows)
    unit = 2 * n_params * computed + sum(attn(r, L) for r, L in rows)  # one forward pass
    t = c.cfg.train
    n_chunks = t.batch_size // t.grad_cache_chunk if t.grad_cache_chunk else 0
    extra_fwd = (n_chunks - 1 if t.grad_cache_keep_last else n_chunks) / n_chunks if n_chunks else 0.0
    # forward + backward (2 forwards' worth: input and weight gradients, less the frozen weights')
    passes = 3 + (1 if c.cfg.model.remat else 0) + extra_fwd - 2 * frozen * computed / unit
    return {"non_embedding_params": n_params, "frozen_params": frozen, "adapter_params": a["adapter_params"],
            "tokens": tokens, "computed_tokens": computed,
            "model_flops": model, "expected_flops": passes * unit + loss, "forward_passes": passes,
            "grad_cache_chunks": n_chunks, "remat": c.cfg.model.remat}


# ------------------------------------------------------------------ the report


def _cost(compiled) -> dict:
    ca = compiled.cost_analysis()
    return (ca[0] if isinstance(ca, (list, tuple)) else ca) or {}


def state_shardings(c: Compiled) -> dict[str, str]:
    """The compiled program's input sharding of every state leaf, by path."""
    import jax

    shardings = c.compiled.input_shardings[0][0]
    flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
    return {jax.tree_util.keystr(p, simple=True, separator="/"): _spec(s.spec) for p, s in flat}


def expected_shardings(c: Compiled) -> dict[str, str]:
    """What the rules table gives every state leaf (the state's abstract shardings)."""
    import jax

    flat = jax.tree_util.tree_flatten_with_path(c.state)[0]
    return {jax.tree_util.keystr(p, simple=True, separator="/"): _spec(a.sharding.spec) for p, a in flat}


def _spec(spec) -> str:
    """A PartitionSpec as text, trailing replicated dims dropped (P('fsdp', None) == P('fsdp'))."""
    dims = list(spec)
    while dims and dims[-1] is None:
        dims.pop()
    return "P(" + ", ".join(repr(d) for d in dims) + ")"


def logits_shape_ambiguous(c: Compiled) -> bool:
    """True when C (candidates) equals the hidden size: a [B, C] logits matrix then has the
    shape of the [B, H] candidate embeddings the loss gathers (and of their gradient's
    all-reduce), and the shape check below cannot tell them apart."""
    from e5jax.train.state import bert_config

    towers = _tower_texts(c)
    return towers["query"][0] + (towers["negative"][0] if "negative" in towers else 0) == bert_config(c.cfg).hidden_size


def logits_moved(c: Compiled, moved: list[dict]) -> list[dict]:
    """Collectives whose array holds a [global batch x candidates] matrix (the InfoNCE logits
    must stay row-sharded: each chip scores its own queries against every candidate). An
    all-gather of [B, H] embeddings is expected, and reads as logits when C == H
    (`logits_shape_ambiguous`)."""
    towers = _tower_texts(c)
    B = towers["query"][0]
    C = B + (towers["negative"][0] if "negative" in towers else 0)

    def has(shape):
        dims = list(shape)
        if B not in dims:
            return False
        dims.remove(B)
        dims = [d for d in dims if d != 1]
        return dims == [C]  # exactly [B, C] (a [B, K, H] block of embeddings is not logits)

    return [a for a in moved if has(a["shape"])]


def analyse(c: Compiled, *, steps: int | None = None) -> dict:
    s, chip = c.slice, c.slice.chip
    mem = c.compiled.memory_analysis()
    arg, out, alias, temp = (mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes,
                             mem.temp_size_in_bytes)
    code = mem.generated_code_size_in_bytes
    total = arg + out - alias + temp + code
    cost = _cost(c.compiled)
    text = c.compiled.as_text()
    coll = collectives(text, s.chips)
    dots = matmul_flops(text)
    traffic = hbm_traffic(text)
    f = flops(c)
    compiled_flops = float(cost.get("flops", 0.0))
    hbm_bytes = float(cost.get("bytes accessed", 0.0))
    steps = c.cfg.train.steps if steps is None else steps
    model_chip = f["model_flops"] / s.chips
    got, want = state_shardings(c), expected_shardings(c)
    r = {
        "slice": s.name, "topology": s.topology, "chips": s.chips, "hosts": s.hosts,
        "mesh": dict(c.mesh.shape), "global_batch": c.cfg.train.batch_size, "text_tokens": c.text_tokens,
        "batch": {k: list(v.shape) for k, v in c.batch.items()},
        "lower_s": round(c.lower_s, 2), "compile_s": round(c.compile_s, 2),
        "memory": {"argument_bytes": arg, "output_bytes": out, "alias_bytes": alias, "temp_bytes": temp,
                   "code_bytes": code, "total_bytes": total, "hbm_bytes": chip.hbm_bytes,
                   "headroom_bytes": chip.hbm_bytes - total, "fits": total <= chip.hbm_bytes},
        "flops": {**f, "compiled_flops_per_chip": compiled_flops, "model_flops_per_chip": model_chip,
                  "expected_flops_per_chip": f["expected_flops"] / s.chips,
                  "compiled_over_expected": compiled_flops / (f["expected_flops"] / s.chips),
                  "compiled_over_model": compiled_flops / model_chip, "hbm_bytes_accessed": hbm_bytes,
                  # dots and convolutions, each times the runs of its computation per step
                  "loop_aware_flops_per_chip": float(dots["flops"]),
                  "loop_aware_once_flops_per_chip": float(dots["flops_once"]),
                  "loop_aware_over_expected": dots["flops"] / (f["expected_flops"] / s.chips),
                  "loop_aware_over_model": dots["flops"] / model_chip,
                  # operand + result bytes of each top-level instruction, times its runs per step
                  "hbm_bytes_loop_aware": float(traffic["bytes"]),
                  "hbm_bytes_loop_aware_once": float(traffic["bytes_once"])},
        "collectives": coll["by_kind"],
        "collective_arrays": coll["arrays"],
        "while_loops": coll["loops"],
        "logits_moved": logits_moved(c, coll["arrays"]),
        "logits_shape_ambiguous": logits_shape_ambiguous(c),
        "state_shardings": got,
        "shardings_as_rules": got == want,
    }
    r["roofline"] = roofline(r, chip, steps)
    return r


def roofline(r: dict, chip, steps: int) -> dict:
    """Step time bounds per chip: FLOPs at the bf16 peak, HBM bytes at its bandwidth, ring
    traffic of the collectives at the ICI bandwidth of one torus axis (both directions), all
    overlapped (the step takes the longest). XLA's cost analysis counts a while loop's body
    once. Where the step has loops (gradient caching's scans), FLOPs are the loop-aware count
    of the program's dots and convolutions (`hlo.matmul_flops`; elementwise work left out),
    and HBM bytes are XLA's count times the loops' factor on the program's own traffic
    (`hlo.hbm_traffic`: each top-level instruction's operands + result, per run over once),
    `loop_scale`. Without loops both are XLA's."""
    f = r["flops"]
    compiled = f["compiled_flops_per_chip"]
    loop_aware, once = f.get("loop_aware_flops_per_chip", 0.0), f.get("loop_aware_once_flops_per_chip", 0.0)
    loops = bool(r["while_loops"]) and loop_aware > once > 0
    once_bytes = f["hbm_bytes_loop_aware_once"]
    scale = f["hbm_bytes_loop_aware"] / once_bytes if loops and once_bytes else 1.0
    bytes_ = f["hbm_bytes_accessed"] * scale
    traffic = sum(k["traffic_bytes"] for k in r["collectives"].values())
    ring_bw = chip.ici_bw * 2 / chip.ici_ports
    times = {"compute_s": (loop_aware if loops else compiled) / chip.peak_flops,
             "hbm_s": bytes_ / chip.hbm_bw, "ici_s": traffic / ring_bw}
    step_s = max(times.values())
    return {**times, "step_s": step_s, "bound": max(times, key=times.get)[:-2], "loops": loops,
            "loop_scale": scale, "steps": steps, "run_s": step_s * steps,
            "mfu_bound": f["model_flops_per_chip"] / chip.peak_flops / step_s,
            "peak_flops": chip.peak_flops, "hbm_bw": chip.hbm_bw, "ici_ring_bw": ring_bw}


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def _dur(s: float) -> str:
    return f"{s:.3g} s" if s < 120 else f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min"


def format_report(r: dict) -> str:
    m, f, ro = r["memory"], r["flops"], r["roofline"]
    lines = [
        f"{r['slice']} ({r['topology']}, {r['chips']} chips, {r['hosts']} host(s)), mesh {r['mesh']}, "
        f"global batch {r['global_batch']}; lowered {r['lower_s']} s, compiled {r['compile_s']} s",
        f"memory per chip: arguments {_gib(m['argument_bytes'])} + outputs {_gib(m['output_bytes'])} "
        f"- aliased {_gib(m['alias_bytes'])} + temporaries {_gib(m['temp_bytes'])} + code {_gib(m['code_bytes'])} "
        f"= {_gib(m['total_bytes'])} of {_gib(m['hbm_bytes'])} HBM (headroom {_gib(m['headroom_bytes'])})",
        f"FLOPs per chip: compiled {f['compiled_flops_per_chip']:.3e}; model {f['model_flops_per_chip']:.3e} "
        + (f"(6 x {f['non_embedding_params'] / 1e6:.1f}M params x {f['tokens']:,} tokens + attention + logits); "
           if not f.get("frozen_params") else
           f"(6 x {f['adapter_params'] / 1e6:.2f}M adapter + 4 x {f['frozen_params'] / 1e6:.1f}M frozen params "
           f"x {f['tokens']:,} tokens + attention + logits); ")
        + f"by design {f['expected_flops_per_chip']:.3e} ({f['forward_passes']:.3g} forward passes: "
        f"remat={f['remat']}, {f['grad_cache_chunks']} gradient-cache chunks); "
        f"compiled/design {f['compiled_over_expected']:.3f}, compiled/model {f['compiled_over_model']:.3f}"
        + (f" (XLA's cost analysis counts the body of each of the {len(r['while_loops'])} while loops once; "
           f"trip counts {r['while_loops']})" if r["while_loops"] else ""),
        f"compiled FLOPs, loop-aware (dots): {f['loop_aware_flops_per_chip']:.3e} per chip "
        f"(each op once: {f['loop_aware_once_flops_per_chip']:.3e}); loop-aware/design "
        f"{f['loop_aware_over_expected']:.3f}, loop-aware/model {f['loop_aware_over_model']:.3f}",
        "collectives per step (ops in program / executions / bytes): " + "; ".join(
            f"{k} {v['ops']}/{v['executions']}/{_gib(v['bytes'])}" for k, v in r["collectives"].items() if v["ops"]),
        "logits [batch x candidates] moved by a collective: "
        + (f"cannot tell by shape (candidates = hidden size: the candidate embeddings' gathers have the "
           f"logits' shape; {len(r['logits_moved'])} such arrays); " if r.get("logits_shape_ambiguous") else
           f"{'YES ' + str(r['logits_moved'][:2]) if r['logits_moved'] else 'no'}; ")
        + f"state sharded as the rules table says: {'yes' if r['shardings_as_rules'] else 'NO'}",
        f"roofline per step: compute {_dur(ro['compute_s'])}, HBM {_dur(ro['hbm_s'])}, ICI {_dur(ro['ici_s'])} "
        f"-> {_dur(ro['step_s'])} ({ro['bound']}-bound); {ro['steps']:,} steps {_dur(ro['run_s'])}; "
        f"MFU bound {ro['mfu_bound']:.1%}"
        + (f" (loops: FLOPs loop-aware (dots), XLA's HBM bytes x{ro['loop_scale']:.2f}, the loops' factor on "
           "the program's traffic)"
           if ro["loops"] else ""),
    ]
    return "\n".join(lines)


def does_not_fit(r: dict) -> str:
    m = r["memory"]
    return (f"does not fit: {r['slice']} needs {_gib(m['total_bytes'])} per chip (arguments "
            f"{_gib(m['argument_bytes'])}, temporaries {_gib(m['temp_bytes'])}) of {_gib(m['hbm_bytes'])} HBM; "
            "lower train.batch_size or train.grad_cache_chunk, shard more (mesh.fsdp), or use a larger slice")
