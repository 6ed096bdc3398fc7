"""Parameters carry the rules table's shardings on a (data=2, fsdp=2, tensor=2)
mesh, and the sharded forward pass equals the single-device one."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from e5jax.config import DEFAULT_RULES, MeshConfig
from e5jax.model import axes as ax
from e5jax.model.bert import BertConfig
from e5jax.model.encoder import create_sharded
from e5jax.model.hf import flatten_state

CFG = BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=64)


def test_logical_to_spec_rules():
    assert ax.logical_to_spec(("vocab", "embed"), DEFAULT_RULES) == P("tensor", "fsdp")
    assert ax.logical_to_spec(("batch", "length", "act_embed"), DEFAULT_RULES) == P(("data", "fsdp"), None, None)
    # a mesh axis is used once per array
    assert ax.logical_to_spec(("embed", "embed"), DEFAULT_RULES) == P("fsdp", None)


def test_params_sharded_by_rules_and_forward_matches_single_device():
    assert jax.device_count() == 8
    mesh = ax.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    model = create_sharded(CFG, mesh, seed=3)
    flat = flatten_state(nnx.state(model, nnx.Param))
    expected = {
        "bert/embeddings/word": P("tensor", "fsdp"),
        "bert/embeddings/position": P(None, "fsdp"),
        "bert/layers/0/attention/query/kernel": P("fsdp", "tensor"),
        "bert/layers/0/attention/out/kernel": P("tensor", "fsdp"),
        "bert/layers/1/mlp_in/kernel": P("fsdp", "tensor"),
        "bert/layers/1/mlp_in/bias": P("tensor"),
        "bert/layers/1/mlp_out/kernel": P("tensor", "fsdp"),
        "bert/layers/1/norm/scale": P(None),
    }
    for path, spec in expected.items():
        sh = flat[path][...].sharding
        assert sh.mesh.shape == mesh.shape and sh.spec == spec, (path, sh)
    # every parameter's sharding is exactly what the rules table says
    specs = flatten_state(ax.state_specs(nnx.state(model, nnx.Param), DEFAULT_RULES, mesh))
    for path, var in flat.items():
        assert var[...].sharding.spec == specs[path], path
    # a shard really is a slice: the word table is split 2x2
    assert flat["bert/embeddings/word"][...].addressable_shards[0].data.shape == (64, 32)

    single_mesh = ax.make_mesh(MeshConfig(), jax.devices()[:1])
    single = create_sharded(CFG, single_mesh, seed=3)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 128, size=(8, 16)).astype(np.int32)
    mask = (np.arange(16)[None] < rng.integers(1, 17, size=(8, 1))).astype(np.int32)
    want = np.asarray(jax.jit(lambda i, m: single(i, m))(ids, mask))

    sh = ax.batch_sharding(mesh, 2)
    with ax.axis_rules(mesh):
        got = jax.jit(lambda i, m: model(i, m))(jax.device_put(ids, sh), jax.device_put(mask, sh))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    hidden = jax.jit(lambda i, m: model.bert(i, m))(jax.device_put(ids, sh), jax.device_put(mask, sh))
    want_h = np.asarray(jax.jit(lambda i, m: single.bert(i, m))(ids, mask))
    np.testing.assert_allclose(np.asarray(hidden), want_h, atol=1e-5)


def test_remat_and_dropout_are_deterministic_per_key():
    mesh = ax.make_mesh(MeshConfig(), jax.devices()[:1])
    plain = create_sharded(CFG, mesh, seed=1)
    remat = create_sharded(CFG, mesh, seed=1, remat=True)
    ids = jnp.arange(32, dtype=jnp.int32).reshape(2, 16) % 127 + 1
    mask = jnp.ones_like(ids)
    key = jax.random.key(7)
    a = plain(ids, mask, dropout_key=key)
    b = remat(ids, mask, dropout_key=key)
    c = plain(ids, mask, dropout_key=jax.random.key(8))
    d = plain(ids, mask)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(a, c) and not np.allclose(a, d)
    g1 = nnx.grad(lambda m: m(ids, mask, dropout_key=key).sum())(plain)
    g2 = nnx.grad(lambda m: m(ids, mask, dropout_key=key).sum())(remat)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(x, y, atol=1e-5)


def test_random_init_on_the_host_equals_init_on_the_mesh(monkeypatch):
    """Random weights are drawn on the host, then placed; where no host backend
    exists (JAX_PLATFORMS without cpu) they are drawn on the mesh: same values."""
    mesh = ax.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    host = flatten_state(nnx.state(create_sharded(CFG, mesh, seed=3), nnx.Param))
    real = jax.local_devices

    def no_host_backend(*args, backend=None, **kwargs):
        if backend == "cpu":
            raise RuntimeError("Unknown backend cpu")
        return real(*args, backend=backend, **kwargs)

    monkeypatch.setattr(jax, "local_devices", no_host_backend)
    on_mesh = flatten_state(nnx.state(create_sharded(CFG, mesh, seed=3), nnx.Param))
    assert host.keys() == on_mesh.keys()
    for path in host:
        a, b = host[path][...], on_mesh[path][...]
        assert a.sharding == b.sharding, path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)
    # and the seed matters (the comparison is not between two constant tables)
    other = flatten_state(nnx.state(create_sharded(CFG, mesh, seed=4), nnx.Param))
    assert not np.allclose(np.asarray(other["bert/embeddings/word"][...]), np.asarray(host["bert/embeddings/word"][...]))
