"""Hugging Face ⇄ e5jax parameters, through one explicit mapping table.

Every parameter of `BertModel` appears exactly once in `MAPPING`; loading
checks that each table entry finds a tensor of the expected shape, and that no
HF encoder tensor is left over, so a silently half-loaded model is impossible.
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np

from e5jax.errors import E5Error
from e5jax.model.bert import BertConfig

# (e5jax path template, HF key template, is a dense kernel stored [out, in] by torch)
# "{i}" is the layer index.
MAPPING: list[tuple[str, str, bool]] = [
    ("embeddings/word", "embeddings.word_embeddings.weight", False),
    ("embeddings/position", "embeddings.position_embeddings.weight", False),
    ("embeddings/token_type", "embeddings.token_type_embeddings.weight", False),
    ("embeddings/norm/scale", "embeddings.LayerNorm.weight", False),
    ("embeddings/norm/bias", "embeddings.LayerNorm.bias", False),
    ("layers/{i}/attention/query/kernel", "encoder.layer.{i}.attention.self.query.weight", True),
    ("layers/{i}/attention/query/bias", "encoder.layer.{i}.attention.self.query.bias", False),
    ("layers/{i}/attention/key/kernel", "encoder.layer.{i}.attention.self.key.weight", True),
    ("layers/{i}/attention/key/bias", "encoder.layer.{i}.attention.self.key.bias", False),
    ("layers/{i}/attention/value/kernel", "encoder.layer.{i}.attention.self.value.weight", True),
    ("layers/{i}/attention/value/bias", "encoder.layer.{i}.attention.self.value.bias", False),
    ("layers/{i}/attention/out/kernel", "encoder.layer.{i}.attention.output.dense.weight", True),
    ("layers/{i}/attention/out/bias", "encoder.layer.{i}.attention.output.dense.bias", False),
    ("layers/{i}/attention/norm/scale", "encoder.layer.{i}.attention.output.LayerNorm.weight", False),
    ("layers/{i}/attention/norm/bias", "encoder.layer.{i}.attention.output.LayerNorm.bias", False),
    ("layers/{i}/mlp_in/kernel", "encoder.layer.{i}.intermediate.dense.weight", True),
    ("layers/{i}/mlp_in/bias", "encoder.layer.{i}.intermediate.dense.bias", False),
    ("layers/{i}/mlp_out/kernel", "encoder.layer.{i}.output.dense.weight", True),
    ("layers/{i}/mlp_out/bias", "encoder.layer.{i}.output.dense.bias", False),
    ("layers/{i}/norm/scale", "encoder.layer.{i}.output.LayerNorm.weight", False),
    ("layers/{i}/norm/bias", "encoder.layer.{i}.output.LayerNorm.bias", False),
]
POOLER_MAPPING: list[tuple[str, str, bool]] = [
    ("pooler/kernel", "pooler.dense.weight", True),
    ("pooler/bias", "pooler.dense.bias", False),
]
# Keys HF keeps as buffers, not parameters.
_IGNORED = re.compile(r"(^|\.)embeddings\.position_ids$|(^|\.)embeddings\.token_type_ids$")
# Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
_LEGACY = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}


def expand(cfg: BertConfig, with_pooler: bool) -> list[tuple[str, str, bool]]:
    rows = []
    for path, key, t in MAPPING:
        if "{i}" in path:
            rows += [(path.format(i=i), key.format(i=i), t) for i in range(cfg.num_hidden_layers)]
        else:
            rows.append((path, key, t))
    return rows + (POOLER_MAPPING if with_pooler else [])


def read_config(folder: pathlib.Path) -> tuple[BertConfig, dict]:
    if not folder.is_dir():
        raise E5Error(f"model folder not found: {folder}")
    raw = read_config_json(folder)
    return BertConfig.from_hf(raw), raw


def read_config_json(folder: pathlib.Path) -> dict:
    """A model folder's config.json, with one-line errors for a missing or broken file
    (shared by the BERT and decoder loaders)."""
    path = folder / "config.json"
    if not path.is_file():
        raise E5Error(f"{folder} has no config.json; is it a Hugging Face model folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise E5Error(f"{path} is not valid JSON: {e}") from e


def read_tensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors` (or `pytorch_model.bin` where torch is installed)."""
    st = folder / "model.safetensors"
    if st.is_file():
        from safetensors.numpy import load_file

        return dict(load_file(str(st)))
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    if shards:
        from safetensors.numpy import load_file

        out: dict[str, np.ndarray] = {}
        for s in shards:
            out.update(load_file(str(s)))
        return out
    pt = folder / "pytorch_model.bin"
    if pt.is_file():
        try:
            import torch
        except ImportError:
            raise E5Error(
                f"{pt} is a PyTorch checkpoint and torch is not installed; "
                "install e5jax[test] (torch==2.13.0) or convert it to model.safetensors"
            ) from None
        sd = torch.load(str(pt), map_location="cpu", weights_only=True)
        return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}
    raise E5Error(f"{folder} has no model.safetensors or pytorch_model.bin")


def _strip_prefix(tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """Drop the base-model prefix ('bert.', 'roberta.', ...) that task heads add."""
    anchor = "embeddings.word_embeddings.weight"
    hits = [k for k in tensors if k.endswith(anchor)]
    if not hits:
        raise E5Error("checkpoint has no embeddings.word_embeddings.weight; not a BERT-family encoder")
    prefix = hits[0][: -len(anchor)]
    out = {}
    for k, v in tensors.items():
        for old, new in _LEGACY.items():
            k = k.replace(old, new)
        out[k[len(prefix):] if k.startswith(prefix) else k] = v
    return out, prefix


def hf_to_params(cfg: BertConfig, tensors: dict[str, np.ndarray], expected_shapes: dict[str, tuple],
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Map HF tensors onto e5jax paths. Returns (encoder params, leftover non-encoder tensors)."""
    stripped, prefix = _strip_prefix(tensors)
    with_pooler = "pooler.dense.weight" in stripped and "pooler/kernel" in expected_shapes
    params: dict[str, np.ndarray] = {}
    used = set()
    for path, key, transpose in expand(cfg, with_pooler):
        if key not in stripped:
            raise E5Error(f"checkpoint is missing {prefix}{key} (needed for {path})")
        value = np.asarray(stripped[key], dtype=np.float32)
        if transpose:
            value = value.T
        want = tuple(expected_shapes[path])
        if value.shape != want:
            raise E5Error(
                f"shape mismatch for {prefix}{key}: checkpoint has {value.shape}, config.json implies {want}"
            )
        params[path] = value
        used.add(key)
    leftover = {k: v for k, v in stripped.items() if k not in used and not _IGNORED.search(k)}
    stray = [k for k in leftover if k.startswith(("embeddings.", "encoder."))]
    if stray:
        raise E5Error(f"checkpoint has encoder tensors e5jax does not map: {', '.join(stray[:3])}")
    return params, leftover


def params_to_hf(cfg: BertConfig, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of `hf_to_params`: HF (base-model, unprefixed) names and layouts."""
    with_pooler = "pooler/kernel" in params
    out = {}
    for path, key, transpose in expand(cfg, with_pooler):
        v = np.asarray(params[path], dtype=np.float32)
        out[key] = np.ascontiguousarray(v.T if transpose else v)
    return out


def flatten_state(state) -> dict[str, object]:
    """nnx.State → {'layers/0/attention/query/kernel': leaf}."""
    from flax import nnx

    flat = {}
    for path, var in nnx.to_flat_state(state):
        flat["/".join(str(p) for p in path)] = var
    return flat


