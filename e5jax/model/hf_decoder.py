"""Hugging Face ⇄ e5jax parameters for the decoder families, through one explicit table.

`MAPPING` lists every parameter of `decoder.DecoderModel` once, with the HF
name of its tensor and whether torch stores it transposed ([out, in]).
Loading checks that each entry finds a tensor of the expected shape and that
no base-model tensor is left unmapped; saving writes exactly the table's
names, so `transformers.AutoModel` loads the folder with no missing or
unexpected keys. LoRA adapters are not base-model tensors: they are merged or
exported as a PEFT adapter elsewhere.
"""

from __future__ import annotations

import json
import pathlib
import struct
from typing import Any

import numpy as np

from e5jax.errors import E5Error
from e5jax.model.decoder import DecoderConfig
from e5jax.paths import local

# (e5jax path template, HF key template, torch stores it [out, in], present when this config flag is set)
# "{i}" is the layer index; the flag "" means always.
MAPPING: list[tuple[str, str, bool, str]] = [
    ("embed_tokens", "embed_tokens.weight", False, ""),
    ("layers/{i}/input_norm/scale", "layers.{i}.input_layernorm.weight", False, ""),
    ("layers/{i}/attn/q_proj/kernel", "layers.{i}.self_attn.q_proj.weight", True, ""),
    ("layers/{i}/attn/q_proj/bias", "layers.{i}.self_attn.q_proj.bias", False, "qkv_bias"),
    ("layers/{i}/attn/k_proj/kernel", "layers.{i}.self_attn.k_proj.weight", True, ""),
    ("layers/{i}/attn/k_proj/bias", "layers.{i}.self_attn.k_proj.bias", False, "qkv_bias"),
    ("layers/{i}/attn/v_proj/kernel", "layers.{i}.self_attn.v_proj.weight", True, ""),
    ("layers/{i}/attn/v_proj/bias", "layers.{i}.self_attn.v_proj.bias", False, "qkv_bias"),
    ("layers/{i}/attn/o_proj/kernel", "layers.{i}.self_attn.o_proj.weight", True, ""),
    ("layers/{i}/attn/o_proj/bias", "layers.{i}.self_attn.o_proj.bias", False, "o_bias"),
    ("layers/{i}/attn/q_norm/scale", "layers.{i}.self_attn.q_norm.weight", False, "qk_norm"),
    ("layers/{i}/attn/k_norm/scale", "layers.{i}.self_attn.k_norm.weight", False, "qk_norm"),
    ("layers/{i}/post_norm/scale", "layers.{i}.post_attention_layernorm.weight", False, ""),
    ("layers/{i}/mlp/gate_proj/kernel", "layers.{i}.mlp.gate_proj.weight", True, ""),
    ("layers/{i}/mlp/gate_proj/bias", "layers.{i}.mlp.gate_proj.bias", False, "mlp_bias"),
    ("layers/{i}/mlp/up_proj/kernel", "layers.{i}.mlp.up_proj.weight", True, ""),
    ("layers/{i}/mlp/up_proj/bias", "layers.{i}.mlp.up_proj.bias", False, "mlp_bias"),
    ("layers/{i}/mlp/down_proj/kernel", "layers.{i}.mlp.down_proj.weight", True, ""),
    ("layers/{i}/mlp/down_proj/bias", "layers.{i}.mlp.down_proj.bias", False, "mlp_bias"),
    ("norm/scale", "norm.weight", False, ""),
]
# Causal-LM checkpoints wrap the base model as "model." and add a head; the head is not ours.
_ANCHOR = "embed_tokens.weight"
_HEADS = ("lm_head.", "score.")


def expand(cfg: DecoderConfig) -> list[tuple[str, str, bool]]:
    """The table for one config: layers unrolled, rows whose flag is off dropped."""
    rows = []
    for path, key, transpose, flag in MAPPING:
        if flag and not getattr(cfg, flag):
            continue
        if "{i}" in path:
            rows += [(path.format(i=i), key.format(i=i), transpose) for i in range(cfg.num_hidden_layers)]
        else:
            rows.append((path, key, transpose))
    return rows


def expected_shapes(cfg: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every e5jax parameter the table names (e5jax layout)."""
    H, I, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    nq, nkv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    dims = {"q_proj": (H, nq), "k_proj": (H, nkv), "v_proj": (H, nkv), "o_proj": (nq, H),
            "gate_proj": (H, I), "up_proj": (H, I), "down_proj": (I, H)}
    out = {}
    for path, _, _ in expand(cfg):
        parts = path.split("/")
        if path == "embed_tokens":
            out[path] = (cfg.vocab_size, H)
        elif parts[-1] == "kernel":
            out[path] = dims[parts[-2]]
        elif parts[-1] == "bias":
            out[path] = (dims[parts[-2]][1],)
        elif parts[-2] in ("q_norm", "k_norm"):
            out[path] = (d,)
        else:
            out[path] = (H,)
    return out


# ------------------------------------------------------------------ files


def is_decoder_folder(folder) -> bool:
    """Whether a model folder's config.json names a decoder family this module maps."""
    from e5jax.model.decoder import SUPPORTED_MODEL_TYPES

    path = local(folder, "model folder", "a decoder model folder is read and written with local-file APIs") / "config.json"
    try:
        return json.loads(path.read_text()).get("model_type") in SUPPORTED_MODEL_TYPES
    except (OSError, json.JSONDecodeError):
        return False


def read_config(folder: pathlib.Path) -> tuple[DecoderConfig, dict[str, Any]]:
    folder = local(folder, "model folder", "a decoder model folder is read and written with local-file APIs")
    from e5jax.model.hf import read_config_json

    raw = read_config_json(folder)
    return DecoderConfig.from_hf(raw), raw


# safetensors' dtype names → numpy. `safetensors.numpy` cannot represent bfloat16 (0.8: "data
# type 'bfloat16' not understood"), the dtype decoder LLMs ship in, so the files are read here:
# the format is an 8-byte header length, a JSON header (name → dtype, shape, byte offsets), the bytes.
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _np_dtype(name: str):
    if name == "BF16":
        import ml_dtypes  # ships with jax

        return ml_dtypes.bfloat16
    if name not in _DTYPES:
        raise E5Error(f"safetensors dtype {name} is not supported")
    return _DTYPES[name]


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Tensors of one .safetensors file as (memory-mapped, read-only) numpy arrays, original dtypes."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        out[name] = data[lo:hi].view(_np_dtype(info["dtype"])).reshape(info["shape"])
    return out


def read_tensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors`, or of the shards a `model.safetensors.index.json` lists."""
    folder = local(folder, "model folder", "a decoder model folder is read and written with local-file APIs")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        files = [p.name for p in sorted(folder.glob("model-*-of-*.safetensors"))]
    if not files:
        raise E5Error(f"{folder} has no model.safetensors (or sharded model-*-of-*.safetensors with an index)")
    out: dict[str, np.ndarray] = {}
    for name in files:
        if not (folder / name).is_file():
            raise E5Error(f"{folder / name} is listed in the index but missing")
        out.update(read_safetensors(folder / name))
    return out


# ------------------------------------------------------------------ mapping


def _strip_prefix(tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    hits = [k for k in tensors if k.endswith(_ANCHOR)]
    if not hits:
        raise E5Error(f"checkpoint has no {_ANCHOR}; not a Llama/Mistral/Qwen decoder")
    prefix = min(hits, key=len)[: -len(_ANCHOR)]
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, prefix


def hf_to_params(cfg: DecoderConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF tensors (base or causal-LM checkpoint) → {e5jax path: fp32 array}, every table entry checked."""
    stripped, prefix = _strip_prefix(tensors)
    shapes = expected_shapes(cfg)
    params: dict[str, np.ndarray] = {}
    used = set()
    for path, key, transpose in expand(cfg):
        if key not in stripped:
            raise E5Error(f"checkpoint is missing {prefix}{key} (needed for {path})")
        value = np.asarray(stripped[key]).astype(np.float32)
        if transpose:
            value = value.T
        if value.shape != shapes[path]:
            raise E5Error(f"shape mismatch for {prefix}{key}: checkpoint has {value.shape}, "
                          f"config.json implies {shapes[path]}")
        params[path] = np.ascontiguousarray(value)
        used.add(key)
    stray = [k for k in stripped if k not in used and not k.startswith(_HEADS) and "rotary_emb" not in k]
    if stray:
        raise E5Error(f"checkpoint has decoder tensors e5jax does not map: {', '.join(sorted(stray)[:3])}")
    return params


def params_to_hf(cfg: DecoderConfig, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of `hf_to_params`: base-model (unprefixed) HF names and layouts, fp32."""
    out = {}
    for path, key, transpose in expand(cfg):
        if path not in params:
            raise E5Error(f"no value for {path}")
        v = np.asarray(params[path], dtype=np.float32)
        out[key] = np.ascontiguousarray(v.T if transpose else v)
    return out


def save_folder(folder: pathlib.Path, cfg: DecoderConfig, params: dict[str, np.ndarray], *,
                max_shard_bytes: int = 5 * 2**30, dtype: str = "float32") -> pathlib.Path:
    """Write config.json + safetensors (sharded with an index above `max_shard_bytes`, as HF does)."""
    from safetensors.numpy import save_file

    folder = local(folder, "model folder", "a decoder model folder is read and written with local-file APIs")
    folder.mkdir(parents=True, exist_ok=True)
    tensors = params_to_hf(cfg, params)
    if dtype not in ("float32", "float16"):  # numpy cannot write bf16 through safetensors.numpy
        raise E5Error(f"save dtype must be float32 or float16, got {dtype!r}")
    tensors = {k: v.astype(dtype) for k, v in tensors.items()}
    hf_cfg = cfg.to_hf()
    hf_cfg["torch_dtype"] = dtype
    (folder / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for k, v in tensors.items():
        if shards[-1] and size + v.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder
    weight_map = {}
    for n, shard in enumerate(shards, 1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(v.nbytes for v in tensors.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return folder


def model_params(model) -> dict[str, np.ndarray]:
    """Host copy of a DecoderTextEncoder's (or DecoderModel's) base weights, keyed by table path.

    LoRA adapters are left out (`nnx.LoRAParam`); merge them first to export a fine-tuned model."""
    import jax
    from flax import nnx

    from e5jax.model.hf import flatten_state

    decoder = getattr(model, "decoder", model)
    state = nnx.state(decoder, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    return {k: np.asarray(jax.device_get(v[...])) for k, v in flatten_state(state).items()}
