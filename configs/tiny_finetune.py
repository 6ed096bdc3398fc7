"""A tiny fine-tuning preset for tests and CI: the tiny pre-training model with
3 hard negatives per query and InfoNCE over in-batch + hard negatives
(set loss.kd_weight > 0 when the records carry teacher scores).

    e5jax train --config configs/tiny_finetune.py --workdir /tmp/tiny-ft \
        --set model.init=/tmp/tiny --set data.data_dir=DIR --set data.name=NAME
"""

import importlib.util
import pathlib

from e5jax.config import replace

_spec = importlib.util.spec_from_file_location("tiny", pathlib.Path(__file__).with_name("tiny_pretrain.py"))
_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny)


def get_config():
    return replace(_tiny.get_config(), **{
        "data.num_hard_negatives": 3,
        "data.max_query_length": 32,
        "data.max_passage_length": 64,
        "train.batch_size": 16,
        "optim.learning_rate": 5e-4,
    })
