"""The BERT family (BERT, MiniLM, XLM-R/RoBERTa) as a Flax NNX module.

Driven by the fields of a Hugging Face `config.json`. Parameters are fp32 and
carry logical axis names in their `axes` metadata (see `axes.py`); compute
runs in `dtype` (bf16 on accelerators), with LayerNorm statistics and the
attention softmax in fp32.

Dropout is functional and per token, a hash of each token's place in its
own text (`e5jax.model.dropout`), so gradient caching, padding and packing all
see the masks of the plain padded step.
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
from e5jax.model import fused
from e5jax.model.dropout import TokenNoise, attention_dropout, hidden_dropout, row_seeds

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")

ACTIVATIONS = {
    "gelu": fused.gelu,  # HF "gelu" is the exact erf form
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


# ------------------------------------------------------------- mixed precision
# Autodiff of `dot(bf16, bf16) -> fp32` hands the backward dots an fp32
# cotangent, i.e. mixed fp32 x bf16 dots, which XLA runs by upcasting both
# operands to fp32. These two custom VJPs cast the incoming cotangent to bf16
# first, so the backward dots are bf16 x bf16 with fp32 accumulation and the
# cotangents flowing back through the network are bf16 (half the memory
# traffic). Measured on a 2-core AVX512-BF16 CPU (MiniLM, 32 packed pairs,
# benchmarks/step_ablation.py): fwd+bwd 1.54 s -> 1.20 s. XLA:CPU's fast bf16 kernel (~2x fp32) still only
# takes dots whose operands are both in canonical layout, so the two backward
# dots with a transposed operand run at about fp32 speed there; TPUs and GPUs
# have no such restriction. fp32 inputs never come here.


@jax.custom_vjp
def dense_dot(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x [..., in] (low precision) @ kernel [in, out] (fp32 master weight) -> fp32."""
    return jnp.dot(x, kernel.astype(x.dtype), preferred_element_type=jnp.float32)


def _dense_dot_fwd(x, kernel):
    return dense_dot(x, kernel), (x, kernel)


def _dense_dot_bwd(res, g):
    x, kernel = res
    g = g.astype(x.dtype)
    dx = jnp.dot(g, kernel.astype(x.dtype).T, preferred_element_type=jnp.float32).astype(x.dtype)
    dk = jnp.dot(x.reshape(-1, x.shape[-1]).T, g.reshape(-1, g.shape[-1]), preferred_element_type=jnp.float32)
    return dx, dk  # the kernel's gradient stays fp32


dense_dot.defvjp(_dense_dot_fwd, _dense_dot_bwd)


@jax.custom_vjp
def batched_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """a [..., m, k] @ b [..., k, n], both low precision -> fp32."""
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


def _bmm_fwd(a, b):
    return batched_matmul(a, b), (a, b)


def _bmm_bwd(res, g):
    a, b = res
    g = g.astype(a.dtype)
    da = jnp.matmul(g, b.swapaxes(-1, -2), preferred_element_type=jnp.float32).astype(a.dtype)
    db = jnp.matmul(a.swapaxes(-1, -2), g, preferred_element_type=jnp.float32).astype(b.dtype)
    return da, db


batched_matmul.defvjp(_bmm_fwd, _bmm_bwd)


def matmul_f32(a: jax.Array, b: jax.Array) -> jax.Array:
    """Batched matmul with an fp32 result: plain in fp32, the fast-backward VJP in bf16/fp16."""
    if a.dtype == jnp.float32:
        return jnp.matmul(a, b)
    return batched_matmul(a, b)


class Dense(nnx.Module):
    """y = x @ W + b with W stored [in, out] (HF stores [out, in]; hf.py transposes)."""

    def __init__(self, din: int, dout: int, axes: tuple[str | None, str | None], *, std: float, rngs: nnx.Rngs):
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (din, dout), jnp.float32) * std, axes=axes)
        self.bias = nnx.Param(jnp.zeros((dout,), jnp.float32), axes=(axes[1],))

    def __call__(self, x: jax.Array) -> jax.Array:
        # Accumulate in fp32 (what the MXU / tensor cores do anyway); see dense_dot.
        if x.dtype == jnp.float32:
            y = jnp.dot(x, self.kernel[...])
        else:
            y = dense_dot(x, self.kernel[...])
        return (y + self.bias[...]).astype(x.dtype)


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, eps: float):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), axes=("norm",))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32), axes=("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        with jax.named_scope("layer_norm"):
            return fused.layer_norm(x, self.scale[...], self.bias[...], self.eps)


class Embeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        std = cfg.initializer_range
        init = lambda shape: jax.random.normal(rngs.params(), shape, jnp.float32) * std  # noqa: E731
        self.word = nnx.Param(init((cfg.vocab_size, cfg.hidden_size)), axes=("vocab", "embed"))
        self.position = nnx.Param(init((cfg.max_position_embeddings, cfg.hidden_size)), axes=(None, "embed"))
        self.token_type = nnx.Param(init((cfg.type_vocab_size, cfg.hidden_size)), axes=(None, "embed"))
        self.norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.cfg = cfg

    def __call__(self, input_ids, token_type_ids, dtype, noise, positions=None) -> jax.Array:
        cfg = self.cfg
        if positions is not None:  # packed rows: each text counts from 0
            positions = positions + cfg.position_offset
        elif cfg.position_offset:
            # HF RoBERTa: padding keeps position pad_token_id, real tokens count from it + 1.
            not_pad = (input_ids != cfg.pad_token_id).astype(jnp.int32)
            positions = jnp.cumsum(not_pad, axis=1) * not_pad + cfg.pad_token_id
        else:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        with jax.named_scope("embeddings"):
            h = (
                jnp.take(self.word[...], input_ids, axis=0)
                + jnp.take(self.position[...], positions, axis=0)
                + jnp.take(self.token_type[...], token_type_ids, axis=0)
            )
        h = self.norm(h).astype(dtype)
        return hidden_dropout(constrain(h, ("batch", "length", "act_embed")), cfg.hidden_dropout_prob, noise, 0)


class SelfAttention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        H, std = cfg.hidden_size, cfg.initializer_range
        self.query = Dense(H, H, ("embed", "heads"), std=std, rngs=rngs)
        self.key = Dense(H, H, ("embed", "heads"), std=std, rngs=rngs)
        self.value = Dense(H, H, ("embed", "heads"), std=std, rngs=rngs)
        self.out = Dense(H, H, ("heads", "embed"), std=std, rngs=rngs)
        self.norm = LayerNorm(H, cfg.layer_norm_eps)
        self.cfg = cfg

    def __call__(self, x, mask_bias, noise, site) -> jax.Array:
        with jax.named_scope("attention"):  # names the ops in profiles and HLO dumps
            return self._attend(x, mask_bias, noise, site)

    def _attend(self, x, mask_bias, noise, site) -> jax.Array:
        cfg = self.cfg
        B, L, H = x.shape
        nh = cfg.num_attention_heads
        # Heads-major [B, heads, L, d] so both attention products are plain batched
        # matmuls: on XLA:CPU the "bqnd,bknd->bnqk" einsum form ran ~3x slower (and on a
        # TPU it leaves the same layout copies of q, k and v: `e5jax compile`).
        split = lambda t: t.reshape(B, L, nh, H // nh).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        q = q * jnp.asarray(1.0 / math.sqrt(H // nh), q.dtype)
        # Scores and softmax in fp32; the mask bias is 0 or -1e9 (finite, no NaN rows).
        scores = matmul_f32(q, k.swapaxes(-1, -2)) + mask_bias
        probs = fused.softmax(scores)
        probs = attention_dropout(probs, cfg.attention_probs_dropout_prob, noise, site).astype(x.dtype)
        ctx = matmul_f32(probs, v)
        ctx = ctx.astype(x.dtype).transpose(0, 2, 1, 3).reshape(B, L, H)
        ctx = constrain(ctx, ("batch", "length", "heads"))
        out = hidden_dropout(self.out(ctx), cfg.hidden_dropout_prob, noise, site + 1)
        return self.norm(out + x)


class Layer(nnx.Module):
    def __init__(self, cfg: BertConfig, index: int, *, rngs: nnx.Rngs):
        H, std = cfg.hidden_size, cfg.initializer_range
        self.site = 1 + 3 * index  # this layer's three dropout sites (0 is the embeddings')
        self.attention = SelfAttention(cfg, rngs=rngs)
        self.mlp_in = Dense(H, cfg.intermediate_size, ("embed", "mlp"), std=std, rngs=rngs)
        self.mlp_out = Dense(cfg.intermediate_size, H, ("mlp", "embed"), std=std, rngs=rngs)
        self.norm = LayerNorm(H, cfg.layer_norm_eps)
        self.cfg = cfg

    def __call__(self, x, mask_bias, noise) -> jax.Array:
        h = self.attention(x, mask_bias, noise, self.site)
        with jax.named_scope("mlp"):
            inner = ACTIVATIONS[self.cfg.hidden_act](self.mlp_in(h))
            inner = constrain(inner, ("batch", "length", "mlp"))
            out = hidden_dropout(self.mlp_out(inner), self.cfg.hidden_dropout_prob, noise, self.site + 2)
            return constrain(self.norm(out + h), ("batch", "length", "act_embed"))


def _run_layer(layer: Layer, x, mask_bias, noise):
    return layer(x, mask_bias, noise)


def _pure_layer(graphdef, state, x, mask_bias, noise):
    return nnx.merge(graphdef, state)(x, mask_bias, noise)


# Rematerialisation as a pure function of the layer's state (not nnx.remat): it
# then composes with any enclosing JAX transform, e.g. gradient caching's scan.
_pure_layer_remat = jax.checkpoint(_pure_layer, static_argnums=(0,))


def _run_layer_remat(layer: Layer, x, mask_bias, noise):
    graphdef, state = nnx.split(layer)
    return _pure_layer_remat(graphdef, state, x, mask_bias, noise)


class BertModel(nnx.Module):
    """Token encoder: ids → last hidden states [B, L, H] (what HF's BertModel returns first)."""

    def __init__(self, cfg: BertConfig, *, dtype: str = "float32", remat: bool = False,
                 with_pooler: bool = True, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = jnp.dtype(dtype)
        self.remat = remat
        self.embeddings = Embeddings(cfg, rngs=rngs)
        self.layers = nnx.List([Layer(cfg, i, rngs=rngs) for i in range(cfg.num_hidden_layers)])
        # HF's pooler (dense + tanh on [CLS]); kept so exports load with no missing
        # keys and cross-encoders can use it. E5's mean pooling does not.
        self.pooler = Dense(cfg.hidden_size, cfg.hidden_size, ("embed", "act_embed"),
                            std=cfg.initializer_range, rngs=rngs) if with_pooler else None

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None,
                 segment_ids=None, positions=None, dropout_seeds=None) -> jax.Array:
        """Last hidden states [N, L, H].

        Padded rows (one text per row): `attention_mask`, and `dropout_key` (one
        key, or one per row). Packed rows (several texts per row, see
        `e5jax.data.packing`): `segment_ids` (0 = padding, else which text),
        `positions` (each token's index in its text) and `dropout_seeds` (its
        text's uint32 seed); attention stays inside each text.
        """
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        N, L = input_ids.shape
        if segment_ids is not None:
            if positions is None:
                raise ValueError("packed rows need positions (each token's index in its text)")
            seg = segment_ids
            same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
            mask_bias = jnp.where(same[:, None], 0.0, -1e9).astype(self._bias_dtype())
            noise = None if dropout_seeds is None else TokenNoise(dropout_seeds.astype(jnp.uint32), positions)
        else:
            mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, -1e9).astype(self._bias_dtype())
            noise = None
            if dropout_key is not None:
                if dropout_key.ndim == 0:  # one key for the batch → one per row
                    dropout_key = jax.random.split(dropout_key, N)
                pos = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (N, L))
                noise = TokenNoise(jnp.broadcast_to(row_seeds(dropout_key)[:, None], (N, L)), pos)
        h = self.embeddings(input_ids, token_type_ids, self.dtype, noise, positions)
        run = _run_layer_remat if self.remat else _run_layer
        for layer in self.layers:
            h = run(layer, h, mask_bias, noise)
        return h

    def _bias_dtype(self):
        """The attention mask bias in bf16 when computing in bf16: a packed batch's
        [rows, L, L] bias is read by every layer's softmax, and 2 bytes halve that traffic
        (5% of a TPU step's HBM bytes in fp32, benchmarks/hbm_breakdown.py). 0 stays 0 and
        -1e9 rounds to -0.9998e9, as far below any score (fp16 would make it -inf: fp32
        there). A boolean mask applied with `where` (1 byte) crashed libtpu 0.0.42.1's
        compiler on the E5-large pre-training step for v4-32."""
        return jnp.bfloat16 if self.dtype == jnp.bfloat16 else jnp.float32

    def pooled_output(self, hidden: jax.Array) -> jax.Array:
        """HF's pooler_output: tanh(dense(hidden[:, 0]))."""
        if self.pooler is None:
            raise E5Error("this model has no pooler weights")
        return jnp.tanh(self.pooler(hidden[:, 0].astype(jnp.float32)))
