"""A tiny preset for tests and CI: a 2-layer, 64-wide BERT from scratch with
the bert-base-uncased vocabulary (all-MiniLM-L6-v2's tokenizer).

    e5jax train --config configs/tiny_pretrain.py --workdir /tmp/tiny \
        --set data.data_dir=DIR --set data.name=NAME --set model.tokenizer=MODEL_DIR
"""

import pathlib

from e5jax.config import Config, DataConfig, LossConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig

HERE = pathlib.Path(__file__).resolve().parent


def get_config() -> Config:
    return Config(
        model=ModelConfig(init="", arch=str(HERE / "tiny_bert.json"), tokenizer="", dtype="float32"),
        data=DataConfig(data_dir="", name="", max_query_length=32, max_passage_length=64, num_buckets=2),
        mesh=MeshConfig(data=-1, fsdp=1, tensor=1),
        optim=OptimConfig(learning_rate=1e-3, warmup_steps=5, weight_decay=0.01),
        # tau = 0.05 instead of 0.01: a model trained from scratch learns faster with a softer softmax.
        loss=LossConfig(temperature=0.05),
        train=TrainConfig(batch_size=32, steps=10, checkpoint_every=5, log_every=1, eval_batches=2),
    )
