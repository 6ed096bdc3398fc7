"""The gradient-cached step equals the plain step (with KD on too); rows
without teacher scores add no KD; remat recomputes; a step compiles once."""

import re

import jax
import numpy as np
import pytest
from flax import nnx

from e5jax.config import load_config, replace
from e5jax.loss import info_nce_reference, kd_loss, student_list_scores
from e5jax.model import axes as ax
from e5jax.train.loop import jit_steps
from e5jax.train.state import create_state, load_tokenizer, state_shardings
from e5jax.train.step import batch_loss, cached_grads, make_train_step, plain_loss

# Distillation on: KL(teacher || student) + InfoNCE; a teacher temperature other
# than 1 so that a row without teacher scores is only neutral if handled exactly.
KD = {"loss.kd_weight": 1.0, "loss.teacher_temperature": 2.0}
# AdamW with b1 = 0 keeps the step's gradient itself as its first moment: after
# one step `mu` is the gradient, parameter by parameter. No warm-up: the rate at
# step 0 is not 0, so the parameters move too.
GRADIENT_IN_MU = {"optim.b1": 0.0, "optim.warmup_steps": 0}


def step_gradients(state) -> dict:
    """The gradient of the step that produced `state` (see GRADIENT_IN_MU), by parameter path."""
    return {k[k.index("mu") + 1:]: np.asarray(v[...]) for k, v in nnx.to_flat_state(state) if "mu" in k}


def params(state) -> dict:
    return {k[1:]: np.asarray(v[...]) for k, v in nnx.to_flat_state(state) if k[0] == 0}


def assert_same_gradients(got: dict, want: dict, atol: float, name: str = "") -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert np.isfinite(got[k]).all(), (name, k)
        np.testing.assert_allclose(got[k], want[k], atol=atol, err_msg=f"{name} {k}")


def _batch(rng, B=16, L=24, K=0, teacher=False):
    b = {
        "query_input_ids": rng.integers(1000, 5000, (B, L)).astype(np.int32),
        "query_attention_mask": (np.arange(L)[None] < rng.integers(3, L + 1, (B, 1))).astype(np.int32),
        "passage_input_ids": rng.integers(1000, 5000, (B, L)).astype(np.int32),
        "passage_attention_mask": (np.arange(L)[None] < rng.integers(3, L + 1, (B, 1))).astype(np.int32),
        "passage_key": np.arange(B, dtype=np.int32),
    }
    b["passage_key"][3] = b["passage_key"][5]  # a duplicate passage in the batch
    b["passage_input_ids"][3] = b["passage_input_ids"][5]
    b["passage_attention_mask"][3] = b["passage_attention_mask"][5]
    if K:
        b["negative_input_ids"] = rng.integers(1000, 5000, (B, K, L)).astype(np.int32)
        b["negative_attention_mask"] = np.ones((B, K, L), np.int32)
        b["negative_key"] = (100 + np.arange(B * K, dtype=np.int32)).reshape(B, K)
    if teacher:  # cross-encoder scores of [positive, negatives]; records 6 and 9 have none (NaN rows)
        b["teacher_scores"] = (3 * rng.normal(size=(B, 1 + K))).astype(np.float32)
        b["teacher_scores"][6] = np.nan
        b["teacher_scores"][9, 1] = np.nan
    return b


def _cfg(tiny_overrides, **kw):
    cfg = load_config("configs/tiny_pretrain.py", tiny_overrides)
    return replace(cfg, **{"model.dropout": 0.1, **kw})


# 4 chunks, the last one's activations kept or not; one chunk (only the kept chunk, no scan);
# distillation on (teacher scores with missing rows) or off
@pytest.mark.parametrize("chunk,keep,kd", [(4, True, True), (4, False, False), (16, True, True)])
def test_cached_grads_equal_plain_grads_with_dropout_and_hard_negatives(tiny_overrides, chunk, keep, kd):
    cfg = _cfg(tiny_overrides, **{"train.grad_cache_chunk": chunk, "train.batch_size": 16,
                                  "train.grad_cache_keep_last": keep, **(KD if kd else {})})
    mesh = ax.make_mesh(cfg.mesh, jax.devices()[:1])
    graphdef, state = create_state(cfg, mesh)
    model, _ = nnx.merge(graphdef, state)
    batch = _batch(np.random.default_rng(0), K=2, teacher=kd)
    key = jax.random.key(3)
    (l1, m1), g1 = jax.jit(lambda m: nnx.value_and_grad(
        lambda mm: plain_loss(mm, batch, key, cfg, None), has_aux=True)(m))(model)
    (l2, m2), g2 = jax.jit(lambda m: cached_grads(m, batch, key, cfg, None))(model)
    assert np.isfinite(l1)
    np.testing.assert_allclose(l1, l2, atol=1e-5)
    np.testing.assert_allclose(m1["accuracy"], m2["accuracy"])
    if kd:  # the loss is KD + InfoNCE, and the KD term is not empty
        assert float(m1["kd_loss"]) > 0.05
        np.testing.assert_allclose(m2["kd_loss"], m1["kd_loss"], atol=1e-5)
        np.testing.assert_allclose(l1, m1["infonce_loss"] + m1["kd_loss"], rtol=1e-6)
    flat1, flat2 = dict(nnx.to_flat_state(g1)), dict(nnx.to_flat_state(g2))
    assert_same_gradients({k: np.asarray(v[...]) for k, v in flat2.items()},
                          {k: np.asarray(v[...]) for k, v in flat1.items()}, atol=1e-5)
    # dropout really is on: another key gives another gradient
    (_, _), g3 = jax.jit(lambda m: cached_grads(m, batch, jax.random.key(4), cfg, None))(model)
    k = ("bert", "layers", 0, "mlp_in", "kernel")
    assert not np.allclose(np.asarray(dict(nnx.to_flat_state(g3))[k][...]), np.asarray(flat1[k][...]), atol=1e-5)


def test_rows_without_teacher_scores_add_no_kd_loss_or_gradient(tiny_overrides):
    """`batch_loss` on embeddings against the dense formulas: InfoNCE over every
    row, plus KD over the rows that have teacher scores, divided by all rows."""
    cfg = _cfg(tiny_overrides, **KD)
    rng = np.random.default_rng(7)
    B, K, D = 8, 2, 16
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    q, p, neg = unit(rng.normal(size=(B, D))), unit(rng.normal(size=(B, D))), unit(rng.normal(size=(B, K, D)))
    teacher = (3 * rng.normal(size=(B, 1 + K))).astype(np.float32)
    teacher[2] = np.nan  # no teacher scores at all
    teacher[5, 0] = np.nan  # one missing score makes the row missing
    has = np.isfinite(teacher).all(axis=1)
    tau, t_tau = cfg.loss.temperature, cfg.loss.teacher_temperature

    def reference(q, p, neg):
        nce, _ = info_nce_reference(q, p, neg=neg, temperature=tau)
        kd = kd_loss(student_list_scores(q[has], p[has], neg[has], tau), teacher[has], teacher_temperature=t_tau)
        return nce + kd * has.sum() / B

    (loss, m), grads = jax.value_and_grad(lambda *e: batch_loss(*e, {"teacher_scores": teacher}, cfg, None),
                                          argnums=(0, 1, 2), has_aux=True)(q, p, neg)
    want, want_grads = jax.value_and_grad(reference, argnums=(0, 1, 2))(q, p, neg)
    assert np.isfinite(loss) and float(m["kd_loss"]) > 0.1
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    for g, w in zip(grads, want_grads):
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_cached_step_updates_params_like_plain_step_on_8_devices(tiny_overrides):
    """One step with distillation and hard negatives; the step's gradient (see
    GRADIENT_IN_MU) compared parameter by parameter, and the updated parameters."""
    results = {}
    batch_np = _batch(np.random.default_rng(1), K=2, teacher=True)
    for chunk in (0, 8):
        cfg = _cfg(tiny_overrides, **{"train.grad_cache_chunk": chunk, "train.batch_size": 16,
                                      "optim.learning_rate": 2e-5, **KD, **GRADIENT_IN_MU})
        mesh = ax.make_mesh(cfg.mesh)
        assert mesh.devices.size == 8
        graphdef, state = create_state(cfg, mesh)
        batch = {k: jax.device_put(v, ax.batch_sharding(mesh, v.ndim)) for k, v in batch_np.items()}
        with ax.axis_rules(mesh):
            new_state, metrics = jax.jit(make_train_step(cfg, graphdef, mesh))(state, batch)
        results[chunk] = (params(state), new_state, metrics)
    init, plain, m0 = results[0]
    _, cached, m8 = results[8]
    assert float(m0["kd_loss"]) > 0.05
    np.testing.assert_allclose(m8["loss"], m0["loss"], atol=1e-5)
    grads = step_gradients(plain)
    np.testing.assert_allclose(m0["grad_norm"], np.sqrt(sum((g ** 2).sum() for g in grads.values())), rtol=1e-5)
    assert_same_gradients(step_gradients(cached), grads, atol=1e-5)
    np.testing.assert_allclose(m8["grad_norm"], m0["grad_norm"], rtol=1e-5)
    moved = max(np.abs(params(plain)[k] - init[k]).max() for k in init)
    assert moved > 1e-5  # the rate at step 0 is not 0 (AdamW's first step moves a parameter by ~ the rate)
    for k, v in params(plain).items():
        np.testing.assert_allclose(params(cached)[k], v, atol=1e-6, err_msg=str(k))


def test_train_step_compiles_once_over_10_steps(tiny_overrides, pair_dataset):
    import chex

    from e5jax.data.ccpairs.builder import load_source
    from e5jax.data.global_batch import to_global
    from e5jax.data.pipeline import make_train_iterator

    cfg = _cfg(tiny_overrides, **{"data.num_buckets": 1, "train.batch_size": 16})
    mesh = ax.make_mesh(cfg.mesh)
    graphdef, state = create_state(cfg, mesh)
    it = make_train_iterator(load_source(*pair_dataset, "train"), tokenizer=load_tokenizer(cfg), cfg=cfg.data,
                             batch_size_per_process=16, process_index=0, process_count=1, seed=0)
    step, _ = jit_steps(cfg, graphdef, mesh, state_shardings(state, cfg, mesh),
                        wrap=lambda f: chex.assert_max_traces(f, n=1))
    losses = []
    with ax.axis_rules(mesh):
        for _ in range(10):
            state, m = step(state, to_global(next(it), mesh))
            losses.append(float(m["loss"]))
    assert step._cache_size() == 1
    assert len(set(losses)) == 10  # ten real, different steps ran


def _gelus(compiled) -> int:
    """GELU evaluations (erf) in a compiled program: one per layer, tower and forward pass."""
    return len(re.findall(r"\berf\(", compiled.as_text()))


def test_remat_composes_with_gradient_caching(tiny_overrides):
    """The E5 presets combine per-layer remat with gradient caching: the same
    gradients, and the compiled program really recomputes each layer."""
    base = _cfg(tiny_overrides, **{"train.grad_cache_chunk": 4, "train.batch_size": 16})
    batch = _batch(np.random.default_rng(2))
    key = jax.random.key(5)
    grads, gelus = [], []
    for remat in (False, True):
        cfg = replace(base, **{"model.remat": remat})
        mesh = ax.make_mesh(cfg.mesh, jax.devices()[:1])
        graphdef, state = create_state(cfg, mesh)
        model, _ = nnx.merge(graphdef, state)
        compiled = jax.jit(lambda m: cached_grads(m, batch, key, cfg, None)).lower(model).compile()
        _, g = compiled(model)
        grads.append(dict(nnx.to_flat_state(g)))
        gelus.append(_gelus(compiled))
    for k in grads[0]:
        np.testing.assert_allclose(np.asarray(grads[1][k][...]), np.asarray(grads[0][k][...]), atol=1e-6)
    # 2 layers x 2 towers: forwards in pass 1 (the head chunks' scan and the kept last
    # chunk) and pass 2 (the head chunks' VJP); remat adds one more in each of the
    # two differentiated forwards (the kept chunk's VJP and pass 2's).
    assert gelus == [2 * 2 * 3, 2 * 2 * 5], gelus
