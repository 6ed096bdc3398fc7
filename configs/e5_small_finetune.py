"""E5-small supervised fine-tuning with the paper's settings: batch 256, 7 mined
hard negatives per query, max length 192, loss = KL(teacher || student) + alpha * InfoNCE.

Data: MS MARCO + NQ + NLI records (`e5jax convert`, `e5jax mine`, `e5jax score-teacher`),
built with `e5jax build --kind finetune --name e5_finetune`.
Init: the pre-training workdir (or its export), e.g. gs://BUCKET/e5-small-pt.

    e5jax train --config configs/e5_small_finetune.py --workdir gs://BUCKET/e5-small-ft \
        --set model.init=gs://BUCKET/e5-small-pt --set data.data_dir=gs://BUCKET/tfds
"""

import importlib.util
import pathlib

from e5jax.config import DataConfig, LossConfig, OptimConfig, TrainConfig, replace

_spec = importlib.util.spec_from_file_location(
    "pretrain", pathlib.Path(__file__).with_name("e5_small_pretrain.py"))
_pretrain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pretrain)


def get_config():
    base = _pretrain.get_config()  # same model / mesh as pre-training
    cfg = replace(base, **{"model.init": "ckpt/e5-small-pt"})
    import dataclasses

    return dataclasses.replace(
        cfg,
        data=DataConfig(data_dir=base.data.data_dir, name="e5_finetune", max_query_length=192,
                        max_passage_length=192, num_buckets=4, num_hard_negatives=7),
        optim=OptimConfig(learning_rate=2e-5, warmup_steps=400, weight_decay=0.01),
        # alpha = infonce_weight; teacher scores are cross-encoder logits.
        loss=LossConfig(temperature=0.01, kd_weight=1.0, infonce_weight=0.2, teacher_temperature=1.0),
        train=TrainConfig(batch_size=256, steps=6000, checkpoint_every=500, log_every=50, eval_every=500),
    )
