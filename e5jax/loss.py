"""E5 losses: InfoNCE over the global batch and teacher distillation (KD).

Pure functions of embeddings; no model, no optimizer. Three facts shape them:

* **The global batch is global.** Every query is scored against every
  positive passage of the whole batch (all devices, all hosts) plus every
  hard negative of the batch. Candidate matrix, in this order:
  ``[p_0 … p_{B-1}, neg_{0,0} … neg_{0,K-1}, neg_{1,0} … neg_{B-1,K-1}]``;
  query ``i``'s target is column ``i``.
* **fp32 logits.** ``cos / 0.01`` spans ±100: ``exp`` of that overflows fp16
  and bf16 keeps only ~3 significant digits of it, so scores are accumulated,
  scaled and soft-maxed in fp32 whatever dtype the embeddings arrive in.
* **Memory.** At the paper's batch (32,768) the full fp32 logit matrix is
  4.3 GB. With a mesh each device holds only its own rows
  (``B_local × candidates``); with ``block_size > 0`` those rows are further
  processed ``block_size`` at a time under ``jax.checkpoint`` so the backward
  pass recomputes a block's logits instead of keeping them.

``info_nce_reference`` is the plain dense formula every optimised path is
tested against.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from e5jax.config import LossConfig
from e5jax.errors import E5Error

Metrics = dict[str, jax.Array]

# Full fp32 for the score matmul: on TPU the default f32 precision is one bf16
# pass, which at tau = 0.01 would put ~0.4 of error into a logit. The loss
# matmul is < 0.1% of a training step's FLOPs, so the extra passes are free.
_PRECISION = jax.lax.Precision.HIGHEST


# ------------------------------------------------------------------ checks


def _check_inputs(q, p, neg, passage_keys, negative_keys, temperature, block_size) -> None:
    """Shapes and settings; each message says what to change."""
    if q.ndim != 2:
        raise E5Error(f"info_nce: q must be [B, D], got shape {q.shape}")
    if p.shape != q.shape:
        raise E5Error(f"info_nce: p must have q's shape {q.shape}, got {p.shape}")
    b, d = q.shape
    if neg is not None and (neg.ndim != 3 or neg.shape[0] != b or neg.shape[2] != d):
        raise E5Error(f"info_nce: neg must be [B={b}, K, D={d}], got shape {neg.shape}")
    if passage_keys is not None and passage_keys.shape != (b,):
        raise E5Error(f"info_nce: passage_keys must be [B={b}], got shape {passage_keys.shape}")
    if negative_keys is not None:
        if neg is None:
            raise E5Error("info_nce: negative_keys given without neg")
        if negative_keys.shape != neg.shape[:2]:
            raise E5Error(
                f"info_nce: negative_keys must be [B, K]={neg.shape[:2]}, got {negative_keys.shape}"
            )
    if not temperature > 0:
        raise E5Error(f"info_nce: temperature must be > 0, got {temperature}")
    if block_size < 0:
        raise E5Error(f"info_nce: block_size must be >= 0 (0 = no blocking), got {block_size}")


def _mesh_batch_axes(mesh: Mesh, batch_axes: Sequence[str], batch: int) -> tuple[str, ...]:
    """The batch axes that exist in `mesh`; checks the batch divides over them."""
    axes = tuple(a for a in batch_axes if a in mesh.axis_names)
    if not axes:
        raise E5Error(
            f"none of batch_axes={tuple(batch_axes)} is an axis of the mesh {mesh.axis_names}"
        )
    shards = math.prod(mesh.shape[a] for a in axes)
    if batch % shards:
        raise E5Error(
            f"global batch {batch} is not divisible by the {shards} devices along mesh axes "
            f"{axes}; make the batch size a multiple of {shards}"
        )
    return axes


# ------------------------------------------------------------ row-block core


def _row_sums(
    q_rows: jax.Array,
    labels: jax.Array,
    own_keys: jax.Array,
    valid: jax.Array,
    cands: jax.Array,
    cand_keys: jax.Array,
    *,
    n_keyed: int,
    inv_temp: float,
    mask: bool,
) -> jax.Array:
    """Loss/metric SUMS of some query rows against all candidates, fp32 [5].

    Returns [sum loss, sum correct, sum positive cosine, sum unmasked negative
    cosine, count unmasked negatives]. Sums (not means) so that blocks and
    devices combine by addition; `valid` zeroes padding rows.
    """
    scores = jnp.einsum(
        "bd,nd->bn", q_rows, cands, preferred_element_type=jnp.float32, precision=_PRECISION
    )
    col = jnp.arange(cands.shape[0])[None, :]
    is_pos = col == labels[:, None]
    if mask:
        # Same text as my positive, but not my positive itself: not a negative.
        # Only the first n_keyed columns have keys (negatives may come without).
        masked = (cand_keys[None, :] == own_keys[:, None]) & ~is_pos & (col < n_keyed)
    else:
        masked = jnp.zeros_like(is_pos)
    logits = jnp.where(masked, -jnp.inf, scores * inv_temp)
    # The positive is never masked, so every row's logsumexp is finite.
    row_loss = jax.nn.logsumexp(logits, axis=1) - jnp.sum(jnp.where(is_pos, logits, 0.0), axis=1)
    correct = (jnp.argmax(logits, axis=1) == labels).astype(jnp.float32)
    pos = jnp.sum(jnp.where(is_pos, scores, 0.0), axis=1)
    is_neg = ~is_pos & ~masked & valid[:, None]
    w = valid.astype(jnp.float32)
    return jnp.stack(
        [
            jnp.sum(row_loss * w),
            jnp.sum(correct * w),
            jnp.sum(pos * w),
            jnp.sum(jnp.where(is_neg, scores, 0.0)),
            jnp.sum(is_neg.astype(jnp.float32)),
        ]
    )


def _local_sums(
    q_rows, labels, own_keys, cands, cand_keys, *, n_keyed, inv_temp, mask, block_size
) -> jax.Array:
    """`_row_sums` over all local rows, `block_size` rows at a time when > 0."""
    rows = q_rows.shape[0]
    kw = dict(n_keyed=n_keyed, inv_temp=inv_temp, mask=mask)
    if block_size <= 0 or block_size >= rows:
        valid = jnp.ones((rows,), bool)
        return _row_sums(q_rows, labels, own_keys, valid, cands, cand_keys, **kw)

    # Pad the rows up to whole blocks; padding rows carry valid=False (weight 0).
    n_blocks = -(-rows // block_size)
    pad = n_blocks * block_size - rows
    valid = jnp.arange(n_blocks * block_size) < rows

    def blocks(x):
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape(n_blocks, block_size, *x.shape[1:])

    # checkpoint: the backward pass recomputes each block's [block, N] logits
    # instead of storing n_blocks of them, so peak memory is one block's worth.
    @jax.checkpoint
    def one_block(cands, cand_keys, xs):
        qb, lb, kb, vb = xs
        return _row_sums(qb, lb, kb, vb, cands, cand_keys, **kw)

    per_block = jax.lax.map(
        functools.partial(one_block, cands, cand_keys),
        (blocks(q_rows), blocks(labels), blocks(own_keys), valid.reshape(n_blocks, block_size)),
    )
    return jnp.sum(per_block, axis=0)


def _candidates(p, neg, passage_keys, negative_keys):
    """Candidate matrix [B + B·K, D], its keys, and how many leading columns are keyed."""
    b = p.shape[0]
    cands = p if neg is None else jnp.concatenate([p, neg.reshape(-1, p.shape[1])], axis=0)
    if passage_keys is None:
        return cands, jnp.zeros((b,), jnp.int32), 0
    keys = passage_keys.astype(jnp.int32)
    if neg is None:
        return cands, keys, b
    if negative_keys is None:  # unkeyed negatives: placeholder keys, excluded by n_keyed
        return cands, jnp.pad(keys, (0, cands.shape[0] - b)), b
    keys = jnp.concatenate([keys, negative_keys.reshape(-1).astype(jnp.int32)])
    return cands, keys, cands.shape[0]


def _finish(sums: jax.Array, batch: int) -> tuple[jax.Array, Metrics]:
    """Global sums -> (loss, metrics); neg_score is 0 when every negative is masked."""
    loss = sums[0] / batch
    metrics = {
        "loss": loss,
        "accuracy": sums[1] / batch,
        "pos_score": sums[2] / batch,
        "neg_score": sums[3] / jnp.maximum(sums[4], 1.0),
    }
    return loss, metrics


# ----------------------------------------------------------------- InfoNCE


def info_nce(
    q: jax.Array,
    p: jax.Array,
    *,
    temperature: float = 0.01,
    neg: jax.Array | None = None,
    passage_keys: jax.Array | None = None,
    negative_keys: jax.Array | None = None,
    mask_duplicates: bool = True,
    block_size: int = 0,
    mesh: Mesh | None = None,
    batch_axes: Sequence[str] = ("data", "fsdp"),
) -> tuple[jax.Array, Metrics]:
    """InfoNCE of each query against all positives and hard negatives of the global batch.

    Args:
      q: [B, D] query embeddings (normalised by the caller), global batch.
      p: [B, D] positive passage embeddings; row i is query i's target.
      temperature: logits = cos / temperature (paper: 0.01).
      neg: optional [B, K, D] hard negatives; every query sees all B·K of them.
      passage_keys: optional int [B] identifying passage texts. With
        `mask_duplicates`, a candidate whose key equals the key of query i's
        positive (other than the positive itself) is masked out for query i.
        Without keys nothing is masked.
      negative_keys: optional int [B, K] keys of the hard negatives; negatives
        without keys are never masked.
      block_size: > 0 processes that many query rows at a time (per device),
        recomputing each block in the backward pass; bounds memory to
        block_size × candidates. Rows that do not fill a block are padded.
      mesh: when given, rows are split over `batch_axes` of this mesh with
        `jax.shard_map`: each device all-gathers the candidates and keeps only
        its own rows of the logits.
      batch_axes: mesh axes the batch is split over (those missing from the
        mesh are ignored).

    Returns:
      (loss, metrics): mean loss over the global batch, and fp32 scalars
      `loss`, `accuracy` (argmax is the own positive), `pos_score` (mean
      positive cosine), `neg_score` (mean cosine of unmasked negatives).
    """
    _check_inputs(q, p, neg, passage_keys, negative_keys, temperature, block_size)
    mask = bool(mask_duplicates) and passage_keys is not None
    if not mask:
        passage_keys = negative_keys = None
    batch = q.shape[0]
    kw = dict(inv_temp=1.0 / temperature, mask=mask, block_size=block_size)

    if mesh is None:
        cands, cand_keys, n_keyed = _candidates(p, neg, passage_keys, negative_keys)
        own = cand_keys[:batch] if mask else jnp.zeros((batch,), jnp.int32)
        sums = _local_sums(q, jnp.arange(batch), own, cands, cand_keys, n_keyed=n_keyed, **kw)
        return _finish(sums, batch)

    axes = _mesh_batch_axes(mesh, batch_axes, batch)
    axis = axes if len(axes) > 1 else axes[0]
    args = {"q": q, "p": p, "neg": neg, "pk": passage_keys, "nk": negative_keys}
    args = {k: v for k, v in args.items() if v is not None}

    def per_device(a: dict) -> jax.Array:
        # Gather order over (data, fsdp) equals the row order of P(("data", "fsdp")),
        # so gathered candidates are in global order and labels are global rows.
        gather = functools.partial(jax.lax.all_gather, axis_name=axis, axis=0, tiled=True)
        g = {k: gather(v) for k, v in a.items() if k != "q"}
        cands, cand_keys, n_keyed = _candidates(g["p"], g.get("neg"), g.get("pk"), g.get("nk"))
        rows = a["q"].shape[0]
        labels = jax.lax.axis_index(axis) * rows + jnp.arange(rows)
        own = a["pk"].astype(jnp.int32) if mask else jnp.zeros((rows,), jnp.int32)
        sums = _local_sums(a["q"], labels, own, cands, cand_keys, n_keyed=n_keyed, **kw)
        return jax.lax.psum(sums, axis)

    spec = {k: P(axes) for k in args}
    sums = jax.shard_map(per_device, mesh=mesh, in_specs=(spec,), out_specs=P())(args)
    return _finish(sums, batch)


def info_nce_reference(
    q: jax.Array,
    p: jax.Array,
    *,
    temperature: float = 0.01,
    neg: jax.Array | None = None,
    passage_keys: jax.Array | None = None,
    negative_keys: jax.Array | None = None,
    mask_duplicates: bool = True,
) -> tuple[jax.Array, Metrics]:
    """The plain dense formula (whole [B, B + B·K] matrix, fp32); tests compare to it."""
    q = q.astype(jnp.float32)
    c = p.astype(jnp.float32)
    if neg is not None:
        c = jnp.concatenate([c, neg.astype(jnp.float32).reshape(-1, q.shape[1])])
    b, n = q.shape[0], c.shape[0]
    scores = jnp.dot(q, c.T, precision=_PRECISION)
    target = jnp.eye(b, n, dtype=bool)
    dup = jnp.zeros((b, n), bool)
    if mask_duplicates and passage_keys is not None:
        keys = passage_keys
        if neg is not None:
            no_key = jnp.full((b * neg.shape[1],), 0, keys.dtype)
            keys = jnp.concatenate(
                [keys, no_key if negative_keys is None else negative_keys.reshape(-1)]
            )
        keyed = jnp.arange(n) < (b if negative_keys is None else n)
        dup = (keys[None, :] == passage_keys[:, None]) & keyed[None, :] & ~target
    logits = jnp.where(dup, -jnp.inf, scores / temperature)
    log_probs = jax.nn.log_softmax(logits, axis=1)
    loss = -jnp.mean(jnp.diagonal(log_probs))
    negatives = ~target & ~dup
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, axis=1) == jnp.arange(b)),
        "pos_score": jnp.mean(jnp.diagonal(scores)),
        "neg_score": jnp.sum(jnp.where(negatives, scores, 0.0)) / jnp.maximum(negatives.sum(), 1),
    }
    return loss, metrics


# ---------------------------------------------------------- distillation


def student_list_scores(
    q: jax.Array, p: jax.Array, neg: jax.Array, temperature: float
) -> jax.Array:
    """Each query's own list [positive, its K negatives] scored by the student, fp32 [B, 1+K]."""
    f32 = dict(preferred_element_type=jnp.float32, precision=_PRECISION)
    pos = jnp.einsum("bd,bd->b", q, p, **f32)[:, None]
    negs = jnp.einsum("bd,bkd->bk", q, neg, **f32)
    return jnp.concatenate([pos, negs], axis=1) / temperature


def _kd_rows(student_scores, teacher_scores, teacher_temperature) -> jax.Array:
    """KL(p_teacher || p_student) per row, fp32 [B]. The teacher gets no gradient."""
    log_ps = jax.nn.log_softmax(student_scores.astype(jnp.float32), axis=-1)
    teacher = jax.lax.stop_gradient(teacher_scores.astype(jnp.float32)) / teacher_temperature
    log_pt = jax.nn.log_softmax(teacher, axis=-1)
    pt = jnp.exp(log_pt)
    # 0 · log 0 = 0: a teacher score of -inf (padding) contributes nothing.
    return jnp.sum(jnp.where(pt > 0, pt * (log_pt - log_ps), 0.0), axis=-1)


def kd_loss(
    student_scores: jax.Array, teacher_scores: jax.Array, *, teacher_temperature: float = 1.0
) -> jax.Array:
    """Mean over queries of KL(softmax(teacher / T) || softmax(student)), fp32.

    `student_scores` [B, 1+K] are already divided by the student temperature
    (see `student_list_scores`); `teacher_scores` [B, 1+K] are raw.
    """
    if student_scores.shape != teacher_scores.shape or student_scores.ndim != 2:
        raise E5Error(
            f"kd_loss: student and teacher scores must both be [B, 1+K]; got "
            f"{student_scores.shape} and {teacher_scores.shape}"
        )
    if not teacher_temperature > 0:
        raise E5Error(f"kd_loss: teacher_temperature must be > 0, got {teacher_temperature}")
    return jnp.mean(_kd_rows(student_scores, teacher_scores, teacher_temperature))


def e5_loss(
    q: jax.Array,
    p: jax.Array,
    neg: jax.Array | None,
    teacher_scores: jax.Array | None,
    cfg: LossConfig,
    *,
    passage_keys: jax.Array | None = None,
    negative_keys: jax.Array | None = None,
    mesh: Mesh | None = None,
    batch_axes: Sequence[str] = ("data", "fsdp"),
) -> tuple[jax.Array, Metrics]:
    """cfg.kd_weight · KD + cfg.infonce_weight · InfoNCE, with metrics.

    Metrics: `loss` (the total), `infonce_loss`, `accuracy`, `pos_score`,
    `neg_score`, and `kd_loss` when KD is on (kd_weight > 0).
    """
    loss_nce, m = info_nce(
        q,
        p,
        temperature=cfg.temperature,
        neg=neg,
        passage_keys=passage_keys,
        negative_keys=negative_keys,
        mask_duplicates=cfg.mask_duplicates,
        block_size=cfg.block_size,
        mesh=mesh,
        batch_axes=batch_axes,
    )
    metrics = {"infonce_loss": loss_nce, **{k: v for k, v in m.items() if k != "loss"}}
    total = cfg.infonce_weight * loss_nce
    if cfg.kd_weight > 0:
        if teacher_scores is None or neg is None:
            raise E5Error("loss.kd_weight > 0 needs hard negatives and teacher_scores in the batch")
        if teacher_scores.shape != (q.shape[0], 1 + neg.shape[1]):
            raise E5Error(
                f"teacher_scores must be [B, 1+K]={(q.shape[0], 1 + neg.shape[1])}, "
                f"got {teacher_scores.shape}"
            )
        if not cfg.teacher_temperature > 0:
            raise E5Error(f"loss.teacher_temperature must be > 0, got {cfg.teacher_temperature}")

        def kd_sum(q, p, neg, t):
            s = student_list_scores(q, p, neg, cfg.temperature)
            return jnp.sum(_kd_rows(s, t, cfg.teacher_temperature))

        if mesh is None:
            kd = kd_sum(q, p, neg, teacher_scores) / q.shape[0]
        else:
            # KD is row-local: each device scores its own rows, one psum of the sum.
            axes = _mesh_batch_axes(mesh, batch_axes, q.shape[0])
            axis = axes if len(axes) > 1 else axes[0]
            kd = jax.shard_map(
                lambda *a: jax.lax.psum(kd_sum(*a), axis),
                mesh=mesh,
                in_specs=(P(axes),) * 4,
                out_specs=P(),
            )(q, p, neg, teacher_scores) / q.shape[0]
        metrics["kd_loss"] = kd
        total = total + cfg.kd_weight * kd
    metrics["loss"] = total
    return total, metrics
