"""Cross-encoder teacher: score (query, passage) pairs and fill `teacher_scores`.

E5's fine-tuning loss is KL(p_teacher ‖ p_student) + alpha · InfoNCE, where
p_teacher is a softmax over a cross-encoder's scores for [positive,
negatives]. This module turns a local HF `*ForSequenceClassification` folder
into those scores:

- `Teacher.score(queries, passages)`: pairs tokenized as text pairs (the
  tokenizer adds [SEP] and token_type_ids for BERT), sorted by length, padded
  to a few bucket lengths with a fixed number of rows, so a long run compiles
  a handful of shapes; the batch is split over the mesh's batch axes.
- `fill_teacher_scores(records, score_fn)`: records that already carry
  `teacher_scores` keep them ("precomputed teacher scores are used as given").
- `score_file(...)`: the `e5jax score-teacher` command's work, streamed in
  chunks of records and written atomically.
"""

from __future__ import annotations

import collections
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from e5jax.config import DEFAULT_RULES, MeshConfig
from e5jax.data.finetune.records import Record, read_records, write_records
from e5jax.data.padding import pad_rows, pad_to_bucket
from e5jax.errors import E5Error
from e5jax.model import axes as ax
from e5jax.model.cross_encoder import CrossEncoder, load_cross_encoder
from e5jax.model.encoder import encode_lengths
from e5jax.paths import check_file, local

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ScoreFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def resolve_label(labels: Sequence[str], label: int | str | None) -> int:
    """The logit column to use as the score.

    One label: column 0. Several (e.g. an NLI model): the caller must name one,
    by index or by its id2label name — guessing would silently train on the
    wrong signal.
    """
    if label is None or label == "":
        if len(labels) == 1:
            return 0
        raise E5Error(
            f"the model has {len(labels)} labels ({', '.join(labels)}); choose the relevance one with --label"
        )
    if isinstance(label, str) and not label.lstrip("-").isdigit():
        if label not in labels:
            raise E5Error(f"label {label!r} is not one of the model's labels: {', '.join(labels)}")
        return labels.index(label)
    i = int(label)
    if not 0 <= i < len(labels):
        raise E5Error(f"label index {i} is out of range: the model has {len(labels)} labels")
    return i


class Teacher:
    """A cross-encoder plus its tokenizer, scoring text pairs on a mesh.

    >>> t = Teacher.from_pretrained("path/to/cross-encoder")
    >>> t.score(["how do cats purr?"], ["Cats purr by ..."])   # float32 [1]
    """

    def __init__(self, model: CrossEncoder, tokenizer, *, mesh: Mesh, rules=DEFAULT_RULES,
                 max_length: int = 192, label: int | str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.rules = rules
        cfg = model.bert.cfg
        self.max_length = min(max_length, cfg.max_length)
        self.labels = model.head.cfg.labels
        self.column = resolve_label(self.labels, label)
        # XLM-R has a single token type; its tokenizer may still emit ids we must not use.
        self._use_token_types = cfg.type_vocab_size > 1
        pad = tokenizer.pad_token_id
        self.pad_id = cfg.pad_token_id if pad is None else int(pad)
        graphdef, self._state = nnx.split(model)

        @jax.jit
        def forward(state, ids, mask, types):
            return nnx.merge(graphdef, state)(ids, mask, types)

        self._forward = forward

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, mesh: Mesh | None = None, rules=DEFAULT_RULES,
                        dtype: str = "float32", max_length: int = 192,
                        label: int | str | None = None) -> "Teacher":
        from transformers import AutoTokenizer

        folder = local(path, "model folder", "a Hugging Face model folder is read with local-file APIs")
        mesh = mesh or ax.make_mesh(MeshConfig(), jax.devices())
        model = load_cross_encoder(folder, mesh=mesh, rules=rules, dtype=dtype)
        try:
            tok = AutoTokenizer.from_pretrained(str(folder))
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds
            raise E5Error(f"cannot load a tokenizer from {folder}: {type(e).__name__}: {e}") from e
        return cls(model, tok, mesh=mesh, rules=rules, max_length=max_length, label=label)

    def tokenize(self, queries: Sequence[str], passages: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
        # "longest_first" (= truncation=True) is what transformers and
        # sentence-transformers' CrossEncoder do, so scores match theirs.
        enc = self.tokenizer(list(queries), list(passages), truncation=True, max_length=self.max_length)
        ids = enc["input_ids"]
        types = enc.get("token_type_ids") if self._use_token_types else None
        return ids, types if types is not None else [[0] * len(x) for x in ids]

    def logits(self, queries: Sequence[str], passages: Sequence[str], *, batch_size: int = 64,
               show_progress: bool | None = None) -> np.ndarray:
        """float32 [n, num_labels] in input order."""
        if len(queries) != len(passages):
            raise E5Error(f"{len(queries)} queries but {len(passages)} passages")
        n = len(queries)
        out = np.zeros((n, len(self.labels)), np.float32)
        if n == 0:
            return out
        ids, types = self.tokenize(queries, passages)
        order = np.argsort([-len(x) for x in ids], kind="stable")
        buckets = encode_lengths(self.max_length)  # the bi-encoder's lengths
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        rows = -(-batch_size // shards) * shards  # every device gets the same number of rows
        sharding = ax.batch_sharding(self.mesh, 2)
        show = n > 10 * rows if show_progress is None else show_progress
        from tqdm.auto import tqdm

        with ax.axis_rules(self.mesh, self.rules):
            for start in tqdm(range(0, n, rows), desc="score", unit="batch", disable=not show):
                idx = order[start:start + rows]
                tok, mask = pad_to_bucket([ids[i] for i in idx], buckets, self.pad_id, num_rows=rows)
                tt = pad_rows([types[i] for i in idx], tok.shape[1], 0, num_rows=rows)
                batch = [jax.device_put(a, sharding) for a in (tok, mask, tt)]
                out[idx] = np.asarray(self._forward(self._state, *batch))[: len(idx)]
        return out

    def score(self, queries: Sequence[str], passages: Sequence[str], **kwargs) -> np.ndarray:
        """float32 [n]: the chosen label's logit for each (query, passage) pair."""
        return self.logits(queries, passages, **kwargs)[:, self.column]


# ------------------------------------------------------------- records


def fill_teacher_scores(records: Iterable[Record], score_fn: ScoreFn, *, chunk: int = 1024,
                        counts: collections.Counter | None = None) -> Iterator[Record]:
    """Yield records with `teacher_scores` = [s(q, positive), s(q, neg_1), ...].

    Records that already have scores are passed through untouched. Records are
    scored `chunk` at a time (one `score_fn` call per chunk), so memory stays
    bounded on MS MARCO-sized files while batches stay full.
    """
    counts = counts if counts is not None else collections.Counter()
    it = iter(records)
    while batch := list(itertools.islice(it, chunk)):
        todo = [r for r in batch if "teacher_scores" not in r]
        queries = [r["query"] for r in todo for _ in range(1 + len(r["negatives"]))]
        passages = [p for r in todo for p in [r["positive"], *r["negatives"]]]
        scores = np.asarray(score_fn(queries, passages), np.float32) if queries else np.zeros(0, np.float32)
        if scores.shape != (len(queries),):
            raise E5Error(f"teacher returned {scores.shape} scores for {len(queries)} pairs")
        if not np.isfinite(scores).all():
            raise E5Error("the teacher produced non-finite scores; check the model folder and --dtype")
        pos = 0
        for r in batch:
            if "teacher_scores" in r:
                counts["kept"] += 1
            else:
                k = 1 + len(r["negatives"])
                r = {**r, "teacher_scores": [float(s) for s in scores[pos:pos + k]]}
                pos += k
                counts["scored"] += 1
            yield r
        counts["pairs"] += len(queries)


def score_file(model: str | os.PathLike, input: str | os.PathLike, output: str | os.PathLike, *,
               batch_size: int = 64, max_length: int = 192, label: int | str | None = None,
               dtype: str = "float32", chunk: int = 1024, mesh: Mesh | None = None) -> collections.Counter:
    """Read records, score those without teacher scores, write them all to `output`.

    The output is written to a temporary file and renamed at the end (so it
    may even be the input file); on failure no partial output is left behind.
    """
    output = check_file(output)  # written locally, then renamed; the input may be gs://
    reader = read_records(input)  # raises "input file not found" itself
    first = next(reader, None)
    if first is None:
        raise E5Error(f"input file {input} has no records")
    teacher = Teacher.from_pretrained(model, mesh=mesh, dtype=dtype, max_length=max_length, label=label)
    counts: collections.Counter = collections.Counter()

    def score_fn(q, p):
        return teacher.score(q, p, batch_size=batch_size, show_progress=False)

    from tqdm.auto import tqdm

    records = tqdm(itertools.chain([first], reader), desc="records", unit="rec", mininterval=2.0)
    try:
        counts["records"] = write_records(fill_teacher_scores(records, score_fn, chunk=chunk, counts=counts),
                                          output)
    except BaseException:
        output.with_name(output.name + ".tmp").unlink(missing_ok=True)  # write_records' temporary
        raise
    finally:
        records.close()
    return counts
