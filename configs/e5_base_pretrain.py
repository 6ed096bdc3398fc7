"""E5-base contrastive pre-training with the paper's settings.

Init: bert-base-uncased (local folder, e.g.
`huggingface-cli download google-bert/bert-base-uncased --local-dir ckpt/bert-base-uncased`).

Run (TPU v4-32, every worker; see tpu_scripts/launch.sh):
    e5jax train --config configs/e5_base_pretrain.py --workdir gs://BUCKET/e5-base-pt \
        --set data.data_dir=gs://BUCKET/tfds
"""

import pathlib

from e5jax.config import Config, DataConfig, LossConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig

# The init model's architecture (its config.json): `e5jax compile` builds the model from it
# where the weights are not on the machine.
ARCH = str(pathlib.Path(__file__).resolve().parent / "bert_base_uncased.json")


def get_config() -> Config:
    return Config(
        model=ModelConfig(init="ckpt/bert-base-uncased", arch=ARCH, pooling="mean", normalize=True,
                          dtype="bfloat16", remat=True),
        data=DataConfig(data_dir="gs://BUCKET/tfds", name="ccpairs_filtered", pack=True, max_query_length=128,
                        max_passage_length=128, num_buckets=4, one_source_per_batch=True),
        # 110M params: shard parameters and optimizer moments over 4 devices
        # (ZeRO-3), the batch over all of them.
        mesh=MeshConfig(data=-1, fsdp=4, tensor=1),
        optim=OptimConfig(learning_rate=2e-4, warmup_steps=1000, weight_decay=0.01),
        loss=LossConfig(temperature=0.01, block_size=4096),
        # 4 gradient-cache chunks of 8,192: each chunk re-reads the weights, so fewer chunks means
        # less HBM traffic (`e5jax compile ... --topology v4-32`: 4,096 -> 2.61 s, 38% MFU bound,
        # 6.3 GiB/chip; 8,192 -> 2.18 s, 46%, 10.7 GiB; 16,384 does not fit, 34.7 GiB). With the
        # HBM fixes of 2026-12-06 (bf16 mask bias, GELU upcast on chip): 1.94 s, 51.6%, 9.0 GiB.
        train=TrainConfig(batch_size=32768, steps=20000, grad_cache_chunk=8192, checkpoint_every=1000,
                          log_every=50, eval_every=1000),
    )
