"""E5-base supervised fine-tuning with the paper's settings: batch 256, 7 mined
hard negatives per query, max length 192, loss = KL(teacher || student) + alpha * InfoNCE
(see `e5jax.config.finetune_settings`); same model and mesh as e5_base_pretrain.py (v4-32: data 4 x fsdp 4), without remat.

Data: MS MARCO + NQ + NLI records (`e5jax convert`, `e5jax mine`, `e5jax score-teacher`),
built with `e5jax build --kind finetune --name e5_finetune`.

    e5jax train --config configs/e5_base_finetune.py --workdir gs://BUCKET/e5-base-ft \
        --set model.init=gs://BUCKET/e5-base-pt --set data.data_dir=gs://BUCKET/tfds
"""

import pathlib

from e5jax.config import Config, finetune_settings, load_config, replace


def get_config() -> Config:
    pretrain = load_config(pathlib.Path(__file__).with_name("e5_base_pretrain.py"))
    # Remat off: libtpu 0.0.42.1's compiler crashes (stack overflow) on this step with remat
    # on v4 (docs/tpu.md), and without it the step fits anyway: `e5jax compile` gives
    # 15.00 of 32 GiB per chip on v4-32, one forward pass fewer, a 42% MFU bound.
    return replace(finetune_settings(pretrain, init="ckpt/e5-base-pt"), **{"model.remat": False})
