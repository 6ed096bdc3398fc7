"""Build the (encoder, optimizer) state, already sharded, from a Config."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
from flax import nnx
from jax.sharding import Mesh

from e5jax.config import Config
from e5jax.errors import E5Error
from e5jax.model import axes as ax
from e5jax.model.bert import BertConfig
from e5jax.model.encoder import TextEncoder, create_sharded, load_pretrained
from e5jax.train.optimizer import make_optimizer


def scratch_config(cfg: Config) -> BertConfig:
    path = pathlib.Path(cfg.model.arch)
    if not path.is_file():
        raise E5Error(f"model.arch: config file not found: {path} (or set model.init to a model folder)")
    bert = BertConfig.from_hf(json.loads(path.read_text()))
    if cfg.model.dropout >= 0:
        bert = dataclasses.replace(bert, hidden_dropout_prob=cfg.model.dropout,
                                   attention_probs_dropout_prob=cfg.model.dropout)
    return bert


def tokenizer_path(cfg: Config) -> str:
    path = cfg.model.tokenizer or cfg.model.init
    if not path:
        raise E5Error("set model.tokenizer (a folder with a HF tokenizer) for a model trained from scratch")
    return path


def load_tokenizer(cfg: Config):
    from transformers import AutoTokenizer

    path = tokenizer_path(cfg)
    if not pathlib.Path(path).is_dir():
        raise E5Error(f"tokenizer folder not found: {path}")
    return AutoTokenizer.from_pretrained(path)


def create_model(cfg: Config, mesh: Mesh) -> TextEncoder:
    m = cfg.model
    kwargs = dict(pooling=m.pooling, normalize=m.normalize, dtype=m.dtype, remat=m.remat)
    if m.init:
        return load_pretrained(m.init, mesh=mesh, rules=cfg.mesh.rules, dropout=m.dropout, **kwargs)
    return create_sharded(scratch_config(cfg), mesh, cfg.mesh.rules, seed=cfg.train.seed, **kwargs)


def create_state(cfg: Config, mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state) of (model, optimizer); optimizer moments are born with
    their parameter's sharding (zeros_like of sharded arrays)."""
    model = create_model(cfg, mesh)
    opt = nnx.Optimizer(model, make_optimizer(cfg.optim, cfg.train.steps), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))
    # Pin every leaf to the sharding the rules table gives (scalars replicated).
    shardings = state_shardings(state, cfg, mesh)
    state = jax.device_put(state, shardings)
    return graphdef, state


def state_shardings(state: nnx.State, cfg: Config, mesh: Mesh):
    return ax.state_shardings(state, mesh, cfg.mesh.rules)


def abstract_state(cfg: Config, mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State, object]:
    """Shapes and shardings only (nothing allocated) — the restore target."""

    def build():
        if cfg.model.init:
            from e5jax.model import hf

            bert, _ = hf.read_config(pathlib.Path(cfg.model.init))
            if cfg.model.dropout >= 0:
                bert = dataclasses.replace(bert, hidden_dropout_prob=cfg.model.dropout,
                                           attention_probs_dropout_prob=cfg.model.dropout)
            with_pooler = True
        else:
            bert, with_pooler = scratch_config(cfg), True
        m = TextEncoder(bert, pooling=cfg.model.pooling, normalize=cfg.model.normalize, dtype=cfg.model.dtype,
                        remat=cfg.model.remat, with_pooler=with_pooler, rngs=nnx.Rngs(0))
        opt = nnx.Optimizer(m, make_optimizer(cfg.optim, cfg.train.steps), wrt=nnx.Param)
        return m, opt

    abstract = nnx.eval_shape(build)
    graphdef, state = nnx.split(abstract)
    return graphdef, state, state_shardings(state, cfg, mesh)
