"""grain pipeline: slices, shuffling, bucketing, prefixes, fine-tuning fields, checkpointable state."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from e5jax.config import DataConfig
from e5jax.data import pipeline
from e5jax.data.ccpairs.builder import load_source

CFG = DataConfig(max_query_length=24, max_passage_length=64, num_buckets=4)


def _train(source, tokenizer, cfg=CFG, b=8, index=0, count=1, seed=0, epochs=None):
    return pipeline.make_train_iterator(
        source, tokenizer=tokenizer, cfg=cfg, batch_size_per_process=b,
        process_index=index, process_count=count, seed=seed, num_epochs=epochs,
    )


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return len(a) == len(b) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def source(built):
    return load_source(*built, "train")


@pytest.fixture(scope="module")
def texts(source):
    """passage_key -> record, for checking batches against the stored text."""
    recs = [pipeline.DecodeRecord().map(source[i]) for i in range(len(source))]
    return {pipeline.text_key(r.get("passage", r.get("positive"))): r for r in recs}


def test_process_slices_are_disjoint_and_cover(source, tokenizer):
    n = len(source)
    seen = []
    for index in range(2):
        keys = [k for b in _train(source, tokenizer, b=1, index=index, count=2, epochs=1) for k in b["passage_key"]]
        sl = pipeline.process_slice(n, index, 2)
        want = [pipeline.text_key(source[i]["passage"].decode()) for i in range(n)[sl]]
        assert sorted(keys) == sorted(want) and len(keys) == n // 2
        seen.append(set(range(n)[sl]))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == n - n % 2


def test_seeded_shuffle_and_fresh_order_each_epoch(source, tokenizer):
    a, b = _take(_train(source, tokenizer, seed=1), 5), _take(_train(source, tokenizer, seed=1), 5)
    assert _same(a, b)
    assert not _same(a, _take(_train(source, tokenizer, seed=2), 5))
    epochs = [b["passage_key"][0] for b in _train(source, tokenizer, b=1, seed=3, epochs=2)]
    first, second = epochs[: len(source)], epochs[len(source) :]
    assert sorted(first) == sorted(second) and first != second


def test_buckets_prefixes_and_no_truncation_below_max(source, tokenizer, texts):
    buckets = {"query": pipeline.bucket_lengths(24, 4), "passage": pipeline.bucket_lengths(64, 4)}
    assert buckets == {"query": (8, 16, 24), "passage": (16, 32, 48, 64)}
    used = set()
    for batch in itertools.islice(_train(source, tokenizer, b=4, seed=5), 40):
        recs = [texts[int(k)] for k in batch["passage_key"]]
        for side, max_len in (("query", 24), ("passage", 64)):
            ids, mask = batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"]
            assert ids.dtype == mask.dtype == np.int32 and ids.shape == mask.shape
            assert ids.shape[1] in buckets[side]
            used.add((side, ids.shape[1]))
            prefix = CFG.query_prefix if side == "query" else CFG.passage_prefix
            for row, r in enumerate(recs):
                want = tokenizer(prefix + r[side], truncation=True, max_length=max_len)["input_ids"]
                n = int(mask[row].sum())
                assert ids[row, :n].tolist() == want and not ids[row, n:].any() and not mask[row, n:].any()
            assert ids.shape[1] == min(b for b in buckets[side] if b >= mask.sum(1).max())  # smallest that fits
        assert tokenizer.decode(batch["query_input_ids"][0]).startswith("[CLS] query :")
        assert tokenizer.decode(batch["passage_input_ids"][0]).startswith("[CLS] passage :")
    assert len({n for s, n in used if s == "passage"}) > 1  # buckets really vary


def test_iterator_state_round_trip(source, tokenizer):
    it = _train(source, tokenizer, seed=7)
    _take(it, 5)
    state = it.get_state()
    continued = _take(it, 4)
    fresh = _train(source, tokenizer, seed=7)
    fresh.set_state(state)
    assert _same(_take(fresh, 4), continued)


def test_iterator_state_in_an_orbax_checkpoint(source, tokenizer, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    import grain

    it = _train(source, tokenizer, seed=8, epochs=2)
    _take(it, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    continued = _take(it, 3)
    fresh = _train(source, tokenizer, seed=8, epochs=2)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(mngr.latest_step(), args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert _same(_take(fresh, 3), continued)


def test_one_source_per_batch(source, tokenizer, texts):
    cfg = DataConfig(max_query_length=24, max_passage_length=64, one_source_per_batch=True)
    it = _train(source, tokenizer, cfg=cfg, b=4, seed=0)
    sources = [{texts[int(k)]["source"] for k in b["passage_key"]} for b in _take(it, 30)]
    assert all(len(s) == 1 for s in sources)
    assert {next(iter(s)) for s in sources} == {"debian_a", "debian_b"}
    state = it.get_state()
    continued = _take(it, 3)
    fresh = _train(source, tokenizer, cfg=cfg, b=4, seed=0)
    fresh.set_state(state)
    assert _same(_take(fresh, 3), continued)


def test_eval_iterator_is_one_ordered_pass(built, tokenizer):
    held = load_source(*built, "heldout")
    batches = list(pipeline.make_eval_iterator(held, tokenizer=tokenizer, cfg=CFG, batch_size_per_process=4))
    assert len(batches) == len(held) // 4
    keys = [int(k) for b in batches for k in b["passage_key"]]
    assert keys == [pipeline.text_key(held[i]["passage"].decode()) for i in range(len(keys))]


def test_finetune_batches(built_finetune, tokenizer):
    src = load_source(*built_finetune, "train")
    recs = {}
    for i in range(len(src)):
        r = pipeline.DecodeRecord().map(src[i])
        recs[pipeline.text_key(r["positive"])] = r
    cfg = DataConfig(max_query_length=24, max_passage_length=48, num_hard_negatives=2)
    seen_nan = seen_scores = seen_repeat = 0
    for batch in _take(_train(src, tokenizer, cfg=cfg, b=4, seed=0), 25):
        b = 4
        assert batch["negative_input_ids"].shape[:2] == (b, 2) and batch["negative_input_ids"].shape[2] in (16, 24, 40, 48)
        assert batch["negative_attention_mask"].shape == batch["negative_input_ids"].shape
        assert batch["negative_key"].shape == (b, 2) and batch["teacher_scores"].shape == (b, 3)
        for row, key in enumerate(batch["passage_key"]):
            r = recs[int(key)]
            negs = r["negatives"]
            assert negs, "records without negatives must be skipped when K > 0"
            picked = [negs[i % len(negs)] for i in range(2)]
            assert batch["negative_key"][row].tolist() == [pipeline.text_key(n) for n in picked]
            n = int(batch["negative_attention_mask"][row, 0].sum())
            want = tokenizer("passage: " + picked[0], truncation=True, max_length=48)["input_ids"]
            assert batch["negative_input_ids"][row, 0, :n].tolist() == want
            ts = batch["teacher_scores"][row]
            if r["teacher_scores"].size:
                assert ts.tolist() == [r["teacher_scores"][0]] + [r["teacher_scores"][1 + i % len(negs)] for i in range(2)]
                seen_scores += 1
            else:
                assert all(math.isnan(x) for x in ts)
                seen_nan += 1
            seen_repeat += len(negs) == 1
    assert seen_nan and seen_scores and seen_repeat


def test_finetune_without_hard_negatives(built_finetune, tokenizer):
    src = load_source(*built_finetune, "train")
    batch = next(_train(src, tokenizer, b=4))
    assert "negative_input_ids" not in batch and batch["teacher_scores"].shape == (4, 1)


@pytest.mark.parametrize("max_query_length,pack_towers,joint", [(48, "auto", True), (24, "auto", False),
                                                                (24, "joint", True), (48, "separate", False)])
def test_packed_fine_tuning_batches_hold_every_text_once(built_finetune, tokenizer, max_query_length, pack_towers,
                                                         joint):
    """Packed towers (together when the max lengths match, or when asked) hold
    exactly the padded batch's token ids, hard negatives included."""
    src = load_source(*built_finetune, "train")
    base = DataConfig(max_query_length=max_query_length, max_passage_length=48, num_hard_negatives=2)
    packed_cfg = DataConfig(max_query_length=max_query_length, max_passage_length=48, num_hard_negatives=2,
                            pack=True, pack_towers=pack_towers)
    padded = next(_train(src, tokenizer, cfg=base, b=4))
    packed = next(_train(src, tokenizer, cfg=packed_cfg, b=4))
    assert ("joint_input_ids" in packed) == joint and ("passage_input_ids" in packed) != joint
    for tower in ("query", "passage", "negative"):
        ids, mask = padded[f"{tower}_input_ids"], padded[f"{tower}_attention_mask"]
        want = [row[: m.sum()].tolist() for row, m in zip(ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, ids.shape[-1]))]
        prefix = "joint" if joint else tower
        seg, pids = packed[f"{prefix}_segment_ids"][0], packed[f"{prefix}_input_ids"][0]  # one group
        first = {"query": 0, "passage": 4, "negative": 8}[tower] if joint else 0
        got = [pids[seg == first + i + 1].tolist() for i in range(len(want))]
        assert got == want, tower
        np.testing.assert_array_equal(packed[f"{tower}_lengths"], [len(w) for w in want])
