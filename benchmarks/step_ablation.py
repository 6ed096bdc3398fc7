"""Where a packed training step's time goes: forward, forward+backward and the
AdamW update of all-MiniLM-L6-v2 on the `train_step.py` mnrl batch (or `--batches` of them; 32 real
Debian pairs, max 128 tokens, packed, dropout on), and the same step with one
piece swapped out at a time.

    .venv/bin/python benchmarks/step_ablation.py                  # fp32 and bf16
    .venv/bin/python benchmarks/step_ablation.py --dtypes bfloat16

Variants (each changes the model only inside this process):
* autodiff-bf16-backward — the bf16 custom VJPs (`dense_dot`, `batched_matmul`)
  replaced by plain autodiff of the same dots (bf16 only);
* autodiff-elementwise — the hand-written backward passes of GELU, softmax and
  LayerNorm (`e5jax.model.fused`) replaced by autodiff of the plain formulas
  (jax.nn.gelu's erfc form, max-shifted softmax, LayerNorm) as before them;
* relu — exact-erf GELU replaced by ReLU (what GELU costs);
* no-layernorm — LayerNorm replaced by its affine part (what normalising costs);
* no-attention-matmuls — the two attention products replaced by zeros of their shape;
* no-dropout — the step without a dropout key (what the hash dropout costs);
* one-row-block — `model.row_blocks=1`: the packed rows in one block instead of
  two that XLA:CPU overlaps on its cores;
* towers-apart — queries and passages each packed in rows of their own
  (`data.pack_towers=separate`) instead of sharing rows; and with one row block.
Timings are medians over `--repeat` rounds (default 3) after a compile, the
variants interleaved within each round; the model's numbers are not the point
of the variants, only their time.

    .venv/bin/python benchmarks/step_ablation.py --dtypes float32 --variants autodiff-elementwise --repeat 9
    .venv/bin/python benchmarks/step_ablation.py --batches 4 --repeat 5 \
        --variants one-row-block,towers-apart,towers-apart-one-row-block
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common import ROOT, model_dir, pairs

sys.path.insert(0, str(ROOT))

from e5jax.config import Config, DataConfig, LossConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig  # noqa: E402
from e5jax.data.pipeline import pack_tokens  # noqa: E402
from e5jax.model import axes as ax  # noqa: E402
from e5jax.model import bert, fused  # noqa: E402
from e5jax.train.state import create_state, load_tokenizer  # noqa: E402
from e5jax.train.step import plain_loss  # noqa: E402

ORIGINAL = dict(dense_dot=bert.dense_dot, batched_matmul=bert.batched_matmul, matmul_f32=bert.matmul_f32,
                gelu=bert.ACTIVATIONS["gelu"], layernorm=bert.LayerNorm.__call__, softmax=fused.softmax)


def set_variant(name: str) -> None:
    bert.dense_dot, bert.batched_matmul = ORIGINAL["dense_dot"], ORIGINAL["batched_matmul"]
    bert.matmul_f32, bert.ACTIVATIONS["gelu"] = ORIGINAL["matmul_f32"], ORIGINAL["gelu"]
    bert.LayerNorm.__call__, fused.softmax = ORIGINAL["layernorm"], ORIGINAL["softmax"]
    if name == "autodiff-bf16-backward":
        bert.dense_dot = lambda x, k: jnp.dot(x, k.astype(x.dtype), preferred_element_type=jnp.float32)
        bert.batched_matmul = lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32)
    elif name == "autodiff-elementwise":
        bert.ACTIVATIONS["gelu"] = lambda x: jax.nn.gelu(x, approximate=False)
        fused.softmax = fused.softmax_reference
        bert.LayerNorm.__call__ = lambda self, x: fused.layer_norm_reference(x, self.scale[...], self.bias[...],
                                                                             self.eps)
    elif name == "relu":
        bert.ACTIVATIONS["gelu"] = jax.nn.relu
    elif name == "no-layernorm":
        bert.LayerNorm.__call__ = lambda self, x: x * self.scale[...].astype(x.dtype) + self.bias[...].astype(x.dtype)
    elif name == "no-attention-matmuls":
        bert.matmul_f32 = lambda a, b: jnp.zeros(a.shape[:-1] + b.shape[-1:], jnp.float32) + 0 * (
            a[..., :1].astype(jnp.float32) * b[..., :1, :].astype(jnp.float32).sum())


def timed(fn, *args, repeat: int = 3, warm: bool = True) -> float:
    if warm:
        jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--variants", default="", help="comma-separated subset (the baseline always runs)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved timing rounds; medians are reported")
    ap.add_argument("--batches", type=int, default=1,
                    help="time each variant on this many of train_step.py's batches (summed)")
    args = ap.parse_args()
    from e5jax.config import replace

    base = Config(model=ModelConfig(init=str(model_dir())), data=DataConfig(pack=True),
                  mesh=MeshConfig(data=1, fsdp=1, tensor=1), optim=OptimConfig(learning_rate=2e-5, warmup_steps=0),
                  loss=LossConfig(temperature=0.05), train=TrainConfig(batch_size=32, steps=100))
    tok = load_tokenizer(base)
    apart = replace(base, **{"data.pack_towers": "separate"})
    batches = {"joint": [], "apart": []}
    for i in range(args.batches):
        ps = pairs(32, offset=32 * i)
        towers = {t: tok(texts, truncation=True, max_length=128)["input_ids"]
                  for t, texts in (("query", [q for q, _ in ps]), ("passage", [p for _, p in ps]))}
        for layout, c in (("joint", base), ("apart", apart)):
            batches[layout].append({"passage_key": np.arange(32, dtype=np.int32),
                                    **pack_tokens(towers, c.data, groups=1)})
        b = batches["joint"][-1]
        print(f"batch {i}: {b['joint_input_ids'].shape[1]} packed rows x 128 tokens with queries and passages "
              f"together ({batches['apart'][-1]['query_input_ids'].shape[1]} + "
              f"{batches['apart'][-1]['passage_input_ids'].shape[1]} apart); real tokens "
              f"{int(b['query_lengths'].sum() + b['passage_lengths'].sum())}")
    batch = batches["joint"][0]
    key = jax.random.key(0)
    mesh = ax.make_mesh(base.mesh, jax.devices()[:1])
    for dt in args.dtypes.split(","):
        cfg = replace(base, **{"model.dtype": dt})
        graphdef, state = create_state(cfg, mesh)
        variants = ["baseline"] + (["autodiff-bf16-backward"] if dt == "bfloat16" else []) + [
            "autodiff-elementwise", "relu", "no-layernorm", "no-attention-matmuls", "no-dropout",
            "one-row-block", "towers-apart", "towers-apart-one-row-block"]
        if args.variants:
            variants = [v for v in variants if v == "baseline" or v in args.variants.split(",")]
        # Compile every variant first (each traced with its own swap in place),
        # then time them in interleaved rounds: on a shared VM the speed drifts
        # over minutes, and interleaving spreads that drift over all variants.
        fns = {}
        for v in variants:
            set_variant(v)
            model, _ = nnx.merge(graphdef, state)
            k = None if v == "no-dropout" else key
            c = replace(cfg, **{"model.row_blocks": 1}) if v.endswith("one-row-block") else cfg
            bs = batches["apart" if v.startswith("towers-apart") else "joint"]
            fwd = [jax.jit(lambda m, b, k=k, c=c: plain_loss(m, b, k, c, None)[0]).lower(model, b).compile()
                   for b in bs]
            fwd_bwd = [jax.jit(lambda m, b, k=k, c=c: nnx.value_and_grad(
                lambda mm: plain_loss(mm, b, k, c, None)[0])(m)).lower(model, b).compile() for b in bs]
            fns[v] = (model, fwd, fwd_bwd, bs)
        set_variant("baseline")
        for model, fwd, fwd_bwd, bs in fns.values():  # one untimed run each: first-run allocation costs
            for f, g, b in zip(fwd, fwd_bwd, bs):
                jax.block_until_ready((f(model, b), g(model, b)))
        times = {v: ([], []) for v in variants}
        for _ in range(args.repeat):
            for v, (model, fwd, fwd_bwd, bs) in fns.items():
                times[v][0].append(sum(timed(f, model, b, repeat=1, warm=False) for f, b in zip(fwd, bs)))
                times[v][1].append(sum(timed(g, model, b, repeat=1, warm=False) for g, b in zip(fwd_bwd, bs)))
        model = fns["baseline"][0]
        grads = jax.jit(lambda m, b: nnx.grad(lambda mm: plain_loss(mm, b, key, cfg, None)[0])(m))(model, batch)

        @jax.jit
        def update(s, g):
            m, o = nnx.merge(graphdef, s)
            o.update(m, g)
            return nnx.state((m, o))

        for v in variants:
            line = f"{dt:9s} {v:28s} fwd {statistics.median(times[v][0]) * 1e3:7.1f} ms   fwd+bwd " \
                   f"{statistics.median(times[v][1]) * 1e3:7.1f} ms"
            if v == "baseline":
                line += f"   AdamW update {timed(update, state, grads, repeat=args.repeat) * 1e3:6.1f} ms"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
