"""The E5-base pre-training step on one GPU: step time and model FLOPs utilisation (MFU).

Two phases, because a GPU lease is short and packing 65,536 texts is host work:

    # here (CPU): tokenise and pack 32,768 real pairs the way the pipeline
    # does (`pack_tokens`: queries and passages in shared rows), in packing
    # groups of 4,096 (the preset's chunk) and of 1,024
    .venv/bin/python benchmarks/gpu_step.py prepare --out .gpu/b4096.npz --tokenizer-out .gpu/tokenizer
    .venv/bin/python benchmarks/gpu_step.py prepare --out .gpu/b1024.npz --chunk 1024

    # on the GPU machine (carry .gpu): time the preset's step and the plain one
    python3 benchmarks/gpu_step.py run --parallel --json $OUT/gpu_step.json

`run` builds `configs/e5_base_pretrain.py` as written (BERT-base, bf16, packed
rows, 32,768 pairs, gradient caching in chunks of 4,096, per-layer remat,
blocked loss, dropout 0.1), except: one device (mesh data=1, fsdp=1), and
random initialisation from the BERT-base architecture
(`configs/bert_base_uncased.json`; MFU does not depend on the weights' values,
and the lease machine cannot download bert-base-uncased). The step is the
library's: `create_state` + `make_train_step` jitted by `loop.jit_steps`,
compiled ahead of time, one warm-up step, then the median of timed steps.

Variants, `MODE:BATCH_FILE:remat|noremat[:OPTION...]`, each in its own process so
that one running out of memory cannot hide the others (DEFAULT_VARIANTS):

* ``cache:.gpu/b4096.npz:remat``   — the preset as written;
* ``plain:.gpu/b1024.npz:noremat`` — no gradient caching: the first 1,024-pair
                                     packing group (queries and passages share
                                     the rows, as the pipeline packs them);
* options (fields 4 on, any number): ``at0`` = `--xla_gpu_autotune_level=0`
  (no GEMM autotuning), ``cublas`` = `--xla_gpu_enable_triton_gemm=false`
  (every GEMM through cuBLAS), ``nocmdbuf`` = `--xla_gpu_enable_command_buffer=`
  (no CUDA graphs, so a trace shows each kernel with its HLO op), ``nodrop``
  = dropout 0 (what the hash dropout costs).

`run --profile DIR` traces one more step of each variant after the timed ones
and writes, per variant, `DIR/variant-I/` (the XSpace trace, the compiled HLO
text `hlo.txt` and `summary.json`), and prints where the step's device time
goes: per class (matmul, elementwise, reduction, copy/transpose, collective)
and the top ops with the model part they come from (the encoder names its
parts with `jax.named_scope`: embeddings, attention, mlp, layer_norm, dropout,
loss, optimizer). `benchmarks/profile_ops.py DIR/variant-I` re-reads a trace
here. A diagnostic lease (the plain step, profiled, against its variants):

    XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 python3 benchmarks/gpu_step.py run --parallel --steps 3 \
        --compile-deadline 240 --timeout 420 --profile $OUT/profile --json $OUT/gpu_step.json \
        --variants plain:.gpu/b1024.npz:noremat:nocmdbuf,plain:.gpu/b1024.npz:noremat,plain:.gpu/b1024.npz:noremat:nodrop,plain:.gpu/b1024.npz:noremat:cublas

`--parallel` compiles all variants at once (compilation is host work), then
times them one at a time under a file lock, after every worker has compiled or
`--compile-deadline` has passed (stragglers are killed then, so nothing
compiles or autotunes on the device while another variant is timed).

Figures (README, "GPU"): one NVIDIA H200, 2026-11-27, with

    XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 python3 benchmarks/gpu_step.py run --parallel --no-peak \
        --steps 2 --compile-deadline 330 --timeout 455 --json $OUT/gpu_step.json \
        --variants cache:.gpu/b4096.npz:remat,cache:.gpu/b4096.npz:remat:at0,cache:.gpu/b1024.npz:remat:at0

gave the preset 8.65 s per step, MFU 17.5% (116 s compile, 24.8 GiB peak); an
earlier call gave the plain 1,024-pair step MFU 27.6% (both with each tower packed
in rows of its own, before the towers shared rows).

`worker --compile-only` compiles one variant for the local backend and prints
the size of its temporary buffers (check a variant's memory before a lease):

    .venv/bin/python benchmarks/gpu_step.py worker --compile-only --mode plain --remat remat \
        --batch-file .gpu/b1024.npz

On this CPU the plain 1,024-pair BERT-base step in bf16 needs 91.0 GiB without
remat and 85.1 GiB with it (README: why remat saves little there); the H200
compile of the preset needed 23.4 GiB.

MFU = model FLOPs / step time / peak. Model FLOPs = 6 · non-embedding params ·
real tokens + 12 · layers · hidden · Σ(text length²) — the useful work of one
forward and backward; gradient caching's extra forward, remat's recompute and
packed-row padding are *not* counted. The peak is the datasheet's dense bf16
rate of the H100/H200 SXM (989 TFLOP/s); the MFU against a bf16 matmul rate
measured in the same run is printed too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import ROOT, model_flops, pairs  # noqa: E402

# The preset as written (chunk 4,096, remat), then the plain step on one 1,024-pair group.
DEFAULT_VARIANTS = "cache:.gpu/b4096.npz:remat,plain:.gpu/b1024.npz:noremat"
DATASHEET_BF16 = 989.4e12  # H100 / H200 SXM dense bf16, FLOP/s
ARCH = ROOT / "configs" / "bert_base_uncased.json"
PRESET = ROOT / "configs" / "e5_base_pretrain.py"


def preset_config(tokenizer: str, *, batch: int | None = None, chunk: int | None = None,
                  remat: bool | None = None, arch: str = str(ARCH), dropout: float | None = None):
    """The E5-base preset on one device, randomly initialised from `arch`."""
    from e5jax.config import load_config

    cfg = load_config(str(PRESET))
    model = dataclasses.replace(cfg.model, init="", arch=arch, tokenizer=tokenizer,
                                remat=cfg.model.remat if remat is None else remat,
                                dropout=cfg.model.dropout if dropout is None else dropout)
    train = dataclasses.replace(cfg.train, batch_size=batch or cfg.train.batch_size,
                                grad_cache_chunk=cfg.train.grad_cache_chunk if chunk is None else chunk)
    mesh = dataclasses.replace(cfg.mesh, data=1, fsdp=1, tensor=1)
    return dataclasses.replace(cfg, model=model, train=train, mesh=mesh)


# ============================================================ prepare (CPU)


def prepare(a) -> None:
    import numpy as np

    from e5jax.data.pipeline import pack_tokens
    from e5jax.train.state import load_tokenizer

    cfg = preset_config(a.tokenizer, batch=a.batch, chunk=a.chunk or None)
    tok = load_tokenizer(cfg)
    batch, chunk = cfg.train.batch_size, cfg.train.grad_cache_chunk
    groups = batch // chunk if chunk else 1
    ps = pairs(batch, offset=0)
    t0 = time.perf_counter()
    towers = {}
    for tower, prefix, texts, max_len in (
            ("query", "query: ", [q for q, _ in ps], cfg.data.max_query_length),
            ("passage", "passage: ", [p for _, p in ps], cfg.data.max_passage_length)):
        towers[tower] = tok([prefix + t for t in texts], truncation=True, max_length=max_len,
                            padding=False)["input_ids"]
        print(f"{tower}: {len(towers[tower])} texts, {sum(map(len, towers[tower]))} real tokens", flush=True)
    # the pipeline's packing (queries and passages in shared rows when the preset's lengths match)
    out = pack_tokens(towers, cfg.data, groups=groups, blocks=1, pad_id=tok.pad_token_id or 0)
    for k in (k for k in out if k.endswith("_input_ids")):
        print(f"{k.removesuffix('_input_ids')}: packed {out[k].shape}", flush=True)
    print(f"tokenised and packed in {time.perf_counter() - t0:.1f} s")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    np.savez_compressed(a.out, groups=np.int32(groups), **out)
    print(f"wrote {a.out} ({os.path.getsize(a.out) / 2**20:.1f} MiB)")
    if a.tokenizer_out:  # the tokenizer files alone (the model folder is too big to carry)
        os.makedirs(a.tokenizer_out, exist_ok=True)
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            src = os.path.join(a.tokenizer, f)
            if os.path.exists(src):
                shutil.copy(src, a.tokenizer_out)
        print(f"copied the tokenizer to {a.tokenizer_out}")


# ============================================================== worker


def _take_groups(arrs: dict, n_groups: int) -> dict:
    """The first `n_groups` packing groups (a smaller batch packed the same way)."""
    out = {}
    for prefix in (k.removesuffix("_segment_ids") for k in list(arrs) if k.endswith("_segment_ids")):
        g_all = arrs[f"{prefix}_input_ids"].shape[0]
        for k in ("input_ids", "segment_ids", "positions"):
            out[f"{prefix}_{k}"] = arrs[f"{prefix}_{k}"][:n_groups]
    for tower in ("query", "passage"):
        n_txt = arrs[f"{tower}_lengths"].shape[0] // g_all * n_groups
        out[f"{tower}_lengths"] = arrs[f"{tower}_lengths"][:n_txt]
        if f"{tower}_order" in arrs and n_groups == g_all:
            out[f"{tower}_order"] = arrs[f"{tower}_order"]
    return out


def worker(a) -> dict:
    import jax
    import numpy as np

    from e5jax.model import axes as ax
    from e5jax.train.loop import jit_steps
    from e5jax.train.state import create_state

    arrs = dict(np.load(a.batch_file))
    groups = int(arrs.pop("groups"))
    if a.mode == "plain":  # one packing group = a batch of `chunk` pairs packed the same way
        arrs = _take_groups(arrs, 1)
        chunk = 0
    else:
        chunk = arrs["query_lengths"].shape[0] // groups
    batch = arrs["query_lengths"].shape[0]
    cfg = preset_config(a.tokenizer, batch=batch, chunk=chunk, remat=a.remat == "remat", arch=a.arch,
                        dropout=None if a.dropout < 0 else a.dropout)
    tag = (f"  [#{a.index} {a.mode} {batch} chunk {chunk} {a.remat}{' dropout 0' * (a.dropout == 0)}"
           f"{' ' + os.environ['XLA_FLAGS'] if os.environ.get('XLA_FLAGS') else ''}]")
    t_start = time.perf_counter()

    def stage(what: str) -> None:  # where the time goes, even if the parent's timeout kills us
        print(f"{tag} {what} at {time.perf_counter() - t_start:.1f} s", file=sys.stderr, flush=True)

    mesh = ax.make_mesh(cfg.mesh, jax.devices()[:1])
    stage(f"backend up ({jax.devices()[0].device_kind}, jax {jax.__version__})")
    graphdef, state = create_state(cfg, mesh)  # random init runs on the host (encoder.build_sharded)
    jax.block_until_ready(state)
    stage("state initialised")
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step_fn, _ = jit_steps(cfg, graphdef, mesh, shardings)
    b = {k: jax.device_put(v, ax.batch_sharding(mesh, v.ndim)) for k, v in arrs.items()}
    t0 = time.perf_counter()
    with ax.axis_rules(mesh, cfg.mesh.rules):
        lowered = step_fn.lower(state, b)
        stage("lowered")
        fn = lowered.compile()
    compile_s = time.perf_counter() - t0
    temp = None
    try:
        temp = fn.memory_analysis().temp_size_in_bytes
    except Exception:  # not every backend reports it
        pass
    stage(f"compiled (lower + compile {compile_s:.1f} s; temp buffers "
          f"{'?' if temp is None else f'{temp / 2**30:.1f} GiB'})")
    if a.compile_only:
        return dict(batch=batch, chunk=chunk, remat=cfg.model.remat, compile_s=compile_s, temp_bytes=temp)
    if a.sync_dir:  # compiled: wait for the parent's go, then time the steps alone on the device
        import fcntl

        open(os.path.join(a.sync_dir, f"compiled.{a.index}"), "w").close()
        while not os.path.exists(os.path.join(a.sync_dir, "go")):
            time.sleep(0.2)
        lock = open(os.path.join(a.sync_dir, "lock"), "w")
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until this process exits
        stage("has the device to itself")
    times, losses = [], []
    for i in range(1 + a.steps):  # one warm-up step, then timed ones
        t0 = time.perf_counter()
        state, metrics = fn(state, b)
        loss = float(metrics["loss"])  # blocks until the step is done
        dt = time.perf_counter() - t0
        print(f"{tag} step {i}{' (warm-up)' * (i == 0)}: {dt:.3f} s, "
              f"loss {loss:.4f}", file=sys.stderr, flush=True)
        if i:
            times.append(dt)
            losses.append(loss)
    profile = None
    if a.profile:  # one more step, traced: where its device time goes, op by op
        from profile_ops import format_summary, summarise

        os.makedirs(a.profile, exist_ok=True)
        hlo_text = fn.as_text()
        with open(os.path.join(a.profile, "hlo.txt"), "w") as f:
            f.write(hlo_text)
        with jax.profiler.trace(a.profile):
            state, metrics = fn(state, b)
            float(metrics["loss"])
        profile = summarise(a.profile, hlo_text, top=a.profile_top)
        with open(os.path.join(a.profile, "summary.json"), "w") as f:
            json.dump(profile, f, indent=1)
        print("\n".join(f"{tag} {x}" for x in format_summary(profile).splitlines()), file=sys.stderr, flush=True)
    mem = {}
    try:
        stats = jax.devices()[0].memory_stats() or {}
        mem = {k: stats[k] for k in ("peak_bytes_in_use", "bytes_limit") if k in stats}
    except Exception:  # memory_stats is backend-specific
        pass
    real = np.concatenate([arrs["query_lengths"], arrs["passage_lengths"]]).tolist()
    packed = [k for k in arrs if k.endswith("_segment_ids")]  # joint_* or one set per tower
    rows = sum(int(np.prod(arrs[k].shape[:2])) for k in packed)
    pack_len = arrs[packed[0]].shape[-1]
    return dict(batch=batch, chunk=cfg.train.grad_cache_chunk, remat=cfg.model.remat,
                dtype=cfg.model.dtype, times=times, losses=losses, compile_s=compile_s, temp_bytes=temp, real=real,
                rows=rows, pack_len=int(pack_len), device=str(jax.devices()[0].device_kind),
                jax=jax.__version__, profile=profile and profile["classes"], **mem)


# ============================================================== run


def measured_bf16_peak(n: int = 8192, repeat: int = 10) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    for _ in range(3):
        dot(a, b).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = dot(a, b)
    out.block_until_ready()
    return 2.0 * n**3 * repeat / (time.perf_counter() - t0)


XLA_FLAG_SETS = {  # options of a variant (its 4th field on): XLA flags for that worker
    "at0": "--xla_gpu_autotune_level=0",  # no GEMM autotuning: faster compiles, maybe slower kernels
    "cublas": "--xla_gpu_enable_triton_gemm=false",  # every GEMM through cuBLAS, none through Triton
    # no CUDA graphs: each kernel launched (and traced, with its HLO op) on its own
    "nocmdbuf": "--xla_gpu_enable_command_buffer=",
}
MODEL_OPTIONS = {"nodrop"}  # dropout 0 (what the hash dropout costs on the device)


def _parse_variants(text: str) -> list[tuple]:
    """`MODE:BATCH_FILE:remat|noremat[:OPTION...]` -> (variant, mode, file, remat, options)."""
    specs = []
    known = sorted(XLA_FLAG_SETS) + sorted(MODEL_OPTIONS)
    for variant in text.split(","):
        parts = variant.split(":")
        if (len(parts) < 3 or parts[0] not in ("cache", "plain") or parts[2] not in ("remat", "noremat")
                or any(o not in known for o in parts[3:])):
            raise SystemExit(f"bad variant {variant!r}: want MODE:BATCH_FILE:remat|noremat[:OPTION...], MODE cache "
                             f"or plain, each OPTION one of {known}")
        if not os.path.exists(parts[1]):
            raise SystemExit(f"{parts[1]} not found: make it with `benchmarks/gpu_step.py prepare` (module docstring)")
        specs.append((variant, parts[0], parts[1], parts[2], tuple(parts[3:])))
    return specs


def _launch_group(a, group: list[tuple], first_index: int) -> dict[str, str]:
    """Start the group's workers together; they compile side by side, then time
    their steps one at a time (a file lock) once every one has compiled or the
    compile deadline has passed (stragglers are killed then, so nothing compiles
    or autotunes on the device while another worker is timed).
    Returns {variant: RESULT json or an error line}."""
    import signal
    import tempfile

    sync = tempfile.mkdtemp(prefix="gpu_step_")
    procs = []
    for i, (variant, mode, batch_file, remat, options) in enumerate(group, first_index):
        env = dict(os.environ)
        if len(group) > 1:  # several processes share the device: allocate on demand
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        flags = " ".join(XLA_FLAG_SETS[o] for o in options if o in XLA_FLAG_SETS)
        if flags:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
        cmd = [sys.executable, os.path.abspath(__file__), "worker", "--mode", mode, "--remat", remat,
               "--batch-file", batch_file, "--tokenizer", a.tokenizer, "--arch", a.arch, "--steps", str(a.steps),
               "--sync-dir", sync, "--index", str(i)]
        if "nodrop" in options:
            cmd += ["--dropout", "0"]
        if a.profile:
            cmd += ["--profile", os.path.join(a.profile, f"variant-{i}")]
        # stdout (the RESULT line, small) is read at the end; progress (stderr) goes straight through
        procs.append((variant, i, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)))
    t0 = time.perf_counter()
    out: dict[str, str] = {}
    while True:
        waiting = [(v, i, p) for v, i, p in procs
                   if p.poll() is None and not os.path.exists(os.path.join(sync, f"compiled.{i}"))]
        if not waiting:
            break
        if time.perf_counter() - t0 > a.compile_deadline:
            for v, _, p in waiting:
                p.send_signal(signal.SIGKILL)
                out[v] = f"not compiled within {a.compile_deadline} s (killed)"
            break
        time.sleep(1.0)
    open(os.path.join(sync, "go"), "w").close()
    for v, _, p in procs:
        try:
            stdout, _ = p.communicate(timeout=max(1.0, a.timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, _ = p.communicate()
            out.setdefault(v, f"timed out after {a.timeout} s")
        line = next((x for x in (stdout or "").splitlines() if x.startswith("RESULT ")), None)
        if line:
            out[v] = line[len("RESULT "):]
        else:
            out.setdefault(v, f"failed (rc {p.returncode}) after {time.perf_counter() - t0:.0f} s")
    shutil.rmtree(sync, ignore_errors=True)
    return out


def run(a) -> None:
    arch = json.loads(open(a.arch).read())
    mcfg = types.SimpleNamespace(**{k: arch[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers")})
    specs = _parse_variants(a.variants)
    # The parent never initialises a JAX backend: on a GPU it would hold the
    # memory the workers need. The matmul peak is measured in a worker too.
    peak = None
    if not a.no_peak:
        try:
            p = subprocess.run([sys.executable, os.path.abspath(__file__), "peak", "--n", str(a.peak_n)],
                               capture_output=True, text=True, timeout=a.timeout)
        except subprocess.TimeoutExpired:
            p = subprocess.CompletedProcess([], 1, "", f"timed out after {a.timeout} s")
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line:
            peak = json.loads(line[len("RESULT "):])["flops"]
            print(f"measured bf16 matmul ({a.peak_n}^3, fp32 accumulation): {peak / 1e12:.0f} TFLOP/s; "
                  f"datasheet {DATASHEET_BF16 / 1e12:.0f}", flush=True)
        else:
            print(f"peak measurement failed: {p.stderr[-800:]}", flush=True)
    groups = [specs] if a.parallel else [[s] for s in specs]
    results, failures = [], {}
    for gi, group in enumerate(groups):
        outcome = _launch_group(a, group, first_index=gi)
        for variant, mode, *_ in group:
            text = outcome[variant]
            if not text.startswith("{"):
                print(f"{variant}: {text}", flush=True)
                failures[variant] = text
                continue
            r = json.loads(text)
            t = sorted(r["times"])[len(r["times"]) // 2]
            flops = model_flops(mcfg, r["real"], train=True)
            tok = sum(r["real"])
            row = dict(variant=variant, batch=r["batch"], chunk=r["chunk"], remat=r["remat"], step_s=t,
                       times=r["times"], pairs_s=r["batch"] / t, real_tokens=tok,
                       computed_tokens=r["rows"] * r["pack_len"], model_tflops=flops / t / 1e12,
                       mfu_datasheet=flops / t / DATASHEET_BF16, mfu_measured=flops / t / peak if peak else None,
                       compile_s=r["compile_s"], temp_gib=(r.get("temp_bytes") or 0) / 2**30, loss=r["losses"][-1],
                       peak_gib=r.get("peak_bytes_in_use", 0) / 2**30, device=r["device"], jax=r["jax"])
            results.append(row)
            meas = f", {100 * row['mfu_measured']:.1f}% of measured" if peak else ""
            print(f"{variant}: batch {r['batch']} chunk {r['chunk']} remat {r['remat']}  "
                  f"step {t:.3f} s (runs {', '.join(f'{x:.3f}' for x in r['times'])})  "
                  f"{row['pairs_s']:.0f} pairs/s  {tok / t / 1e6:.2f} M real tokens/s (packing x"
                  f"{row['computed_tokens'] / tok:.2f})  model {row['model_tflops']:.0f} TFLOP/s = "
                  f"MFU {100 * row['mfu_datasheet']:.1f}% of datasheet{meas}; compile {r['compile_s']:.0f} s; "
                  f"peak device memory {row['peak_gib']:.1f} GiB; loss {row['loss']:.3f}", flush=True)
        if a.json:  # after every group, so a run cut short keeps what it measured
            with open(a.json, "w") as f:
                json.dump(dict(peak=peak, results=results, failures=failures), f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="tokenise and pack the real pairs (CPU)")
    p.add_argument("--out", default=".gpu/b4096.npz")
    p.add_argument("--tokenizer", default="", help="tokenizer folder (default: all-MiniLM-L6-v2's, "
                                                    "the bert-base-uncased WordPiece vocabulary)")
    p.add_argument("--tokenizer-out", default="", help="also copy the tokenizer files here (to carry)")
    p.add_argument("--batch", type=int, default=0, help="pairs (default: the preset's 32,768)")
    p.add_argument("--chunk", type=int, default=0, help="gradient-cache chunk = packing group (default: the preset's)")
    p = sub.add_parser("peak")
    p.add_argument("--n", type=int, default=8192)
    for name in ("run", "worker"):
        p = sub.add_parser(name)
        p.add_argument("--tokenizer", default=".gpu/tokenizer")
        p.add_argument("--arch", default=str(ARCH))
        p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
        if name == "run":
            p.add_argument("--variants", default=DEFAULT_VARIANTS,
                           help="comma-separated MODE:BATCH_FILE:remat|noremat, MODE = cache (gradient "
                                "caching, chunk = the file's packing group) or plain (the first group only)")
            p.add_argument("--timeout", type=int, default=480,
                           help="seconds per variant (per group with --parallel), start to finish")
            p.add_argument("--compile-deadline", type=int, default=300,
                           help="seconds from launch by which a worker must have compiled; later ones are killed")
            p.add_argument("--parallel", action="store_true",
                           help="compile all variants at once (separate processes), then time them one at a time")
            p.add_argument("--peak-n", type=int, default=8192)
            p.add_argument("--no-peak", action="store_true")
            p.add_argument("--json", default="")
            p.add_argument("--profile", default="", help="trace one more step of each variant into "
                           "PROFILE/variant-I (XSpace + the compiled HLO text) and print where its time goes "
                           "(benchmarks/profile_ops.py)")
        else:
            p.add_argument("--mode", choices=["cache", "plain"], required=True)
            p.add_argument("--remat", choices=["remat", "noremat"], required=True)
            p.add_argument("--batch-file", required=True)
            p.add_argument("--sync-dir", default="", help="(from run) where to say 'compiled' and wait for 'go'")
            p.add_argument("--index", type=int, default=0)
            p.add_argument("--dropout", type=float, default=-1.0, help="override the preset's dropout (< 0: keep)")
            p.add_argument("--profile", default="", help="trace one more step into this folder (see run --profile)")
            p.add_argument("--profile-top", type=int, default=30, help="ops listed in the profile summary")
            p.add_argument("--compile-only", action="store_true",
                           help="stop after compiling and print the step's temporary buffers (any backend: "
                                "check a variant's memory before a lease)")
    a = ap.parse_args()
    if a.cmd == "prepare":
        if not a.tokenizer:
            from common import model_dir

            a.tokenizer = str(model_dir())
        prepare(a)
    elif a.cmd == "peak":
        import jax

        print(f"jax {jax.__version__}, devices {jax.devices()}", file=sys.stderr, flush=True)
        print("RESULT " + json.dumps(dict(flops=measured_bf16_peak(a.n))), flush=True)
    elif a.cmd == "worker":
        print("RESULT " + json.dumps(worker(a)), flush=True)
    else:
        run(a)


if __name__ == "__main__":
    main()
