"""The train step on a decoder with LoRA (the E5-mistral recipe): causal attention,
last-token pooling, the EOS the tokenizer appends, real instructed records.

The gradient-cached step equals the plain step, padded and packed (each tower in
its rows and all towers sharing rows), with attention and adapter dropout on, and
only the adapters are differentiated and updated.
"""

import dataclasses

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from e5jax.config import load_config, replace
from e5jax.data.pipeline import TokenizeBatch
from e5jax.model import axes as ax
from e5jax.train.state import create_state, load_tokenizer
from e5jax.train.step import cached_grads, make_train_step, plain_loss
from tests.decoder_tokenizer import build_tokenizer, debian_decoder_records
from tests.train.test_step import GRADIENT_IN_MU, params, step_gradients


@pytest.fixture(scope="session")
def decoder_tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.getbasetemp() / "decoder_tokenizer")


def assert_same_gradients(got: dict, want: dict, name: str = "") -> None:
    """Equal up to fp32 summation order: 2e-5 of the largest gradient entry."""
    assert got.keys() == want.keys(), name
    atol = 2e-5 * max(1.0, max(np.abs(w).max() for w in want.values()))
    for k in want:
        assert np.isfinite(got[k]).all(), (name, k)
        np.testing.assert_allclose(got[k], want[k], atol=atol, err_msg=f"{name} {k}")


def decoder_cfg(tokenizer_dir, **kw):
    cfg = load_config("configs/tiny_decoder_finetune.py", [f"model.tokenizer={tokenizer_dir}", "model.row_blocks=1"])
    # Dropout on: attention probabilities and the adapters' inputs.
    return replace(cfg, **{"model.dropout": 0.1, "model.lora_dropout": 0.1, "train.batch_size": 16,
                           "data.max_query_length": 64, **kw})


def with_random_adapters(model, seed=0):
    """B = 0 at init makes every A-gradient 0; random B's make both halves of each adapter count."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.LoRAParam)
    for path, v in nnx.to_flat_state(state):
        if path[-1] == "lora_b":
            v[...] = (0.05 * rng.standard_normal(v.shape)).astype(np.float32)
    nnx.update(model, state)
    return model


def batches(cfg, tokenizer, groups: int, blocks: int = 1):
    # A short instruction: two instructed queries fit in a packed row of 64 tokens.
    recs = debian_decoder_records(cfg.train.batch_size, start=40, instruction="Find the package")
    padded = TokenizeBatch(tokenizer, dataclasses.replace(cfg.data, pack=False)).map(recs)
    separate = TokenizeBatch(tokenizer, dataclasses.replace(cfg.data, pack=True, pack_towers="separate"),
                             groups, blocks).map(recs)
    joint = TokenizeBatch(tokenizer, dataclasses.replace(cfg.data, pack=True, pack_towers="joint"), groups,
                          blocks).map(recs)
    return padded, separate, joint


def test_every_text_ends_with_the_eos(decoder_tokenizer):
    cfg = decoder_cfg(decoder_tokenizer)
    tok = load_tokenizer(cfg)
    padded, _, joint = batches(cfg, tok, 4)
    for t in ("query", "passage", "negative"):
        ids, mask = padded[f"{t}_input_ids"], padded[f"{t}_attention_mask"]
        ids, mask = ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, mask.shape[-1])
        last = ids[np.arange(len(ids)), mask.sum(-1) - 1]
        assert (last == tok.eos_token_id).all(), t  # truncated texts too: the post-processor adds it last
    assert (padded["passage_attention_mask"].sum(-1) == cfg.data.max_passage_length).any()  # some were cut
    assert "joint_input_ids" in joint


def test_cached_grads_equal_plain_grads_causal_packed_lora_dropout(decoder_tokenizer):
    cfg = decoder_cfg(decoder_tokenizer, **{"train.grad_cache_chunk": 4})
    mesh = ax.make_mesh(cfg.mesh, jax.devices()[:1])
    graphdef, state = create_state(cfg, mesh)
    model = with_random_adapters(nnx.merge(graphdef, state)[0])
    padded, separate, joint = batches(cfg, load_tokenizer(cfg), groups=4)  # 4 groups = the 4 chunks
    assert separate["query_input_ids"].shape[1] < 4 and joint["joint_input_ids"].shape[1] < 12  # texts share rows
    key = jax.random.key(3)

    def grads(fn, batch, k=key):
        (loss, m), g = jax.jit(fn, static_argnums=())(model, batch, k)
        return float(loss), float(m["accuracy"]), {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(g)}

    wrt = nnx.DiffState(0, nnx.LoRAParam)
    plain = lambda m, b, k: nnx.value_and_grad(  # noqa: E731
        lambda mm: plain_loss(mm, b, k, cfg, None), argnums=wrt, has_aux=True)(m)
    cached = lambda m, b, k: cached_grads(m, b, k, cfg, None)  # noqa: E731
    ref = grads(plain, padded)
    assert ref[2] and all("lora" in path for path in ref[2])  # the adapters, nothing else
    n_lora = sum(v.size for _, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)))
    assert sum(g.size for g in ref[2].values()) == n_lora
    assert all(np.abs(g).max() > 0 for g in ref[2].values())
    # The padded plain step is the reference; packed rows (all towers sharing rows, the layout
    # the presets' equal lengths give) through gradient caching must give its loss and gradient.
    # (Each tower in rows of its own is the same encoder call per tower: test_packed_step.py.)
    for name, got in (("cached joint", grads(cached, joint)),):
        np.testing.assert_allclose(got[0], ref[0], atol=1e-5, err_msg=name)
        assert got[1] == ref[1], name
        assert_same_gradients(got[2], ref[2], name=name)
    # dropout really is on: another key, another gradient
    other = grads(cached, joint, jax.random.key(4))
    k = next(p for p in ref[2] if p[-1] == "lora_a")
    assert not np.allclose(other[2][k], ref[2][k], atol=1e-5)


def test_cached_step_equals_plain_step_and_moves_only_adapters_on_4_devices(decoder_tokenizer):
    """One jitted train step each (the step's gradient read from AdamW's mu with b1 = 0),
    on a 4-device mesh with packed joint rows."""
    results = {}
    for chunk in (0, 4):
        cfg = decoder_cfg(decoder_tokenizer, **{"train.grad_cache_chunk": chunk, "data.pack": True,
                                                "optim.learning_rate": 2e-5, "optim.clip_norm": 0.0,
                                                **GRADIENT_IN_MU})  # unclipped: mu is the raw gradient
        mesh = ax.make_mesh(cfg.mesh, jax.devices()[:4])
        graphdef, state = create_state(cfg, mesh)
        model, opt = nnx.merge(graphdef, state)
        with_random_adapters(model)
        state = nnx.state((model, opt))
        chunks = 16 // chunk if chunk else 1
        _, _, joint = batches(cfg, load_tokenizer(cfg), groups=4 * chunks, blocks=4)  # 4 devices' blocks
        batch = {k: jax.device_put(v, ax.batch_sharding(mesh, v.ndim)) for k, v in joint.items()}
        with ax.axis_rules(mesh):
            new_state, metrics = jax.jit(make_train_step(cfg, graphdef, mesh))(state, batch)
        results[chunk] = (params(state), new_state, metrics)
    init, plain, m0 = results[0]
    _, cached, m4 = results[4]
    np.testing.assert_allclose(m4["loss"], m0["loss"], atol=1e-5)
    grads = step_gradients(plain)
    assert grads and all("lora" in k for k in grads)  # moments for the adapters alone
    assert_same_gradients(step_gradients(cached), grads, "4 devices")
    after = params(plain)
    moved = {k for k in init if np.abs(after[k] - init[k]).max() > 0}
    assert moved and all("lora" in k for k in moved)  # the frozen base did not move
    assert len(moved) == len(grads)
    for k, v in after.items():
        np.testing.assert_allclose(params(cached)[k], v, atol=1e-6, err_msg=str(k))


# ------------------------------------------------------------------ learning


def _heldout_accuracy(cfg, state, graphdef) -> float:
    """Mean held-out in-batch accuracy over `train.eval_batches` batches (the loop's own evaluation)."""
    from e5jax.data.global_batch import to_global
    from e5jax.train.loop import _iterators
    from e5jax.train.step import make_eval_step

    mesh = ax.make_mesh(cfg.mesh)
    it = _iterators(cfg, load_tokenizer(cfg), cfg.data.eval_split, train=False, mesh=mesh)
    eval_fn = jax.jit(make_eval_step(cfg, graphdef, mesh))
    accs = [float(eval_fn(state, to_global(next(it), mesh, ax.BATCH_AXES))["accuracy"])
            for _ in range(cfg.train.eval_batches)]
    return float(np.mean(accs))


def test_tiny_decoder_preset_learns_on_real_pairs(decoder_tokenizer, tmp_path):
    """configs/tiny_decoder_finetune.py (random-init 2-layer Mistral, LoRA adapters only, last-token
    pooling, instructed queries) trained by `e5jax train`'s loop on Debian summary -> description
    records: held-out in-batch accuracy (chance 1/64 with the hard negatives) rises well above
    the starting model's on the same held-out batches."""
    import json

    from e5jax.data.ccpairs.builder import build_dataset
    from e5jax.train.loop import train

    with open(tmp_path / "ft.jsonl", "w") as f:
        for r in debian_decoder_records(3000, instruction="Find the package"):
            f.write(json.dumps(r) + "\n")
    build_dataset([tmp_path / "ft.jsonl"], data_dir=tmp_path / "tfds", name="debian_decoder", kind="finetune",
                  heldout_fraction=0.1)
    cfg = load_config("configs/tiny_decoder_finetune.py", [
        f"data.data_dir={tmp_path / 'tfds'}", "data.name=debian_decoder", f"model.tokenizer={decoder_tokenizer}",
        "data.num_buckets=1", "train.steps=100", "train.eval_batches=4", "train.checkpoint_every=100000",
        "train.log_every=1000"])
    graphdef, state = create_state(cfg, ax.make_mesh(cfg.mesh))  # train()'s starting model (same seed)
    start = _heldout_accuracy(cfg, state, graphdef)
    end = train(cfg, str(tmp_path / "work"), log=lambda s: None)["heldout_accuracy"]
    print(f"held-out in-batch accuracy: start {start:.3f}, after 100 steps {end:.3f}")
    assert start < 0.15 and end > start + 0.15 and end > 2.5 * start
    # The checkpoint holds the trained adapters (and the frozen base): restored, the model
    # scores the held-out batches as the run's own final evaluation did.
    from e5jax.loading import restore_workdir
    from e5jax.model.decoder import DecoderTextEncoder

    model, _, saved = restore_workdir(str(tmp_path / "work"), mesh=ax.make_mesh(cfg.mesh))
    assert isinstance(model, DecoderTextEncoder) and saved.model.lora_rank == cfg.model.lora_rank
    assert all(v[...].any() for p, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)) if p[-1] == "lora_b")
    restored = nnx.split((model, nnx.Optimizer(model, optax.sgd(0.0), wrt=nnx.LoRAParam)))
    np.testing.assert_allclose(_heldout_accuracy(cfg, restored[1], restored[0]), end, atol=1e-6)


# ------------------------------------------------------------------ presets and refusals


def test_e5_mistral_preset_has_the_papers_settings():
    from e5jax.train.state import decoder_config

    cfg = load_config("configs/e5_mistral_7b_finetune.py")
    m = cfg.model
    assert (m.family, m.pooling, m.normalize, m.lora_rank, m.lora_alpha, m.remat) == ("decoder", "last", True, 16,
                                                                                       32.0, True)
    assert set(m.lora_targets) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert cfg.loss.temperature == 0.02 and cfg.train.batch_size == 2048 and cfg.data.num_hard_negatives == 1
    assert cfg.data.max_query_length == cfg.data.max_passage_length == 512 and cfg.optim.learning_rate == 1e-4
    assert cfg.data.query_prefix == cfg.data.passage_prefix == ""  # the instruction lives in the query text
    assert cfg.train.batch_size % cfg.train.grad_cache_chunk == 0 and cfg.train.steps == 879  # 1.8M / 2048
    dec = decoder_config(replace(cfg, **{"model.init": ""}))  # from its architecture file
    assert (dec.model_type, dec.num_hidden_layers, dec.hidden_size, dec.num_key_value_heads, dec.vocab_size) == \
        ("mistral", 32, 4096, 8, 32000)
    assert "--topology v5p-64" in open("configs/e5_mistral_7b_finetune.py").read()


@pytest.mark.parametrize("preset,sets,needle", [
    ("tiny_pretrain.py", ["model.pooling=last"], "model.pooling='last' is for decoders"),
    ("tiny_pretrain.py", ["model.lora_rank=4"], "LoRA is implemented for decoders"),
    ("tiny_decoder_finetune.py", ["model.pooling=cls"], "decoders pool 'last'"),
    ("tiny_decoder_finetune.py", ["model.family=gpt"], "model.family must be one of"),
    ("tiny_decoder_finetune.py", ["model.lora_dropout=1.0"], "model.lora_dropout must be in"),
])
def test_decoder_settings_are_refused_in_one_line(preset, sets, needle):
    from e5jax.errors import E5Error
    from e5jax.train.state import abstract_state

    with pytest.raises(E5Error, match=needle) as e:
        abstract_state(load_config(f"configs/{preset}", sets), ax.make_mesh(devices=jax.devices()[:1]))
    assert "\n" not in str(e.value)
