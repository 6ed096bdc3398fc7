"""E5-mistral (Wang et al. 2024, "Improving Text Embeddings with Large Language
Models"): Mistral-7B fine-tuned contrastively with LoRA, the paper's settings.

* LoRA rank 16, alpha 32, on the attention and MLP projections; base weights frozen
  (the optimizer holds moments for the adapters alone);
* an EOS appended to every text (the tokenizer's post-processor) and its last hidden
  state taken as the embedding (`model.pooling="last"`);
* queries as ``Instruct: {task}\\nQuery: {query}`` with the instruction stored in each
  record (`e5jax convert synthetic`), documents with no instruction, hence no prefixes;
* InfoNCE, tau 0.02, in-batch + 1 hard negative, batch 2,048, max length 512,
  lr 1e-4 (linear decay after 100 warm-up steps), one epoch: the paper's ~1.8M examples
  are 879 steps of 2,048, gradient checkpointing (remat).

Slice: v5p-64 (32 chips, 95 GB HBM each). The frozen 7.2B parameters (fp32, 29 GB) are
sharded over fsdp=8; the global batch of 2,048 x 3 texts x 512 tokens goes through in
gradient-cache chunks of 256 pairs (8 chunks). `e5jax compile` checks it fits:

    e5jax compile --config configs/e5_mistral_7b_finetune.py --topology v5p-64

Run (every worker; see tpu_scripts/launch.sh; model.init = a local Mistral-7B-v0.1 folder):
    e5jax train --config configs/e5_mistral_7b_finetune.py --workdir gs://BUCKET/e5-mistral \\
        --set data.data_dir=gs://BUCKET/tfds
"""

import pathlib

from e5jax.config import Config, DataConfig, LossConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig

# Mistral-7B-v0.1's config.json: `e5jax compile` builds the model from it where the weights are not here.
ARCH = str(pathlib.Path(__file__).resolve().parent / "mistral_7b.json")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def get_config() -> Config:
    return Config(
        model=ModelConfig(init="ckpt/mistral-7b-v0.1", arch=ARCH, family="decoder", pooling="last",
                          normalize=True, dtype="bfloat16", remat=True, lora_rank=16, lora_alpha=32.0,
                          lora_targets=LORA_TARGETS, dropout=0.0),
        data=DataConfig(data_dir="gs://BUCKET/tfds", name="e5_mistral_finetune", query_prefix="",
                        passage_prefix="", max_query_length=512, max_passage_length=512, num_buckets=4,
                        num_hard_negatives=1),
        mesh=MeshConfig(data=-1, fsdp=8, tensor=1),
        optim=OptimConfig(learning_rate=1e-4, warmup_steps=100, weight_decay=0.0),
        loss=LossConfig(temperature=0.02),
        train=TrainConfig(batch_size=2048, steps=879, grad_cache_chunk=256, checkpoint_every=100, log_every=10,
                          eval_every=100),
    )
