"""Typed, frozen configuration for every stage of the recipe.

A preset (`configs/*.py`) is a Python file whose `get_config()` returns a
`Config`. Command lines change it with `--set section.field=value`; unknown
keys and values of the wrong type are refused with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import types
import typing
from dataclasses import dataclass, field

from e5jax.errors import E5Error
from e5jax.paths import local

# Logical axis -> mesh axes. Model code names only logical axes; a preset can
# replace this table to shard differently (e.g. no tensor parallelism).
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),  # examples split over data- and fsdp-parallel devices
    ("length", ()),  # sequence positions are never split
    ("embed", ("fsdp",)),  # hidden dim of weights: ZeRO-3 style sharding
    ("mlp", ("tensor",)),  # feed-forward inner dim: tensor parallel
    ("heads", ("tensor",)),  # attention heads: tensor parallel
    ("kv_heads", ("tensor",)),  # key/value heads of grouped-query attention (decoders): tensor parallel
    ("kv", ()),  # per-head dim
    ("vocab", ("tensor",)),  # embedding table rows
    ("act_embed", ()),  # hidden dim of activations: replicated
    ("norm", ()),  # LayerNorm scales / biases: tiny, replicated
)


FAMILIES = ("auto", "bert", "decoder")
# HF model_type values of the decoder family (e5jax.model.decoder).
DECODER_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class ModelConfig:
    init: str = ""  # HF folder or e5jax export to start from; "" = random init from `arch`
    # JSON file (HF config.json) for a scratch model, used when init == ""; with an init, that model's
    # architecture, for `e5jax compile` on a machine without its weights
    arch: str = ""
    tokenizer: str = ""  # tokenizer folder; "" = the init folder
    # "bert" (BERT family, bidirectional) or "decoder" (Llama / Mistral / Qwen2 / Qwen3, causal:
    # e5jax.model.decoder); "auto" = from the config.json's model_type
    family: str = "auto"
    pooling: str = "mean"  # "mean" (E5), "cls", or "last" (decoders: the appended EOS's hidden state)
    normalize: bool = True  # L2-normalise embeddings (cosine similarity)
    dtype: str = "auto"  # compute dtype: "float32", "bfloat16", or "auto" = bf16 where native (params stay fp32)
    remat: bool = False  # rematerialise each layer in the backward pass (saves memory)
    dropout: float = -1.0  # override hidden/attention dropout; < 0 keeps the checkpoint's
    # Packed rows go through the encoder as this many independent blocks of rows; 0 = auto: 2 on
    # a CPU, where XLA runs the blocks' ops side by side on its cores (many of its element-wise
    # ops use one core), 1 on accelerators (one stream of ops; bigger matmuls are better there).
    row_blocks: int = 0
    # LoRA (decoders): rank 0 = full fine-tuning; > 0 = only the adapters train (the optimizer holds
    # moments for them alone) and the base weights stay frozen. alpha / rank scales the update (PEFT's).
    lora_rank: int = 0
    lora_alpha: float = 32.0
    # Projections that get an adapter (HF names): the paper's attention + MLP.
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lora_dropout: float = 0.0  # dropout on each adapter's input (PEFT's lora_dropout)

    def __post_init__(self):
        if self.row_blocks < 0:
            raise E5Error(f"model.row_blocks must be >= 0 (0 = automatic), got {self.row_blocks}")
        if self.family not in FAMILIES:
            raise E5Error(f"model.family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.pooling not in ("mean", "cls", "last"):
            raise E5Error(f"model.pooling must be 'mean', 'cls' or 'last', got {self.pooling!r}")
        if self.lora_rank < 0:
            raise E5Error(f"model.lora_rank must be >= 0 (0 = no LoRA), got {self.lora_rank}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise E5Error(f"model.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_rank and not self.lora_targets:
            raise E5Error("model.lora_targets is empty: name the projections to adapt, e.g. [\"q_proj\", \"v_proj\"]")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise E5Error(f"model.dtype must be 'auto', 'float32' or 'bfloat16', got {self.dtype!r}")


def resolve_row_blocks(cfg: ModelConfig) -> int:
    """`cfg.row_blocks`, resolved for the backend the step compiles for."""
    if cfg.row_blocks:
        return cfg.row_blocks
    import jax

    return 2 if jax.default_backend() == "cpu" else 1


@dataclass(frozen=True)
class DataConfig:
    data_dir: str = ""  # TFDS data dir (local path or gs://)
    name: str = ""  # TFDS dataset name (as given to `e5jax build --name`)
    split: str = "train"  # split to train on
    eval_split: str = "heldout"  # split for held-out metrics
    query_prefix: str = "query: "  # E5 breaks the shared encoder's symmetry with prefixes
    passage_prefix: str = "passage: "  # the passage tower's prefix (likewise part of the token budget)
    max_query_length: int = 128  # tokens, prefix included
    max_passage_length: int = 128  # tokens, prefix included; longer passages are truncated
    num_buckets: int = 4  # pad to one of this many lengths up to the max (few compiled shapes)
    pack: bool = False  # pack several texts per row of max length (no padding computed; data/packing.py)
    pack_row_step: int = 0  # packed row counts round up to a multiple of this; 0 = a power of two <= rows/16
    # "joint": all towers' texts share the packed rows (a query fills a passage row's gap; one encoder
    # pass); "separate": each tower in rows of its own max length; "auto": joint when the max lengths match.
    pack_towers: str = "auto"
    num_hard_negatives: int = 0  # hard negatives per query (fine-tuning); 0 = in-batch only
    one_source_per_batch: bool = False  # draw each batch from a single source
    shuffle_seed: int = 0  # deterministic shuffle (same seed -> same batches)
    worker_count: int = 0  # grain workers; 0 = threads in-process (fastest on small CPUs)

    def __post_init__(self):
        if self.max_query_length < 8 or self.max_passage_length < 8:
            raise E5Error("data.max_query_length / max_passage_length must be >= 8")
        if self.num_buckets < 1:
            raise E5Error("data.num_buckets must be >= 1")
        if self.pack_row_step < 0:
            raise E5Error("data.pack_row_step must be >= 0 (0 = automatic)")
        if self.pack_towers not in ("auto", "joint", "separate"):
            raise E5Error(f"data.pack_towers must be 'auto', 'joint' or 'separate', got {self.pack_towers!r}")

    @property
    def pack_joint(self) -> bool:
        """Whether packed towers share rows (`pack_towers`, resolved)."""
        if self.pack_towers == "auto":
            return self.max_query_length == self.max_passage_length
        return self.pack_towers == "joint"


@dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # data-parallel size; -1 = all devices left over
    fsdp: int = 1  # parameter-sharding (ZeRO-3) size
    tensor: int = 1  # tensor-parallel size
    rules: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_RULES  # logical -> mesh axes


@dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 2e-5  # peak LR after warm-up
    warmup_steps: int = 100  # linear warm-up from 0
    end_learning_rate: float = 0.0  # linear decay target at the last step
    weight_decay: float = 0.01  # AdamW; not applied to biases and LayerNorm
    b1: float = 0.9  # AdamW first-moment decay
    b2: float = 0.999  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW denominator epsilon
    clip_norm: float = 0.0  # global-norm clipping; 0 = off


@dataclass(frozen=True)
class LossConfig:
    temperature: float = 0.01  # InfoNCE tau (paper: 0.01); logits in fp32
    mask_duplicates: bool = True  # identical passages in the batch are not negatives
    kd_weight: float = 0.0  # weight of KL(teacher || student); > 0 needs teacher_scores
    infonce_weight: float = 1.0  # alpha in KL + alpha * InfoNCE
    teacher_temperature: float = 1.0  # divides teacher scores before the softmax
    block_size: int = 0  # rows of the logit matrix per block (0 = whole); bounds memory


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32  # GLOBAL batch (pairs) across all devices and hosts
    steps: int = 1000  # total optimizer steps
    grad_cache_chunk: int = 0  # gradient caching: examples per chunk; 0 = plain step
    # Gradient caching: keep the last chunk's activations from pass 1 to pass 2
    # (n-1 extra chunk forwards instead of n; costs one chunk's activations
    # held during the loss: turn off when the chunk size is set by memory).
    grad_cache_keep_last: bool = True
    seed: int = 0  # parameter init + dropout RNG
    checkpoint_every: int = 500  # orbax save interval (also saved at the end)
    keep_checkpoints: int = 3  # how many checkpoints to keep
    log_every: int = 10  # progress line / JSONL / TensorBoard interval
    eval_every: int = 0  # held-out in-batch accuracy interval; 0 = only at the end
    eval_batches: int = 4  # held-out batches per evaluation

    def __post_init__(self):
        for name in ("batch_size", "checkpoint_every", "keep_checkpoints", "log_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise E5Error(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0:  # 0 = no update: the held-out metrics of the starting model
            raise E5Error(f"train.steps must be >= 0 (0 = evaluate only), got {self.steps}")
        for name in ("grad_cache_chunk", "eval_every"):
            if getattr(self, name) < 0:
                raise E5Error(f"train.{name} must be >= 0 (0 = off), got {getattr(self, name)}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.train.grad_cache_chunk and self.train.batch_size % self.train.grad_cache_chunk:
            raise E5Error(
                f"train.batch_size={self.train.batch_size} is not divisible by "
                f"train.grad_cache_chunk={self.train.grad_cache_chunk}; change one of them"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def laptop(cfg: Config, *, batch_size: int = 16, steps: int = 20) -> Config:
    """Shrink any preset to a smoke run that finishes on a laptop CPU."""
    return replace(
        cfg,
        **{
            "train.batch_size": batch_size,
            "train.steps": steps,
            "train.checkpoint_every": max(1, steps // 2),
            "train.log_every": 1,
            "train.grad_cache_chunk": 0,
            "optim.warmup_steps": max(1, steps // 10),
            "data.max_query_length": min(cfg.data.max_query_length, 64),
            "data.max_passage_length": min(cfg.data.max_passage_length, 64),
            "mesh.data": -1,
            "mesh.fsdp": 1,
            "mesh.tensor": 1,
        },
    )


# ---------------------------------------------------------------- overrides


def _coerce(key: str, raw, typ):
    """Turn a --set value (a string, or already typed) into `typ` or fail naming the key."""
    origin = typing.get_origin(typ)
    if isinstance(raw, str) and typ is not str:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            if typ is bool and raw.lower() in ("true", "false"):
                value = raw.lower() == "true"
            else:
                raise E5Error(f"--set {key}={raw!r}: cannot parse as {getattr(typ, '__name__', typ)}")
    else:
        value = raw
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if origin is tuple or typ is tuple:
        if not isinstance(value, (list, tuple)):
            raise E5Error(f"--set {key}: expected a list, got {raw!r}")
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if isinstance(typ, type) and not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise E5Error(f"--set {key}={raw!r}: expected {typ.__name__}, got {type(value).__name__}")
    return value


def replace(cfg: Config, **updates) -> Config:
    """`replace(cfg, **{"train.steps": 10})` — dotted keys, type-checked."""
    sections: dict[str, dict] = {}
    for key, raw in updates.items():
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in {f.name for f in dataclasses.fields(Config)}:
            raise E5Error(
                f"unknown config key {key!r}; use section.field with section one of "
                f"{', '.join(f.name for f in dataclasses.fields(Config))}"
            )
        section, name = parts
        sub = getattr(cfg, section)
        hints = typing.get_type_hints(type(sub))
        if name not in hints:
            raise E5Error(f"unknown config key {key!r}; {section} has {', '.join(hints)}")
        sections.setdefault(section, {})[name] = _coerce(key, raw, hints[name])
    new = {s: dataclasses.replace(getattr(cfg, s), **kv) for s, kv in sections.items()}
    return dataclasses.replace(cfg, **new)


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise E5Error(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.steps=100")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def load_config(path: str | pathlib.Path, overrides: list[str] | None = None) -> Config:
    """Import a preset file and apply `--set` overrides."""
    path = local(path, "--config", "a preset is a Python file imported from local disk")
    if not path.is_file():
        raise E5Error(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"e5jax_preset_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as e:  # a preset with a syntax/runtime error
        raise E5Error(f"config {path} failed to load: {type(e).__name__}: {e}") from e
    if not isinstance(getattr(module, "get_config", None), types.FunctionType):
        raise E5Error(f"config {path} must define get_config() -> e5jax.config.Config")
    cfg = module.get_config()
    if not isinstance(cfg, Config):
        raise E5Error(f"config {path}: get_config() returned {type(cfg).__name__}, not Config")
    return replace(cfg, **parse_overrides(overrides))


def from_dict(d: dict) -> Config:
    """Inverse of `Config.to_dict` (e.g. a workdir's saved config.json)."""
    hints = typing.get_type_hints(Config)
    sections = {}
    for name, sub_cls in hints.items():
        sub_hints = typing.get_type_hints(sub_cls)
        given = d.get(name, {})
        unknown = set(given) - set(sub_hints)
        if unknown:
            raise E5Error(f"unknown config key(s) {', '.join(f'{name}.{k}' for k in sorted(unknown))}")
        sections[name] = sub_cls(**{k: _coerce(f"{name}.{k}", v, sub_hints[k]) for k, v in given.items()})
    return Config(**sections)


def finetune_settings(pretrain: Config, *, init: str) -> Config:
    """The paper's fine-tuning stage on top of a pre-training preset (same model
    and mesh): batch 256, 7 hard negatives, max length 192,
    loss = KL(teacher || student) + alpha * InfoNCE, starting from `init`
    (a pre-training workdir, its export, or any HF folder)."""
    return dataclasses.replace(
        pretrain,
        model=dataclasses.replace(pretrain.model, init=init),
        data=DataConfig(data_dir=pretrain.data.data_dir, name="e5_finetune", max_query_length=192,
                        max_passage_length=192, num_buckets=4, num_hard_negatives=7, pack=pretrain.data.pack),
        optim=OptimConfig(learning_rate=2e-5, warmup_steps=400, weight_decay=0.01),
        # alpha = infonce_weight; teacher scores are cross-encoder logits.
        loss=LossConfig(temperature=0.01, kd_weight=1.0, infonce_weight=0.2, teacher_temperature=1.0),
        train=TrainConfig(batch_size=256, steps=6000, checkpoint_every=500, log_every=50, eval_every=500),
    )
