"""Sequence packing: the host packer, and packed rows against the padded reference.

A packed text must get the embedding it gets alone in a padded row — with
dropout on, since masks hash (text seed, position in text, feature), not the
text's place in the batch — for BERT and RoBERTa position schemes and both
poolings.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from e5jax.data.packing import first_fit_decreasing, pack, pack_towers, pad_rows
from e5jax.data.pipeline import pad_to_bucket
from e5jax.model.bert import BertConfig
from e5jax.model.dropout import row_seeds
from e5jax.model.encoder import TextEncoder


def test_default_row_rounding_wastes_little_and_is_a_power_of_two():
    from e5jax.data.packing import default_row_step

    assert [default_row_step(n) for n in (1, 15, 16, 33, 530, 1024)] == [1, 1, 1, 2, 32, 64]
    rng = np.random.default_rng(0)
    texts = [[1] * int(k) for k in rng.integers(5, 129, size=4096)]
    out = pack(texts, groups=4, pack_len=128, pad_id=0)
    need = max(len(first_fit_decreasing([len(t) for t in texts[g * 1024:(g + 1) * 1024]], 128)) for g in range(4))
    rows = out["input_ids"].shape[1]
    assert need <= rows <= need * 17 / 16 and rows % default_row_step(need) == 0


def test_balanced_order_spreads_each_blocks_texts_over_its_groups():
    rng = np.random.default_rng(5)
    texts = [[int(t)] * int(k) for t, k in enumerate(rng.integers(1, 60, size=48))]
    out = pack(texts, groups=8, pack_len=64, pad_id=0, blocks=2)  # 2 devices x 4 chunks of 6 texts
    order = out["order"]
    assert order.shape == (2, 24)
    for blk in range(2):
        assert sorted(order[blk]) == list(range(24))  # a permutation inside the block
    slot_text = (order + np.arange(2)[:, None] * 24).reshape(-1)
    seg, ids = out["segment_ids"], out["input_ids"]
    for g in range(8):
        for s in range(6):  # slot s of group g holds exactly its text's tokens
            t = texts[slot_text[g * 6 + s]]
            np.testing.assert_array_equal(ids[g][seg[g] == s + 1], t)
    per_group = np.asarray([len(texts[i]) for i in slot_text]).reshape(8, 6).sum(1)
    plain = np.asarray([len(t) for t in texts]).reshape(8, 6).sum(1)
    assert per_group.max() - per_group.min() < plain.max() - plain.min()  # balanced


def test_first_fit_decreasing_fills_rows_and_keeps_texts_whole():
    lengths = [5, 9, 3, 7, 2, 6]
    rows = first_fit_decreasing(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    assert rows == [[1], [3, 2], [5, 4], [0]]  # longest first, first row with room
    with pytest.raises(ValueError, match="does not fit"):
        first_fit_decreasing([11], 10)


def test_pack_layout_groups_positions_and_row_step():
    texts = [[1] * 4, [2] * 2, [3] * 3, [4] * 1, [5] * 6, [6] * 2]
    out = pack(texts, groups=2, pack_len=6, pad_id=0, row_step=2)
    ids, seg, pos = out["input_ids"], out["segment_ids"], out["positions"]
    assert ids.shape == seg.shape == pos.shape == (2, 2, 6)  # group 1 needs 2 rows, rounded to 2
    np.testing.assert_array_equal(out["lengths"], [4, 2, 3, 1, 6, 2])
    for g in range(2):
        for slot in range(3):
            t = texts[3 * g + slot]
            where = seg[g] == slot + 1
            assert where.sum() == len(t)  # every token of every text is there, once
            np.testing.assert_array_equal(ids[g][where], t)
            np.testing.assert_array_equal(pos[g][where], np.arange(len(t)))
    assert (ids[seg == 0] == 0).all()
    assert pad_rows(seg, 5).shape == (2, 5, 6) and (pad_rows(seg, 5)[:, 2:] == 0).all()
    with pytest.raises(ValueError, match="equal packing groups"):
        pack(texts, groups=4, pack_len=6, pad_id=0)


def test_pack_towers_shares_rows_between_towers_slot_by_slot():
    rng = np.random.default_rng(3)
    queries = [[100 + i] * int(k) for i, k in enumerate(rng.integers(1, 6, size=8))]  # short
    passages = [[200 + i] * int(k) for i, k in enumerate(rng.integers(20, 30, size=8))]  # long
    out = pack_towers({"query": queries, "passage": passages}, groups=4, pack_len=32, pad_id=0, blocks=2)
    ids, seg, pos = out["joint_input_ids"], out["joint_segment_ids"], out["joint_positions"]
    apart = [pack(t, groups=4, pack_len=32, pad_id=0, blocks=2) for t in (queries, passages)]
    # each passage row has room for a query: together they need the passage rows only
    assert ids.shape[:2] == apart[1]["input_ids"].shape[:2] and ids.shape[1] < sum(a["input_ids"].shape[1]
                                                                                  for a in apart)
    for tower, texts, first_slot, a in (("query", queries, 0, apart[0]), ("passage", passages, 2, apart[1])):
        np.testing.assert_array_equal(out[f"{tower}_order"], a["order"])  # each tower balanced as apart
        np.testing.assert_array_equal(out[f"{tower}_lengths"], a["lengths"])
        slot_text = (out[f"{tower}_order"] + np.arange(2)[:, None] * 4).reshape(-1)
        for g in range(4):
            for s in range(2):  # group g: the towers' slots one after the other (2 texts each)
                where = seg[g] == first_slot + s + 1
                np.testing.assert_array_equal(ids[g][where], texts[slot_text[g * 2 + s]])
                np.testing.assert_array_equal(pos[g][where], np.arange(where.sum()))
    assert (seg <= 4).all() and (ids[seg == 0] == 0).all()
    with pytest.raises(ValueError, match="passage texts cannot be split"):
        pack_towers({"query": queries, "passage": passages[:6]}, groups=4, pack_len=32, pad_id=0)


CFGS = {
    "bert": BertConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, max_position_embeddings=64,
                       hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2),
    "roberta": BertConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=128, max_position_embeddings=66, model_type="xlm-roberta",
                          type_vocab_size=1, pad_token_id=1,
                          hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2),
}


@pytest.mark.parametrize("arch,pooling", [("bert", "mean"), ("roberta", "mean"), ("bert", "cls")])
@pytest.mark.parametrize("dropout", [False, True])
def test_packed_embeddings_equal_padded(arch, pooling, dropout):
    cfg = CFGS[arch]
    model = TextEncoder(cfg, pooling=pooling, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    n, groups = 12, 3
    texts = [list(rng.integers(3, 96, size=int(k))) for k in rng.integers(1, 30, size=n)]
    ids, mask = pad_to_bucket(texts, (32,), cfg.pad_token_id)
    keys = jax.random.split(jax.random.key(7), n) if dropout else None
    want = np.asarray(jax.jit(lambda i, m, k: model(i, m, dropout_key=k))(ids, mask, keys))

    p = pack(texts, groups=groups, pack_len=32, pad_id=cfg.pad_token_id)
    assert 3 <= p["input_ids"].shape[1] < n // groups  # rows really are shared, and 3 blocks have a row each
    seeds = row_seeds(keys).reshape(groups, -1) if dropout else None
    for row_blocks in (1, 2, 3):  # the rows as independent blocks (model.row_blocks) change nothing
        got = jax.jit(lambda i, s, q, sd: model.encode_packed(i, s, q, n // groups, seeds=sd, row_blocks=row_blocks))(
            p["input_ids"], p["segment_ids"], p["positions"], seeds)
        np.testing.assert_allclose(np.asarray(got).reshape(n, -1), want, atol=2e-6, err_msg=f"{row_blocks} blocks")
    # the same texts as two towers packed together: each still gets its padded embedding
    j = pack_towers({"a": texts[:6], "b": texts[6:]}, groups=groups, pack_len=32, pad_id=cfg.pad_token_id)
    if dropout:
        seeds = np.concatenate([row_seeds(keys[:6]).reshape(groups, -1), row_seeds(keys[6:]).reshape(groups, -1)], 1)
    got = jax.jit(lambda i, s, q, sd: model.encode_packed(i, s, q, n // groups, seeds=sd))(
        j["joint_input_ids"], j["joint_segment_ids"], j["joint_positions"], seeds)
    got = np.asarray(got)
    np.testing.assert_allclose(np.concatenate([got[:, :2].reshape(6, -1), got[:, 2:].reshape(6, -1)]), want, atol=2e-6)
    if dropout:  # and dropout really acted
        plain = np.asarray(jax.jit(lambda i, m: model(i, m))(ids, mask))
        assert np.abs(plain - want).max() > 1e-3


def test_hash_dropout_rate_and_independence():
    from e5jax.model.dropout import TokenNoise, attention_dropout, hidden_dropout

    x = jnp.ones((64, 32, 48))
    seeds = row_seeds(jax.random.split(jax.random.key(0), 64))
    noise = TokenNoise(jnp.broadcast_to(seeds[:, None], (64, 32)), jnp.broadcast_to(jnp.arange(32), (64, 32)))
    a = np.asarray(hidden_dropout(x, 0.1, noise, site=3))
    b = np.asarray(hidden_dropout(x, 0.1, noise, site=4))
    kept_a, kept_b = a > 0, b > 0
    assert abs(kept_a.mean() - 0.9) < 0.005 and np.allclose(a[kept_a], 1 / 0.9)
    assert abs((kept_a & kept_b).mean() - 0.81) < 0.005  # sites are independent streams
    assert abs((kept_a[:32] == kept_a[32:]).mean() - 0.82) < 0.01  # so are texts
    p = jnp.ones((64, 4, 32, 32))
    kept = np.asarray(attention_dropout(p, 0.25, noise, site=1)) > 0
    assert abs(kept.mean() - 0.75) < 0.005
    assert abs((kept[:, 0] & kept[:, 1]).mean() - 0.5625) < 0.005  # heads differ
