"""LoRA on the decoder encoder (Flax's nnx.LoRA / nnx.LoRAParam): a fresh adapter
changes nothing, the optimizer holds the adapters alone, and merged weights
compute what base + adapters compute."""

import jax
import numpy as np
import pytest
from flax import nnx

from e5jax.config import load_config, replace
from e5jax.decoder_export import adapters, merged_model, merged_params
from e5jax.model import axes as ax
from e5jax.model import hf_decoder
from e5jax.model.decoder import create_decoder_sharded
from e5jax.train.state import create_state, decoder_config
from tests.decoder_tokenizer import build_tokenizer, debian_decoder_records


@pytest.fixture(scope="session")
def decoder_tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.getbasetemp() / "decoder_tokenizer")


@pytest.fixture(scope="module")
def setup(decoder_tokenizer):
    from transformers import AutoTokenizer

    cfg = load_config("configs/tiny_decoder_finetune.py", [f"model.tokenizer={decoder_tokenizer}"])
    tok = AutoTokenizer.from_pretrained(str(decoder_tokenizer))
    recs = debian_decoder_records(12, start=7)
    texts = [r["query"] for r in recs] + [r["positive"] for r in recs]
    enc = tok(texts, padding=True, truncation=True, max_length=48, return_tensors="np")
    mesh = ax.make_mesh(cfg.mesh, jax.devices()[:1])
    return cfg, mesh, enc["input_ids"], enc["attention_mask"]


def embed(model, ids, mask):
    return np.asarray(nnx.jit(lambda m, i, k: m(i, k))(model, ids, mask))


def randomise_adapters(model, seed=0, std=0.05):
    """A trained adapter: B no longer zero."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.LoRAParam)
    for path, v in nnx.to_flat_state(state):
        if path[-1] == "lora_b":
            v[...] = (std * rng.standard_normal(v.shape)).astype(np.float32)
    nnx.update(model, state)
    return model


def test_zero_initialised_adapter_gives_the_base_embeddings_exactly(setup):
    cfg, mesh, ids, mask = setup
    dec = decoder_config(cfg)
    base = create_decoder_sharded(dec, mesh, seed=3, pooling="last")  # a "pre-trained" base model
    weights = hf_decoder.model_params(base)
    with_lora = create_decoder_sharded(dec, mesh, params=weights, pooling="last", lora_rank=8, lora_alpha=16.0)
    pairs = adapters(with_lora)
    assert len(pairs) == 7 * dec.num_hidden_layers  # q, k, v, o, gate, up, down in every layer
    assert all(np.abs(a).max() > 0 and not b.any() for a, b in pairs.values())  # A random, B zero
    want = embed(base, ids, mask)
    np.testing.assert_array_equal(embed(with_lora, ids, mask), want)
    randomise_adapters(with_lora)  # and the adapters are really on the forward path
    assert np.abs(embed(with_lora, ids, mask) - want).max() > 1e-3


def _sizes(state, keyword: str) -> int:
    return sum(v.size for path, v in nnx.to_flat_state(state) if keyword in path)


def test_optimizer_state_holds_only_the_adapters(setup):
    cfg, mesh, _, _ = setup
    _, state = create_state(cfg, mesh)
    model_state, opt_state = state[0], state[1]
    lora = sum(v.size for _, v in nnx.to_flat_state(nnx.state(nnx.merge(*nnx.split(model_state)), nnx.LoRAParam)))
    total = sum(v.size for _, v in nnx.to_flat_state(model_state))
    dec = decoder_config(cfg)
    H, I, r, L = dec.hidden_size, dec.intermediate_size, cfg.model.lora_rank, dec.num_hidden_layers
    nq, nkv = dec.num_attention_heads * dec.head_dim, dec.num_key_value_heads * dec.head_dim
    per_layer = r * ((H + nq) + 2 * (H + nkv) + (nq + H) + 2 * (H + I) + (I + H))
    assert lora == L * per_layer and lora < total / 10
    # AdamW: one first and one second moment per adapter entry, nothing for the frozen base.
    assert _sizes(opt_state, "mu") == _sizes(opt_state, "nu") == lora
    full = replace(cfg, **{"model.lora_rank": 0})
    _, state0 = create_state(full, mesh)
    assert _sizes(state0[1], "mu") == sum(v.size for _, v in nnx.to_flat_state(state0[0]))


def test_merged_and_unmerged_forwards_agree(setup):
    cfg, mesh, ids, mask = setup
    model = create_decoder_sharded(decoder_config(cfg), mesh, seed=1, pooling="last", lora_rank=8, lora_alpha=16.0)
    randomise_adapters(model, std=0.1)
    merged = merged_model(model, mesh)
    assert not nnx.state(merged, nnx.LoRAParam)  # a plain decoder: no adapters left
    got, want = embed(merged, ids, mask), embed(model, ids, mask)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The merge really moved the weights (alpha / r = 2 times A B).
    a, b = adapters(model)["layers/0/attn/q_proj"]
    w0 = hf_decoder.model_params(model)["layers/0/attn/q_proj/kernel"]
    np.testing.assert_allclose(merged_params(model)["layers/0/attn/q_proj/kernel"], w0 + 2.0 * a @ b, atol=1e-6)
