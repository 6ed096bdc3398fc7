"""The pure train step, plain and gradient-cached.

`train_step(state, batch) -> (state, metrics)` where `state` is the nnx.State
of (encoder, optimizer). Both variants compute the same gradient:

* plain: embed the whole batch keeping activations, autodiff through it all;
* cached (GradCache, Gao et al. 2021): embed the batch chunk by chunk with no
  activations kept, take d(loss)/d(embeddings) on the global batch, then re-run
  each chunk and pull its embedding cotangent back into the parameters.
  Memory is bounded by one chunk, so the global batch is bounded by time.

Dropout keys are derived per example from (seed, step, tower, global row), so
both variants — and any chunk size — see identical dropout masks.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from e5jax.config import Config
from e5jax.loss import e5_loss, student_list_scores
from e5jax.model import axes as ax
from e5jax.model.encoder import TextEncoder

Batch = Mapping[str, jax.Array]
TOWERS = {"query": 0, "passage": 1, "negative": 2}


def row_keys(step_key: jax.Array | None, tower: str, rows: jax.Array) -> jax.Array | None:
    """One dropout key per example, a function of its global row index only."""
    if step_key is None:
        return None
    base = jax.random.fold_in(step_key, TOWERS[tower])
    return jax.vmap(lambda r: jax.random.fold_in(base, r))(rows)


def _tower_inputs(batch: Batch) -> list[tuple[str, jax.Array, jax.Array]]:
    """(tower, ids [N, L], mask [N, L]) — negatives flattened to rows B*K."""
    out = [("query", batch["query_input_ids"], batch["query_attention_mask"]),
           ("passage", batch["passage_input_ids"], batch["passage_attention_mask"])]
    if "negative_input_ids" in batch:
        ids, mask = batch["negative_input_ids"], batch["negative_attention_mask"]
        out.append(("negative", ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, mask.shape[-1])))
    return out


def batch_loss(q, p, neg, batch: Batch, cfg: Config, mesh: Mesh | None):
    """The loss on embeddings (InfoNCE over the global batch, + KD when configured)."""
    teacher = batch.get("teacher_scores") if cfg.loss.kd_weight > 0 else None
    if teacher is not None and neg is not None:
        # Records without teacher scores arrive as NaN rows: give them the
        # student's own (constant) distribution, so they add no KD loss or gradient.
        own = jax.lax.stop_gradient(student_list_scores(q, p, neg, cfg.loss.temperature))
        missing = ~jnp.isfinite(teacher).all(axis=-1, keepdims=True)
        teacher = jnp.where(missing, own * cfg.loss.teacher_temperature, teacher)
    return e5_loss(q, p, neg, teacher, cfg.loss, passage_keys=batch.get("passage_key"),
                   negative_keys=batch.get("negative_key"), mesh=mesh, batch_axes=ax.BATCH_AXES)


def _reshape_neg(emb, batch):
    if emb is None:
        return None
    B, K = batch["negative_input_ids"].shape[:2]
    return emb.reshape(B, K, -1)


def plain_loss(model: TextEncoder, batch: Batch, step_key, cfg: Config, mesh: Mesh | None):
    embs = {}
    for tower, ids, mask in _tower_inputs(batch):
        rows = jnp.arange(ids.shape[0])
        embs[tower] = model(ids, mask, dropout_key=row_keys(step_key, tower, rows))
    return batch_loss(embs["query"], embs["passage"], _reshape_neg(embs.get("negative"), batch), batch, cfg, mesh)


# ----------------------------------------------------------- chunk helpers
# Chunk j holds rows {j, j+n, j+2n, ...}: with row-sharded inputs every chunk
# is spread over all devices, so each device works on every chunk.


def _chunk(x: jax.Array, n: int) -> jax.Array:
    """[N, ...] → [n, N/n, ...] with chunk j = x[j::n]."""
    return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)


def _unchunk(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def cached_grads(model: TextEncoder, batch: Batch, step_key, cfg: Config, mesh: Mesh | None):
    """(loss, metrics), grads — GradCache: two passes over chunks, one chunk of activations at a time."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    chunk = cfg.train.grad_cache_chunk
    B = batch["query_input_ids"].shape[0]
    n = B // chunk
    towers = _tower_inputs(batch)

    def embed(prm, ids, mask, rows, tower):
        m = nnx.merge(graphdef, prm, rest)
        return m(ids, mask, dropout_key=row_keys(step_key, tower, rows))

    def chunks_of(ids, mask):
        rows = jnp.arange(ids.shape[0])
        return _chunk(ids, n), _chunk(mask, n), _chunk(rows, n)

    # Pass 1: embeddings of every chunk, no activations kept (scan body is not differentiated).
    embs = {}
    for tower, ids, mask in towers:
        def body(_, c, tower=tower):
            return None, embed(params, *c, tower)

        _, e = jax.lax.scan(body, None, chunks_of(ids, mask))
        embs[tower] = _unchunk(e)

    # The loss and its gradient w.r.t. the embeddings, over the global batch.
    def loss_on(q, p, neg):
        return batch_loss(q, p, _reshape_neg(neg, batch), batch, cfg, mesh)

    names = [t for t, _, _ in towers]
    (loss, metrics), demb = jax.value_and_grad(
        lambda *e: loss_on(*e) if len(e) == 3 else loss_on(e[0], e[1], None), argnums=tuple(range(len(names))),
        has_aux=True)(*[embs[t] for t in names])

    # Pass 2: re-run each chunk (same dropout keys) and pull its cotangent back.
    per_chunk = tuple(chunks_of(ids, mask) + (_chunk(d, n),) for (_, ids, mask), d in zip(towers, demb))

    def body2(acc, cs):
        def f(prm):
            return tuple(embed(prm, ids, mask, rows, t) for t, (ids, mask, rows, _) in zip(names, cs))

        _, vjp = jax.vjp(f, params)
        (g,) = vjp(tuple(d for (_, _, _, d) in cs))
        return jax.tree.map(jnp.add, acc, g), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(body2, zeros, per_chunk)
    return (loss, metrics), grads


# -------------------------------------------------------------- the step


def make_train_step(cfg: Config, graphdef: nnx.GraphDef, mesh: Mesh | None):
    """The pure step function (not yet jitted: `loop.compile_step` does that, once)."""
    base_key = jax.random.key(cfg.train.seed)
    use_cache = cfg.train.grad_cache_chunk > 0

    def train_step(state: nnx.State, batch: Batch):
        model, opt = nnx.merge(graphdef, state)
        step_key = jax.random.fold_in(base_key, opt.step[...])
        if use_cache:
            (loss, metrics), grads = cached_grads(model, batch, step_key, cfg, mesh)
        else:
            (loss, metrics), grads = nnx.value_and_grad(
                lambda m: plain_loss(m, batch, step_key, cfg, mesh), has_aux=True)(model)
        metrics = dict(metrics)
        metrics["grad_norm"] = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        opt.update(model, grads)
        return nnx.state((model, opt)), metrics

    return train_step


def make_eval_step(cfg: Config, graphdef: nnx.GraphDef, mesh: Mesh | None):
    """Held-out in-batch metrics (no dropout, no update)."""

    def eval_step(state: nnx.State, batch: Batch):
        model, _ = nnx.merge(graphdef, state)
        _, metrics = plain_loss(model, batch, None, cfg, mesh)
        return metrics

    return eval_step
