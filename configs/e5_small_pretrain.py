"""E5-small contrastive pre-training with the paper's settings.

Init: MiniLM-L12-H384-uncased (download it once into a local folder, e.g.
`huggingface-cli download microsoft/MiniLM-L12-H384-uncased --local-dir ckpt/MiniLM-L12-H384-uncased`).

Run (TPU v4-32, every worker; see tpu_scripts/launch.sh):
    e5jax train --config configs/e5_small_pretrain.py --workdir gs://BUCKET/e5-small-pt \
        --set data.data_dir=gs://BUCKET/tfds --set model.init=ckpt/MiniLM-L12-H384-uncased
Laptop smoke run of the same preset:
    e5jax train --config configs/e5_small_pretrain.py --laptop --workdir /tmp/e5s --set ...
"""

import pathlib

from e5jax.config import Config, DataConfig, LossConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig

# The init model's architecture (its config.json): `e5jax compile` builds the model from it
# where the weights are not on the machine.
ARCH = str(pathlib.Path(__file__).resolve().parent / "minilm_l12_h384_uncased.json")


def get_config() -> Config:
    return Config(
        model=ModelConfig(init="ckpt/MiniLM-L12-H384-uncased", arch=ARCH, pooling="mean", normalize=True,
                          dtype="bfloat16", remat=True),
        data=DataConfig(data_dir="gs://BUCKET/tfds", name="ccpairs_filtered", pack=True, max_query_length=128,
                        max_passage_length=128, num_buckets=4, one_source_per_batch=True),
        # 32,768 pairs over a v4 pod: pure data parallelism is enough for 33M params.
        mesh=MeshConfig(data=-1, fsdp=1, tensor=1),
        optim=OptimConfig(learning_rate=3e-4, warmup_steps=1000, weight_decay=0.01),
        loss=LossConfig(temperature=0.01, block_size=4096),
        train=TrainConfig(batch_size=32768, steps=20000, grad_cache_chunk=8192, checkpoint_every=1000,
                          log_every=50, eval_every=1000),
    )
