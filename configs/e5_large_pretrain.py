"""E5-large contrastive pre-training with the paper's settings.

Init: bert-large-uncased-whole-word-masking (local folder, e.g.
`huggingface-cli download google-bert/bert-large-uncased-whole-word-masking --local-dir ckpt/bert-large-uncased-wwm`).

Run (TPU v4-32, every worker; see tpu_scripts/launch.sh):
    e5jax train --config configs/e5_large_pretrain.py --workdir gs://BUCKET/e5-large-pt \
        --set data.data_dir=gs://BUCKET/tfds
"""

import pathlib

from e5jax.config import Config, DataConfig, LossConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig

# The init model's architecture (its config.json): `e5jax compile` builds the model from it
# where the weights are not on the machine.
ARCH = str(pathlib.Path(__file__).resolve().parent / "bert_large_uncased.json")


def get_config() -> Config:
    return Config(
        model=ModelConfig(init="ckpt/bert-large-uncased-wwm", arch=ARCH, pooling="mean", normalize=True,
                          dtype="bfloat16", remat=True),
        data=DataConfig(data_dir="gs://BUCKET/tfds", name="ccpairs_filtered", pack=True, max_query_length=128,
                        max_passage_length=128, num_buckets=4, one_source_per_batch=True),
        # 335M params: parameters over fsdp=8, feed-forward and heads split 2-way.
        mesh=MeshConfig(data=-1, fsdp=8, tensor=2),
        optim=OptimConfig(learning_rate=1e-4, warmup_steps=1000, weight_decay=0.01),
        loss=LossConfig(temperature=0.01, block_size=4096),
        train=TrainConfig(batch_size=32768, steps=20000, grad_cache_chunk=2048, checkpoint_every=1000,
                          log_every=50, eval_every=1000),
    )
