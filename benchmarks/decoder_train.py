"""Decoder + LoRA training throughput: e5jax against sentence-transformers + peft.

    .venv/bin/python benchmarks/decoder_train.py              # one run of each peer
    .venv/bin/python benchmarks/decoder_train.py --quick      # a smoke run
    .venv/bin/python benchmarks/decoder_train.py --json OUT.json

The model: a small Mistral (4 layers x 256 wide, 4 heads, 2 key/value heads,
SwiGLU 1,024, vocab 2,048: the byte-level BPE of tests/decoder_tokenizer.py,
trained on the Debian fixture, which appends </s>), random init, saved once as
an HF folder that both peers load. LoRA rank 16, alpha 32 on q/k/v/o/gate/up/down,
base frozen, AdamW lr 1e-4, no dropout. Data: real Debian pairs, the query
instructed as E5-mistral does (`Instruct: ...\\nQuery: {summary}`), the passage
the description; in-batch negatives only; temperature 0.05 (= MNRL's scale 20);
last-token pooling (the EOS), normalised; 32 pairs per step, max 128 tokens.

Peers, each in its own process, one after the other on this machine:

* e5jax — the library's step (`create_state` + `loop.jit_steps`, compiled ahead
  of time, compile time reported apart) at its default precision
  (`model.dtype=auto`: bf16 compute where the CPU has native bf16, else fp32),
  texts packed in shared rows (the pipeline's `pack_tokens`); also padded;
* sentence-transformers + peft — `SentenceTransformer([Transformer, Pooling
  (lasttoken), Normalize])` with `peft.get_peft_model` on its transformer,
  `MultipleNegativesRankingLoss`, torch AdamW, fp32 (its default); and under
  `torch.autocast("cpu", dtype=torch.bfloat16)`.

Pairs/s = 32 / median step time over the timed steps (after warm-up steps).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from common import ROOT, emit_json, machine_note, median, pairs, parse_json, peak_rss_mib

HERE = os.path.dirname(os.path.abspath(__file__))
ARCH = {
    "architectures": ["MistralModel"], "model_type": "mistral", "vocab_size": 2048, "hidden_size": 256,
    "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 64, "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "sliding_window": None, "hidden_act": "silu", "attention_dropout": 0.0, "initializer_range": 0.02,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False,
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
INSTRUCTION = "Given a Debian package summary, retrieve the package description"
BATCH, MAX_LEN, RANK, ALPHA, LR = 32, 128, 16, 32.0, 1e-4


def cpu_flags() -> str:
    """The CPU features that decide the precisions (bf16 native or not)."""
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "flags unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return "flags: " + " ".join(f for f in wanted if f in flags) + " (absent: " + \
        " ".join(f for f in wanted if f not in flags) + ")"


def texts(step: int) -> tuple[list[str], list[str]]:
    from e5jax.data.finetune.synthetic import format_query

    ps = pairs(BATCH, offset=step * BATCH)
    return [format_query(q, INSTRUCTION) for q, _ in ps], [p for _, p in ps]


def make_model_dir(root: pathlib.Path) -> pathlib.Path:
    """The random-init base model + tokenizer as an HF folder (both peers start from it)."""
    import jax

    from e5jax.model import axes as ax
    from e5jax.model import hf_decoder
    from e5jax.model.decoder import DecoderConfig, create_decoder_sharded
    from tests.decoder_tokenizer import build_tokenizer

    folder = root / "base"
    if (folder / "config.json").is_file():
        return folder
    tok = build_tokenizer(root / "tokenizer")
    cfg = DecoderConfig.from_hf(ARCH)
    model = create_decoder_sharded(cfg, ax.make_mesh(devices=jax.devices()[:1]), seed=0)
    hf_decoder.save_folder(folder, cfg, hf_decoder.model_params(model))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tok)).save_pretrained(str(folder))
    return folder


# ============================================================== workers


def worker_e5jax(a) -> dict:
    import jax

    from e5jax.config import Config, DataConfig, LossConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig
    from e5jax.data.pipeline import bucket_lengths, pack_tokens, pad_to_bucket
    from e5jax.model import axes as ax
    from e5jax.train.loop import jit_steps
    from e5jax.train.state import compute_dtype, create_state, load_tokenizer

    cfg = Config(
        model=ModelConfig(init=a.model_dir, family="decoder", pooling="last", dtype=a.dtype, lora_rank=RANK,
                          lora_alpha=ALPHA, lora_targets=tuple(TARGETS), dropout=0.0),
        data=DataConfig(query_prefix="", passage_prefix="", max_query_length=MAX_LEN, max_passage_length=MAX_LEN,
                        num_buckets=4, pack=a.pack),
        mesh=MeshConfig(data=1, fsdp=1, tensor=1),
        optim=OptimConfig(learning_rate=LR, warmup_steps=0, weight_decay=0.01),
        loss=LossConfig(temperature=0.05),
        train=TrainConfig(batch_size=BATCH, steps=1000, seed=0),
    )
    mesh = ax.make_mesh(cfg.mesh, jax.devices()[:1])
    tok = load_tokenizer(cfg)
    buckets = bucket_lengths(MAX_LEN, cfg.data.num_buckets)
    host = []
    real = 0
    for s in range(a.steps):
        b, towers = {}, {}
        for tower, tx in zip(("query", "passage"), texts(s)):
            ids = tok(tx, truncation=True, max_length=MAX_LEN, padding=False)["input_ids"]
            real += sum(map(len, ids))
            towers[tower] = ids
            if not a.pack:
                b[f"{tower}_input_ids"], b[f"{tower}_attention_mask"] = pad_to_bucket(ids, buckets, tok.pad_token_id)
        if a.pack:
            b.update(pack_tokens(towers, cfg.data, groups=1, blocks=1, pad_id=tok.pad_token_id))
        host.append(b)
    graphdef, state = create_state(cfg, mesh)
    step_fn, _ = jit_steps(cfg, graphdef, mesh, jax.tree.map(lambda x: x.sharding, state))
    batches = [{k: jax.device_put(v, ax.batch_sharding(mesh, v.ndim)) for k, v in b.items()} for b in host]
    compiled, compile_s = {}, 0.0
    shape = lambda b: tuple(sorted((k, v.shape) for k, v in b.items()))  # noqa: E731
    with ax.axis_rules(mesh, cfg.mesh.rules):
        for b in batches:
            if shape(b) not in compiled:
                t0 = time.perf_counter()
                compiled[shape(b)] = step_fn.lower(state, b).compile()
                compile_s += time.perf_counter() - t0
    for fn in compiled.values():  # one warm-up run per compiled shape
        b = next(b for b in batches if compiled[shape(b)] is fn)
        state, m = fn(state, b)
        float(m["loss"])
    times, losses = [], []
    for i in range(a.warmup + a.steps):
        b = batches[i % len(batches)]
        t0 = time.perf_counter()
        state, m = compiled[shape(b)](state, b)
        loss = float(m["loss"])
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
            losses.append(loss)
    return dict(times=times, losses=losses, compile_s=compile_s, shapes=len(compiled), real_tokens=real / a.steps,
                dtype=compute_dtype(cfg), rss_mib=peak_rss_mib())


def worker_st(a) -> dict:
    import peft
    import torch
    from sentence_transformers import SentenceTransformer, losses, models

    torch.manual_seed(0)
    tr = models.Transformer(a.model_dir, max_seq_length=MAX_LEN)
    tr.auto_model = peft.get_peft_model(tr.auto_model, peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0, task_type="FEATURE_EXTRACTION"))
    pool = models.Pooling(tr.get_word_embedding_dimension(), pooling_mode="lasttoken")
    model = SentenceTransformer(modules=[tr, pool, models.Normalize()], device="cpu")
    loss_fn = losses.MultipleNegativesRankingLoss(model, scale=20.0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.01)
    model.train()
    feats = []
    real = 0
    for s in range(a.steps):
        f = [model.tokenize(t) for t in texts(s)]
        real += sum(int(x["attention_mask"].sum()) for x in f)
        feats.append(f)
    times, losses_ = [], []
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if a.bf16 else None
    for i in range(a.warmup + a.steps):
        f = feats[i % len(feats)]
        t0 = time.perf_counter()
        if ctx:
            with ctx():
                loss = loss_fn(f, None)
        else:
            loss = loss_fn(f, None)
        loss.backward()
        opt.step()
        opt.zero_grad()
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(dt)
            losses_.append(float(loss))
    return dict(times=times, losses=losses_, real_tokens=real / a.steps, trainable=sum(p.numel() for p in trainable),
                threads=torch.get_num_threads(), rss_mib=peak_rss_mib())


def run_worker(args: list[str], timeout: int = 3600) -> dict:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one real CPU device
    env.setdefault("JAX_PLATFORMS", "cpu")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", *args], capture_output=True,
                       text=True, env=env, timeout=timeout, cwd=HERE)
    if p.returncode:
        raise RuntimeError(f"worker {' '.join(args)} failed (rc {p.returncode}):\n{p.stderr[-4000:]}")
    return parse_json(p.stdout, "result")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=("e5jax", "st"))
    ap.add_argument("--model-dir", default="")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--pack", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    if a.worker:
        emit_json("result", worker_e5jax(a) if a.worker == "e5jax" else worker_st(a))
        return 0
    if a.quick:
        a.steps, a.warmup = 2, 1
    print(machine_note(), flush=True)
    print(cpu_flags(), flush=True)
    root = pathlib.Path(tempfile.mkdtemp(prefix="e5jax-decoder-bench-"))
    mdir = make_model_dir(root)
    common = ["--model-dir", str(mdir), "--steps", str(a.steps), "--warmup", str(a.warmup)]
    jobs = {
        "e5jax packed (default dtype)": ["e5jax", "--pack"],
        "e5jax padded (default dtype)": ["e5jax"],
        "sentence-transformers + peft, MNRL, fp32": ["st"],
        "sentence-transformers + peft, MNRL, bf16 autocast": ["st", "--bf16"],
    }
    print(f"\n== {BATCH} pairs/step, max {MAX_LEN} tokens, Mistral 4 x 256 random init, LoRA r{RANK} a{ALPHA:g} on "
          f"{'/'.join(TARGETS)}; {a.steps} timed steps after {a.warmup} warm-up", flush=True)
    rows = {}
    for name, (who, *flags) in jobs.items():
        r = run_worker([who, *flags, *common])
        t = median(r["times"])
        r.update(name=name, step_s=t, pairs_s=BATCH / t)
        rows[name] = r
        extra = f"compile {r['compile_s']:.1f} s ({r['shapes']} shapes), compute {r['dtype']}" if "compile_s" in r \
            else f"{r['threads']} torch threads, {r['trainable']:,} trainable params"
        print(f"  {name:52s} {BATCH / t:7.2f} pairs/s  step {t:.3f} s (runs: "
              f"{', '.join(f'{x:.3f}' for x in r['times'])}); {r['real_tokens']:.0f} real tokens/step; "
              f"peak RSS {r['rss_mib']:.0f} MiB; {extra}; last loss {r['losses'][-1]:.4f}", flush=True)
    best = rows["e5jax packed (default dtype)"]["pairs_s"]
    for peer in ("sentence-transformers + peft, MNRL, fp32", "sentence-transformers + peft, MNRL, bf16 autocast"):
        print(f"  e5jax packed / {peer}: {best / rows[peer]['pairs_s']:.2f}x")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps({"machine": machine_note(), "cpu": cpu_flags(), "rows": rows},
                                                   indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
