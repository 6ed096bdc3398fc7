"""A tiny decoder fine-tuning preset for tests and CI: a 2-layer, 64-wide Mistral
(configs/tiny_decoder.json) from random init, the E5-mistral recipe at toy scale:
LoRA rank 8 on attention + MLP, last-token pooling with an EOS appended, one hard
negative, no prefixes (the instruction lives in the query text).

    e5jax train --config configs/tiny_decoder_finetune.py --workdir /tmp/tiny-dec \\
        --set data.data_dir=DIR --set data.name=NAME --set model.tokenizer=TOKENIZER_DIR

The tokenizer must have 2,048 entries and append EOS (id 2): tests build one with
`tokenizers` (tests/decoder_tokenizer.py).
"""

import pathlib

from e5jax.config import Config, DataConfig, LossConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig

HERE = pathlib.Path(__file__).resolve().parent


def get_config() -> Config:
    return Config(
        model=ModelConfig(init="", arch=str(HERE / "tiny_decoder.json"), tokenizer="", family="decoder",
                          pooling="last", dtype="float32", lora_rank=8, lora_alpha=16.0),
        data=DataConfig(data_dir="", name="", query_prefix="", passage_prefix="", max_query_length=32,
                        max_passage_length=32, num_buckets=2, num_hard_negatives=1),
        mesh=MeshConfig(data=-1, fsdp=1, tensor=1),
        # A random-init base learns only through its adapters: a high rate (clipped: at 3e-3
        # unclipped the embeddings collapsed onto one direction) and a soft softmax.
        optim=OptimConfig(learning_rate=2e-3, warmup_steps=5, weight_decay=0.0, clip_norm=1.0),
        loss=LossConfig(temperature=0.05),
        train=TrainConfig(batch_size=32, steps=10, checkpoint_every=5, log_every=1, eval_batches=2),
    )
