"""Training-step throughput: e5jax against sentence-transformers' MNRL losses.

    .venv/bin/python benchmarks/train_step.py                 # all sections
    .venv/bin/python benchmarks/train_step.py --only mnrl     # or cache | paper | gradcache
    .venv/bin/python benchmarks/train_step.py --quick         # small sizes, a smoke run
    .venv/bin/python benchmarks/train_step.py --only mnrl --only gradcache --rounds 2  # README figures

Sections (each peer runs in its own subprocess, so peak RSS is per peer):

* mnrl      — all-MiniLM-L6-v2, 32 real (short, long) Debian pairs per step,
              max 128 tokens, AdamW: e5jax (fp32 padded, fp32 packed with each
              tower in its own rows, fp32 and bf16 packed with queries and
              passages sharing rows — the default) vs
              `MultipleNegativesRankingLoss` (torch fp32, its default).
* gradcache — gradient caching vs the plain step at equal batch (same
              pairs), e5jax (packed) and sentence-transformers' cached loss.
* cache     — 1,024 pairs x 64 tokens: e5jax packed gradient-cached step vs
              `CachedMultipleNegativesRankingLoss`; pairs/s and peak RSS.
* paper     — one step of the paper's batch, 32,768 pairs, with the tiny
              model (configs/tiny_bert.json, 32 tokens), gradient caching and
              a blocked loss: time and peak RSS.

The e5jax step is the library's: `create_state` + `make_train_step` jitted by
`loop.jit_steps` (in/out shardings, donation) on a 1-device mesh, from a
`Config` built here; batches are padded with the pipeline's own
`pad_to_bucket` or packed with its `pack_tokens` (one packing group per
gradient-cache chunk, as the train loop asks for on one device; queries and
passages in shared rows unless `--pack-towers separate`). Compilation is done
ahead of time (`lower().compile()`) and
reported apart from the step time. Both sides train in train mode (dropout
0.1), temperature 0.05 (= MNRL's scale 20), AdamW lr 2e-5, no prefixes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import (
    FLOP_FORMULA, ROOT, emit_json, machine_note, matmul_peak, median, model_dir, model_flops, pairs,
    parse_json, peak_rss_mib, print_peak,
)

HERE = os.path.dirname(os.path.abspath(__file__))


# ============================================================== workers


def _texts(batch: int, step: int, max_len: int):
    ps = pairs(batch, offset=step * batch)
    return [q for q, _ in ps], [p for _, p in ps]


def worker_e5jax(a) -> dict:
    import jax

    from e5jax.config import Config, DataConfig, LossConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig
    from e5jax.data.pipeline import bucket_lengths, pack_tokens, pad_to_bucket
    from e5jax.model import axes as ax
    from e5jax.model.bert import BertConfig
    from e5jax.train.loop import jit_steps
    from e5jax.train.state import create_state, load_tokenizer

    mdir = str(model_dir())
    tiny = a.arch == "tiny"
    model = (ModelConfig(init="", arch=str(ROOT / "configs" / "tiny_bert.json"), tokenizer=mdir, dtype=a.dtype)
             if tiny else ModelConfig(init=mdir, dtype=a.dtype))
    cfg = Config(
        model=model,
        data=DataConfig(max_query_length=a.max_len, max_passage_length=a.max_len, num_buckets=a.buckets,
                        pack=a.pack, pack_towers=a.pack_towers),
        mesh=MeshConfig(data=1, fsdp=1, tensor=1),
        optim=OptimConfig(learning_rate=2e-5, warmup_steps=0, weight_decay=0.01),
        loss=LossConfig(temperature=0.05, block_size=a.block_size),
        train=TrainConfig(batch_size=a.batch, steps=1000, grad_cache_chunk=a.chunk, seed=0,
                          grad_cache_keep_last=not a.no_keep_last),
    )
    mesh = ax.make_mesh(cfg.mesh, jax.devices()[:1])
    tok = load_tokenizer(cfg)
    buckets = bucket_lengths(a.max_len, a.buckets)

    t0 = time.perf_counter()
    host_batches, lengths, real = [], [], []
    for s in range(a.steps):
        qs, ps = _texts(a.batch, s, a.max_len)
        b, towers = {}, {}
        for tower, texts in (("query", qs), ("passage", ps)):
            ids = tok(texts, truncation=True, max_length=a.max_len, padding=False)["input_ids"]
            towers[tower] = ids
            if not a.pack:
                b[f"{tower}_input_ids"], b[f"{tower}_attention_mask"] = pad_to_bucket(
                    ids, buckets, tok.pad_token_id or 0)
                lengths += [b[f"{tower}_input_ids"].shape[1]] * a.batch
            real += [len(x) for x in ids]
        if a.pack:  # the pipeline's packing: one group per gradient-cache chunk (1 device)
            groups = a.batch // a.chunk if a.chunk else 1
            b.update(pack_tokens(towers, cfg.data, groups=groups, blocks=1, pad_id=tok.pad_token_id or 0))
            for k in (k for k in b if k.endswith("_segment_ids")):  # rows computed, full length each
                lengths += [a.max_len] * (b[k].shape[0] * b[k].shape[1])
        host_batches.append(b)
    tokenize_s = time.perf_counter() - t0

    graphdef, state = create_state(cfg, mesh)
    if tiny:
        bert_cfg = BertConfig.from_hf(json.loads((ROOT / "configs" / "tiny_bert.json").read_text()))
    else:
        from e5jax.model import hf

        bert_cfg = hf.read_config(model_dir())[0]
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step_fn, _ = jit_steps(cfg, graphdef, mesh, shardings)
    batches = [{k: jax.device_put(v, ax.batch_sharding(mesh, v.ndim)) for k, v in b.items()} for b in host_batches]

    # Ahead-of-time compile, once per distinct shape (not counted in step time).
    compiled, compile_s = {}, 0.0
    with ax.axis_rules(mesh, cfg.mesh.rules):
        for b in batches:
            key = tuple(sorted((k, v.shape) for k, v in b.items()))
            if key not in compiled:
                t0 = time.perf_counter()
                compiled[key] = step_fn.lower(state, b).compile()
                compile_s += time.perf_counter() - t0
    rss_after_compile = peak_rss_mib()

    # Warm up every compiled shape once (a first run pays one-off allocation
    # costs); then `warmup` more steps as for the peer. Parameters move on, so
    # the timed steps start from a trained-a-little state either way.
    if a.warmup:
        for key, fn in compiled.items():
            b = next(b for b in batches if tuple(sorted((k, v.shape) for k, v in b.items())) == key)
            state, metrics = fn(state, b)
            float(metrics["loss"])

    times, losses = [], []
    for i in range(a.warmup + a.steps):
        b = batches[i % len(batches)]
        fn = compiled[tuple(sorted((k, v.shape) for k, v in b.items()))]
        t0 = time.perf_counter()
        state, metrics = fn(state, b)
        loss = float(metrics["loss"])  # blocks until the step is done
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(dt)
            losses.append(loss)
    return dict(steps=a.steps, times=times, compile_s=compile_s, shapes=len(compiled), tokenize_s=tokenize_s,
                lengths=lengths, real=real, losses=losses, rss_mib=peak_rss_mib(),
                rss_after_compile_mib=rss_after_compile,
                flops_cfg=dict(hidden_size=bert_cfg.hidden_size, intermediate_size=bert_cfg.intermediate_size,
                               num_hidden_layers=bert_cfg.num_hidden_layers))


def worker_st(a) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer, losses

    torch.manual_seed(0)
    model = SentenceTransformer(str(model_dir()), device="cpu")
    model.max_seq_length = a.max_len
    if a.chunk:
        loss_fn = losses.CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=a.chunk)
    else:
        loss_fn = losses.MultipleNegativesRankingLoss(model, scale=20.0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    model.train()

    feats, lengths, real = [], [], []
    for s in range(a.steps):
        qs, ps = _texts(a.batch, s, a.max_len)
        f = [model.tokenize(qs), model.tokenize(ps)]
        feats.append(f)
        for x in f:
            m = x["attention_mask"]
            real += m.sum(1).tolist()
            if a.chunk:  # the cached loss pads each mini-batch to its own longest
                for c in range(0, m.shape[0], a.chunk):
                    mc = m[c:c + a.chunk]
                    lengths += [int(mc.sum(1).max())] * mc.shape[0]
            else:
                lengths += [m.shape[1]] * m.shape[0]

    times, losses_ = [], []
    for i in range(a.warmup + a.steps):
        f = feats[i % len(feats)]
        t0 = time.perf_counter()
        loss = loss_fn(f, None)
        loss.backward()
        opt.step()
        opt.zero_grad()
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(dt)
            losses_.append(float(loss))
    return dict(steps=a.steps, times=times, lengths=lengths, real=real, losses=losses_, rss_mib=peak_rss_mib(),
                threads=torch.get_num_threads())


def run_worker(args: list[str], timeout: int) -> dict:
    """Run one peer in a fresh process; its peak RSS is its own."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one real CPU device, no emulated devices
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=HERE)
    if p.returncode:
        raise RuntimeError(f"worker {' '.join(args)} failed (rc {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return parse_json(p.stdout, "result")


def run_rounds(jobs: dict[str, list[str]], rounds: int, timeout: int = 3600) -> dict[str, dict]:
    """Each job's worker `rounds` times, the jobs interleaved within each round
    (this VM's speed drifts over minutes; interleaving spreads the drift over all
    of them). A job's result: its timed steps of every round together, the
    highest peak RSS, the first round's compile time."""
    out: dict[str, dict] = {}
    for _ in range(rounds):
        for name, args in jobs.items():
            r = run_worker(args, timeout)
            if name not in out:
                out[name] = r
            else:
                out[name]["times"] = out[name]["times"] + r["times"]
                out[name]["losses"] = r["losses"]
                out[name]["rss_mib"] = max(out[name]["rss_mib"], r["rss_mib"])
    return out


# ============================================================== report


class Model:
    """Just the BertConfig fields the FLOP formula needs."""

    def __init__(self, d):
        self.__dict__.update(d)


MINILM = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6)


def summarise(name: str, r: dict, batch: int, peak: dict | None, cfg: dict) -> dict:
    m = Model(cfg)
    t = median(r["times"])
    steps = r["steps"]  # distinct batches tokenised (lengths/real hold all of them)
    flops_real = model_flops(m, r["real"], train=True) / steps
    flops_comp = model_flops(m, r["lengths"], train=True) / steps
    row = dict(name=name, step_s=t, pairs_s=batch / t, times=r["times"], rss_mib=r["rss_mib"],
               tflops_real=flops_real / t, tflops_comp=flops_comp / t, pad=flops_comp / flops_real,
               compile_s=r.get("compile_s"), loss=r["losses"][-1] if r["losses"] else None)
    pct = ""
    if peak:
        row["pct_real"] = 100 * flops_real / t / peak["fp32_peak"]
        row["pct_comp"] = 100 * flops_comp / t / peak["fp32_peak"]
        pct = f" = {row['pct_real']:.0f}% of fp32 peak (computed incl. padding: {row['pct_comp']:.0f}%)"
    comp = f", compile {r['compile_s']:.1f} s ({r['shapes']} shapes)" if r.get("compile_s") is not None else ""
    ts = ", ".join(f"{x:.2f}" for x in r["times"])
    print(f"  {name:38s} {batch / t:7.2f} pairs/s  step {t:.3f} s (runs: {ts})  "
          f"{flops_real / t / 1e9:.1f} GFLOP/s{pct}; padding x{flops_comp / flops_real:.2f}; "
          f"peak RSS {r['rss_mib']:.0f} MiB{comp}; last loss {row['loss']:.4f}", flush=True)
    return row


def section_mnrl(a, peak):
    steps, warm = (2, 1) if a.quick else (a.steps, 1)
    batch = 32
    print(f"\n== mnrl: {batch} pairs/step, max 128 tokens, all-MiniLM-L6-v2, AdamW; "
          f"{steps} timed steps on {steps} different batches after {warm} warm-up"
          + (f"; {a.rounds} interleaved rounds, medians over all their steps" if a.rounds > 1 else ""))
    common = ["--batch", str(batch), "--max-len", "128", "--steps", str(steps), "--warmup", str(warm)]
    names = {"padded": "padded", "separate": "packed apart", "joint": "packed"}
    jobs = {"st": ["st", *common]}
    for dt, layout in (("float32", "padded"), ("float32", "separate"), ("float32", "joint"),
                       ("bfloat16", "joint")):
        pack = [] if layout == "padded" else ["--pack", "--pack-towers", layout]
        jobs[f"{dt} {names[layout]}"] = ["e5jax", *common, "--dtype", dt, *pack]
    res = run_rounds(jobs, a.rounds)
    st = summarise("sentence-transformers MNRL fp32", res.pop("st"), batch, peak, MINILM)
    rows = {name: summarise(f"e5jax {name}", r, batch, peak, MINILM) for name, r in res.items()}
    print("  ratio to ST MNRL fp32 (pairs/s): " + "; ".join(
        f"e5jax {name} {r['pairs_s'] / st['pairs_s']:.2f}x" for name, r in rows.items()))
    return dict(st=st, **rows)


def section_gradcache(a, peak):
    steps, warm = (2, 1) if a.quick else (a.steps, 1)
    batch, chunk = 32, 8
    print(f"\n== gradcache: plain vs cached step at equal batch ({batch} pairs, chunk {chunk}, max 128 tokens)"
          + (f"; {a.rounds} interleaved rounds, medians over all their steps" if a.rounds > 1 else ""))
    common = ["--batch", str(batch), "--max-len", "128", "--steps", str(steps), "--warmup", str(warm)]
    jobs = {}
    for dt in a.dtypes.split(","):
        jobs[f"{dt} plain"] = ["e5jax", *common, "--dtype", dt, "--pack"]
        jobs[f"{dt} cached"] = ["e5jax", *common, "--dtype", dt, "--pack", "--chunk", str(chunk)]
    jobs["st plain"] = ["st", *common]
    jobs["st cached"] = ["st", *common, "--chunk", str(chunk)]
    res = run_rounds(jobs, a.rounds)
    out = {}
    for dt in a.dtypes.split(","):
        plain = summarise(f"e5jax {dt} packed plain", res[f"{dt} plain"], batch, peak, MINILM)
        cached = summarise(f"e5jax {dt} packed cached (chunk {chunk})", res[f"{dt} cached"], batch, peak, MINILM)
        print(f"  e5jax {dt}: cached / plain step time = {cached['step_s'] / plain['step_s']:.2f}x")
        out[dt] = (plain, cached)
    stp = summarise("ST MNRL", res["st plain"], batch, peak, MINILM)
    stc = summarise(f"ST CachedMNRL (mini-batch {chunk})", res["st cached"], batch, peak, MINILM)
    print(f"  sentence-transformers: cached / plain step time = {stc['step_s'] / stp['step_s']:.2f}x")
    return out


def section_cache(a, peak):
    batch, max_len = (128, 64) if a.quick else (1024, 64)
    st_chunk, e5_chunk = 32, a.cache_chunk
    print(f"\n== cache: {batch} pairs x {max_len} tokens, one timed step each (after one warm-up step for ST; "
          f"AOT compile for e5jax), each peer in its own process")
    st = summarise(f"ST CachedMNRL (mini-batch {st_chunk}) fp32",
                   run_worker(["st", "--batch", str(batch), "--max-len", str(max_len), "--steps", "1",
                               "--warmup", "0", "--chunk", str(st_chunk)], 3600), batch, peak, MINILM)
    rows = {}
    for dt in a.dtypes.split(","):
        rows[dt] = summarise(
            f"e5jax {dt} packed cached (chunk {e5_chunk})",
            run_worker(["e5jax", "--batch", str(batch), "--max-len", str(max_len), "--steps", "1", "--warmup", "0",
                        "--dtype", dt, "--chunk", str(e5_chunk), "--pack"], 3600), batch, peak, MINILM)
        print(f"  ratio e5jax {dt} / ST cached (pairs/s): {rows[dt]['pairs_s'] / st['pairs_s']:.2f}x")
    return dict(st=st, **rows)


def section_paper(a, peak):
    batch = 4096 if a.quick else 32768
    chunk, block = a.paper_chunk, 1024
    tiny = json.loads((ROOT / "configs" / "tiny_bert.json").read_text())
    rows = {}
    # Twice: the default keeps the last chunk's activations through the loss
    # (train.grad_cache_keep_last), which saves one chunk's forward and costs
    # that chunk's activations in peak memory.
    for keep in (True, False):
        print(f"\n== paper: one step of {batch} pairs, tiny model (configs/tiny_bert.json), 32 tokens, "
              f"grad_cache_chunk {chunk}, grad_cache_keep_last {keep}, loss.block_size {block}, fp32, own process")
        r = run_worker(["e5jax", "--arch", "tiny", "--batch", str(batch), "--max-len", "32", "--steps", "1",
                        "--warmup", "0", "--dtype", "float32", "--chunk", str(chunk), "--block-size", str(block),
                        "--buckets", "1"] + ["--no-keep-last"] * (not keep), 3600)
        row = summarise(f"e5jax tiny {batch} pairs", r, batch, peak,
                        {k: tiny[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers")})
        print(f"  one step: {row['step_s']:.1f} s (+ compile {r['compile_s']:.1f} s, tokenize {r['tokenize_s']:.1f} s);"
              f" peak RSS {r['rss_mib'] / 1024:.2f} GiB (after compile, before the step: "
              f"{r['rss_after_compile_mib'] / 1024:.2f} GiB); goal <= 4 GiB")
        rows[f"keep_last={keep}"] = row
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["mnrl", "gradcache", "cache", "paper"], action="append",
                    help="run only these sections (repeatable); default all")
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 steps: a smoke run")
    ap.add_argument("--steps", type=int, default=4, help="timed steps (mnrl, gradcache)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="mnrl, gradcache: run every engine this many times, interleaved; medians over all steps")
    ap.add_argument("--cache-chunk", type=int, default=128, help="e5jax grad_cache_chunk in the cache section")
    ap.add_argument("--paper-chunk", type=int, default=1024, help="e5jax grad_cache_chunk in the paper section")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="e5jax compute dtypes in gradcache and cache")
    ap.add_argument("--no-peak", action="store_true")
    # worker mode (internal)
    ap.add_argument("--worker", choices=["e5jax", "st"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--chunk", type=int, default=0)
    ap.add_argument("--block-size", type=int, default=0)
    ap.add_argument("--no-keep-last", action="store_true", help="train.grad_cache_keep_last=False")
    ap.add_argument("--buckets", type=int, default=8, help="pipeline bucket count (8 at 128 = multiples of 16)")
    ap.add_argument("--arch", default="minilm", choices=["minilm", "tiny"])
    ap.add_argument("--pack", action="store_true", help="pack texts into rows (data.pack) instead of padding")
    ap.add_argument("--pack-towers", default="auto", choices=("auto", "joint", "separate"),
                    help="data.pack_towers: queries and passages in shared rows (auto = joint here) or apart")
    a = ap.parse_args()

    if a.worker:
        emit_json("result", worker_e5jax(a) if a.worker == "e5jax" else worker_st(a))
        return 0

    print(f"machine: {machine_note()}")
    print(FLOP_FORMULA + "; achieved FLOP/s counts the real (unpadded) tokens; 'computed' counts padding too; "
          "a cached step's extra forward is not counted as useful work")
    peak = None
    if not a.no_peak:
        peak = matmul_peak()
        print_peak(peak)
    sections = a.only or ["mnrl", "gradcache", "cache", "paper"]
    fns = dict(mnrl=section_mnrl, gradcache=section_gradcache, cache=section_cache, paper=section_paper)
    for s in sections:
        t0 = time.perf_counter()
        fns[s](a, peak)
        print(f"  ({s}: {time.perf_counter() - t0:.0f} s wall, load average now {machine_note().split('load average ')[1]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
