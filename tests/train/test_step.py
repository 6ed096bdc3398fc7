"""The gradient-cached step equals the plain step; a step compiles once."""

import jax
import numpy as np
import pytest
from flax import nnx

from e5jax.config import load_config, replace
from e5jax.model import axes as ax
from e5jax.train.loop import jit_steps
from e5jax.train.state import create_state, load_tokenizer, state_shardings
from e5jax.train.step import cached_grads, make_train_step, plain_loss


def _batch(rng, B=16, L=24, K=0):
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
    return b


def _cfg(tiny_overrides, **kw):
    cfg = load_config("configs/tiny_pretrain.py", tiny_overrides)
    return replace(cfg, **{"model.dropout": 0.1, **kw})


# 4 chunks, the last one's activations kept or not; one chunk (only the kept chunk, no scan)
@pytest.mark.parametrize("chunk,keep", [(4, True), (4, False), (16, True)])
def test_cached_grads_equal_plain_grads_with_dropout_and_hard_negatives(tiny_overrides, chunk, keep):
    cfg = _cfg(tiny_overrides, **{"train.grad_cache_chunk": chunk, "train.batch_size": 16,
                                  "train.grad_cache_keep_last": keep})
    mesh = ax.make_mesh(cfg.mesh, jax.devices()[:1])
    graphdef, state = create_state(cfg, mesh)
    model, _ = nnx.merge(graphdef, state)
    batch = _batch(np.random.default_rng(0), K=2)
    key = jax.random.key(3)
    (l1, m1), g1 = jax.jit(lambda m: nnx.value_and_grad(
        lambda mm: plain_loss(mm, batch, key, cfg, None), has_aux=True)(m))(model)
    (l2, m2), g2 = jax.jit(lambda m: cached_grads(m, batch, key, cfg, None))(model)
    np.testing.assert_allclose(l1, l2, atol=1e-5)
    np.testing.assert_allclose(m1["accuracy"], m2["accuracy"])
    flat1, flat2 = dict(nnx.to_flat_state(g1)), dict(nnx.to_flat_state(g2))
    assert flat1.keys() == flat2.keys()
    for k in flat1:
        np.testing.assert_allclose(np.asarray(flat2[k][...]), np.asarray(flat1[k][...]), atol=1e-5, err_msg=str(k))
    # dropout really is on: another key gives another gradient
    (_, _), g3 = jax.jit(lambda m: cached_grads(m, batch, jax.random.key(4), cfg, None))(model)
    k = ("bert", "layers", 0, "mlp_in", "kernel")
    assert not np.allclose(np.asarray(dict(nnx.to_flat_state(g3))[k][...]), np.asarray(flat1[k][...]), atol=1e-5)


def test_cached_step_updates_params_like_plain_step_on_8_devices(tiny_overrides):
    results = {}
    batch_np = _batch(np.random.default_rng(1))
    for chunk in (0, 8):
        cfg = _cfg(tiny_overrides, **{"train.grad_cache_chunk": chunk, "train.batch_size": 16,
                                      "optim.learning_rate": 2e-5})
        mesh = ax.make_mesh(cfg.mesh)
        assert mesh.devices.size == 8
        graphdef, state = create_state(cfg, mesh)
        batch = {k: jax.device_put(v, ax.batch_sharding(mesh, v.ndim)) for k, v in batch_np.items()}
        with ax.axis_rules(mesh):
            new_state, metrics = jax.jit(make_train_step(cfg, graphdef, mesh))(state, batch)
        results[chunk] = (new_state, metrics)
    for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[8][0])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    np.testing.assert_allclose(results[0][1]["grad_norm"], results[8][1]["grad_norm"], rtol=1e-5)


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


def test_remat_composes_with_gradient_caching(tiny_overrides):
    """The E5 presets combine per-layer remat with gradient caching."""
    base = _cfg(tiny_overrides, **{"train.grad_cache_chunk": 4, "train.batch_size": 16})
    batch = _batch(np.random.default_rng(2))
    key = jax.random.key(5)
    grads = []
    for remat in (False, True):
        cfg = replace(base, **{"model.remat": remat})
        mesh = ax.make_mesh(cfg.mesh, jax.devices()[:1])
        graphdef, state = create_state(cfg, mesh)
        model, _ = nnx.merge(graphdef, state)
        _, g = jax.jit(lambda m: cached_grads(m, batch, key, cfg, None))(model)
        grads.append(dict(nnx.to_flat_state(g)))
    for k in grads[0]:
        np.testing.assert_allclose(np.asarray(grads[1][k][...]), np.asarray(grads[0][k][...]), atol=1e-6)
