"""AdamW with linear warm-up then linear decay; no weight decay on biases and
LayerNorm parameters (BERT's recipe, which E5 follows).

What trains: every `nnx.Param`, or with LoRA (`model.lora_rank > 0`) only the
adapters (`nnx.LoRAParam`, a subclass of `nnx.Param`): the optimizer then holds
moments for the adapters alone and the step differentiates only them, so the
frozen base costs neither gradient nor optimizer memory."""

from __future__ import annotations

import jax
import optax
from flax import nnx

from e5jax.config import ModelConfig, OptimConfig


def trainable(cfg: ModelConfig):
    """The nnx filter of the parameters a run updates (the optimizer's `wrt`, the step's gradient)."""
    return nnx.LoRAParam if cfg.lora_rank > 0 else nnx.Param


def schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    warmup = max(0, min(cfg.warmup_steps, total_steps))
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, cfg.learning_rate, max(warmup, 1)),
            optax.linear_schedule(cfg.learning_rate, cfg.end_learning_rate, max(total_steps - warmup, 1)),
        ],
        boundaries=[warmup],
    )


def decay_mask(params: nnx.State):
    """True where weight decay applies: matrices (kernels, embedding tables)
    only. Biases and LayerNorm scale/bias are 1-D."""
    return jax.tree.map(lambda v: v.ndim > 1, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.adamw(schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)
