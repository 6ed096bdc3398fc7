"""LoRA adapters of a decoder encoder: merged into the base weights, or written as
a PEFT adapter folder; and the merged model as a folder `transformers` and
`sentence-transformers` load.

An adapter on projection W (e5jax stores W as [in, out]) is Flax's `nnx.LoRA`:
A [in, r], B [r, out], y = x W + s * x A B with s = alpha / r. Merged:
W' = W + s * A B. PEFT (`peft.LoraConfig`, same s = lora_alpha / r) stores
`lora_A.weight` [r, in] = A^T and `lora_B.weight` [out, r] = B^T under
`base_model.model.<HF module>` for a base `AutoModel` (e.g. `MistralModel`).
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
from flax import nnx

from e5jax.errors import E5Error
from e5jax.paths import local

# The query side of E5-mistral: "Instruct: {task}\nQuery: {query}" (data/finetune/synthetic.py).
QUERY_PROMPT = "Instruct: {task}\nQuery: "


def is_decoder(model) -> bool:
    from e5jax.model.decoder import DecoderTextEncoder

    return isinstance(model, DecoderTextEncoder)


def query_prompt(instruction: str) -> str:
    """The text put before a query: the E5-mistral template with `instruction` as the task."""
    return QUERY_PROMPT.format(task=instruction.strip())


def _modules(cfg) -> dict[str, str]:
    """e5jax projection path ('layers/0/attn/q_proj') -> HF module name ('layers.0.self_attn.q_proj'),
    from hf_decoder's one mapping table."""
    from e5jax.model import hf_decoder

    return {path.removesuffix("/kernel"): key.removesuffix(".weight")
            for path, key, _ in hf_decoder.expand(cfg) if path.endswith("/kernel")}


def adapters(model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{projection path: (A [in, r], B [r, out])} on the host, fp32."""
    from e5jax.model.hf import flatten_state

    flat = {k: np.asarray(jax.device_get(v[...]), np.float32)
            for k, v in flatten_state(nnx.state(model.decoder, nnx.LoRAParam)).items()}
    out = {}
    for k, a in flat.items():
        if k.endswith("/lora/lora_a"):
            proj = k.removesuffix("/lora/lora_a")
            out[proj] = (a, flat[f"{proj}/lora/lora_b"])
    return out


def lora_spec(model):
    """The model's `decoder.LoraSpec` (rank 0 when it has no adapters)."""
    from e5jax.model.decoder import LoraSpec

    return model.decoder.lora or LoraSpec(0)


def merged_params(model) -> dict[str, np.ndarray]:
    """Base weights with every adapter folded in: W + s * A B (the product in float64, one rounding)."""
    from e5jax.model import hf_decoder

    params = hf_decoder.model_params(model)
    scale = lora_spec(model).scale
    for proj, (a, b) in adapters(model).items():
        w = params[f"{proj}/kernel"]
        params[f"{proj}/kernel"] = (w.astype(np.float64) + scale * (a.astype(np.float64) @ b)).astype(np.float32)
    return params


def merged_model(model, mesh=None):
    """A `DecoderTextEncoder` without adapters whose weights are the merged ones (same pooling,
    normalisation and compute dtype)."""
    from e5jax.config import MeshConfig
    from e5jax.model import axes as ax
    from e5jax.model.decoder import create_decoder_sharded

    mesh = mesh or ax.make_mesh(MeshConfig(), jax.devices()[:1])
    return create_decoder_sharded(model.cfg, mesh, params=merged_params(model), pooling=model.pooling,
                                  normalize=model.normalize, dtype=str(model.decoder.dtype), lora_rank=0)


def write_peft(model, folder: str | os.PathLike, *, base_model: str = "") -> pathlib.Path:
    """adapter_config.json + adapter_model.safetensors (PEFT's names and layouts) into `folder`;
    `peft.PeftModel.from_pretrained(AutoModel.from_pretrained(base), folder)` loads it."""
    from safetensors.numpy import save_file

    spec = lora_spec(model)
    pairs = adapters(model)
    if not spec.rank or not pairs:
        raise E5Error("the model has no LoRA adapters to export as a PEFT folder (model.lora_rank = 0); "
                      "export the merged weights instead")
    names = _modules(model.cfg)
    tensors = {}
    for proj, (a, b) in pairs.items():
        module = f"base_model.model.{names[proj]}"
        tensors[f"{module}.lora_A.weight"] = np.ascontiguousarray(a.T)
        tensors[f"{module}.lora_B.weight"] = np.ascontiguousarray(b.T)
    targets = sorted({proj.rsplit("/", 1)[-1] for proj in pairs})
    config = {
        "peft_type": "LORA", "task_type": "FEATURE_EXTRACTION", "base_model_name_or_path": base_model or None,
        "r": spec.rank, "lora_alpha": spec.alpha or spec.rank, "lora_dropout": spec.dropout,
        "target_modules": targets, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "modules_to_save": None, "init_lora_weights": True, "inference_mode": True,
    }
    folder = local(folder, "model folder", "a decoder model folder is read and written with local-file APIs")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder


def write_merged(model, tokenizer, folder: pathlib.Path, *, max_seq_length: int, prompts: dict[str, str]) -> None:
    """The merged model as an HF folder (config.json + safetensors: `AutoModel` loads it with no
    missing or unexpected keys) plus the sentence-transformers modules: Transformer → last-token
    (or mean) Pooling → Normalize, with the instruction prompts in config_sentence_transformers.json."""
    from e5jax.model import hf_decoder

    cfg = model.cfg
    hf_decoder.save_folder(folder, cfg, merged_params(model))
    tokenizer.save_pretrained(str(folder))
    from e5jax.export import write_st_modules

    write_st_modules(folder, hidden_size=cfg.hidden_size, pooling=model.pooling, normalize=model.normalize,
                     max_seq_length=min(max_seq_length, cfg.max_length), prompts=prompts)
