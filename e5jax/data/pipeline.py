"""grain input pipeline: TFDS source -> process slice -> shuffle -> batch -> tokenize.

    source (ArrayRecord, random access)
      └─ this process's slice  [process_index : n_even : process_count]
         └─ shuffle(seed), a new permutation each epoch, repeat(num_epochs)
            └─ (optional) one stream per source, mixed batch by batch
               └─ batch of raw records (drop_remainder: every host, every step, same b)
                  └─ TokenizeBatch: prefixes, HF tokenizer, pad to a bucket length
                     (or, with `cfg.pack`, pack several texts per row, all towers
                     in shared rows when `cfg.pack_joint`: packing.py)

Everything after the source is a grain transformation, so the iterator's
position is a small JSON state (`get_state` / `set_state`) that the train loop
saves next to the model in its orbax `CheckpointManager` with
`grain.checkpoint.CheckpointSave(iterator)` / `CheckpointRestore(iterator)`
(item name e.g. ``"data"``): a resumed run sees exactly the batches it would
have seen. Transforms are module-level classes so grain workers can pickle
them (`cfg.worker_count > 0`).

Fine-tuning records: each query gets exactly K = `cfg.num_hard_negatives`
negatives. Records with more keep their first K; records with fewer repeat
theirs cyclically (the loss can mask the repeats through `negative_key`);
records with none are skipped when K > 0. `teacher_scores` [b, 1+K] follows
the same selection and is NaN on rows whose record has no teacher scores.
"""

from __future__ import annotations

import hashlib

import grain
import numpy as np

from e5jax.config import DataConfig
from e5jax.data import packing
from e5jax.data.padding import bucket_lengths, pad_to_bucket  # noqa: F401  (re-exported)
from e5jax.errors import E5Error

_TEXT_FIELDS = ("query", "passage", "positive", "source", "id")


# ------------------------------------------------------------------ pure helpers


def text_key(text: str) -> int:
    """Stable int32 hash of a text (same in every process and run): duplicate-passage masking."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest(), "little", signed=True)


def pick_negatives(num_available: int, k: int) -> list[int]:
    """Indices of the K negatives to use: the first K, or all repeated cyclically."""
    return [i % num_available for i in range(k)] if num_available else []


def process_slice(n: int, process_index: int, process_count: int) -> slice:
    """This process's records: disjoint strided slices of equal length.

    Equal lengths keep every host's batch count the same (a host that runs out
    first would hang the others in a collective); the last `n % process_count`
    records are left out.
    """
    if not 0 <= process_index < process_count:
        raise E5Error(f"process_index {process_index} is outside [0, {process_count})")
    per = n // process_count
    if per == 0:
        raise E5Error(f"dataset of {n} records is too small for {process_count} processes")
    return slice(process_index, per * process_count, process_count)


def _derive_seed(seed: int, salt: str) -> int:
    # Consecutive user seeds would otherwise share permutations one epoch apart
    # (grain shuffles epoch e with seed + e).
    return int.from_bytes(hashlib.blake2b(f"{seed}/{salt}".encode(), digest_size=4).digest(), "little")


# ------------------------------------------------------------------ grain transforms


class DecodeRecord(grain.transforms.Map):
    """TFDS bytes -> Python strings (and a list of negatives)."""

    def map(self, record: dict) -> dict:
        out = dict(record)
        for k in _TEXT_FIELDS:
            if isinstance(out.get(k), bytes):
                out[k] = out[k].decode("utf-8")
        if "negatives" in out:
            out["negatives"] = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in out["negatives"]]
        return out


class HasNegatives(grain.transforms.Filter):
    """Keep fine-tuning records that have at least one negative (needed when K > 0)."""

    def filter(self, record: dict) -> bool:
        return "negatives" not in record or len(record["negatives"]) > 0


def pack_tokens(towers: dict[str, list[list[int]]], cfg: DataConfig, *, groups: int, blocks: int = 0,
                pad_id: int = 0) -> dict[str, np.ndarray]:
    """Tokenised towers ({"query": ids, "passage": ids, ...}) -> the packed arrays
    the train step reads: together in shared rows (`packing.pack_towers`, keys
    `joint_*`) when `cfg.pack_joint`, else each tower in rows of its own max length."""
    if cfg.pack_joint:  # slots tower after tower in the order the train step reads them
        towers = {t: towers[t] for t in ("query", "passage", "negative") if t in towers}
        return packing.pack_towers(towers, groups=groups, pack_len=max(cfg.max_query_length, cfg.max_passage_length),
                                   pad_id=pad_id, row_step=cfg.pack_row_step, blocks=blocks)
    out = {}
    for tower, ids in towers.items():
        max_length = cfg.max_query_length if tower == "query" else cfg.max_passage_length
        packed = packing.pack(ids, groups=groups, pack_len=max_length, pad_id=pad_id, row_step=cfg.pack_row_step,
                              blocks=blocks)
        out.update({f"{tower}_{k}": v for k, v in packed.items()})
    return out


class TokenizeBatch(grain.transforms.Map):
    """A list of records -> the model's numpy batch (see module docstring)."""

    def __init__(self, tokenizer, cfg: DataConfig, pack_groups: int = 1, pack_blocks: int = 0):
        self._tok = tokenizer
        self._cfg = cfg
        self._groups = pack_groups  # packing groups per host batch: local batch shards x grad-cache chunks
        self._blocks = pack_blocks  # local batch shards: texts are balanced over each one's chunk groups
        self._pad = int(tokenizer.pad_token_id or 0)
        self._q_buckets = bucket_lengths(cfg.max_query_length, cfg.num_buckets)
        self._p_buckets = bucket_lengths(cfg.max_passage_length, cfg.num_buckets)

    def _encode(self, texts: list[str], max_length: int, buckets) -> tuple[np.ndarray, np.ndarray]:
        ids = self._tok(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
        return pad_to_bucket(ids, buckets, self._pad)

    def _tower(self, out: dict, pending: dict, tower: str, texts: list[str], max_length: int, buckets) -> None:
        """Padded: `{tower}_input_ids` / `_attention_mask` [N, L]; packed: the token
        ids, kept until `map` packs every tower (`pack_tokens`)."""
        if not self._cfg.pack:
            out[f"{tower}_input_ids"], out[f"{tower}_attention_mask"] = self._encode(texts, max_length, buckets)
            return
        pending[tower] = self._tok(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]

    def map(self, batch: list[dict]) -> dict[str, np.ndarray]:
        cfg = self._cfg
        passages = [r["passage"] if "passage" in r else r["positive"] for r in batch]
        out = {}
        pending: dict[str, list[list[int]]] = {}  # packed towers' token ids (local: map runs in threads)
        self._tower(out, pending, "query", [cfg.query_prefix + r["query"] for r in batch], cfg.max_query_length,
                    self._q_buckets)
        self._tower(out, pending, "passage", [cfg.passage_prefix + p for p in passages], cfg.max_passage_length,
                    self._p_buckets)
        out["passage_key"] = np.asarray([text_key(p) for p in passages], np.int32)
        if "negatives" not in batch[0]:
            return self._packed(out, pending)
        k = cfg.num_hard_negatives
        picks = [pick_negatives(len(r["negatives"]), k) for r in batch]
        if k:
            negs = [r["negatives"][i] for r, p in zip(batch, picks) for i in p]
            self._tower(out, pending, "negative", [cfg.passage_prefix + n for n in negs], cfg.max_passage_length,
                        self._p_buckets)
            if not cfg.pack:
                for f in ("input_ids", "attention_mask"):
                    out[f"negative_{f}"] = out[f"negative_{f}"].reshape(len(batch), k, -1)
            out["negative_key"] = np.asarray([text_key(n) for n in negs], np.int32).reshape(len(batch), k)
        scores = np.full((len(batch), 1 + k), np.nan, np.float32)
        for row, (r, p) in enumerate(zip(batch, picks)):
            ts = np.asarray(r.get("teacher_scores", ()), np.float32)
            if ts.size:  # [positive, negatives...] -> [positive, picked negatives]
                scores[row] = ts[[0] + [1 + i for i in p]]
        out["teacher_scores"] = scores
        return self._packed(out, pending)

    def _packed(self, out: dict, pending: dict) -> dict:
        if self._cfg.pack:
            out.update(pack_tokens(pending, self._cfg, groups=self._groups, blocks=self._blocks,
                                   pad_id=self._pad))
        return out


# ------------------------------------------------------------------ pipelines


def _process_records(source, process_index: int, process_count: int) -> grain.MapDataset:
    ds = grain.MapDataset.source(source)
    return ds[process_slice(len(ds), process_index, process_count)].map(DecodeRecord())


def _batched(ds: grain.MapDataset, cfg: DataConfig, batch_size: int, seed: int, salt: str, num_epochs):
    """Shuffle (per epoch), repeat, drop unusable records, batch raw records."""
    it = ds.shuffle(seed=_derive_seed(seed, salt)).repeat(num_epochs).to_iter_dataset()
    if cfg.num_hard_negatives > 0:
        it = it.filter(HasNegatives())
    return it.batch(batch_size, drop_remainder=True, batch_fn=list)


def _by_source(ds: grain.MapDataset) -> dict[str, grain.MapDataset]:
    """One MapDataset per source. Reads every record of this slice once (O(n) at start-up)."""
    groups: dict[str, list[int]] = {}
    for i in range(len(ds)):
        groups.setdefault(ds[i]["source"], []).append(i)
    return {src: _select(ds, idx) for src, idx in sorted(groups.items())}


class _Lookup(grain.transforms.Map):
    """index -> record of a parent MapDataset (a picklable 'select')."""

    def __init__(self, parent: grain.MapDataset):
        self._parent = parent

    def map(self, index: int) -> dict:
        return self._parent[int(index)]


def _select(ds: grain.MapDataset, indices: list[int]) -> grain.MapDataset:
    return grain.MapDataset.source(indices).map(_Lookup(ds))


def make_train_iterator(
    source,
    *,
    tokenizer,
    cfg: DataConfig,
    batch_size_per_process: int,
    process_index: int,
    process_count: int,
    seed: int,
    num_epochs: int | None = None,
    pack_groups: int = 1,
    pack_blocks: int = 0,
) -> grain.DatasetIterator:
    """Checkpointable iterator of this process's training batches (dicts of numpy arrays).

    `num_epochs=None` repeats forever, each epoch in a new order. With
    `cfg.one_source_per_batch`, each source is shuffled and batched on its
    own and batches are mixed in proportion to the sources' sizes. With
    `cfg.pack`, each tower is packed in `pack_groups` groups, balanced over
    `pack_blocks` blocks (packing.py).
    """
    if batch_size_per_process < 1:
        raise E5Error(f"batch_size_per_process must be >= 1, got {batch_size_per_process}")
    ds = _process_records(source, process_index, process_count)
    if cfg.one_source_per_batch:
        parts = _by_source(ds)
        streams = {s: _batched(p, cfg, batch_size_per_process, seed, s, num_epochs) for s, p in parts.items()}
        it = grain.IterDataset.mix(streams, weights={s: float(len(p)) for s, p in parts.items()})
    else:
        it = _batched(ds, cfg, batch_size_per_process, seed, "all", num_epochs)
    it = it.map(TokenizeBatch(tokenizer, cfg, pack_groups, pack_blocks))
    if cfg.worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; a plain script never parses them
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
    return iter(it)


def make_eval_iterator(
    source,
    *,
    tokenizer,
    cfg: DataConfig,
    batch_size_per_process: int,
    process_index: int = 0,
    process_count: int = 1,
    pack_groups: int = 1,
) -> grain.DatasetIterator:
    """One pass over this process's slice in stored order, full batches only (held-out metrics)."""
    if batch_size_per_process < 1:
        raise E5Error(f"batch_size_per_process must be >= 1, got {batch_size_per_process}")
    it = _process_records(source, process_index, process_count).to_iter_dataset()
    if cfg.num_hard_negatives > 0:
        it = it.filter(HasNegatives())
    it = it.batch(batch_size_per_process, drop_remainder=True, batch_fn=list)
    return iter(it.map(TokenizeBatch(tokenizer, cfg, pack_groups)))
