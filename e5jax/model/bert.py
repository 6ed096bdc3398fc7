"""The BERT family (BERT, MiniLM, XLM-R/RoBERTa) as a Flax NNX module.

Driven by the fields of a Hugging Face `config.json`. Parameters are fp32 and
carry logical axis names in their `axes` metadata (see `axes.py`); compute
runs in `dtype` (bf16 on accelerators), with LayerNorm statistics and the
attention softmax in fp32.

Dropout is *functional* and *per example*: `__call__` takes an explicit
`dropout_key` (None = deterministic) — one key, or one key per row. Row i's
masks depend only on its own key, so gradient caching, which re-runs the batch
chunk by chunk, sees exactly the masks the plain full-batch step sees.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from e5jax.errors import E5Error
from e5jax.model.axes import constrain

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The HF config.json fields the encoder uses (names as HF spells them)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    model_type: str = "bert"  # "bert" (also MiniLM) | "roberta" | "xlm-roberta"
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # XLM-R: 1
    pad_token_id: int = 0  # RoBERTa/XLM-R: 1 (positions start after it)
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise E5Error(
                f"unsupported architecture model_type={self.model_type!r}; "
                f"e5jax supports {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise E5Error(f"unsupported hidden_act={self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise E5Error(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )

    @property
    def position_offset(self) -> int:
        """RoBERTa-style models number positions from pad_token_id + 1."""
        return self.pad_token_id + 1 if self.model_type in ("roberta", "xlm-roberta") else 0

    @property
    def max_length(self) -> int:
        """Longest input the position table allows."""
        return self.max_position_embeddings - self.position_offset

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "BertConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size") if n not in d]
        if missing:
            raise E5Error(f"config.json lacks {', '.join(missing)}")
        if "model_type" not in d:
            raise E5Error("config.json lacks model_type")
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("pad_token_id") is None:
            kw["pad_token_id"] = 0
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        arch = {"bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel"}[self.model_type]
        return {"architectures": [arch], **dataclasses.asdict(self), "position_embedding_type": "absolute"}


# ------------------------------------------------------------------ layers


class Dense(nnx.Module):
    """y = x @ W + b with W stored [in, out] (HF stores [out, in]; hf.py transposes)."""

    def __init__(self, din: int, dout: int, axes: tuple[str | None, str | None], *, std: float, rngs: nnx.Rngs):
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (din, dout), jnp.float32) * std, axes=axes)
        self.bias = nnx.Param(jnp.zeros((dout,), jnp.float32), axes=(axes[1],))

    def __call__(self, x: jax.Array) -> jax.Array:
        # Accumulate in fp32 (what the MXU / tensor cores do anyway). On XLA:CPU
        # this is also what makes bf16 fast: a bf16 x bf16 -> fp32 dot runs ~2x
        # fp32, while one with a bf16 result takes a slow path no faster than fp32.
        y = jnp.dot(x, self.kernel[...].astype(x.dtype), preferred_element_type=jnp.float32)
        return (y + self.bias[...]).astype(x.dtype)


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, eps: float):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), axes=("norm",))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32), axes=("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        # Statistics in fp32: bf16 variance loses too much precision.
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


def split_keys(keys: jax.Array | None, n: int) -> list[jax.Array | None]:
    """Per-row keys [B] → n independent per-row key arrays [B]."""
    if keys is None:
        return [None] * n
    s = jax.vmap(lambda k: jax.random.split(k, n))(keys)
    return [s[:, i] for i in range(n)]


def dropout(x: jax.Array, rate: float, keys: jax.Array | None) -> jax.Array:
    """Inverted dropout; `keys` holds one key per row of `x` (leading dim)."""
    if keys is None or rate <= 0.0:
        return x
    keep = jax.vmap(lambda k, xi: jax.random.bernoulli(k, 1.0 - rate, xi.shape))(keys, x)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class Embeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        std = cfg.initializer_range
        init = lambda shape: jax.random.normal(rngs.params(), shape, jnp.float32) * std  # noqa: E731
        self.word = nnx.Param(init((cfg.vocab_size, cfg.hidden_size)), axes=("vocab", "embed"))
        self.position = nnx.Param(init((cfg.max_position_embeddings, cfg.hidden_size)), axes=(None, "embed"))
        self.token_type = nnx.Param(init((cfg.type_vocab_size, cfg.hidden_size)), axes=(None, "embed"))
        self.norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.cfg = cfg

    def __call__(self, input_ids, token_type_ids, dtype, key) -> jax.Array:
        cfg = self.cfg
        if cfg.position_offset:
            # HF RoBERTa: padding keeps position pad_token_id, real tokens count from it + 1.
            not_pad = (input_ids != cfg.pad_token_id).astype(jnp.int32)
            positions = jnp.cumsum(not_pad, axis=1) * not_pad + cfg.pad_token_id
        else:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        h = (
            jnp.take(self.word[...], input_ids, axis=0)
            + jnp.take(self.position[...], positions, axis=0)
            + jnp.take(self.token_type[...], token_type_ids, axis=0)
        )
        h = self.norm(h).astype(dtype)
        return dropout(constrain(h, ("batch", "length", "act_embed")), cfg.hidden_dropout_prob, key)


class SelfAttention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        H, std = cfg.hidden_size, cfg.initializer_range
        self.query = Dense(H, H, ("embed", "heads"), std=std, rngs=rngs)
        self.key = Dense(H, H, ("embed", "heads"), std=std, rngs=rngs)
        self.value = Dense(H, H, ("embed", "heads"), std=std, rngs=rngs)
        self.out = Dense(H, H, ("heads", "embed"), std=std, rngs=rngs)
        self.norm = LayerNorm(H, cfg.layer_norm_eps)
        self.cfg = cfg

    def __call__(self, x, mask_bias, key) -> jax.Array:
        cfg = self.cfg
        B, L, H = x.shape
        nh = cfg.num_attention_heads
        k_attn, k_out = split_keys(key, 2)
        split = lambda t: t.reshape(B, L, nh, H // nh)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        q = q * jnp.asarray(1.0 / math.sqrt(H // nh), q.dtype)
        # Scores and softmax in fp32; the padding bias is -1e9 (finite, no NaN rows).
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32) + mask_bias
        probs = jax.nn.softmax(scores, axis=-1)
        probs = dropout(probs, cfg.attention_probs_dropout_prob, k_attn).astype(x.dtype)
        ctx = jnp.einsum("bnqk,bknd->bqnd", probs, v, preferred_element_type=jnp.float32)
        ctx = ctx.astype(x.dtype).reshape(B, L, H)
        ctx = constrain(ctx, ("batch", "length", "heads"))
        out = dropout(self.out(ctx), cfg.hidden_dropout_prob, k_out)
        return self.norm(out + x)


class Layer(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        H, std = cfg.hidden_size, cfg.initializer_range
        self.attention = SelfAttention(cfg, rngs=rngs)
        self.mlp_in = Dense(H, cfg.intermediate_size, ("embed", "mlp"), std=std, rngs=rngs)
        self.mlp_out = Dense(cfg.intermediate_size, H, ("mlp", "embed"), std=std, rngs=rngs)
        self.norm = LayerNorm(H, cfg.layer_norm_eps)
        self.cfg = cfg

    def __call__(self, x, mask_bias, key) -> jax.Array:
        k_attn, k_mlp = split_keys(key, 2)
        h = self.attention(x, mask_bias, k_attn)
        inner = ACTIVATIONS[self.cfg.hidden_act](self.mlp_in(h))
        inner = constrain(inner, ("batch", "length", "mlp"))
        out = dropout(self.mlp_out(inner), self.cfg.hidden_dropout_prob, k_mlp)
        return constrain(self.norm(out + h), ("batch", "length", "act_embed"))


def _run_layer(layer: Layer, x, mask_bias, key):
    return layer(x, mask_bias, key)


def _pure_layer(graphdef, state, x, mask_bias, key):
    return nnx.merge(graphdef, state)(x, mask_bias, key)


# Rematerialisation as a pure function of the layer's state (not nnx.remat): it
# then composes with any enclosing JAX transform, e.g. gradient caching's scan.
_pure_layer_remat = jax.checkpoint(_pure_layer, static_argnums=(0,))


def _run_layer_remat(layer: Layer, x, mask_bias, key):
    graphdef, state = nnx.split(layer)
    return _pure_layer_remat(graphdef, state, x, mask_bias, key)


class BertModel(nnx.Module):
    """Token encoder: ids → last hidden states [B, L, H] (what HF's BertModel returns first)."""

    def __init__(self, cfg: BertConfig, *, dtype: str = "float32", remat: bool = False,
                 with_pooler: bool = True, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = jnp.dtype(dtype)
        self.remat = remat
        self.embeddings = Embeddings(cfg, rngs=rngs)
        self.layers = nnx.List([Layer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        # HF's pooler (dense + tanh on [CLS]); kept so exports load with no missing
        # keys and cross-encoders can use it. E5's mean pooling does not.
        self.pooler = Dense(cfg.hidden_size, cfg.hidden_size, ("embed", "act_embed"),
                            std=cfg.initializer_range, rngs=rngs) if with_pooler else None

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None) -> jax.Array:
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if dropout_key is not None and dropout_key.ndim == 0:  # one key for the batch → one per row
            dropout_key = jax.random.split(dropout_key, input_ids.shape[0])
        keys = split_keys(dropout_key, len(self.layers) + 1)
        h = self.embeddings(input_ids, token_type_ids, self.dtype, keys[0])
        mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, -1e9).astype(jnp.float32)
        run = _run_layer_remat if self.remat else _run_layer
        for layer, key in zip(self.layers, keys[1:]):
            h = run(layer, h, mask_bias, key)
        return h

    def pooled_output(self, hidden: jax.Array) -> jax.Array:
        """HF's pooler_output: tanh(dense(hidden[:, 0]))."""
        if self.pooler is None:
            raise E5Error("this model has no pooler weights")
        return jnp.tanh(self.pooler(hidden[:, 0].astype(jnp.float32)))
