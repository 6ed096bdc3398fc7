"""Cross-encoder: `BertModel` + the head of HF's `*ForSequenceClassification`.

E5's fine-tuning distils a cross-encoder teacher into the bi-encoder. The
teacher reads query and passage *together* (one text pair, [SEP]-joined) and
returns relevance logits. Two head layouts exist in `transformers`:

- BERT (`BertForSequenceClassification`): the pooler (dense + tanh on [CLS])
  → dropout → `classifier` Linear(hidden, num_labels).
- RoBERTa / XLM-R (`*RobertaForSequenceClassification`): no pooler; on the
  <s> token: dropout → `classifier.dense` → tanh → dropout →
  `classifier.out_proj`.

Weights come in through `hf.py`'s encoder table plus the explicit head tables
below; like the encoder, every head parameter is named exactly once and no
tensor may be left over, so a half-loaded teacher is impossible.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from e5jax.config import DEFAULT_RULES, MeshConfig
from e5jax.errors import E5Error
from e5jax.model import axes as ax
from e5jax.model import hf
from e5jax.model.bert import BertConfig, BertModel, Dense
from e5jax.model.dropout import dropout, split_keys
from e5jax.model.encoder import build_sharded
from e5jax.paths import local

# Which head a model_type uses. MiniLM cross-encoders are model_type "bert".
HEAD_KIND = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta"}

# (e5jax path, HF key after the base-model prefix is stripped, torch [out, in] kernel)
HEAD_MAPPING: dict[str, list[tuple[str, str, bool]]] = {
    "bert": [
        ("head/out/kernel", "classifier.weight", True),
        ("head/out/bias", "classifier.bias", False),
    ],
    "roberta": [
        ("head/dense/kernel", "classifier.dense.weight", True),
        ("head/dense/bias", "classifier.dense.bias", False),
        ("head/out/kernel", "classifier.out_proj.weight", True),
        ("head/out/bias", "classifier.out_proj.bias", False),
    ],
}


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The classification-head fields of a HF config.json."""

    kind: str  # "bert" | "roberta" (see HEAD_KIND)
    num_labels: int
    labels: tuple[str, ...]  # id2label in index order
    dropout: float  # HF: classifier_dropout, else hidden_dropout_prob

    @classmethod
    def from_hf(cls, cfg: BertConfig, raw: dict) -> "HeadConfig":
        id2label = raw.get("id2label") or {}
        n = int(raw.get("num_labels", len(id2label) or 2))  # PretrainedConfig's default is 2
        labels = tuple(str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n))
        rate = raw.get("classifier_dropout")
        rate = cfg.hidden_dropout_prob if rate is None else float(rate)
        return cls(kind=HEAD_KIND[cfg.model_type], num_labels=n, labels=labels, dropout=rate)


class ClassificationHead(nnx.Module):
    """[CLS] hidden state → num_labels logits (fp32), laid out as HF's head."""

    def __init__(self, hidden: int, head: HeadConfig, *, std: float, rngs: nnx.Rngs):
        self.cfg = head
        if head.kind == "roberta":
            self.dense = Dense(hidden, hidden, ("embed", "act_embed"), std=std, rngs=rngs)
        # num_labels is tiny (1..3): replicate that dim rather than shard it.
        self.out = Dense(hidden, head.num_labels, ("embed", None), std=std, rngs=rngs)

    def __call__(self, cls_vec: jax.Array, key: jax.Array | None) -> jax.Array:
        k1, k2 = split_keys(key, 2)
        x = dropout(cls_vec.astype(jnp.float32), self.cfg.dropout, k1)
        if self.cfg.kind == "roberta":
            x = dropout(jnp.tanh(self.dense(x)), self.cfg.dropout, k2)
        return self.out(x)


class CrossEncoder(nnx.Module):
    """(ids, mask, token types) of text pairs → logits [B, num_labels] in fp32."""

    def __init__(self, cfg: BertConfig, head: HeadConfig, *, dtype: str = "float32", rngs: nnx.Rngs):
        # Only BERT's head goes through the pooler; RoBERTa checkpoints have none.
        self.bert = BertModel(cfg, dtype=dtype, with_pooler=head.kind == "bert", rngs=rngs)
        self.head = ClassificationHead(cfg.hidden_size, head, std=cfg.initializer_range, rngs=rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None) -> jax.Array:
        if dropout_key is not None and dropout_key.ndim == 0:
            dropout_key = jax.random.split(dropout_key, input_ids.shape[0])
        k_enc, k_head = split_keys(dropout_key, 2)
        hidden = self.bert(input_ids, attention_mask, token_type_ids, dropout_key=k_enc)
        cls_vec = self.bert.pooled_output(hidden) if self.head.cfg.kind == "bert" else hidden[:, 0]
        return self.head(cls_vec, k_head)


# ------------------------------------------------------------ construction


def create_sharded(cfg: BertConfig, head: HeadConfig, mesh: Mesh, rules=DEFAULT_RULES, *, seed: int = 0,
                   params: dict[str, np.ndarray] | None = None, dtype: str = "float32") -> CrossEncoder:
    """A CrossEncoder whose parameters are born sharded on `mesh` (`encoder.build_sharded`);
    host `params` are keyed 'bert/...' and 'head/...'."""
    return build_sharded(lambda: CrossEncoder(cfg, head, dtype=dtype, rngs=nnx.Rngs(seed)), mesh, rules,
                         params=params)


def head_from_hf(head: HeadConfig, leftover: dict[str, np.ndarray], expected_shapes: dict[str, tuple],
                 folder: os.PathLike | str = "") -> dict[str, np.ndarray]:
    """Map the classifier tensors (left over by `hf.hf_to_params`) onto 'head/...' paths."""
    table = HEAD_MAPPING[head.kind]
    if not any(key in leftover for _, key, _ in table):
        raise E5Error(
            f"{folder} has no classification head (no {table[0][1]}); a cross-encoder must be saved "
            "from a *ForSequenceClassification model"
        )
    params, used = {}, set()
    for path, key, transpose in table:
        if key not in leftover:
            raise E5Error(f"{folder}: classification head is missing {key} (needed for {path})")
        value = np.asarray(leftover[key], np.float32)
        value = value.T if transpose else value
        if value.shape != tuple(expected_shapes[path]):
            raise E5Error(
                f"shape mismatch for {key}: checkpoint has {value.shape}, config.json implies "
                f"{tuple(expected_shapes[path])} (num_labels={head.num_labels})"
            )
        params[path] = value
        used.add(key)
    stray = sorted(k for k in leftover if k not in used)
    if stray:
        raise E5Error(f"{folder}: checkpoint has tensors e5jax does not map: {', '.join(stray[:3])}")
    return params


def load_cross_encoder(path: str | os.PathLike, *, mesh: Mesh | None = None, rules=DEFAULT_RULES,
                       dtype: str = "float32") -> CrossEncoder:
    """A CrossEncoder with the weights of a local HF `*ForSequenceClassification` folder."""
    folder = local(path, "model folder", "a Hugging Face model folder is read with local-file APIs")
    cfg, raw = hf.read_config(folder)
    head = HeadConfig.from_hf(cfg, raw)
    tensors = hf.read_tensors(folder)
    mesh = mesh or ax.make_mesh(MeshConfig(), jax.devices()[:1])
    abstract = nnx.eval_shape(lambda: CrossEncoder(cfg, head, dtype=dtype, rngs=nnx.Rngs(0)))
    shapes = {k: tuple(v.shape) for k, v in hf.flatten_state(nnx.state(abstract)).items()}
    enc_shapes = {k.removeprefix("bert/"): v for k, v in shapes.items() if k.startswith("bert/")}
    enc_params, leftover = hf.hf_to_params(cfg, tensors, enc_shapes)
    params = {f"bert/{k}": v for k, v in enc_params.items()}
    params.update(head_from_hf(head, leftover, shapes, folder))  # checks the head exists first
    if head.kind == "bert" and "bert/pooler/kernel" not in params:
        raise E5Error(f"{folder} has no pooler weights, which BERT's classification head needs")
    return create_sharded(cfg, head, mesh, rules, params=params, dtype=dtype)
