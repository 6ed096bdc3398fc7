"""e5jax.loss: every optimised path (sharded, blockwise) against the plain dense formula."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from e5jax.config import LossConfig
from e5jax.errors import E5Error
from e5jax.loss import e5_loss, info_nce, info_nce_reference, kd_loss, student_list_scores

TOL = dict(rtol=1e-5, atol=1e-5)
D = 8


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _batch(b, k, seed=0, n_keys=None):
    """Unit q, p (correlated with q, as mid-training), neg, and keys with duplicates."""
    rng = np.random.default_rng(seed)
    q = _unit(rng.normal(size=(b, D)))
    p = _unit(q + 0.8 * rng.normal(size=(b, D)))
    neg = _unit(rng.normal(size=(b, k, D))) if k else None
    n_keys = n_keys or max(1, b // 2)  # about half the passages have a twin
    pk = rng.integers(0, n_keys, size=b).astype(np.int32)
    nk = rng.integers(0, n_keys, size=(b, k)).astype(np.int32) if k else None
    return q, p, neg, pk, nk


def _mesh(shape):
    names = ("data", "fsdp", "tensor")[: len(shape)]
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))


def _shard(mesh, *xs):
    """Global arrays split over rows across the batch axes of `mesh` (replicated over tensor)."""
    spec = NamedSharding(mesh, P(tuple(a for a in mesh.axis_names if a != "tensor")))
    return [None if x is None else jax.device_put(x, spec) for x in xs]


def _value_and_grads(fn, q, p, neg, **kw):
    """(loss, metrics), d loss / d (q, p[, neg]) of fn, jitted."""
    if neg is None:
        f = lambda q, p: fn(q, p, **kw)  # noqa: E731
        args = (q, p)
    else:
        f = lambda q, p, n: fn(q, p, neg=n, **kw)  # noqa: E731
        args = (q, p, neg)
    (loss, metrics), grads = jax.jit(
        jax.value_and_grad(f, argnums=tuple(range(len(args))), has_aux=True)
    )(*args)
    return loss, metrics, grads


def _assert_same(got, want):
    (l1, m1, g1), (l2, m2, g2) = got, want
    np.testing.assert_allclose(l1, l2, **TOL)
    assert set(m1) == set(m2)
    for k in m1:
        assert m1[k].dtype == jnp.float32 and m1[k].shape == (), k
        np.testing.assert_allclose(m1[k], m2[k], **TOL, err_msg=k)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, **TOL)


# ------------------------------------------------------------ hand-computed


def test_tiny_case_by_hand():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    p = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    tau = 0.5
    # logits row 0: [1, 0.6]/tau, row 1: [0, 0.8]/tau; targets on the diagonal.
    l0 = math.log(math.exp(1 / tau) + math.exp(0.6 / tau)) - 1 / tau
    l1 = math.log(math.exp(0.0) + math.exp(0.8 / tau)) - 0.8 / tau
    for fn in (info_nce, info_nce_reference):
        loss, m = fn(q, p, temperature=tau)
        np.testing.assert_allclose(loss, (l0 + l1) / 2, rtol=1e-6)
        np.testing.assert_allclose(m["accuracy"], 1.0)
        np.testing.assert_allclose(m["pos_score"], (1.0 + 0.8) / 2, rtol=1e-6)
        np.testing.assert_allclose(m["neg_score"], (0.6 + 0.0) / 2, rtol=1e-6)


def test_tiny_case_with_hard_negatives_and_duplicates_by_hand():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    p = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    neg = np.array([[[0.0, 1.0]], [[0.8, 0.6]]], np.float32)
    pk = np.array([1, 2], np.int32)
    nk = np.array([[2], [9]], np.int32)  # neg of query 0 is the same text as p_1
    # Candidates [p0, p1, n0, n1]. Query 1's positive has key 2, so n0 (key 2)
    # is masked for query 1; nothing matches key 1, so query 0 sees all four.
    r0 = [1.0, 0.6, 0.0, 0.8]
    r1 = [0.0, 0.8, 0.6]  # n0 (cosine 1.0) removed
    l0 = math.log(sum(math.exp(x) for x in r0)) - 1.0
    l1 = math.log(sum(math.exp(x) for x in r1)) - 0.8
    kw = dict(temperature=1.0, neg=neg, passage_keys=pk, negative_keys=nk)
    for fn in (info_nce, info_nce_reference):
        loss, m = fn(q, p, **kw)
        np.testing.assert_allclose(loss, (l0 + l1) / 2, rtol=1e-6)
        # Masked n0 would have won query 1's argmax (1.0 > 0.8).
        np.testing.assert_allclose(m["accuracy"], 1.0)
        np.testing.assert_allclose(m["neg_score"], (0.6 + 0.0 + 0.8 + 0.0 + 0.6) / 5, rtol=1e-6)
        _, m_off = fn(q, p, **kw, mask_duplicates=False)
        np.testing.assert_allclose(m_off["accuracy"], 0.5)


def test_identical_passages_are_not_negatives():
    q = _unit(np.array([[1.0, 0.2], [0.3, 1.0]]))
    p = _unit(np.array([[1.0, 1.0], [1.0, 1.0]]))  # the same text twice
    for fn in (info_nce, info_nce_reference):
        loss, m = fn(q, p, passage_keys=np.array([5, 5], np.int32))
        np.testing.assert_allclose(loss, 0.0, atol=1e-6)  # only the own positive is left
        np.testing.assert_allclose(m["neg_score"], 0.0)  # no unmasked negative at all
        loss_off, _ = fn(q, p, passage_keys=np.array([5, 5], np.int32), mask_duplicates=False)
        np.testing.assert_allclose(loss_off, math.log(2.0), atol=1e-5)


# --------------------------------------------------------- single device


@pytest.mark.parametrize(
    "k,keys,block_size",
    [
        (0, False, 0),
        (2, False, 0),
        (0, True, 4),
        (2, True, 0),
        (2, True, 4),
        (2, True, 5),  # 5 does not divide 16: padded rows
    ],
)
def test_single_device_matches_reference(k, keys, block_size):
    q, p, neg, pk, nk = _batch(16, k, seed=k)
    kw = dict(passage_keys=pk, negative_keys=nk) if keys else {}
    got = _value_and_grads(info_nce, q, p, neg, block_size=block_size, **kw)
    want = _value_and_grads(info_nce_reference, q, p, neg, **kw)
    _assert_same(got, want)


@settings(max_examples=6, deadline=None)
@given(
    b=st.integers(1, 11),
    k=st.integers(0, 2),
    block_size=st.integers(0, 12),
    seed=st.integers(0, 2**16),
)
def test_blockwise_matches_reference_property(b, k, block_size, seed):
    q, p, neg, pk, nk = _batch(b, k, seed=seed, n_keys=3)
    kw = dict(passage_keys=pk, negative_keys=nk)
    got = _value_and_grads(info_nce, q, p, neg, block_size=block_size, **kw)
    want = _value_and_grads(info_nce_reference, q, p, neg, **kw)
    _assert_same(got, want)


def test_negatives_without_keys_are_never_masked():
    q, p, neg, pk, _ = _batch(8, 2, seed=3, n_keys=2)
    got = _value_and_grads(info_nce, q, p, neg, passage_keys=pk, block_size=3)
    want = _value_and_grads(info_nce_reference, q, p, neg, passage_keys=pk)
    _assert_same(got, want)


# ------------------------------------------------------ 8 emulated devices


@pytest.mark.parametrize(
    "shape,k,keys,block_size",
    [
        ((4, 2), 0, False, 0),
        ((4, 2), 2, True, 0),
        ((8,), 2, True, 0),
        ((4, 2), 0, True, 3),  # 4 local rows in blocks of 3: padded
        ((4, 2), 2, True, 2),
        ((8,), 1, False, 1),
        ((2, 2, 2), 2, True, 3),  # a tensor axis: rows split 4 ways, replicated over tensor
    ],
)
def test_sharded_matches_reference(shape, k, keys, block_size):
    assert jax.device_count() == 8
    mesh = _mesh(shape)
    q, p, neg, pk, nk = _batch(32, k, seed=11 + k)
    kw = dict(passage_keys=pk, negative_keys=nk) if keys else {}
    want = _value_and_grads(info_nce_reference, q, p, neg, **kw)
    qs, ps, ns, pks, nks = _shard(mesh, q, p, neg, pk, nk)
    kws = dict(passage_keys=pks, negative_keys=nks) if keys else {}
    got = _value_and_grads(info_nce, qs, ps, ns, mesh=mesh, block_size=block_size, **kws)
    _assert_same(got, want)
    # The gradients come back split over rows like the inputs, not gathered.
    assert got[2][0].sharding.is_equivalent_to(qs.sharding, 2)


def _f32_buffers(fn, *shapes, shardings):
    """Shapes of all f32 arrays (any rank) in the compiled HLO of value_and_grad(fn).

    After SPMD partitioning the HLO is per device, so a replicated full logit
    matrix would show up here whole, and so would a scan's stacked residuals.
    """
    args = [jax.ShapeDtypeStruct(s, jnp.float32, sharding=sh) for s, sh in zip(shapes, shardings)]
    grad = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(args)))))
    text = grad.lower(*args).compile().as_text()
    return {tuple(map(int, m.split(","))) for m in re.findall(r"f32\[([\d,]+)\]", text)}


def _largest(buffers):
    return max(math.prod(s) for s in buffers)


def test_sharded_logits_are_row_sharded_in_compiled_hlo():
    # B = 40 over 8 devices: 5 rows each. The full logits would be f32[40,40]
    # (1600 values); each device's row block is f32[5,40]. D = 4 keeps every
    # other buffer (e.g. gathered candidates [40,4]) below one device's rows.
    b, d, mesh = 40, 4, _mesh((4, 2))
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    repl = NamedSharding(mesh, P())
    sharded = _f32_buffers(
        lambda q, p: info_nce(q, p, mesh=mesh)[0], (b, d), (b, d), shardings=(rows, rows)
    )
    assert (5, b) in sharded
    assert _largest(sharded) < b * b  # nothing the size of the whole matrix
    # With blocks of 2 rows and recomputation, not even the device's 5x40
    # rows exist at once, neither as one matrix nor as stacked per-block residuals.
    blocked = _f32_buffers(
        lambda q, p: info_nce(q, p, mesh=mesh, block_size=2)[0],
        (b, d),
        (b, d),
        shardings=(rows, rows),
    )
    assert (2, b) in blocked
    assert _largest(blocked) < 5 * b
    # Negative control: the detector does see a whole-matrix computation.
    whole = _f32_buffers(
        lambda q, p: info_nce_reference(q, p)[0], (b, d), (b, d), shardings=(repl, repl)
    )
    assert (b, b) in whole


def test_blockwise_never_builds_the_full_matrix_on_one_device():
    b, d, block = 48, 4, 8
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    blocked = _f32_buffers(
        lambda q, p: info_nce(q, p, block_size=block)[0], (b, d), (b, d), shardings=(one, one)
    )
    assert (block, b) in blocked
    # One block's logits at most: without jax.checkpoint the backward pass
    # would keep all blocks' logits as an f32[6,8,48] residual.
    assert _largest(blocked) <= block * b
    dense = _f32_buffers(lambda q, p: info_nce(q, p)[0], (b, d), (b, d), shardings=(one, one))
    assert (b, b) in dense  # control: without blocks it is there


# ---------------------------------------------------------------- numerics


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("block_size", [0, 4])
def test_low_precision_inputs_give_fp32_loss(dtype, block_size):
    q, p, neg, pk, nk = _batch(16, 2, seed=5)
    low = [jnp.asarray(x, dtype) for x in (q, p, neg)]
    rounded = [x.astype(jnp.float32) for x in low]  # the same values, in fp32
    kw = dict(temperature=0.01, passage_keys=pk, negative_keys=nk)
    loss, m, grads = _value_and_grads(info_nce, *low, block_size=block_size, **kw)
    want, _ = info_nce_reference(*rounded[:2], neg=rounded[2], **kw)
    assert loss.dtype == jnp.float32 and np.isfinite(loss)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert all(bool(jnp.all(jnp.isfinite(g.astype(jnp.float32)))) for g in grads)
    # Teeth: the same formula with logits kept in the input dtype misses by far
    # more than the tolerance above (bf16: ~1%, fp16: ~0.04% at these sizes).
    naive = jax.nn.logsumexp((low[0] @ low[1].T) / jnp.asarray(0.01, dtype), axis=1)
    naive = jnp.mean(naive - jnp.diagonal(low[0] @ low[1].T) / jnp.asarray(0.01, dtype))
    exact, _ = info_nce_reference(*rounded[:2], temperature=0.01)
    assert not np.isfinite(naive) or abs(float(naive) - float(exact)) > 1e-4 * abs(float(exact))


# ----------------------------------------------------------- distillation


@pytest.mark.parametrize("teacher_temperature", [1.0, 2.5])
def test_kd_loss_matches_torch(teacher_temperature):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    student = (rng.normal(size=(6, 5)) * 3).astype(np.float32)
    teacher = (rng.normal(size=(6, 5)) * 3).astype(np.float32)
    s = torch.tensor(student, requires_grad=True)
    ref = torch.nn.functional.kl_div(
        torch.log_softmax(s, dim=-1),
        torch.softmax(torch.tensor(teacher) / teacher_temperature, dim=-1),
        reduction="batchmean",
    )
    ref.backward()
    val, grad = jax.value_and_grad(kd_loss)(
        student, teacher, teacher_temperature=teacher_temperature
    )
    assert val.dtype == jnp.float32
    np.testing.assert_allclose(val, ref.item(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, s.grad.numpy(), rtol=1e-5, atol=1e-7)
    # The teacher is a target, not something to train.
    assert not np.any(jax.grad(lambda t: kd_loss(student, t))(teacher))


def test_student_list_scores_is_each_querys_own_list():
    q, p, neg, *_ = _batch(4, 3, seed=2)
    got = student_list_scores(q, p, neg, 0.05)
    want = np.concatenate([np.sum(q * p, -1)[:, None], np.einsum("bd,bkd->bk", q, neg)], 1) / 0.05
    assert got.shape == (4, 4) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5)


def _e5_reference(q, p, neg, teacher, cfg, pk, nk):
    kd = kd_loss(
        student_list_scores(q, p, neg, cfg.temperature),
        teacher,
        teacher_temperature=cfg.teacher_temperature,
    )
    nce, m = info_nce_reference(
        q, p, temperature=cfg.temperature, neg=neg, passage_keys=pk, negative_keys=nk
    )
    m = {"infonce_loss": nce, "kd_loss": kd, **{k: v for k, v in m.items() if k != "loss"}}
    total = cfg.kd_weight * kd + cfg.infonce_weight * nce
    return total, {**m, "loss": total}


@pytest.mark.parametrize("block_size", [0, 3])
def test_e5_loss_sharded_matches_reference(block_size):
    cfg = LossConfig(
        temperature=0.02,
        kd_weight=1.0,
        infonce_weight=0.3,
        teacher_temperature=2.0,
        block_size=block_size,
    )
    mesh = _mesh((4, 2))
    q, p, neg, pk, nk = _batch(32, 3, seed=9)
    teacher = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32) * 4
    want = _value_and_grads(
        lambda q, p, neg: _e5_reference(q, p, neg, teacher, cfg, pk, nk), q, p, neg
    )
    qs, ps, ns, pks, nks, ts = _shard(mesh, q, p, neg, pk, nk, teacher)
    sharded = lambda q, p, neg: e5_loss(  # noqa: E731
        q, p, neg, ts, cfg, passage_keys=pks, negative_keys=nks, mesh=mesh
    )
    got = _value_and_grads(sharded, qs, ps, ns)
    _assert_same(got, want)
    assert float(got[1]["kd_loss"]) > 0.01  # KD really contributes


def test_e5_loss_without_kd_is_info_nce():
    q, p, _, pk, _ = _batch(8, 0)
    loss, m = e5_loss(q, p, None, None, LossConfig(temperature=0.05), passage_keys=pk)
    want, _ = info_nce_reference(q, p, temperature=0.05, passage_keys=pk)
    np.testing.assert_allclose(loss, want, **TOL)
    assert "kd_loss" not in m


# ------------------------------------------------------------------ errors


def test_user_errors_are_e5errors():
    q, p, neg, pk, _ = _batch(12, 2)
    with pytest.raises(E5Error, match="multiple of 8"):
        info_nce(q, p, mesh=_mesh((4, 2)))
    with pytest.raises(E5Error, match="neg must be"):
        info_nce(q, p, neg=neg[:, :, :4])
    with pytest.raises(E5Error, match="block_size"):
        info_nce(q, p, block_size=-1)
    with pytest.raises(E5Error, match="temperature"):
        info_nce(q, p, temperature=0.0)
    with pytest.raises(E5Error, match="passage_keys"):
        info_nce(q, p, passage_keys=pk[:3])
    with pytest.raises(E5Error, match="teacher_scores"):
        e5_loss(q, p, neg, None, LossConfig(kd_weight=1.0))
    with pytest.raises(E5Error, match=r"\[B, 1\+K\]"):
        kd_loss(np.zeros((2, 3)), np.zeros((2, 4)))
