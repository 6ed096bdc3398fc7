"""Presets carry the paper's settings; overrides are typed; configs round-trip."""

import pathlib

import pytest

from e5jax.config import Config, from_dict, laptop, load_config, replace
from e5jax.errors import E5Error

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("size", ["small", "base", "large"])
def test_pretrain_presets_have_the_papers_settings(size):
    cfg = load_config(CONFIGS / f"e5_{size}_pretrain.py")
    assert cfg.train.batch_size == 32768 and cfg.train.steps == 20000
    assert cfg.loss.temperature == 0.01
    assert cfg.data.max_query_length == cfg.data.max_passage_length == 128
    assert cfg.data.query_prefix == "query: " and cfg.data.passage_prefix == "passage: "
    assert cfg.model.pooling == "mean" and cfg.optim.warmup_steps > 0
    assert cfg.train.grad_cache_chunk and cfg.train.batch_size % cfg.train.grad_cache_chunk == 0
    assert f"configs/e5_{size}_pretrain.py" in (CONFIGS / f"e5_{size}_pretrain.py").read_text()  # run command
    small = laptop(cfg)
    assert small.train.batch_size < 64 and small.train.steps <= 20 and small.train.grad_cache_chunk == 0


@pytest.mark.parametrize("size", ["small", "base", "large"])
def test_finetune_presets_have_the_papers_settings(size):
    cfg = load_config(CONFIGS / f"e5_{size}_finetune.py")
    pre = load_config(CONFIGS / f"e5_{size}_pretrain.py")
    assert cfg.train.batch_size == 256 and cfg.data.num_hard_negatives == 7
    assert cfg.data.max_query_length == cfg.data.max_passage_length == 192
    assert cfg.loss.kd_weight > 0 and cfg.loss.infonce_weight > 0
    assert cfg.mesh == pre.mesh and cfg.model.dtype == pre.model.dtype


def test_overrides_are_typed_and_round_trip():
    cfg = replace(Config(), **{"train.steps": "7", "optim.learning_rate": "1e-4", "model.remat": "true",
                               "data.query_prefix": "q: "})
    assert (cfg.train.steps, cfg.optim.learning_rate, cfg.model.remat, cfg.data.query_prefix) == (7, 1e-4, True, "q: ")
    with pytest.raises(E5Error, match="data.pack_towers"):
        replace(cfg, **{"data.pack_towers": "both"})
    with pytest.raises(E5Error, match="model.row_blocks"):
        replace(cfg, **{"model.row_blocks": "-1"})
    assert from_dict(cfg.to_dict()) == cfg
    with pytest.raises(E5Error, match="train.steps"):
        replace(cfg, **{"train.steps": "1.5"})
    with pytest.raises(E5Error, match="train.batch_size=30 is not divisible"):
        replace(cfg, **{"train.batch_size": "30", "train.grad_cache_chunk": "8"})
    # Counts and intervals the loop divides by or loops to are refused up front, naming the key.
    for key, value, needle in (("train.log_every", "0", ">= 1"), ("train.checkpoint_every", "0", ">= 1"),
                               ("train.steps", "-1", ">= 0"), ("train.batch_size", "0", ">= 1"),
                               ("train.keep_checkpoints", "0", ">= 1"), ("train.eval_batches", "0", ">= 1"),
                               ("train.eval_every", "-1", ">= 0"), ("train.grad_cache_chunk", "-8", ">= 0")):
        with pytest.raises(E5Error, match=f"^{key.replace('.', '[.]')} must be {needle}.*, got {value}$"):
            replace(cfg, **{key: value})
