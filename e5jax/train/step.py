"""The pure train step, plain and gradient-cached.

`train_step(state, batch) -> (state, metrics)` where `state` is the nnx.State
of (encoder, optimizer). Both variants compute the same gradient:

* plain: embed the whole batch keeping activations, autodiff through it all;
* cached (GradCache, Gao et al. 2021): embed the batch chunk by chunk with no
  activations kept, take d(loss)/d(embeddings) on the global batch, then re-run
  each chunk and pull its embedding cotangent back into the parameters.
  Memory is bounded by one chunk's activations (held through the loss when
  `train.grad_cache_keep_last`), so the global batch is bounded by time.

Dropout keys are derived per example from (seed, step, tower, global row), so
both variants — and any chunk size — see identical dropout masks.

The model is a `TextEncoder` (BERT family) or a `decoder.DecoderTextEncoder`
(same interface); with LoRA only the adapters are differentiated and updated.

Towers arrive padded (`{tower}_input_ids` / `_attention_mask` [N, L]) or
packed (`{tower}_input_ids` / `_segment_ids` / `_positions` [G, R, P] plus
`_lengths` [N], see `e5jax.data.packing`), or packed together (`joint_*`
[G, R, P] holding every tower's texts, plus each tower's `_lengths`: one
encoder pass for all towers); a packed text i has the same dropout masks,
hence the same embedding, as padded.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from e5jax.config import Config, resolve_row_blocks
from e5jax.data.packing import JOINT
from e5jax.loss import e5_loss, student_list_scores
from e5jax.model import axes as ax
from e5jax.model.dropout import row_seeds
from e5jax.model.encoder import TextEncoder
from e5jax.train.optimizer import trainable

Batch = Mapping[str, jax.Array]
TOWERS = {"query": 0, "passage": 1, "negative": 2}


def row_keys(step_key: jax.Array | None, tower: str, rows: jax.Array) -> jax.Array | None:
    """One dropout key per example, a function of its global row index only."""
    if step_key is None:
        return None
    base = jax.random.fold_in(step_key, TOWERS[tower])
    return jax.vmap(lambda r: jax.random.fold_in(base, r))(rows)


def is_packed(batch: Batch, tower: str) -> bool:
    return f"{tower}_lengths" in batch


def is_joint(batch: Batch) -> bool:
    """Whether the packed towers share rows (`packing.pack_towers`)."""
    return f"{JOINT}_segment_ids" in batch


def num_texts(batch: Batch, tower: str) -> int:
    if is_packed(batch, tower):
        return batch[f"{tower}_lengths"].shape[0]
    ids = batch[f"{tower}_input_ids"]
    return ids.shape[0] * (ids.shape[1] if tower == "negative" else 1)


def _towers(batch: Batch) -> list[str]:
    neg = "negative_input_ids" in batch or "negative_lengths" in batch
    return ["query", "passage"] + (["negative"] if neg else [])


def _seeds(step_key, tower: str, rows: jax.Array):
    """uint32 dropout seeds for global rows `rows` (any shape), or None."""
    keys = row_keys(step_key, tower, rows.reshape(-1))
    return None if keys is None else row_seeds(keys).reshape(rows.shape)


def _packed(batch: Batch, prefix: str):
    return tuple(batch[f"{prefix}_{k}"] for k in ("input_ids", "segment_ids", "positions"))


# A packed tower may hold its texts in "slot order" (`packing.balanced_order`):
# `{tower}_order` [blocks, N/blocks] names the text (inside its block = device)
# of each slot. Embeddings are computed per slot and put back in batch order by
# a per-block gather, which stays on the device that holds the block.


def _slot_texts(batch: Batch, tower: str) -> jax.Array:
    """[N] batch index of the text in each slot (the identity without an order)."""
    n = num_texts(batch, tower)
    if f"{tower}_order" not in batch:
        return jnp.arange(n)
    order = batch[f"{tower}_order"]
    blocks, per = order.shape
    return (order + jnp.arange(blocks)[:, None] * per).reshape(n)


def _permute(x: jax.Array, batch: Batch, tower: str, *, to_batch: bool) -> jax.Array:
    """Rows [N, ...] from slot order to batch order (or back)."""
    if f"{tower}_order" not in batch:
        return x
    order = batch[f"{tower}_order"]
    blocks, per = order.shape
    idx = jnp.argsort(order, axis=1) if to_batch else order
    xb = x.reshape(blocks, per, *x.shape[1:])
    return jnp.take_along_axis(xb, idx.reshape(blocks, per, *[1] * (x.ndim - 1)), axis=1).reshape(x.shape)


def batch_loss(q, p, neg, batch: Batch, cfg: Config, mesh: Mesh | None):
    """The loss on embeddings (InfoNCE over the global batch, + KD when configured)."""
    teacher = batch.get("teacher_scores") if cfg.loss.kd_weight > 0 else None
    if teacher is not None and neg is not None:
        # Records without teacher scores arrive as NaN rows: give them the
        # student's own (constant) distribution, so they add no KD loss or gradient.
        own = jax.lax.stop_gradient(student_list_scores(q, p, neg, cfg.loss.temperature))
        missing = ~jnp.isfinite(teacher).all(axis=-1, keepdims=True)
        teacher = jnp.where(missing, own * cfg.loss.teacher_temperature, teacher)
    with jax.named_scope("loss"):
        return e5_loss(q, p, neg, teacher, cfg.loss, passage_keys=batch.get("passage_key"),
                       negative_keys=batch.get("negative_key"), mesh=mesh, batch_axes=ax.BATCH_AXES)


def _reshape_neg(emb, batch):
    if emb is None:
        return None
    B = num_texts(batch, "query")
    return emb.reshape(B, emb.shape[0] // B, -1)


def embed_packed(model: TextEncoder, batch: Batch, towers: list[str], step_key, row_blocks: int = 1,
                 ) -> dict[str, jax.Array]:
    """Embeddings [N_t, H] in batch order of the towers packed in one set of rows:
    one tower's own (`{tower}_*`) or, with several towers, the shared `joint_*`;
    `row_blocks`: `TextEncoder.encode_packed`'s."""
    if is_joint(batch) and towers != _towers(batch):
        raise ValueError(f"towers packed together are embedded together: {_towers(batch)}, not {towers}")
    arrays = _packed(batch, JOINT if is_joint(batch) else towers[0])
    G = arrays[0].shape[0]
    slots = [_slot_texts(batch, t).reshape(G, -1) for t in towers]
    embs = _encode_towers(model, arrays, towers, slots, step_key, row_blocks)
    return {t: _permute(e, batch, t, to_batch=True) for t, e in zip(towers, embs)}


def _encode_towers(model: TextEncoder, arrays, towers: list[str], slots: list[jax.Array], step_key, row_blocks: int):
    """One encoder pass over packed rows [G, R, P] holding `towers`' texts, tower
    after tower in each group (`slots[i]` [G, b_i]: the batch index of each slot,
    which seeds its dropout) -> per tower [G * b_i, H], in slot order."""
    ids, seg, pos = arrays
    sizes = [s.shape[1] for s in slots]
    seeds = None
    if step_key is not None:
        seeds = jnp.concatenate([_seeds(step_key, t, s) for t, s in zip(towers, slots)], axis=1)
    emb = model.encode_packed(ids, seg, pos, sum(sizes), seeds=seeds, row_blocks=row_blocks)  # [G, sum(sizes), H]
    out, at = [], 0
    for b in sizes:
        out.append(emb[:, at:at + b].reshape(ids.shape[0] * b, -1))
        at += b
    return out


def embed_tower(model: TextEncoder, batch: Batch, tower: str, step_key, row_blocks: int = 1) -> jax.Array:
    """Embeddings [N, H] of one tower packed on its own or padded, in batch order."""
    n = num_texts(batch, tower)
    if is_packed(batch, tower):
        return embed_packed(model, batch, [tower], step_key, row_blocks)[tower]
    ids, mask = batch[f"{tower}_input_ids"], batch[f"{tower}_attention_mask"]
    ids, mask = ids.reshape(n, ids.shape[-1]), mask.reshape(n, mask.shape[-1])
    return model(ids, mask, dropout_key=row_keys(step_key, tower, jnp.arange(n)))


def embed_all(model: TextEncoder, batch: Batch, step_key, row_blocks: int = 1) -> dict[str, jax.Array]:
    """Every tower's embeddings; towers packed together go through the encoder at once."""
    if is_joint(batch):
        return embed_packed(model, batch, _towers(batch), step_key, row_blocks)
    return {t: embed_tower(model, batch, t, step_key, row_blocks) for t in _towers(batch)}


def plain_loss(model: TextEncoder, batch: Batch, step_key, cfg: Config, mesh: Mesh | None):
    embs = embed_all(model, batch, step_key, resolve_row_blocks(cfg.model))
    return batch_loss(embs["query"], embs["passage"], _reshape_neg(embs.get("negative"), batch), batch, cfg, mesh)


# ----------------------------------------------------------- chunk helpers
# Chunk j holds rows {j, j+n, j+2n, ...}: with row-sharded inputs every chunk
# is spread over all devices, so each device works on every chunk.


def _chunk(x: jax.Array, n: int) -> jax.Array:
    """[N, ...] → [n, N/n, ...] with chunk j = x[j::n]."""
    return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)


def _unchunk(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


class _PaddedChunks:
    """A padded tower cut into n chunks of rows j, j+n, j+2n, ..."""

    def __init__(self, batch: Batch, tower: str, n: int):
        N = num_texts(batch, tower)
        ids, mask = batch[f"{tower}_input_ids"], batch[f"{tower}_attention_mask"]
        self.n, self.towers = n, [tower]
        self.inputs = (_chunk(ids.reshape(N, -1), n), _chunk(mask.reshape(N, -1), n), _chunk(jnp.arange(N), n))

    def embed(self, model: TextEncoder, chunk, step_key) -> tuple[jax.Array, ...]:
        ids, mask, rows = chunk
        return (model(ids, mask, dropout_key=row_keys(step_key, self.towers[0], rows)),)

    def merge(self, es) -> tuple[jax.Array, ...]:  # ([n, N/n, H],) -> ([N, H],)
        return (_unchunk(es[0]),)

    def split(self, ds) -> tuple[jax.Array, ...]:  # ([N, H],) -> ([n, N/n, H],)
        return (_chunk(ds[0], self.n),)


class _PackedChunks:
    """Towers packed in one set of rows (one tower's own, or `joint_*`) of
    G = D*n groups (device-major: device d holds groups d*n .. d*n+n-1, one per
    chunk), cut into n chunks of D groups each."""

    def __init__(self, batch: Batch, towers: list[str], n: int, row_blocks: int = 1):
        prefix = JOINT if is_joint(batch) else towers[0]
        ids = batch[f"{prefix}_input_ids"]
        G = ids.shape[0]
        if G % n:
            raise ValueError(f"{prefix}: {G} packing groups do not split into {n} gradient-cache chunks")
        self.n, self.towers, self.D, self.batch, self.row_blocks = n, towers, G // n, batch, row_blocks
        self.sizes = [num_texts(batch, t) // G for t in towers]  # each tower's slots per group
        by_chunk = lambda x: jnp.swapaxes(x.reshape(self.D, n, *x.shape[1:]), 0, 1)  # noqa: E731
        rows = tuple(_slot_texts(batch, t).reshape(G, b) for t, b in zip(towers, self.sizes))  # dropout seeds
        self.inputs = tuple(by_chunk(x) for x in (*_packed(batch, prefix), *rows))

    def embed(self, model: TextEncoder, chunk, step_key) -> tuple[jax.Array, ...]:
        ids, seg, pos, *rows = chunk  # one chunk: D groups
        return tuple(_encode_towers(model, (ids, seg, pos), self.towers, rows, step_key, self.row_blocks))

    def merge(self, es) -> tuple[jax.Array, ...]:  # per tower [n, D*b, H] -> [N, H] in batch order
        out = []
        for t, b, e in zip(self.towers, self.sizes, es):
            e = jnp.swapaxes(e.reshape(self.n, self.D, b, -1), 0, 1).reshape(self.n * self.D * b, -1)
            out.append(_permute(e, self.batch, t, to_batch=True))
        return tuple(out)

    def split(self, ds) -> tuple[jax.Array, ...]:  # the inverse of merge
        out = []
        for t, b, d in zip(self.towers, self.sizes, ds):
            d = _permute(d, self.batch, t, to_batch=False)
            out.append(jnp.swapaxes(d.reshape(self.D, self.n, b, -1), 0, 1).reshape(self.n, self.D * b, -1))
        return tuple(out)


def _chunkers(batch: Batch, n: int, row_blocks: int = 1) -> list:
    """One chunker per set of rows: all towers at once when packed together."""
    names = _towers(batch)
    if is_joint(batch):
        return [_PackedChunks(batch, names, n, row_blocks)]
    return [_PackedChunks(batch, [t], n, row_blocks) if is_packed(batch, t) else _PaddedChunks(batch, t, n)
            for t in names]


def cached_grads(model: TextEncoder, batch: Batch, step_key, cfg: Config, mesh: Mesh | None):
    """(loss, metrics), grads — GradCache: two passes over chunks, one chunk of activations at a time.

    With `train.grad_cache_keep_last` the last chunk is embedded once, its VJP
    (activations) kept from pass 1 to pass 2: the extra forward covers n - 1 of
    the n chunks, and one chunk costs what the plain step does. The price is
    that chunk's activations held while the loss is computed."""
    graphdef, params, rest = nnx.split(model, trainable(cfg.model), ...)  # LoRA: the adapters only
    n = num_texts(batch, "query") // cfg.train.grad_cache_chunk
    chunkers = _chunkers(batch, n, resolve_row_blocks(cfg.model))
    names = [t for c in chunkers for t in c.towers]  # the order of the flat embedding tuples below
    keep = cfg.train.grad_cache_keep_last
    n_head = n - 1 if keep else n  # chunks that are embedded twice

    def embed(prm, chunks):  # one chunk of every set of rows -> a flat tuple, one per tower
        m = nnx.merge(graphdef, prm, rest)
        return tuple(e for c, cs in zip(chunkers, chunks) for e in c.embed(m, cs, step_key))

    def per_chunker(flat):  # flat per-tower tuple -> one tuple per chunker
        out, at = [], 0
        for c in chunkers:
            out.append(tuple(flat[at:at + len(c.towers)]))
            at += len(c.towers)
        return out

    head = tuple(jax.tree.map(lambda x: x[:n_head], c.inputs) for c in chunkers)
    params = _gathered(params, cfg, mesh)

    # Pass 1: embeddings of the head chunks with no activations kept (the scan
    # body is not differentiated); the kept last chunk's with its VJP.
    parts = [[] for _ in names]
    if n_head:
        _, e_head = jax.lax.scan(lambda _, cs: (None, embed(params, cs)), None, head)
        for p, e in zip(parts, e_head):
            p.append(e)
    if keep:
        last = tuple(jax.tree.map(lambda x: x[-1], c.inputs) for c in chunkers)
        e_last, vjp_last = jax.vjp(lambda prm: embed(prm, last), params)
        for p, e in zip(parts, e_last):
            p.append(e[None])
    stacked = tuple(jnp.concatenate(p) if len(p) > 1 else p[0] for p in parts)
    embs = dict(zip(names, (e for c, es in zip(chunkers, per_chunker(stacked)) for e in c.merge(es))))

    # The loss and its gradient w.r.t. the embeddings, over the global batch.
    order = _towers(batch)

    def loss_on(*es):
        e = dict(zip(order, es))
        return batch_loss(e["query"], e["passage"], _reshape_neg(e.get("negative"), batch), batch, cfg, mesh)

    (loss, metrics), demb = jax.value_and_grad(loss_on, argnums=tuple(range(len(order))), has_aux=True)(
        *(embs[t] for t in order))
    demb = dict(zip(order, demb))
    dsplit = tuple(d for c in chunkers for d in c.split(tuple(demb[t] for t in c.towers)))  # [n, ...] per tower

    # Pass 2: the kept chunk's cotangent first (the scan's carry starts from
    # its gradient, so XLA can free its activations before the scan), then
    # re-run the head chunks (same dropout seeds) and pull their cotangents back.
    if keep:
        (grads,) = vjp_last(tuple(d[-1] for d in dsplit))
    else:
        grads = jax.tree.map(jnp.zeros_like, params)
    if n_head:
        def body2(acc, xs):
            chunks, cots = xs
            _, vjp = jax.vjp(lambda prm: embed(prm, chunks), params)
            (g,) = vjp(cots)
            return jax.tree.map(jnp.add, acc, g), None

        grads, _ = jax.lax.scan(body2, grads, (head, tuple(d[:n_head] for d in dsplit)))
    return (loss, metrics), _constrained(grads, cfg.mesh.rules, mesh)


def _constrained(state, rules, mesh: Mesh | None):
    """`state` pinned to the sharding `rules` give its Variables (their `axes` metadata)."""
    if mesh is None:
        return state
    from jax.sharding import NamedSharding

    specs = ax.state_specs(state, rules, mesh)
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    return jax.tree.map(lambda v, s: v.replace(jax.lax.with_sharding_constraint(v[...], NamedSharding(mesh, s))),
                        state, specs, is_leaf=is_var)


def _gathered(params, cfg: Config, mesh: Mesh | None):
    """The parameters gathered over `fsdp` once per step, before gradient caching's loops.
    Left sharded, every use inside a scan body gathers them again for every chunk: in the
    compiled TPU program of the base pre-training preset each weight matrix was all-gathered
    31 times per step (pass 1, pass 2's forward, its remat and its backward, 7 chunks, plus
    the kept chunk), the f32 word embeddings 22 times. Costs one unsharded copy of the
    parameters per chip while the step runs."""
    if mesh is None or mesh.shape.get("fsdp", 1) == 1:
        return params
    rules = tuple((k, tuple(a for a in v if a != "fsdp")) for k, v in cfg.mesh.rules)
    return _constrained(params, rules, mesh)


# -------------------------------------------------------------- the step


def make_train_step(cfg: Config, graphdef: nnx.GraphDef, mesh: Mesh | None):
    """The pure step function (not yet jitted: `loop.compile_step` does that, once)."""
    base_key = jax.random.key(cfg.train.seed)
    use_cache = cfg.train.grad_cache_chunk > 0
    # The gradient is taken w.r.t. what trains only (optimizer.trainable): with LoRA the frozen
    # base weights get no cotangent, so XLA computes no weight gradients for them.
    wrt = nnx.DiffState(0, trainable(cfg.model))

    def train_step(state: nnx.State, batch: Batch):
        model, opt = nnx.merge(graphdef, state)
        step_key = jax.random.fold_in(base_key, opt.step[...])
        if use_cache:
            (loss, metrics), grads = cached_grads(model, batch, step_key, cfg, mesh)
        else:
            (loss, metrics), grads = nnx.value_and_grad(
                lambda m: plain_loss(m, batch, step_key, cfg, mesh), argnums=wrt, has_aux=True)(model)
        metrics = dict(metrics)
        with jax.named_scope("optimizer"):
            metrics["grad_norm"] = optax.tree.norm(grads)
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
