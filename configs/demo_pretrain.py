"""The demo's pre-training preset (`make demo` / `e5jax demo`): E5's recipe,
shrunk to a few minutes of laptop CPU. The demo fills in model.init (the
installed all-MiniLM-L6-v2), data.data_dir and data.name.

    e5jax demo --workdir demo_out
"""

from e5jax.config import Config, DataConfig, LossConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        model=ModelConfig(pooling="mean", normalize=True, dtype="auto"),
        # 60 steps: coarse packed-row rounding keeps the compiled shapes (each ~15 s on a CPU) few.
        data=DataConfig(max_query_length=64, max_passage_length=64, num_buckets=2, pack=True, pack_row_step=4),
        mesh=MeshConfig(data=-1),
        optim=OptimConfig(learning_rate=3e-5, warmup_steps=6, weight_decay=0.01),
        loss=LossConfig(temperature=0.02),
        train=TrainConfig(batch_size=32, steps=60, checkpoint_every=20, log_every=1, eval_batches=4),
    )
