"""The decoder (e5jax/model/decoder.py) against transformers' torch models.

Small random-initialised configs of each family, saved with `save_pretrained`
and loaded through the mapping table (hf_decoder.py): Llama with llama3 RoPE
scaling and grouped-query attention, Mistral with a sliding window shorter
than the texts, Qwen2 with q/k/v biases and sliding layers from
max_window_layers on, Qwen3 with q/k norms and yarn RoPE. Every weight is
perturbed, so norms and biases are not their trivial initial values.

Checked: last hidden states (1e-4, fp32) on right-padded batches and on packed
rows (several texts per row, each against the text run alone through torch);
pooled embeddings (last token and mean) at cosine >= 0.99999; 8 sharded
devices equal 1; the HF folder round trip is lossless and transformers loads
it with no missing or unexpected keys. One compile per family and path.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from e5jax.config import DEFAULT_RULES, MeshConfig
from e5jax.data.packing import pack
from e5jax.errors import E5Error
from e5jax.model import axes as ax
from e5jax.model import decoder as dec
from e5jax.model import hf_decoder
from e5jax.model.hf import flatten_state

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, MAXPOS = 101, 64
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=MAXPOS, attn_implementation="eager")


def _torch_config(family: str):
    t = transformers
    if family == "llama":  # llama3 rope scaling (its band edges fall inside head_dim 16's frequencies), GQA 4:2
        return t.LlamaModel, t.LlamaConfig(**SMALL, num_key_value_heads=2, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    if family == "mistral":  # a window of 5 tokens, texts up to 16: the window cuts in
        return t.MistralModel, t.MistralConfig(**SMALL, num_key_value_heads=1, sliding_window=5)
    if family == "qwen2":  # q/k/v biases; layer 0 full, layer 1 sliding (window 4)
        return t.Qwen2Model, t.Qwen2Config(**SMALL, num_key_value_heads=2, use_sliding_window=True,
                                           sliding_window=4, max_window_layers=1)
    if family == "qwen3":  # q/k norms, head_dim 32 != hidden / heads, yarn rope
        return t.Qwen3Model, t.Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=32, rope_parameters={
            "rope_type": "yarn", "rope_theta": 1000.0, "factor": 4.0, "original_max_position_embeddings": 16})
    raise KeyError(family)


FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


@dataclasses.dataclass
class Family:
    name: str
    torch_model: object
    folder: object
    cfg: dec.DecoderConfig
    params: dict
    model: dec.DecoderTextEncoder

    def torch_hidden(self, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        with torch.no_grad():
            kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
            return self.torch_model(input_ids=torch.tensor(ids, dtype=torch.long), **kw).last_hidden_state.numpy()


_CACHE: dict[str, Family] = {}


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    def get(name: str) -> Family:
        if name not in _CACHE:
            cls, tcfg = _torch_config(name)
            torch.manual_seed(FAMILIES.index(name))
            tm = cls(tcfg).eval()
            with torch.no_grad():  # every weight non-trivial: norms away from 1, biases away from 0
                for p in tm.parameters():
                    p.add_(torch.randn_like(p) * 0.1)
            folder = tmp_path_factory.mktemp(name)
            tm.save_pretrained(folder)
            cfg, _ = hf_decoder.read_config(folder)
            params = hf_decoder.hf_to_params(cfg, hf_decoder.read_tensors(folder))
            model = dec.load_decoder_pretrained(folder)
            _CACHE[name] = Family(name, tm, folder, cfg, params, model)
        return _CACHE[name]

    yield get
    _CACHE.clear()


def _texts(seed: int, lengths) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [list(map(int, rng.integers(3, VOCAB, size=n))) for n in lengths]


def _padded(texts, L, left=False):
    ids = np.zeros((len(texts), L), np.int32)
    mask = np.zeros((len(texts), L), np.int32)
    for i, t in enumerate(texts):
        where = slice(L - len(t), L) if left else slice(0, len(t))
        ids[i, where], mask[i, where] = t, 1
    return ids, mask


def _cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _padded_forward(model):
    """(hidden, last-token embeddings, mean embeddings) in one compiled function."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ids, mask):
        m = nnx.merge(graphdef, state)
        hidden = m.decoder(ids, mask)
        m.pooling = "last"
        last = m(ids, mask)
        m.pooling = "mean"
        return hidden, last, m(ids, mask)

    return lambda ids, mask: run(state, ids, mask)


def _packed_forward(model, texts_per_group):
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ids, seg, pos):
        m = nnx.merge(graphdef, state)
        G, R, Pl = ids.shape
        hidden = m.decoder(ids.reshape(G * R, Pl), None, segment_ids=seg.reshape(G * R, Pl),
                           positions=pos.reshape(G * R, Pl))
        m.pooling = "last"
        last = m.encode_packed(ids, seg, pos, texts_per_group)
        m.pooling = "mean"
        return hidden.reshape(G, R * Pl, -1), last, m.encode_packed(ids, seg, pos, texts_per_group)

    return lambda ids, seg, pos: run(state, ids, seg, pos)


# ------------------------------------------------------------------ parity


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_matches_torch(families, family):
    f = families(family)
    texts = _texts(1, (16, 11, 6, 1))  # padded to 16; longer than every sliding window
    run = _padded_forward(f.model)
    # Right padding, then left padding (same shapes, no new compile): transformers numbers the
    # positions 0..L-1 either way, and the last real token is the text's last, wherever it sits.
    for left in (False, True):
        ids, mask = _padded(texts, 16, left=left)
        want = f.torch_hidden(ids, mask)
        hidden, last, mean = map(np.asarray, run(ids, mask))
        real = mask.astype(bool)
        np.testing.assert_allclose(hidden[real], want[real], atol=1e-4, rtol=0)
        assert np.abs(want[real]).max() > 0.5  # hidden states of real size (the comparison is not vacuous)
        lengths = mask.sum(1)
        want_last = want[np.arange(len(texts)), 15 - np.argmax(mask[:, ::-1], axis=1)]
        want_mean = (want * mask[..., None]).sum(1) / lengths[:, None]
        assert _cos(last, want_last).min() >= 0.99999
        assert _cos(mean, want_mean).min() >= 0.99999
        np.testing.assert_allclose(np.linalg.norm(last, axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_rows_match_each_text_alone(families, family):
    f = families(family)
    lengths = (9, 3, 7, 12, 2, 6, 10, 4)
    texts = _texts(2, lengths)
    groups, b = 2, 4
    p = pack(texts, groups=groups, pack_len=16, pad_id=0)
    seg, pos = p["segment_ids"], p["positions"]
    assert p["input_ids"].shape[1] < b and (seg.reshape(groups, -1).max(1) == b).all()  # rows are shared
    hidden, last, mean = map(np.asarray, _packed_forward(f.model, b)(p["input_ids"], seg, pos))
    for t, text in enumerate(texts):
        g, s = divmod(t, b)
        where = seg[g].reshape(-1) == s + 1
        alone = f.torch_hidden(np.asarray([text]))[0]
        np.testing.assert_allclose(hidden[g][where], alone, atol=1e-4, rtol=0, err_msg=f"text {t}")
        assert _cos(last[g, s], alone[-1]) >= 0.99999, t
        assert _cos(mean[g, s], alone.mean(0)) >= 0.99999, t


def _with_adapters(f: Family, rank: int) -> dict:
    """The family's weights plus non-zero adapters on every projection (so the LoRA path counts)."""
    rng = np.random.default_rng(5)
    shapes = {k.removeprefix("decoder/"): v.shape for k, v in flatten_state(nnx.state(nnx.eval_shape(
        lambda: dec.DecoderTextEncoder(f.cfg, lora_rank=rank, rngs=nnx.Rngs(0))))).items()}
    params = dict(f.params)
    for k, s in shapes.items():
        if "/lora/" in k:
            params[k] = (rng.standard_normal(s) * 0.1).astype(np.float32)
    return params


def test_dropout_packed_equals_padded_and_remat_keeps_gradients(families):
    """Attention and LoRA dropout are hash masks of each token's place in its own text: packed
    rows see exactly the padded rows' masks; remat changes no adapter gradient."""
    from e5jax.model.dropout import row_seeds

    f = families("qwen2")
    cfg = dataclasses.replace(f.cfg, attention_dropout=0.2)
    params = _with_adapters(f, 4)
    mesh = ax.make_mesh(MeshConfig(), jax.devices()[:1])
    kw = dict(lora_rank=4, lora_dropout=0.3)
    model = dec.create_decoder_sharded(cfg, mesh, params=params, **kw)
    texts = _texts(6, (9, 3, 7, 12, 2, 6, 10, 4))
    ids, mask = _padded(texts, 16)
    keys = jax.random.split(jax.random.key(7), len(texts))
    graphdef, state = nnx.split(model)
    padded = jax.jit(lambda st, i, m, k: nnx.merge(graphdef, st)(i, m, dropout_key=k))
    want = np.asarray(padded(state, ids, mask, keys))
    assert np.abs(np.asarray(padded(state, ids, mask, None)) - want).max() > 1e-3  # dropout really acts
    p = pack(texts, groups=2, pack_len=16, pad_id=0)
    assert p["input_ids"].shape[1] < 4
    got = jax.jit(lambda st, i, s, q, sd: nnx.merge(graphdef, st).encode_packed(i, s, q, 4, seeds=sd))(
        state, p["input_ids"], p["segment_ids"], p["positions"], row_seeds(keys).reshape(2, -1))
    np.testing.assert_allclose(np.asarray(got).reshape(len(texts), -1), want, atol=1e-5)

    target = jnp.asarray(np.random.default_rng(0).standard_normal(want.shape), jnp.float32)

    def adapter_grads(m):
        gd, lora, rest = nnx.split(m, nnx.LoRAParam, ...)
        loss = lambda lo: (nnx.merge(gd, lo, rest)(ids, mask, dropout_key=keys) * target).sum()  # noqa: E731
        return flatten_state(jax.jit(jax.grad(loss))(lora))

    plain = adapter_grads(model)
    remat = adapter_grads(dec.create_decoder_sharded(cfg, mesh, params=params, remat=True, **kw))
    assert len(plain) == 2 * 7 * 2  # 2 layers x 7 projections x (A, B)
    assert np.abs(np.asarray(plain["decoder/layers/0/attn/q_proj/lora/lora_b"][...])).max() > 0
    for k, v in plain.items():
        np.testing.assert_allclose(np.asarray(remat[k][...]), np.asarray(v[...]), rtol=1e-5, atol=1e-5, err_msg=k)


def test_eight_sharded_devices_equal_one(families):
    """fsdp=2 x tensor=2 x data=2: parameters (LoRA adapters too) really split; outputs unchanged."""
    f = families("llama")
    assert jax.device_count() == 8
    kw = dict(lora_rank=4, lora_alpha=8.0)
    params = _with_adapters(f, kw["lora_rank"])
    mesh = ax.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded = dec.create_decoder_sharded(f.cfg, mesh, params=params, **kw)
    single = dec.create_decoder_sharded(f.cfg, ax.make_mesh(MeshConfig(), jax.devices()[:1]), params=params, **kw)

    flat = flatten_state(nnx.state(sharded, nnx.Param))
    expected = {
        "decoder/embed_tokens": P(None, "fsdp"),  # vocab 101 is odd: tensor dropped, embed still split
        "decoder/layers/0/attn/q_proj/kernel": P("fsdp", "tensor"),
        "decoder/layers/0/attn/k_proj/kernel": P("fsdp", "tensor"),
        "decoder/layers/0/attn/o_proj/kernel": P("tensor", "fsdp"),
        "decoder/layers/1/mlp/gate_proj/kernel": P("fsdp", "tensor"),
        "decoder/layers/1/mlp/down_proj/kernel": P("tensor", "fsdp"),
        "decoder/layers/1/attn/q_proj/lora/lora_a": P("fsdp", None),
        "decoder/layers/1/attn/q_proj/lora/lora_b": P(None, "tensor"),
        "decoder/layers/1/mlp/down_proj/lora/lora_b": P(None, "fsdp"),
        "decoder/norm/scale": P(None),
    }
    for path, spec in expected.items():
        assert flat[path][...].sharding.spec == spec, (path, flat[path][...].sharding)
    specs = flatten_state(ax.state_specs(nnx.state(sharded, nnx.Param), DEFAULT_RULES, mesh))
    for path, var in flat.items():
        assert var[...].sharding.spec == specs[path], path
    assert isinstance(nnx.state(sharded.decoder.layers[0].attn.q_proj.lora, nnx.LoRAParam)["lora_a"], nnx.LoRAParam)

    texts = _texts(3, (16, 9, 5, 2))
    ids, mask = _padded(texts, 16)
    sh = ax.batch_sharding(mesh, 2)
    want = [np.asarray(x) for x in _padded_forward(single)(ids, mask)]
    with ax.axis_rules(mesh):
        got = _padded_forward(sharded)(jax.device_put(ids, sh), jax.device_put(mask, sh))
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got[0])[real], want[0][real], atol=1e-5)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(np.asarray(g), w, atol=1e-5)

    p = pack(_texts(4, (9, 3, 7, 12, 2, 6, 10, 4)), groups=4, pack_len=16, pad_id=0)
    arrays = (p["input_ids"], p["segment_ids"], p["positions"])
    want = [np.asarray(x) for x in _packed_forward(single, 2)(*arrays)]
    with ax.axis_rules(mesh):
        got = _packed_forward(sharded, 2)(*(jax.device_put(a, ax.batch_sharding(mesh, 3)) for a in arrays))
    real = p["segment_ids"].reshape(4, -1) > 0
    np.testing.assert_allclose(np.asarray(got[0])[real], want[0][real], atol=1e-5)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(np.asarray(g), w, atol=1e-5)


# ------------------------------------------------------------------ HF folders


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_folder_round_trip_is_lossless(families, family, tmp_path):
    f = families(family)
    assert dec.DecoderConfig.from_hf(f.cfg.to_hf()) == f.cfg
    params = hf_decoder.model_params(f.model)
    assert params.keys() == f.params.keys()
    out = hf_decoder.save_folder(tmp_path / "out", f.cfg, params)
    back = hf_decoder.hf_to_params(f.cfg, hf_decoder.read_tensors(out))
    for k, v in f.params.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    loaded, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
    assert type(loaded) is type(f.torch_model)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ref = f.torch_model.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k
    for field in ("rope_parameters", "sliding_window", "num_key_value_heads", "head_dim"):
        assert getattr(loaded.config, field, None) == getattr(f.torch_model.config, field, None), field
    assert list(getattr(loaded.config, "layer_types", [])) == list(getattr(f.torch_model.config, "layer_types", []))


def test_sharded_folder_bf16_and_causal_lm_checkpoints(families, tmp_path):
    f = families("qwen2")
    # sharded save: an index and several files, read back equal; transformers loads it
    out = hf_decoder.save_folder(tmp_path / "sharded", f.cfg, f.params, max_shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    back = hf_decoder.hf_to_params(f.cfg, hf_decoder.read_tensors(out))
    assert all(np.array_equal(back[k], v) for k, v in f.params.items())
    _, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # bf16 weights (what 7B checkpoints ship), in a causal-LM checkpoint ("model." prefix + lm_head)
    lm = transformers.Qwen2ForCausalLM(f.torch_model.config)
    lm.model.load_state_dict(f.torch_model.state_dict())
    lm.to(torch.bfloat16).save_pretrained(tmp_path / "lm")
    got = hf_decoder.hf_to_params(f.cfg, hf_decoder.read_tensors(tmp_path / "lm"))
    want = {k: v.to(torch.bfloat16).float().numpy() for k, v in f.torch_model.state_dict().items()}
    np.testing.assert_array_equal(got["layers/1/attn/k_proj/kernel"], want["layers.1.self_attn.k_proj.weight"].T)
    np.testing.assert_array_equal(got["embed_tokens"], want["embed_tokens.weight"])
    # a tensor the table does not know is refused, not dropped
    tensors = dict(hf_decoder.read_tensors(out))
    tensors["layers.0.self_attn.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(E5Error, match="does not map"):
        hf_decoder.hf_to_params(f.cfg, tensors)
    del tensors["layers.0.self_attn.extra.weight"], tensors["layers.1.mlp.up_proj.weight"]
    with pytest.raises(E5Error, match="missing layers.1.mlp.up_proj.weight"):
        hf_decoder.hf_to_params(f.cfg, tensors)


# ------------------------------------------------------------------ pieces, no compile


ROPES = [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.5},
    {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 3.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},
    {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 32},
    {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0, "original_max_position_embeddings": 32768},
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 4096,
     "beta_fast": 16, "beta_slow": 2, "mscale": 0.707, "mscale_all_dim": 1.0, "truncate": False},
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0, "original_max_position_embeddings": 2048,
     "attention_factor": 1.3},
]


@pytest.mark.parametrize("rope", ROPES, ids=lambda r: r["rope_type"])
def test_rope_frequencies_match_transformers(rope):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    tcfg = transformers.LlamaConfig(hidden_size=1024, num_attention_heads=8, max_position_embeddings=4096,
                                    rope_parameters=dict(rope))
    cfg = dec.DecoderConfig.from_hf(json.loads(tcfg.to_json_string()))
    for seq_len in (None, 10000):  # beyond max_position_embeddings only "dynamic" changes
        if rope["rope_type"] == "default":
            want = 1.0 / rope["rope_theta"] ** (np.arange(0, 128, 2, dtype=np.float64) / 128)
            scale = 1.0
        else:
            want, scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](tcfg, "cpu", seq_len=seq_len)
            want = want.numpy()
        got, got_scale = dec.rope_frequencies(cfg, seq_len)
        np.testing.assert_allclose(got, want, rtol=2e-6)
        assert got_scale == pytest.approx(scale, rel=1e-12)


def test_config_families_and_refusals():
    t = transformers
    c = dec.DecoderConfig.from_hf(json.loads(t.Qwen2Config(num_hidden_layers=4, use_sliding_window=True,
                                                            max_window_layers=2).to_json_string()))
    assert c.layer_types == ("full_attention",) * 2 + ("sliding_attention",) * 2 and c.qkv_bias and not c.o_bias
    c = dec.DecoderConfig.from_hf(json.loads(t.Qwen2Config(num_hidden_layers=2).to_json_string()))
    assert c.sliding_window is None and c.layer_types == ("full_attention",) * 2
    c = dec.DecoderConfig.from_hf(json.loads(t.MistralConfig(num_hidden_layers=2,
                                                             sliding_window=None).to_json_string()))
    assert c.sliding_window is None and c.layer_types == ("full_attention",) * 2
    # an older config.json: rope_theta at the top, rope_scaling with "type"
    c = dec.DecoderConfig.from_hf({"model_type": "llama", "vocab_size": 10, "hidden_size": 64, "intermediate_size": 8,
                                   "num_hidden_layers": 1, "num_attention_heads": 4, "rope_theta": 5e5,
                                   "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert c.rope == dec.RopeConfig("linear", 5e5, factor=2.0) and c.head_dim == 16 and c.num_key_value_heads == 4
    with pytest.raises(E5Error, match="unsupported decoder model_type"):
        dec.DecoderConfig.from_hf({"model_type": "gpt2"})
    with pytest.raises(E5Error, match="unsupported rope type"):
        dec.RopeConfig.from_hf({"rope_parameters": {"rope_type": "longrope"}})
    with pytest.raises(E5Error, match="unknown lora_targets"):
        dec.LoraSpec(rank=4, targets=("qkv",))


def test_lora_adapters_are_nnx_lora_with_axes():
    """Where the adapters sit, their types, shapes, axis names and zero B (no compile: eval_shape)."""
    cfg = dec.DecoderConfig.from_hf(json.loads(transformers.MistralConfig(**{
        k: v for k, v in SMALL.items() if k != "attn_implementation"}, num_key_value_heads=2).to_json_string()))
    m = dec.DecoderTextEncoder(cfg, lora_rank=4, lora_alpha=16, lora_targets=("q_proj", "v_proj", "down_proj"),
                               rngs=nnx.Rngs(0))
    lora = flatten_state(nnx.state(m, nnx.LoRAParam))
    assert sorted(lora) == sorted(f"decoder/layers/{i}/{p}/lora/lora_{ab}" for i in range(2)
                                  for p in ("attn/q_proj", "attn/v_proj", "mlp/down_proj") for ab in "ab")
    q = m.decoder.layers[0].attn.q_proj
    assert isinstance(q.lora, nnx.LoRA) and q.lora_scale == 4.0
    assert q.lora.lora_a.get_metadata()["axes"] == ("embed", None) and q.lora.lora_a.shape == (64, 4)
    assert q.lora.lora_b.get_metadata()["axes"] == (None, "heads") and not np.asarray(q.lora.lora_b[...]).any()
    assert m.decoder.layers[0].attn.k_proj.lora is None
    base = flatten_state(nnx.state(m, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
    assert not any("/lora/" in k for k in base) and "decoder/layers/1/attn/k_proj/kernel" in base


def test_mistral_7b_shards_over_fsdp_and_tensor():
    """Mistral-7B's config (abstract, nothing allocated; planned in ~2 s, see decoder.KeyStream)
    on a 4 x 16 x 4 (data, fsdp, tensor) mesh: every base weight matrix is split over both, each
    adapter matrix over one, so each device holds 1/64 of the base model."""
    import math

    from jax.sharding import AbstractMesh

    cfg = dec.DecoderConfig.from_hf(json.loads(transformers.MistralConfig().to_json_string()))
    mesh = AbstractMesh((4, 16, 4), ("data", "fsdp", "tensor"))
    state = nnx.state(nnx.eval_shape(lambda: dec.DecoderTextEncoder(cfg, lora_rank=16, rngs=nnx.Rngs(0))))
    flat = flatten_state(state)
    specs = flatten_state(ax.state_specs(state, DEFAULT_RULES, mesh))
    total = per_device = adapters = 0
    for k, v in flat.items():
        n = math.prod(v.shape)
        axes_used = [a for part in specs[k] if part for a in ((part,) if isinstance(part, str) else part)]
        if "/lora/" in k:
            assert len(axes_used) == 1, (k, specs[k])  # the rank dim stays whole
            adapters += n
            continue
        if len(v.shape) == 2:
            assert "fsdp" in axes_used and "tensor" in axes_used, (k, specs[k])
        total += n
        per_device += n / math.prod(mesh.shape[a] for a in axes_used)
    assert 7.1e9 < total < 7.2e9 and adapters < total / 100  # LoRA r=16 on all 7 projections: 0.6%
    assert per_device < total / 63  # the replicated rest: RMSNorm scales
    assert {k.removeprefix("decoder/"): tuple(v.shape) for k, v in flat.items() if "/lora/" in k} == \
        dec.lora_shapes(cfg, dec.LoraSpec(16))


def test_pooling_a_folder_records(tmp_path):
    """e5jax.json first, then a sentence-transformers Pooling module, else E5-mistral's last token."""
    assert dec.read_decoder_pooling(tmp_path) == ("last", True)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert dec.read_decoder_pooling(tmp_path) == ("mean", False)  # no Normalize module
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    with pytest.raises(E5Error, match="last token or the mean"):
        dec.read_decoder_pooling(tmp_path)
    (tmp_path / "e5jax.json").write_text(json.dumps({"family": "decoder", "pooling": "last", "normalize": True}))
    assert dec.read_decoder_pooling(tmp_path) == ("last", True)
