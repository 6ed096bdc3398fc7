"""Build the (encoder, optimizer) state, already sharded, from a Config.

Two model families (`model.family`, "auto" = the config.json's model_type):
BERT (`encoder.TextEncoder`) and decoder LLMs (`decoder.DecoderTextEncoder`:
Llama / Mistral / Qwen2 / Qwen3, optionally with LoRA adapters, in which case
the optimizer holds the adapters alone: `optimizer.trainable`)."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from e5jax.config import DECODER_TYPES, Config
from e5jax.errors import E5Error
from e5jax.model import axes as ax
from e5jax.model.bert import BertConfig
from e5jax.model.encoder import TextEncoder, create_sharded, load_pretrained
from e5jax.paths import is_url, local
from e5jax.train.optimizer import make_optimizer, trainable


def scratch_config(cfg: Config) -> BertConfig:
    path = local(cfg.model.arch, "model.arch", "a model config file is read from local disk")
    if not path.is_file():
        raise E5Error(f"model.arch: config file not found: {path} (or set model.init to a model folder)")
    bert = BertConfig.from_hf(json.loads(path.read_text()))
    if cfg.model.dropout >= 0:
        bert = dataclasses.replace(bert, hidden_dropout_prob=cfg.model.dropout,
                                   attention_probs_dropout_prob=cfg.model.dropout)
    return bert


def _local(path: str, key: str) -> str:
    """HF model and tokenizer folders are read with local-file APIs: a remote
    one gets a one-line error naming the fix instead of a mangled path."""
    if is_url(path):
        raise E5Error(f"{key}={path}: a Hugging Face model or tokenizer folder must be on local disk (a "
                      "training workdir may be on gs://); copy it to every host first, e.g. "
                      "tpu_scripts/setup.sh --weights")
    return path


def tokenizer_path(cfg: Config) -> str:
    if not cfg.model.tokenizer and is_workdir(cfg.model.init):
        return tokenizer_path(workdir_config(cfg.model.init))
    path = cfg.model.tokenizer or cfg.model.init
    if not path:
        raise E5Error("set model.tokenizer (a folder with a HF tokenizer) for a model trained from scratch")
    return path


def load_tokenizer(cfg: Config):
    from transformers import AutoTokenizer

    path = _local(tokenizer_path(cfg), "model.tokenizer" if cfg.model.tokenizer else "model.init")
    if not pathlib.Path(path).is_dir():
        raise E5Error(f"tokenizer folder not found: {path}")
    tok = AutoTokenizer.from_pretrained(path)
    if cfg.model.pooling == "last":  # the pooled token must be an appended EOS (e5jax/model/eos.py)
        from e5jax.model.eos import ensure_eos

        ensure_eos(tok, f"the tokenizer in {path}")
    return tok


def is_workdir(path: str) -> bool:
    """A training workdir (config.json + checkpoints/), e.g. pre-training's, to fine-tune from.
    Local or on Cloud Storage (epath; orbax restores from gs:// as well)."""
    if not path:
        return False
    p = epath.Path(path)
    try:
        return (p / "checkpoints").is_dir() and (p / "config.json").is_file()
    except ImportError as e:  # fsspec names the missing filesystem package (gcsfs for gs://)
        raise E5Error(f"cannot read {path}: {e}") from e


def _with_dropout(bert: BertConfig, dropout: float) -> BertConfig:
    if dropout < 0:
        return bert
    return dataclasses.replace(bert, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


def _config_json(cfg: Config) -> dict:
    """The HF config.json of the model a Config trains (init folder, else its arch file)."""
    if cfg.model.init:
        path = pathlib.Path(_local(cfg.model.init, "model.init")) / "config.json"
        key = "model.init"
    else:
        path = local(cfg.model.arch, "model.arch", "a model config file is read from local disk")
        key = "model.arch"
    if not path.is_file():
        raise E5Error(f"{key}: config file not found: {path}" + ("" if cfg.model.init else
                                                                 " (or set model.init to a model folder)"))
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise E5Error(f"{key}: {path} is not JSON ({e})") from e


def model_family(cfg: Config) -> str:
    """"bert" or "decoder": `model.family`, or from the config.json's model_type when "auto"."""
    if cfg.model.family != "auto":
        return cfg.model.family
    if is_workdir(cfg.model.init):
        return model_family(workdir_config(cfg.model.init))
    if not cfg.model.init and not cfg.model.arch:
        return "bert"  # nothing to read: scratch_config names the missing file
    return "decoder" if _config_json(cfg).get("model_type") in DECODER_TYPES else "bert"


def decoder_config(cfg: Config):
    """The decoder architecture a Config trains (`model.dropout` >= 0 overrides its attention dropout)."""
    from e5jax.model.decoder import DecoderConfig

    if is_workdir(cfg.model.init):
        dec = decoder_config(workdir_config(cfg.model.init))
    else:
        dec = DecoderConfig.from_hf(_config_json(cfg))
    if cfg.model.dropout >= 0:
        dec = dataclasses.replace(dec, attention_dropout=cfg.model.dropout)
    return dec


def _decoder_kwargs(cfg: Config) -> dict:
    m = cfg.model
    return dict(pooling=m.pooling, normalize=m.normalize, dtype=compute_dtype(cfg), remat=m.remat,
                lora_rank=m.lora_rank, lora_alpha=m.lora_alpha, lora_targets=tuple(m.lora_targets),
                lora_dropout=m.lora_dropout)


def _check_family(cfg: Config, family: str) -> None:
    if family == "bert" and cfg.model.pooling == "last":
        raise E5Error("model.pooling='last' is for decoders (the appended EOS); BERT models pool 'mean' or 'cls'")
    if family == "bert" and cfg.model.lora_rank:
        raise E5Error("model.lora_rank > 0: LoRA is implemented for decoders (model.family=decoder) only")
    if family == "decoder" and cfg.model.pooling == "cls":
        raise E5Error("model.pooling='cls' takes the first token, which a causal decoder computes from itself "
                      "alone; decoders pool 'last' (the EOS) or 'mean'")


def bert_config(cfg: Config):
    """The architecture a Config trains: from its init folder / workdir, or its scratch arch file
    (a `BertConfig`, or a `decoder.DecoderConfig` for the decoder family)."""
    from e5jax.model import hf

    if model_family(cfg) == "decoder":
        return decoder_config(cfg)
    if is_workdir(cfg.model.init):
        return _with_dropout(bert_config(workdir_config(cfg.model.init)), cfg.model.dropout)
    if cfg.model.init:
        bert, _ = hf.read_config(pathlib.Path(_local(cfg.model.init, "model.init")))
        return _with_dropout(bert, cfg.model.dropout)
    return scratch_config(cfg)


def workdir_config(workdir: str) -> Config:
    from e5jax.config import from_dict

    path = epath.Path(workdir) / "config.json"
    if not path.is_file():
        raise E5Error(f"{workdir} is not an e5jax training workdir (no config.json)")
    return from_dict(json.loads(path.read_text()))


def create_model(cfg: Config, mesh: Mesh) -> TextEncoder:
    m = cfg.model
    family = model_family(cfg)
    _check_family(cfg, family)
    if family == "decoder":
        return _create_decoder(cfg, mesh)
    kwargs = dict(pooling=m.pooling, normalize=m.normalize, dtype=compute_dtype(cfg), remat=m.remat)
    if is_workdir(m.init):
        # Fine-tuning from a pre-training run: its newest checkpoint's encoder weights.
        from e5jax.model.encoder import encoder_params

        trained, _, _ = load_trained(m.init)
        return create_sharded(bert_config(cfg), mesh, cfg.mesh.rules, params=encoder_params(trained), **kwargs)
    if m.init:
        return load_pretrained(_local(m.init, "model.init"), mesh=mesh, rules=cfg.mesh.rules, dropout=m.dropout, **kwargs)
    return create_sharded(scratch_config(cfg), mesh, cfg.mesh.rules, seed=cfg.train.seed, **kwargs)


def _create_decoder(cfg: Config, mesh: Mesh):
    from e5jax.model.decoder import create_decoder_sharded, load_decoder_pretrained

    m = cfg.model
    if is_workdir(m.init):
        raise E5Error(f"model.init={m.init} is a training workdir: a decoder starts from a model folder; "
                      "export the workdir (e5jax export, merged weights) and set model.init to the export")
    if m.init:
        return load_decoder_pretrained(_local(m.init, "model.init"), mesh=mesh, rules=cfg.mesh.rules,
                                       dropout=m.dropout, seed=cfg.train.seed, **_decoder_kwargs(cfg))
    return create_decoder_sharded(decoder_config(cfg), mesh, cfg.mesh.rules, seed=cfg.train.seed,
                                  **_decoder_kwargs(cfg))


def create_state(cfg: Config, mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state) of (model, optimizer); optimizer moments are born with
    their parameter's sharding (zeros_like of sharded arrays)."""
    model = create_model(cfg, mesh)
    # With LoRA the optimizer state holds the adapters' moments only.
    opt = nnx.Optimizer(model, make_optimizer(cfg.optim, cfg.train.steps), wrt=trainable(cfg.model))
    graphdef, state = nnx.split((model, opt))
    # Pin every leaf to the sharding the rules table gives (scalars replicated).
    shardings = state_shardings(state, cfg, mesh)
    state = jax.device_put(state, shardings)
    return graphdef, state


def state_shardings(state: nnx.State, cfg: Config, mesh: Mesh):
    return ax.state_shardings(state, mesh, cfg.mesh.rules)


def compute_dtype(cfg: Config) -> str:
    """`model.dtype`, with "auto" resolved as for inference (`encoder.default_dtype`):
    bf16 on TPU, GPU and CPUs with native bf16, fp32 elsewhere."""
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    from e5jax.model.encoder import default_dtype

    return default_dtype()


def abstract_state(cfg: Config, mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State, object]:
    """Shapes and shardings only (nothing allocated) — the restore target."""

    bert = bert_config(cfg)
    dtype = compute_dtype(cfg)
    family = model_family(cfg)
    _check_family(cfg, family)

    def build():
        if family == "decoder":
            from e5jax.model.decoder import DecoderTextEncoder

            m = DecoderTextEncoder(bert, rngs=nnx.Rngs(0), **_decoder_kwargs(cfg))
        else:
            m = TextEncoder(bert, pooling=cfg.model.pooling, normalize=cfg.model.normalize, dtype=dtype,
                            remat=cfg.model.remat, with_pooler=True, rngs=nnx.Rngs(0))
        opt = nnx.Optimizer(m, make_optimizer(cfg.optim, cfg.train.steps), wrt=trainable(cfg.model))
        return m, opt

    abstract = nnx.eval_shape(build)
    graphdef, state = nnx.split(abstract)
    return graphdef, state, state_shardings(state, cfg, mesh)


def load_trained(workdir: str, *, mesh: Mesh | None = None, step: int | None = None):
    """(TextEncoder, tokenizer, Config) of a workdir's checkpoint: kept for training code and
    tests; the logic, and the public `load`, live in e5jax/loading.py."""
    from e5jax.loading import restore_workdir

    return restore_workdir(workdir, mesh=mesh, step=step)
