"""Decoder LLMs (Llama, Mistral, Qwen2, Qwen3) as text encoders, in Flax NNX.

One module, driven by the fields of a Hugging Face `config.json`, computes
what transformers' `LlamaModel` / `MistralModel` / `Qwen2Model` / `Qwen3Model`
compute: the last hidden states after the final RMSNorm. On top of it,
`DecoderTextEncoder` pools one embedding per text (the E5-mistral recipe:
the last token, i.e. the EOS the tokenizer appends; or the mean), with the
same interface as `encoder.TextEncoder`, padded rows and packed rows alike.

The family differences are all config fields, so there is one code path:
  * RoPE with the scaling variants transformers names in `rope_parameters`
    (`default`, `linear`, `dynamic`, `llama3`, `yarn`), frequencies computed
    once on the host (`rope_frequencies`, a pure function);
  * grouped-query attention (`num_key_value_heads`);
  * sliding windows per layer (`layer_types`: Mistral's `sliding_window` on
    every layer, Qwen2/3's `use_sliding_window` from `max_window_layers` on);
  * Qwen2's q/k/v biases, Qwen3's q/k RMSNorms over the head dim.

Attention is causal. Padded rows: key k is seen from query q iff k <= q,
k is not padding, and (in a sliding layer) q - k < window. Packed rows (see
`e5jax.data.packing`): the same inside each text, nothing across texts, and
RoPE positions restart at 0 for each text, so a text's hidden states equal
those it gets alone. (RoPE scores depend only on position differences, so
restarting changes nothing in exact arithmetic; it keeps the angles, and the
rounding, those of the text alone.)

LoRA: with `lora_rank > 0` each targeted projection (HF names: q_proj,
k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj) carries Flax's own
`nnx.LoRA` at `<proj>/lora` (`lora_a` [in, r], `lora_b` [r, out], both
`nnx.LoRAParam`, B zero-initialised, so a fresh adapter changes nothing);
y = x W + b + (alpha / r) * dropout(x) A B. `nnx.LoRAParam` subclasses
`nnx.Param`: the frozen base weights are `nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))`.

Parameters are fp32 and carry logical axis names (`axes.py`); compute runs in
`dtype`, with RMSNorm statistics, RoPE and the attention softmax in fp32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from e5jax.config import DEFAULT_RULES
from e5jax.errors import E5Error
from e5jax.model import fused
from e5jax.model.axes import constrain
from e5jax.model.bert import dense_dot, matmul_f32
from e5jax.model.dropout import TokenNoise, attention_dropout, hidden_dropout, row_seeds
from e5jax.paths import local

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
POOLINGS = ("last", "mean")
FULL, SLIDING = "full_attention", "sliding_attention"
_NEG = -1e9  # finite mask bias: a query that sees nothing gets a uniform row, never NaN


# ------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """`rope_parameters` (transformers 5) / `rope_scaling` + `rope_theta` (older config.json files)."""

    rope_type: str = "default"  # one of ROPE_TYPES
    rope_theta: float = 10000.0
    factor: float | None = None  # linear / dynamic / llama3 / yarn
    original_max_position_embeddings: int | None = None  # llama3 / yarn
    low_freq_factor: float | None = None  # llama3
    high_freq_factor: float | None = None  # llama3
    beta_fast: float | None = None  # yarn (default 32)
    beta_slow: float | None = None  # yarn (default 1)
    attention_factor: float | None = None  # yarn: scales cos/sin; None = from factor (and mscale)
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    truncate: bool | None = None  # yarn: round the ramp's ends (default True)

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise E5Error(f"unsupported rope type {self.rope_type!r}; e5jax supports {', '.join(ROPE_TYPES)}")
        if self.rope_type != "default" and self.factor is None:
            raise E5Error(f"rope type {self.rope_type!r} needs a 'factor'")
        if self.rope_type == "llama3" and None in (self.low_freq_factor, self.high_freq_factor,
                                                   self.original_max_position_embeddings):
            raise E5Error("llama3 rope needs low_freq_factor, high_freq_factor and original_max_position_embeddings")

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "RopeConfig":
        params = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        rope_type = params.pop("rope_type", params.pop("type", "default"))
        theta = params.pop("rope_theta", d.get("rope_theta", 10000.0))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names - {"partial_rotary_factor"})
        if unknown:
            raise E5Error(f"rope parameters e5jax does not implement: {', '.join(unknown)}")
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise E5Error("partial_rotary_factor != 1 is not supported")
        params.pop("partial_rotary_factor", None)
        if rope_type in ("llama3", "yarn"):  # transformers' default for these
            params.setdefault("original_max_position_embeddings", d.get("max_position_embeddings"))
        return cls(rope_type=rope_type, rope_theta=float(theta), **params)

    def to_hf(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """The HF config.json fields the decoder uses, resolved per family (see `from_hf`)."""

    model_type: str  # "llama" | "mistral" | "qwen2" | "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    rope: RopeConfig = RopeConfig()
    qkv_bias: bool = False  # Qwen2: True; Llama: attention_bias
    o_bias: bool = False  # Llama: attention_bias
    mlp_bias: bool = False  # Llama: mlp_bias
    qk_norm: bool = False  # Qwen3: RMSNorm over the head dim on q and k
    sliding_window: int | None = None  # window of the "sliding_attention" layers
    layer_types: tuple[str, ...] = ()  # per layer: "full_attention" | "sliding_attention"
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    tie_word_embeddings: bool = False
    max_window_layers: int | None = None  # Qwen2/3, kept for the config.json round trip

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise E5Error(f"unsupported decoder model_type={self.model_type!r}; "
                          f"e5jax supports {', '.join(SUPPORTED_MODEL_TYPES)}")
        if self.hidden_act not in ("silu", "swish"):
            raise E5Error(f"unsupported hidden_act={self.hidden_act!r} for a decoder (SwiGLU needs silu)")
        if self.num_attention_heads % self.num_key_value_heads:
            raise E5Error(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                          f"num_key_value_heads={self.num_key_value_heads}")
        if len(self.layer_types) != self.num_hidden_layers:
            raise E5Error(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        if any(t not in (FULL, SLIDING) for t in self.layer_types):
            raise E5Error(f"unsupported layer_types {sorted(set(self.layer_types))}")
        if SLIDING in self.layer_types and not self.sliding_window:
            raise E5Error("sliding_attention layers need a sliding_window")

    @property
    def max_length(self) -> int:
        return self.max_position_embeddings

    @property
    def groups(self) -> int:
        """Query heads per key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "DecoderConfig":
        mt = d.get("model_type")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise E5Error(f"unsupported decoder model_type={mt!r}; e5jax supports {', '.join(SUPPORTED_MODEL_TYPES)}")
        need = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        missing = [n for n in need if n not in d]
        if missing:
            raise E5Error(f"config.json lacks {', '.join(missing)}")
        n_layers, n_heads = d["num_hidden_layers"], d["num_attention_heads"]
        # Qwen3Config's head_dim defaults to 128, the others' to hidden_size // heads (Qwen2Config
        # has no such field, but its attention reads one that config.json sets).
        head_dim = d.get("head_dim") or (128 if mt == "qwen3" else d["hidden_size"] // n_heads)
        window = d.get("sliding_window", 4096)  # MistralConfig / Qwen2Config's default when absent
        max_window_layers = None
        if mt == "mistral":
            layer_types = (SLIDING if window else FULL,) * n_layers
        elif mt in ("qwen2", "qwen3"):
            # As Qwen2Config/Qwen3Config: the window applies only with use_sliding_window, from
            # layer max_window_layers on, unless config.json lists layer_types itself.
            max_window_layers = d.get("max_window_layers", 28)
            window = window if d.get("use_sliding_window", False) else None
            layer_types = tuple(d.get("layer_types") or (
                SLIDING if window is not None and i >= max_window_layers else FULL for i in range(n_layers)))
            if window is None:  # "sliding_attention" layers without a window attend fully there too
                layer_types = (FULL,) * n_layers
        else:
            window, layer_types = None, (FULL,) * n_layers
        if SLIDING not in layer_types:
            window = None
        eos = d.get("eos_token_id")
        return cls(
            model_type=mt, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"], num_hidden_layers=n_layers, num_attention_heads=n_heads,
            num_key_value_heads=d.get("num_key_value_heads") or n_heads, head_dim=head_dim,
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6), hidden_act=d.get("hidden_act", "silu"),
            rope=RopeConfig.from_hf(d),
            qkv_bias=True if mt == "qwen2" else bool(d.get("attention_bias", False)),
            o_bias=mt in ("llama", "qwen3") and bool(d.get("attention_bias", False)),
            mlp_bias=mt == "llama" and bool(d.get("mlp_bias", False)),
            qk_norm=mt == "qwen3", sliding_window=window, layer_types=layer_types,
            attention_dropout=float(d.get("attention_dropout", 0.0) or 0.0),
            initializer_range=d.get("initializer_range", 0.02), pad_token_id=d.get("pad_token_id"),
            bos_token_id=d.get("bos_token_id"), eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)), max_window_layers=max_window_layers,
        )

    def to_hf(self) -> dict[str, Any]:
        """A config.json that transformers reads back as this architecture (base model class)."""
        arch = {"llama": "LlamaModel", "mistral": "MistralModel", "qwen2": "Qwen2Model", "qwen3": "Qwen3Model"}
        out: dict[str, Any] = {
            "architectures": [arch[self.model_type]], "model_type": self.model_type,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim, "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps, "hidden_act": self.hidden_act,
            "rope_parameters": self.rope.to_hf(), "attention_dropout": self.attention_dropout,
            "initializer_range": self.initializer_range, "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
        }
        if self.model_type == "qwen2" and self.head_dim == self.hidden_size // self.num_attention_heads:
            del out["head_dim"]  # Qwen2Config has no such field; written only where it differs
        if self.model_type == "llama":
            out["attention_bias"] = self.qkv_bias
            out["mlp_bias"] = self.mlp_bias
        elif self.model_type == "qwen3":
            out["attention_bias"] = self.qkv_bias
        if self.model_type == "mistral":
            out["sliding_window"] = self.sliding_window
        elif self.model_type in ("qwen2", "qwen3"):
            out["use_sliding_window"] = self.sliding_window is not None
            out["sliding_window"] = self.sliding_window
            out["max_window_layers"] = self.max_window_layers if self.max_window_layers is not None \
                else self.num_hidden_layers
            out["layer_types"] = list(self.layer_types)
        return out


# ------------------------------------------------------------------ RoPE


def rope_frequencies(cfg: DecoderConfig, seq_len: int | None = None) -> tuple[np.ndarray, float]:
    """(inverse frequencies [head_dim / 2] float32, cos/sin scale) for `cfg.rope`.

    The formulas are the published ones each `rope_type` names, as
    transformers' `modeling_rope_utils` evaluates them; computed in float64 on
    the host and rounded once. `seq_len` only matters for "dynamic" (NTK
    scaling beyond `max_position_embeddings`; transformers uses the longest
    position id of the batch, so do we: the padded length of the rows).
    """
    r, dim = cfg.rope, cfg.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.float64) / dim
    base = r.rope_theta
    scale = 1.0
    if r.rope_type == "dynamic":
        n = max(seq_len or 0, cfg.max_position_embeddings)
        base = base * ((r.factor * n / cfg.max_position_embeddings) - (r.factor - 1)) ** (dim / (dim - 2))
    inv = 1.0 / base ** exponents
    if r.rope_type == "linear":
        inv = inv / r.factor
    elif r.rope_type == "llama3":
        old = r.original_max_position_embeddings
        low_wavelen, high_wavelen = old / r.low_freq_factor, old / r.high_freq_factor
        wavelen = 2 * math.pi / inv
        # Long wavelengths (beyond the pre-training context) are interpolated by `factor`, short ones
        # kept, the band between blended linearly in 1 / wavelength.
        scaled = np.where(wavelen > low_wavelen, inv / r.factor, inv)
        smooth = (old / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor)
        blended = (1 - smooth) * scaled / r.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(medium, blended, scaled)
    elif r.rope_type == "yarn":
        factor, old = r.factor, r.original_max_position_embeddings

        def mscale(s, m=1.0):
            return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0

        if r.attention_factor is not None:
            scale = r.attention_factor
        elif r.mscale and r.mscale_all_dim:
            scale = mscale(factor, r.mscale) / mscale(factor, r.mscale_all_dim)
        else:
            scale = mscale(factor)
        beta_fast, beta_slow = r.beta_fast or 32, r.beta_slow or 1

        def correction_dim(rotations):  # the dim whose wavelength fits `rotations` times in `old`
            return dim * math.log(old / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if r.truncate is None or r.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        extrapolate = 1 - ramp  # 1: keep the frequency, 0: interpolate it by `factor`
        inv = (inv / factor) * (1 - extrapolate) + inv * extrapolate
    return inv.astype(np.float32), float(scale)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, L, n, d] rotated by its token's angles (cos/sin [B, L, 1, d/2], fp32); HF's half-split layout."""
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


# ------------------------------------------------------------------ layers


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """Which projections carry a LoRA adapter, and how it is scaled."""

    rank: int = 0  # 0 = no adapters
    alpha: float = 0.0  # scale = alpha / rank (PEFT's convention); 0 = alpha = rank
    targets: tuple[str, ...] = LORA_TARGETS  # HF projection names
    dropout: float = 0.0  # on the adapter's input (PEFT's lora_dropout); hash dropout like the rest

    def __post_init__(self):
        if self.rank < 0:
            raise E5Error(f"lora_rank must be >= 0, got {self.rank}")
        bad = sorted(set(self.targets) - set(LORA_TARGETS))
        if bad:
            raise E5Error(f"unknown lora_targets {bad}; choose from {', '.join(LORA_TARGETS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise E5Error(f"lora_dropout must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return (self.alpha or self.rank) / self.rank if self.rank else 0.0


class KeyStream:
    """Stands in for an `nnx.Rngs` inside one layer: `params()` hands out keys split up front.

    Why: each draw from an `nnx.Rngs` updates its counter Variable, and under `nnx.eval_shape`
    (how a sharded model is planned, `encoder.build_sharded`) that update scans the whole trace
    so far (flax 0.12 / jax 0.10 build an error message for `getattr(tracer, "sharding")`), so
    planning time grows with the square of the draws: Mistral-7B with LoRA on its 7 projections
    (672 draws) took 25 s to plan on a 2-core CPU. Here a layer draws once from the model's Rngs.
    `nnx.LoRA` only calls `rngs.params()`, so it takes this as its `rngs`.
    """

    def __init__(self, key: jax.Array, n: int):
        self._keys = jax.random.split(key, n)
        self._next = 0

    def params(self) -> jax.Array:
        if self._next == len(self._keys):
            raise RuntimeError("KeyStream exhausted: a layer drew more keys than it split")
        self._next += 1
        return self._keys[self._next - 1]


class Proj(nnx.Module):
    """y = x W (+ b) (+ LoRA). W stored [in, out] (HF stores [out, in]; hf_decoder.py transposes).

    The LoRA adapter is Flax's `nnx.LoRA` (params `lora_a` [in, r], `lora_b` [r, out],
    type `nnx.LoRAParam`), kept beside the kernel rather than wrapping it so the
    base matmul keeps the mixed-precision dot of `bert.dense_dot`.
    """

    def __init__(self, din: int, dout: int, axes: tuple[str, str], *, bias: bool, std: float,
                 lora: LoraSpec | None, dtype: jnp.dtype, rngs: KeyStream):
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (din, dout), jnp.float32) * std, axes=axes)
        self.bias = nnx.Param(jnp.zeros((dout,), jnp.float32), axes=(axes[1],)) if bias else None
        # One assignment each: nnx fixes an attribute's pytree status (data / static) at the first.
        self.lora = None if lora is None else nnx.LoRA(
            din, lora.rank, dout, dtype=dtype, rngs=rngs,
            a_metadata={"axes": (axes[0], None)}, b_metadata={"axes": (None, axes[1])})
        self.lora_scale = 0.0 if lora is None else lora.scale
        self.lora_dropout = 0.0 if lora is None else lora.dropout

    def __call__(self, x: jax.Array, noise: TokenNoise | None = None, site: int = 0) -> jax.Array:
        y = jnp.dot(x, self.kernel[...]) if x.dtype == jnp.float32 else dense_dot(x, self.kernel[...])
        if self.bias is not None:
            y = y + self.bias[...]
        if self.lora is not None:
            with jax.named_scope("lora"):
                xd = hidden_dropout(x, self.lora_dropout, noise, site)
                y = y + self.lora(xd).astype(jnp.float32) * self.lora_scale
        return y.astype(x.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), axes=("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        with jax.named_scope("rms_norm"):
            x32 = x.astype(jnp.float32)
            normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
            return (self.scale[...] * normed).astype(x.dtype)


def _lora_for(spec: LoraSpec | None, name: str) -> LoraSpec | None:
    return spec if spec is not None and spec.rank > 0 and name in spec.targets else None


class Attention(nnx.Module):
    def __init__(self, cfg: DecoderConfig, lora: LoraSpec | None, dtype, *, rngs: KeyStream):
        H, d, std = cfg.hidden_size, cfg.head_dim, cfg.initializer_range
        nq, nkv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
        mk = lambda name, din, dout, axes, bias: Proj(  # noqa: E731
            din, dout, axes, bias=bias, std=std, lora=_lora_for(lora, name), dtype=dtype, rngs=rngs)
        self.q_proj = mk("q_proj", H, nq, ("embed", "heads"), cfg.qkv_bias)
        self.k_proj = mk("k_proj", H, nkv, ("embed", "kv_heads"), cfg.qkv_bias)
        self.v_proj = mk("v_proj", H, nkv, ("embed", "kv_heads"), cfg.qkv_bias)
        self.o_proj = mk("o_proj", nq, H, ("heads", "embed"), cfg.o_bias)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.cfg = cfg

    def __call__(self, x, cos, sin, mask_bias, noise, site) -> jax.Array:
        with jax.named_scope("attention"):
            cfg = self.cfg
            B, L, _ = x.shape
            d, nkv, g = cfg.head_dim, cfg.num_key_value_heads, cfg.groups
            q = constrain(self.q_proj(x, noise, site + 1), ("batch", "length", "heads"))
            k = constrain(self.k_proj(x, noise, site + 2), ("batch", "length", "kv_heads"))
            v = constrain(self.v_proj(x, noise, site + 3), ("batch", "length", "kv_heads"))
            q, k, v = q.reshape(B, L, nkv * g, d), k.reshape(B, L, nkv, d), v.reshape(B, L, nkv, d)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            # Grouped-query attention as plain batched matmuls: query head h uses kv head h // g
            # (HF's repeat_kv), so the g query heads of a kv head are stacked along the query axis,
            # [B, nkv, g * L, d] against [B, nkv, L, d]; k and v are never repeated in memory.
            q = q.reshape(B, L, nkv, g, d).transpose(0, 2, 3, 1, 4).reshape(B, nkv, g * L, d)
            k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
            q = q * jnp.asarray(1.0 / math.sqrt(d), q.dtype)
            scores = matmul_f32(q, k.swapaxes(-1, -2)).reshape(B, nkv, g, L, L) + mask_bias[:, :, None]
            probs = fused.softmax(scores).reshape(B, nkv * g, L, L)
            probs = attention_dropout(probs, cfg.attention_dropout, noise, site).astype(x.dtype)
            ctx = matmul_f32(probs.reshape(B, nkv, g * L, L), v).astype(x.dtype)
            ctx = ctx.reshape(B, nkv, g, L, d).transpose(0, 3, 1, 2, 4).reshape(B, L, nkv * g * d)
            ctx = constrain(ctx, ("batch", "length", "heads"))
            return self.o_proj(ctx, noise, site + 4)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: DecoderConfig, lora: LoraSpec | None, dtype, *, rngs: KeyStream):
        H, I, std = cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range
        mk = lambda name, din, dout, axes: Proj(  # noqa: E731
            din, dout, axes, bias=cfg.mlp_bias, std=std, lora=_lora_for(lora, name), dtype=dtype, rngs=rngs)
        self.gate_proj = mk("gate_proj", H, I, ("embed", "mlp"))
        self.up_proj = mk("up_proj", H, I, ("embed", "mlp"))
        self.down_proj = mk("down_proj", I, H, ("mlp", "embed"))

    def __call__(self, x, noise, site) -> jax.Array:
        with jax.named_scope("mlp"):
            gate = constrain(self.gate_proj(x, noise, site), ("batch", "length", "mlp"))
            up = constrain(self.up_proj(x, noise, site + 1), ("batch", "length", "mlp"))
            inner = (jax.nn.silu(gate.astype(jnp.float32)) * up.astype(jnp.float32)).astype(x.dtype)
            return self.down_proj(constrain(inner, ("batch", "length", "mlp")), noise, site + 2)


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, cfg: DecoderConfig, index: int, lora: LoraSpec | None, dtype, *, rngs: nnx.Rngs):
        self.site = 1 + 8 * index  # dropout sites: attention probs, 4 attention adapters, 3 MLP adapters
        self.sliding = cfg.layer_types[index] == SLIDING
        rngs = KeyStream(rngs.params(), 3 * len(LORA_TARGETS))  # a kernel, LoRA's A and B per projection
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, lora, dtype, rngs=rngs)
        self.post_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, lora, dtype, rngs=rngs)

    def __call__(self, x, cos, sin, masks, noise) -> jax.Array:
        mask_bias = masks[1] if self.sliding else masks[0]
        h = x + self.attn(self.input_norm(x), cos, sin, mask_bias, noise, self.site)
        h = constrain(h, ("batch", "length", "act_embed"))
        out = h + self.mlp(self.post_norm(h), noise, self.site + 5)
        return constrain(out, ("batch", "length", "act_embed"))


def _pure_layer(graphdef, state, x, cos, sin, masks, noise):
    return nnx.merge(graphdef, state)(x, cos, sin, masks, noise)


# Remat as a pure function of the layer's state (as bert.py, not nnx.remat): it then
# composes with any enclosing JAX transform, e.g. gradient caching's scan.
_pure_layer_remat = jax.checkpoint(_pure_layer, static_argnums=(0,))


def _run_layer(layer, x, cos, sin, masks, noise, remat: bool):
    if not remat:
        return layer(x, cos, sin, masks, noise)
    graphdef, state = nnx.split(layer)
    return _pure_layer_remat(graphdef, state, x, cos, sin, masks, noise)


def attention_masks(cfg: DecoderConfig, valid_key: jax.Array, same_text: jax.Array | None,
                    L: int) -> tuple[jax.Array, jax.Array | None]:
    """Additive fp32 biases [N, 1, L, L]: (full-attention layers', sliding layers' or None).

    `valid_key` [N, L]: keys that are real tokens. `same_text` [N, L, L] (packed rows):
    query and key belong to one text. Causal by index: within a text (padded or packed)
    tokens are contiguous and in order, so key index <= query index is the causal rule.
    """
    q = jnp.arange(L)[:, None]
    k = jnp.arange(L)[None, :]
    allowed = (k <= q)[None] & valid_key[:, None, :]
    if same_text is not None:
        allowed = allowed & same_text
    full = jnp.where(allowed[:, None], 0.0, _NEG).astype(jnp.float32)
    sliding = None
    if SLIDING in cfg.layer_types:
        near = (q - k) < cfg.sliding_window
        sliding = jnp.where((allowed & near[None])[:, None], 0.0, _NEG).astype(jnp.float32)
    return full, sliding


class DecoderModel(nnx.Module):
    """Token decoder: ids → last hidden states [N, L, H] after the final norm (HF's `*Model` output)."""

    def __init__(self, cfg: DecoderConfig, *, dtype: str = "float32", remat: bool = False,
                 lora: LoraSpec | None = None, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = jnp.dtype(dtype)
        self.remat = remat
        self.lora = lora if lora is not None and lora.rank > 0 else None
        init = jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size), jnp.float32)
        self.embed_tokens = nnx.Param(init * cfg.initializer_range, axes=("vocab", "embed"))
        self.layers = nnx.List([DecoderLayer(cfg, i, self.lora, self.dtype, rngs=rngs)
                                for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def __call__(self, input_ids, attention_mask, *, dropout_key=None, segment_ids=None, positions=None,
                 dropout_seeds=None) -> jax.Array:
        """Last hidden states [N, L, H] in the compute dtype.

        Padded rows: `attention_mask` (1 = token), positions 0..L-1 as transformers
        numbers them when given no position ids; `dropout_key` (one key, or one per
        row; None = deterministic). Packed rows (`e5jax.data.packing`): `segment_ids`
        (0 = empty, else which text), `positions` (index in its text), `dropout_seeds`
        (each token's text's uint32 seed).
        """
        cfg = self.cfg
        N, L = input_ids.shape
        if segment_ids is not None:
            if positions is None:
                raise ValueError("packed rows need positions (each token's index in its text)")
            same = segment_ids[:, :, None] == segment_ids[:, None, :]
            masks = attention_masks(cfg, segment_ids > 0, same, L)
            noise = None if dropout_seeds is None else TokenNoise(dropout_seeds.astype(jnp.uint32), positions)
        else:
            masks = attention_masks(cfg, attention_mask > 0, None, L)
            positions = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (N, L))
            noise = None
            if dropout_key is not None:
                if dropout_key.ndim == 0:
                    dropout_key = jax.random.split(dropout_key, N)
                noise = TokenNoise(jnp.broadcast_to(row_seeds(dropout_key)[:, None], (N, L)), positions)
        inv_freq, rope_scale = rope_frequencies(cfg, L)
        angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [N, L, d/2]
        cos = (jnp.cos(angles) * rope_scale)[:, :, None, :]
        sin = (jnp.sin(angles) * rope_scale)[:, :, None, :]
        with jax.named_scope("embeddings"):
            h = jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.dtype)
        h = constrain(h, ("batch", "length", "act_embed"))
        for layer in self.layers:
            h = _run_layer(layer, h, cos, sin, masks, noise, self.remat)
        return self.norm(h)


# ------------------------------------------------------------------ text encoder


def l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # torch's F.normalize clamp


def last_token_index(attention_mask: jax.Array) -> jax.Array:
    """Index of each row's last real token (right or left padding alike)."""
    L = attention_mask.shape[1]
    return L - 1 - jnp.argmax(attention_mask[:, ::-1] > 0, axis=1)


class DecoderTextEncoder(nnx.Module):
    """ids → one embedding per text, `encoder.TextEncoder`'s interface over a decoder.

    pooling "last": the hidden state of each text's last token (the EOS the
    tokenizer appends: E5-mistral); "mean": the mean over its tokens.
    """

    def __init__(self, cfg: DecoderConfig, *, pooling: str = "last", normalize: bool = True,
                 dtype: str = "float32", remat: bool = False, lora_rank: int = 0, lora_alpha: float = 0.0,
                 lora_targets: tuple[str, ...] = LORA_TARGETS, lora_dropout: float = 0.0, rngs: nnx.Rngs):
        if pooling not in POOLINGS:
            raise E5Error(f"decoder pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        lora = LoraSpec(lora_rank, lora_alpha, tuple(lora_targets), lora_dropout)
        self.decoder = DecoderModel(cfg, dtype=dtype, remat=remat, lora=lora, rngs=rngs)
        self.pooling = pooling
        self.normalize = normalize

    @property
    def cfg(self) -> DecoderConfig:
        return self.decoder.cfg

    def __call__(self, input_ids, attention_mask, *, dropout_key=None) -> jax.Array:
        hidden = self.decoder(input_ids, attention_mask, dropout_key=dropout_key)
        if self.pooling == "last":
            idx = last_token_index(attention_mask)
            emb = jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0].astype(jnp.float32)
        else:
            m = attention_mask.astype(jnp.float32)[..., None]
            emb = (hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
        return l2_normalize(emb) if self.normalize else emb

    def encode_packed(self, input_ids, segment_ids, positions, texts_per_group: int, *, seeds=None,
                      row_blocks: int = 1) -> jax.Array:
        """Packed rows [G, R, P] → embeddings [G, b, H], b = `texts_per_group` (as `TextEncoder.encode_packed`).

        A text's embedding equals what `__call__` gives it alone in a padded row.
        """
        G, R, P = input_ids.shape
        token_seeds = None
        if seeds is not None:
            padded = jnp.concatenate([jnp.zeros((G, 1), jnp.uint32), seeds.astype(jnp.uint32)], axis=1)
            token_seeds = jnp.take_along_axis(padded, segment_ids.reshape(G, R * P), axis=1).reshape(G, R, P)
        cuts = np.linspace(0, R, min(max(row_blocks, 1), R) + 1).round().astype(int)
        hidden = []
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            flat = lambda x: x[:, lo:hi].reshape(G * (hi - lo), P)  # noqa: E731
            h = self.decoder(flat(input_ids), None, segment_ids=flat(segment_ids), positions=flat(positions),
                             dropout_seeds=None if token_seeds is None else flat(token_seeds))
            hidden.append(h.reshape(G, (hi - lo) * P, -1))
        hidden = hidden[0] if len(hidden) == 1 else jnp.concatenate(hidden, axis=1)  # [G, R * P, H]
        real = segment_ids > 0
        if self.pooling == "last":
            # A text's last token: the next slot of its row holds another text or nothing (texts never span rows).
            nxt = jnp.concatenate([segment_ids[..., 1:], jnp.zeros_like(segment_ids[..., :1])], axis=-1)
            weight = real & (nxt != segment_ids)
        else:
            weight = real
        w = weight.reshape(G, R * P, 1).astype(jnp.float32)
        seg = segment_ids.reshape(G, R * P)
        pool = jax.vmap(lambda x, s: jax.ops.segment_sum(x, s, num_segments=texts_per_group + 1))
        sums = pool(hidden.astype(jnp.float32) * w, seg)[:, 1:]
        counts = pool(w, seg)[:, 1:]
        emb = sums / jnp.maximum(counts, 1e-9)
        return l2_normalize(emb) if self.normalize else emb


# ------------------------------------------------------------------ construction


def lora_shapes(cfg: DecoderConfig, lora: LoraSpec) -> dict[str, tuple[int, ...]]:
    """Path → shape of every adapter parameter (`<proj>/lora/lora_a` [in, r], `lora_b` [r, out])."""
    from e5jax.model.hf_decoder import expected_shapes

    out = {}
    if lora.rank <= 0:
        return out
    for path, shape in expected_shapes(cfg).items():
        if path.endswith("/kernel") and path.split("/")[-2] in lora.targets:
            (din, dout), stem = shape, path.removesuffix("/kernel")
            out[f"{stem}/lora/lora_a"] = (din, lora.rank)
            out[f"{stem}/lora/lora_b"] = (lora.rank, dout)
    return out


def lora_init(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Host values for fresh adapters on a model loaded from a checkpoint without them:
    A as `nnx.LoRA`'s default (He-uniform over fan-in), B zeros (the adapter starts as a no-op)."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, shape in sorted(shapes.items()):
        if path.endswith("/lora/lora_a"):
            limit = math.sqrt(6.0 / shape[0])
            out[path] = rng.uniform(-limit, limit, shape).astype(np.float32)
        elif path.endswith("/lora/lora_b"):
            out[path] = np.zeros(shape, np.float32)
    return out


def create_decoder_sharded(cfg: DecoderConfig, mesh: Mesh, rules=DEFAULT_RULES, *, seed: int = 0,
                           params: dict[str, np.ndarray] | None = None, **kwargs) -> DecoderTextEncoder:
    """A DecoderTextEncoder born sharded (`encoder.build_sharded`); `params` keyed without 'decoder/'.

    Given base `params` (e.g. from `hf_decoder.hf_to_params`) and `lora_rank > 0`, the
    adapters missing from `params` are initialised here (`lora_init`).
    """
    from e5jax.model.encoder import build_sharded

    make = lambda: DecoderTextEncoder(cfg, rngs=nnx.Rngs(seed), **kwargs)  # noqa: E731
    if params is not None and kwargs.get("lora_rank", 0) > 0:
        spec = LoraSpec(kwargs["lora_rank"], targets=tuple(kwargs.get("lora_targets", LORA_TARGETS)))
        missing = {k: s for k, s in lora_shapes(cfg, spec).items() if k not in params}
        params = {**lora_init(missing, seed), **params}
    return build_sharded(make, mesh, rules, params=params, key_of=lambda path: path.removeprefix("decoder/"))


def read_decoder_pooling(folder) -> tuple[str, bool]:
    """(pooling, normalize) a folder records: an e5jax export's e5jax.json, else a
    sentence-transformers Pooling module (`pooling_mode_lasttoken` / `pooling_mode_mean_tokens`),
    else E5-mistral's convention: the last token, normalised."""
    import json

    folder = local(folder, "model folder", "a decoder model folder is read and written with local-file APIs")
    if (folder / "e5jax.json").is_file():
        meta = json.loads((folder / "e5jax.json").read_text())
        if meta.get("pooling") in POOLINGS:
            return meta["pooling"], bool(meta.get("normalize", True))
    if not (folder / "modules.json").is_file():
        return "last", True
    pooling, normalize = "last", False
    for mod in json.loads((folder / "modules.json").read_text()):
        if mod["type"].endswith("Pooling"):
            pc = json.loads((folder / mod["path"] / "config.json").read_text())
            if pc.get("pooling_mode_mean_tokens") or pc.get("pooling_mode") == "mean":
                pooling = "mean"
            elif not (pc.get("pooling_mode_lasttoken") or pc.get("pooling_mode") == "lasttoken"):
                raise E5Error(f"{folder}: a decoder pools the last token or the mean; its Pooling config is {pc}")
        if mod["type"].endswith("Normalize"):
            normalize = True
    return pooling, normalize


def load_decoder_pretrained(path, *, mesh: Mesh | None = None, rules=DEFAULT_RULES, dtype: str = "float32",
                            remat: bool = False, dropout: float = -1.0, pooling: str | None = None,
                            normalize: bool | None = None, seed: int = 0, **lora) -> DecoderTextEncoder:
    """A DecoderTextEncoder with the weights of a local HF folder (Llama/Mistral/Qwen2/Qwen3).

    `dropout` >= 0 overrides the attention dropout; `lora` = lora_rank, lora_alpha,
    lora_targets, lora_dropout (fresh adapters). Pooling and normalisation default to what
    the folder records (`read_decoder_pooling`).
    """
    from e5jax.config import MeshConfig
    from e5jax.model import axes as ax
    from e5jax.model import hf_decoder
    from e5jax.paths import local

    folder = local(path, "model folder", "a Hugging Face model folder is read with local-file APIs")
    cfg, _ = hf_decoder.read_config(folder)
    if dropout >= 0:
        cfg = dataclasses.replace(cfg, attention_dropout=dropout)
    params = hf_decoder.hf_to_params(cfg, hf_decoder.read_tensors(folder))
    mesh = mesh or ax.make_mesh(MeshConfig(), jax.devices()[:1])
    p_mode, p_norm = read_decoder_pooling(folder) if pooling is None or normalize is None else (pooling, normalize)
    return create_decoder_sharded(cfg, mesh, rules, seed=seed, params=params, pooling=pooling or p_mode,
                                  normalize=p_norm if normalize is None else normalize, dtype=dtype, remat=remat,
                                  **lora)
