"""A tiny fine-tuning preset for tests and CI: the tiny pre-training model with
3 hard negatives per query and InfoNCE over in-batch + hard negatives
(set loss.kd_weight > 0 when the records carry teacher scores).

    e5jax train --config configs/tiny_finetune.py --workdir /tmp/tiny-ft \
        --set model.init=/tmp/tiny --set data.data_dir=DIR --set data.name=NAME
"""

import pathlib

from e5jax.config import Config, load_config, replace


def get_config() -> Config:
    return replace(load_config(pathlib.Path(__file__).with_name("tiny_pretrain.py")), **{
        "data.num_hard_negatives": 3,
        "train.batch_size": 16,
        "optim.learning_rate": 5e-4,
    })
