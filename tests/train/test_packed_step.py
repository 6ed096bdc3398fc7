"""Packed towers — each in its own rows or all together in shared rows — give
the padded step's loss and gradients: 1 device and 4, plain and
gradient-cached, with dropout and hard negatives, in one row block (the tests'
setting) and in the CPU default of two; and a packed training run
through the real pipeline (both layouts) reports the padded run's losses."""

import jax
import numpy as np
from flax import nnx

from e5jax.config import resolve_row_blocks
from e5jax.data.packing import pack, pack_towers
from e5jax.model import axes as ax
from e5jax.train.state import create_state
from e5jax.train.step import cached_grads, make_train_step, plain_loss
from tests.train.test_step import GRADIENT_IN_MU, _batch, _cfg, assert_same_gradients, params, step_gradients


def to_packed(batch: dict, groups: int, blocks: int = 0, joint: bool = False) -> dict:
    """The same texts as `batch`'s padded towers, packed in `groups` groups
    (balanced over `blocks` blocks, in slot order, when given), each tower in
    its own rows or, `joint`, all towers in shared rows."""
    out = {k: v for k, v in batch.items() if not k.endswith(("_input_ids", "_attention_mask"))}
    towers = {}
    for tower in ("query", "passage", "negative"):
        if f"{tower}_input_ids" not in batch:
            continue
        ids, mask = batch[f"{tower}_input_ids"], batch[f"{tower}_attention_mask"]
        L = ids.shape[-1]
        ids, mask = ids.reshape(-1, L), mask.reshape(-1, L)
        towers[tower] = [row[: m.sum()] for row, m in zip(ids, mask)]
    L = 2 * batch["passage_input_ids"].shape[-1]  # rows twice the padded length: several texts share a row
    if joint:
        out.update(pack_towers(towers, groups=groups, pack_len=L, pad_id=0, blocks=blocks))
        return out
    for tower, texts in towers.items():
        packed = pack(texts, groups=groups, pack_len=L, pad_id=0, blocks=blocks)
        out.update({f"{tower}_{k}": v for k, v in packed.items()})
    return out


def test_packed_loss_and_grads_equal_padded_with_dropout_and_negatives(tiny_overrides):
    cfg = _cfg(tiny_overrides, **{"train.batch_size": 16, "train.grad_cache_chunk": 4})
    mesh = ax.make_mesh(cfg.mesh, jax.devices()[:1])
    graphdef, state = create_state(cfg, mesh)
    model, _ = nnx.merge(graphdef, state)
    padded = _batch(np.random.default_rng(0), K=2)
    packed = to_packed(padded, groups=4)  # 4 groups = the 4 gradient-cache chunks
    assert packed["passage_input_ids"].shape[1] < 4  # several texts per row
    balanced = to_packed(padded, groups=4, blocks=1)  # texts spread over the chunks by length
    assert "passage_order" in balanced and not (balanced["passage_order"] == np.arange(16)).all()
    joint = to_packed(padded, groups=4, blocks=1, joint=True)  # all three towers in shared rows
    assert joint["joint_input_ids"].shape[1] < (packed["query_input_ids"].shape[1]
                                                + packed["passage_input_ids"].shape[1]
                                                + packed["negative_input_ids"].shape[1])
    assert {"query_order", "passage_order", "negative_order"} <= set(joint) and "passage_input_ids" not in joint
    key = jax.random.key(3)

    def grads(fn, batch):
        (loss, m), g = jax.jit(fn)(model, batch)
        return float(loss), float(m["accuracy"]), {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(g)}

    plain = lambda m, b: nnx.value_and_grad(lambda mm: plain_loss(mm, b, key, cfg, None), has_aux=True)(m)  # noqa
    cached = lambda m, b: cached_grads(m, b, key, cfg, None)  # noqa: E731
    ref = grads(plain, padded)
    for got in (grads(plain, packed), grads(cached, packed), grads(plain, balanced), grads(cached, balanced),
                grads(plain, joint), grads(cached, joint)):
        np.testing.assert_allclose(got[0], ref[0], atol=1e-5)
        assert got[1] == ref[1]
        for k in ref[2]:
            np.testing.assert_allclose(got[2][k], ref[2][k], atol=2e-5, err_msg=str(k))


def test_packed_cached_step_on_4_devices_equals_padded_step_on_1(tiny_overrides):
    padded = _batch(np.random.default_rng(1))
    runs = {}
    joint_cached = to_packed(padded, groups=8, blocks=4, joint=True)
    # (name, grad_cache_chunk, devices, batch, model.row_blocks); row_blocks 0 = the
    # backend's default (2 on a CPU), the rest run the tests' single block.
    for name, chunk, ndev, batch, blocks in (("padded 1 device", 0, 1, padded, 1),
                                             ("packed 4 devices", 0, 4, to_packed(padded, groups=4), 1),
                                             ("packed cached 4 devices", 8, 4, to_packed(padded, groups=8), 1),
                                             ("balanced cached 4 devices", 8, 4,
                                              to_packed(padded, groups=8, blocks=4), 1),
                                             ("joint 4 devices", 0, 4, to_packed(padded, groups=4, joint=True), 1),
                                             ("joint cached 4 devices", 8, 4, joint_cached, 1),
                                             ("joint cached 4 devices, default row blocks", 8, 4, joint_cached, 0)):
        cfg = _cfg(tiny_overrides, **{"train.grad_cache_chunk": chunk, "train.batch_size": 16,
                                      "optim.learning_rate": 2e-5, "model.row_blocks": blocks, **GRADIENT_IN_MU})
        assert resolve_row_blocks(cfg.model) == (blocks or 2)
        mesh = ax.make_mesh(cfg.mesh, jax.devices()[:ndev])
        graphdef, state = create_state(cfg, mesh)
        batch = {k: jax.device_put(v, ax.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
        with ax.axis_rules(mesh):
            runs[name] = jax.jit(make_train_step(cfg, graphdef, mesh))(state, batch)
    # Each run's gradient, parameter by parameter (the first moment after one step,
    # see GRADIENT_IN_MU), and its parameters, which move at step 0.
    ref_state, ref_m = runs.pop("padded 1 device")
    ref_grads, ref_params = step_gradients(ref_state), params(ref_state)
    for name, (st, m) in runs.items():
        np.testing.assert_allclose(m["loss"], ref_m["loss"], atol=1e-5, err_msg=name)
        assert_same_gradients(step_gradients(st), ref_grads, atol=2e-5, name=name)
        np.testing.assert_allclose(m["grad_norm"], ref_m["grad_norm"], rtol=1e-4, err_msg=name)
        got = params(st)
        for k, v in ref_params.items():
            np.testing.assert_allclose(got[k], v, atol=1e-6, err_msg=f"{name} {k}")


def test_packed_training_run_reports_the_padded_runs_losses(tmp_path, tiny_overrides):
    import json

    from e5jax.config import load_config, replace
    from e5jax.train.loop import train

    losses = {}
    for layout in ("padded", "joint", "separate"):
        cfg = load_config("configs/tiny_pretrain.py", tiny_overrides)
        cfg = replace(cfg, **{"data.pack": layout != "padded", "data.pack_towers": layout if layout != "padded"
                              else "auto", "train.steps": 3, "train.batch_size": 16,
                              "train.grad_cache_chunk": 8, "train.eval_every": 0, "train.log_every": 1})
        workdir = tmp_path / layout
        train(cfg, str(workdir), log=lambda s: None)
        rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
        losses[layout] = [r["loss"] for r in rows if r["split"] == "train"]
    assert len(losses["joint"]) == 3
    np.testing.assert_allclose(losses["joint"], losses["padded"], atol=1e-4)
    np.testing.assert_allclose(losses["separate"], losses["padded"], atol=1e-4)
