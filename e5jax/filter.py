"""Consistency-based filtering (E5, §3.1): keep a (query, passage) pair when a
model ranks its own passage in the top k among a pool of random passages.

    source split ──draw (seeded)──▶ pool A, reserve pool B ──embed once──▶ pool.npz (cached)
    pairs, in blocks ──embed──▶ rank_of(q, own, pool) ──▶ progress-pNNNNN.log (appended, fsynced)
    all blocks done ──▶ kept/part-*.jsonl ──build_dataset──▶ OUTPUT_NAME (TFDS) + report.json

Rules (each one a choice; the why is next to it):

- rank = 1 + #pool passages scoring strictly higher than the pair's own
  passage for its query (`retrieval.rank_of`); keep the pair iff rank <= k.
- Own passage in the pool. Every pool passage is some pair's own passage, and
  any copy of the own text in the pool would tie with it only up to fp32
  rounding of two different reductions — a coin flip on whether the copy
  counts. So a pair is never ranked against its own text: the draw takes 2N
  *distinct* passage texts in seeded random order, pool A = the first N, and
  reserve pool B = the next N. A pair whose passage text is in A is ranked
  against B (which cannot contain it), every other pair against A. Each pair
  thus faces exactly N random competitors none equal to its own text (pools
  hold distinct texts, so a dataset needs >= 2N distinct passages).
- Splits. The filtered split (`--split`, default train) keeps only its kept
  pairs; every other split (held-out) is copied unchanged, so evaluation on
  held-out pairs stays comparable before and after filtering. The output is
  built with the source's `heldout_fraction`, and the builder's split is a
  hash of the pair, so every record lands back in the split it came from
  (checked after the build).
- Resume. The work folder (``DATA_DIR/OUTPUT_NAME.work``) holds `plan.json`
  (settings; a restart with other settings is refused), the pool cache and
  the progress logs. A block's record (header + ranks + kept flags + CRC) is
  appended and fsynced after the block; on reading, a torn or corrupt tail is
  ignored (and cut off before the owner appends again), and a block is
  counted once however many records it has. A killed run restarts at its
  first unfinished block; the output depends only on the plan, so it is
  byte-for-byte the dataset an uninterrupted run writes.
- Multi-host. Each process ranks blocks b with b % process_count ==
  process_index on its *own* devices (its own copy of the pool banks: no
  collectives, so processes never wait on each other), appending to its own
  log in the shared work folder (a shared file system). After a barrier,
  process 0 merges all logs, writes the shards and builds the dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Sequence

import numpy as np
from etils import epath
from tqdm.auto import tqdm

from e5jax.errors import E5Error
from e5jax.filter_files import (  # noqa: F401  (RANK_BINS, read_log: re-exported for filter's users)
    RANK_BINS,
    _atomic_write,
    _text,
    append_record,
    block_bounds,
    block_record,
    rank_histogram,
    read_log,
    read_progress,
    repair_log,
    text_hash,
    work_dir,
    write_shards,
)
from e5jax.paths import local

PLAN_VERSION = 1


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    pool_size: int  # N random passages each pair competes with (paper: 1M)
    top_k: int = 2  # keep a pair whose own passage ranks <= k (paper: 2)
    split: str = "train"  # the split filtered; other splits are copied unchanged
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    max_length: int = 128  # tokens per text (pre-training's length)
    batch_size: int = 256  # texts per encoder batch (results depend on it: part of the plan)
    block_size: int = 4096  # pairs per progress record: the unit of resumption
    seed: int = 0  # the pool draw

    def __post_init__(self):
        if self.pool_size < 1 or self.top_k < 1:
            raise E5Error(f"--pool-size and --top-k must be >= 1, got {self.pool_size} and {self.top_k}")
        if self.top_k > self.pool_size:
            # Ranks run 1..N+1 against N competitors: any k > N keeps every pair.
            raise E5Error(f"--top-k {self.top_k} is larger than --pool-size {self.pool_size}, so it would keep "
                          f"every pair; use a --top-k below the pool size (paper: 2 of 1M)")
        if self.max_length < 2 or self.batch_size < 1 or self.block_size < 1:
            raise E5Error("--max-length must be >= 2, --batch-size and --block-size >= 1")


# ------------------------------------------------------------------ plan and pool


def check_plan(work: pathlib.Path, plan: dict) -> None:
    """Write plan.json on a fresh start; refuse to resume a run made with other settings."""
    path = work / "plan.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
        if diff:
            raise E5Error(f"{work} holds a run with other settings ({', '.join(diff)}); "
                          "delete that folder or choose another --output-name")
        return
    work.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, (json.dumps(plan, indent=2, sort_keys=True) + "\n").encode())


def _passages(source, indices: Sequence[int]) -> list[bytes]:
    return [r["passage"] for r in source.__getitems__([int(i) for i in indices])]


def draw_pools(source, pool_size: int, seed: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(pool A indices, reserve pool B indices): 2N distinct passage texts in seeded random order."""
    n = len(source)
    order = np.random.default_rng(seed).choice(n, size=min(n, 4 * pool_size + 1024), replace=False)
    seen, picked = set(), []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        for i, text in zip(part, _passages(source, part)):
            h = text_hash(text)
            if h not in seen:
                seen.add(h)
                picked.append(int(i))
        if len(picked) >= 2 * pool_size:
            return np.asarray(picked[:pool_size]), np.asarray(picked[pool_size : 2 * pool_size])
    raise E5Error(f"--pool-size {pool_size} needs {2 * pool_size} distinct passages (pool + reserve pool for "
                  f"pairs whose own passage is in the pool); found {len(picked)} among {len(order)} drawn of {n}")


def load_pools(work: pathlib.Path, source, cfg: FilterConfig, encode: Callable, *, write: bool,
               pool_embeddings: Callable | None = None):
    """(emb A, emb B, hashes of A): embedded once, then read from work/pool.npz.
    `pool_embeddings(indices)`, when given, looks the rows up instead of encoding them."""
    path = work / "pool.npz"
    if path.exists():
        with np.load(path) as z:
            return z["emb_a"], z["emb_b"], set(z["hash_a"].tolist())
    idx_a, idx_b = draw_pools(source, cfg.pool_size, cfg.seed)
    texts_a, texts_b = _passages(source, idx_a), _passages(source, idx_b)
    if pool_embeddings is not None:
        emb_a, emb_b = pool_embeddings(idx_a), pool_embeddings(idx_b)
    else:
        emb_a = encode([_text(t) for t in texts_a], cfg.passage_prefix)
        emb_b = encode([_text(t) for t in texts_b], cfg.passage_prefix)
    hash_a = np.asarray([text_hash(t) for t in texts_a], np.uint64)
    if write:
        import io

        buf = io.BytesIO()
        np.savez(buf, idx_a=idx_a, idx_b=idx_b, emb_a=emb_a, emb_b=emb_b, hash_a=hash_a)
        _atomic_write(path, buf.getvalue())
    return emb_a, emb_b, set(hash_a.tolist())


# ------------------------------------------------------------------ ranking


def _rank(q: np.ndarray, p: np.ndarray, bank, query_block: int) -> np.ndarray:
    """rank_of with rows padded to a multiple of `query_block`: one compiled shape for every block."""
    from e5jax.retrieval import rank_of

    m = q.shape[0]
    rows = math.ceil(m / query_block) * query_block
    pad = ((0, rows - m), (0, 0))
    return rank_of(np.pad(q, pad), np.pad(p, pad), bank, query_block=query_block, progress=False)[:m]


def rank_block(records: Sequence[dict], cfg: FilterConfig, encode: Callable, banks, hash_a: set,
               query_block: int) -> np.ndarray:
    """Ranks of each pair's own passage: against pool A, or reserve pool B if its text is in A."""
    q = encode([_text(r["query"]) for r in records], cfg.query_prefix)
    p = encode([_text(r["passage"]) for r in records], cfg.passage_prefix)
    in_a = np.asarray([text_hash(r["passage"]) in hash_a for r in records], bool)
    ranks = np.zeros(len(records), np.int64)
    for mask, bank in ((~in_a, banks[0]), (in_a, banks[1])):
        if mask.any():
            ranks[mask] = _rank(q[mask], p[mask], bank, query_block)
    return ranks


# ------------------------------------------------------------------ the run


def model_fingerprint(path: str | os.PathLike) -> str:
    """Resolved path + (name, size, mtime) of the folder's entries: a changed model is a new plan."""
    folder = local(path, "--model").resolve()
    h = hashlib.blake2b(str(folder).encode(), digest_size=8)
    for p in sorted(folder.iterdir()):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size if p.is_file() else 'dir'}:{st.st_mtime_ns}".encode())
    return f"{folder}#{h.hexdigest()}"


def load_encoder(path: str | os.PathLike, devices=None):
    """An `Encoder` on this process's devices from an HF / export folder or a training workdir."""
    import jax

    from e5jax.loading import load

    folder = local(path, "--model", "a model folder is read with local-file APIs (copy a gs:// workdir first)")
    if not folder.is_dir():
        raise E5Error(f"--model {path} is not a folder")
    return load(folder, devices=list(devices or jax.local_devices()))


def check_pool_embeddings(path, model, cfg: FilterConfig, data_dir, name: str) -> None:
    """An `e5jax embed` folder made from this split's passages with this model, prefix
    and max length; one line naming the flag otherwise. Before the model loads."""
    from e5jax import embed

    _, man = embed.check_embedded(path, flag="--pool-embeddings", model=model, prefix=cfg.passage_prefix,
                                  max_length=cfg.max_length)
    if (man["input_format"], man["text_field"]) != ("pairs", "passage") or \
            man["input_sha256"] != embed.pairs_identity(data_dir, name, cfg.split)[1]:
        raise E5Error(f"--pool-embeddings {path} embeds {man['input']}, not the passages of --data-dir {data_dir} "
                      f"--name {name} --split {cfg.split}; make it with `e5jax embed --input-format pairs --input "
                      f"{data_dir} --name {name} --split {cfg.split} --prefix ...`")


def _local_bank_mesh(devices):
    import jax

    return jax.make_mesh((len(devices),), ("bank",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def filter_dataset(
    encoder,
    *,
    data_dir: str | os.PathLike,
    name: str,
    output_name: str,
    cfg: FilterConfig,
    model_id: str,
    overwrite: bool = False,
    shard_size: int = 1_000_000,
    beam_runner: str | None = None,
    on_block: Callable[[int], None] | None = None,
    progress: bool | None = None,
    pool_embeddings: str | os.PathLike | None = None,
) -> dict | None:
    """Filter `name`'s `cfg.split` into a new dataset `output_name`; resumes from its work folder.

    `model_id` names the model in the plan (see `model_fingerprint`). `on_block(b)`
    runs after block b is durably recorded (tests kill a run there). `pool_embeddings`:
    an `e5jax embed --input-format pairs` folder of this split's passages, read for
    the pools instead of encoding them (the caller checks it: `check_pool_embeddings`). Returns the
    report on process 0, None on the others.
    """
    import jax

    from e5jax.data.ccpairs import builder
    from e5jax.retrieval import PassageBank

    if output_name == name:
        raise E5Error("--output-name must differ from --name: the source dataset is never overwritten")
    work = work_dir(data_dir, output_name)
    source = builder.load_source(data_dir, name, cfg.split)
    n = len(source)
    if n == 0:
        raise E5Error(f"split {cfg.split!r} of {name!r} is empty")
    if not overwrite and (epath.Path(data_dir) / output_name / builder.VERSION / "dataset_info.json").exists():
        raise E5Error(f"dataset {output_name!r} already exists in {data_dir}; pass --overwrite or another --output-name")
    bounds = block_bounds(n, cfg.block_size)
    plan = {"version": PLAN_VERSION, "dataset": str(builder.dataset_dir(data_dir, name).resolve()), "pairs": n,
            "model": model_id, **dataclasses.asdict(cfg)}
    pid, nproc = jax.process_index(), jax.process_count()
    check_plan(work, plan)
    log = work / f"progress-p{pid:05d}.log"
    repair_log(log)

    def encode(texts: list[str], prefix: str) -> np.ndarray:
        return encoder.encode(texts, prefix=prefix, max_length=cfg.max_length, batch_size=cfg.batch_size,
                              show_progress=False)

    done = read_progress(work, bounds)
    todo = [b for b in range(len(bounds)) if b % nproc == pid and b not in done]
    t0, ranked = time.perf_counter(), 0
    if todo:
        lookup = None
        if pool_embeddings is not None:
            from e5jax import embed

            _, man = embed.read_manifest(pool_embeddings, "--pool-embeddings")
            lookup = lambda idx: embed.take(pool_embeddings, man, [str(int(i)) for i in idx],  # noqa: E731
                                            lambda rid: int(rid) // man["shard_size"], flag="--pool-embeddings")
        emb_a, emb_b, hash_a = load_pools(work, source, cfg, encode, write=pid == 0, pool_embeddings=lookup)
        devices = jax.local_devices()  # own copy of the banks: no cross-host collectives
        banks = tuple(PassageBank.build(e, mesh=_local_bank_mesh(devices), screen=False)  # ranks only: no top-k
                      for e in (emb_a, emb_b))
        query_block = min(256, math.ceil(cfg.block_size / 8) * 8)
        for b in tqdm(todo, desc="filter", unit="block", disable=None if progress is None else not progress):
            lo, hi = bounds[b]
            ranks = rank_block(source.__getitems__(list(range(lo, hi))), cfg, encode, banks, hash_a, query_block)
            append_record(log, block_record(b, lo, hi, ranks, ranks <= cfg.top_k))
            ranked += hi - lo
            if on_block is not None:
                on_block(b)
    seconds = time.perf_counter() - t0
    if nproc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("e5jax-filter-ranked")
    report = None
    if pid == 0:
        report = _finalize(work, source, bounds, cfg, data_dir=data_dir, name=name, output_name=output_name,
                           overwrite=overwrite, shard_size=shard_size, beam_runner=beam_runner)
        report["this_run"] = {"pairs_ranked": ranked, "seconds": seconds,
                              "pairs_per_second": ranked / seconds if ranked else None}
    if nproc > 1:
        multihost_utils.sync_global_devices("e5jax-filter-built")
    return report


def _finalize(work, source, bounds, cfg: FilterConfig, *, data_dir, name, output_name, overwrite, shard_size,
              beam_runner) -> dict:
    """Merge the logs, write the shards, build the dataset, write report.json."""
    import tensorflow_datasets as tfds

    from e5jax.data.ccpairs import builder

    done = read_progress(work, bounds)
    missing = [b for b in range(len(bounds)) if b not in done]
    if missing:
        raise E5Error(f"{len(missing)} blocks of {len(bounds)} were not ranked (first: {missing[0]}); "
                      "a process failed: run the same command again to finish them")
    ranks = np.concatenate([done[b][0] for b in range(len(bounds))])
    keep = np.concatenate([done[b][1] for b in range(len(bounds))])
    meta = builder.load_summary(data_dir, name)
    splits = tfds.builder_from_directory(str(builder.dataset_dir(data_dir, name))).info.splits
    others = {s: builder.load_source(data_dir, name, s) for s in sorted(splits) if s != cfg.split}
    counts = write_shards(work, source, keep, ranks, others, shard_size, _pool_hashes(work, source, cfg))
    summary = builder.build_dataset([work / "kept"], data_dir=data_dir, name=output_name,
                                    heldout_fraction=float(meta.get("heldout_fraction", 0.0)),
                                    max_chars=int(meta.get("max_chars", 20_000)),
                                    beam_runner=beam_runner, overwrite=overwrite)
    built = {s: v["kept"] for s, v in summary["splits"].items()}
    want = {cfg.split: int(keep.sum()), **counts["copied_splits"]}
    if {k: v for k, v in built.items() if v} != {k: v for k, v in want.items() if v}:
        raise E5Error(f"built splits {built} differ from the records written {want}: the source dataset's "
                      "heldout_fraction does not match how its splits were made")
    report = {"dataset": name, "split": cfg.split, "output": output_name, "path": summary["path"],
              "pairs": int(len(ranks)), "kept": int(keep.sum()), "kept_fraction": float(keep.mean()),
              "pool_size": cfg.pool_size, "top_k": cfg.top_k, "rank_histogram": rank_histogram(ranks), **counts,
              "settings": json.loads((work / "plan.json").read_text())}
    _atomic_write(work / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    return report


def _pool_hashes(work: pathlib.Path, source, cfg: FilterConfig) -> set:
    """Hashes of pool A's texts: from the cache, or redrawn (the draw is seeded) if it is gone."""
    if (work / "pool.npz").exists():
        with np.load(work / "pool.npz") as z:
            return set(z["hash_a"].tolist())
    return {text_hash(t) for t in _passages(source, draw_pools(source, cfg.pool_size, cfg.seed)[0])}
