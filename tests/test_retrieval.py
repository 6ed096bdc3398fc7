"""The sharded retrieval core against a NumPy brute-force reference.

Embeddings are small multiples of 1/4 so every dot product is exact in fp32:
scores can be compared with `==`, and there are many exact ties, which makes
the "equal scores -> smaller id first" rule observable.
"""

import functools

import jax
import numpy as np
import pytest

from e5jax import retrieval
from e5jax.retrieval import PassageBank, rank_of, search
from tests.cpu_env import cpu_env

DIM = 8


def quantized(rng: np.random.Generator, n: int, levels: int = 3) -> np.ndarray:
    return (rng.integers(-levels, levels + 1, size=(n, DIM)) / 4).astype(np.float32)


def brute_topk(q: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort every passage by (score desc, id asc) and keep k: the reference."""
    s = q.astype(np.float64) @ bank.astype(np.float64).T
    ids = np.arange(bank.shape[0])
    order = np.stack([np.lexsort((ids, -row)) for row in s])[:, :k]
    return np.take_along_axis(s, order, 1).astype(np.float32), order.astype(np.int64)


def brute_rank(q: np.ndarray, p: np.ndarray, bank: np.ndarray) -> np.ndarray:
    own = np.sum(q.astype(np.float64) * p, axis=1)
    return 1 + np.sum(q.astype(np.float64) @ bank.T.astype(np.float64) > own[:, None], axis=1)


def mesh_of(n: int) -> jax.sharding.Mesh:
    return jax.make_mesh((n,), ("bank",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:n])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    # 203 passages: not divisible by 8; 37 queries: not divisible by the block.
    return quantized(rng, 37), quantized(rng, 203)


def test_eight_devices_emulated():
    assert jax.device_count() == 8


@pytest.mark.parametrize(
    "ndev,k,max_rows",
    [
        (8, 5, None),  # resident bank, 203 rows -> 8 shards of 26 (5 pad rows)
        (8, 40, None),  # k larger than a shard (26 rows)
        (1, 7, None),  # one device
        (8, 30, 64),  # streamed: 4 chunks of 56 rows (7 a shard): k > shard
        (1, 3, 50),  # streamed on one device
        (8, 203, 64),  # k = whole bank, streamed
    ],
)
def test_search_equals_bruteforce(data, ndev, k, max_rows):
    q, bank_np = data
    bank = PassageBank.build(bank_np, mesh=mesh_of(ndev), max_device_rows=max_rows)
    assert (bank.n_chunks > 1) == (max_rows is not None)
    scores, ids = search(q, bank, k, query_block=16)
    ref_s, ref_i = brute_topk(q, bank_np, k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (37, k)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_array_equal(scores, ref_s)


@pytest.mark.parametrize(
    "ndev,k,max_rows",
    [(1, 5, None), (8, 3, None), (1, 10, 4100), (8, 2, 4200)],
)
def test_tiled_two_level_topk_equals_bruteforce(ndev, k, max_rows):
    # Small tiles and groups so the tiled scan and the group-maximum top-k run
    # (GROUP_RATIO * k * group <= shard rows), on a bank full of exact ties.
    rng = np.random.default_rng(3)
    q, bank_np = quantized(rng, 29, levels=1), quantized(rng, 8001, levels=1)
    bank = PassageBank.build(bank_np, mesh=mesh_of(ndev), max_device_rows=max_rows, tile_rows=16, group_rows=4)
    shard = bank.chunk_rows // ndev
    assert retrieval._use_groups(shard, min(k, shard), bank.group_rows) and shard > bank.tile_rows
    scores, ids = search(q, bank, k, query_block=16)
    ref_s, ref_i = brute_topk(q, bank_np, k)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_array_equal(scores, ref_s)
    pos = quantized(rng, len(q), levels=1)
    np.testing.assert_array_equal(rank_of(q, pos, bank, query_block=16), brute_rank(q, pos, bank_np))


@pytest.mark.parametrize("ndev", [1, 8])
def test_super_group_selection_in_search_equals_bruteforce(ndev):
    # Shards big enough for _top_groups' two-level path (4 * n * SUPER_GROUP <=
    # groups per shard) in the fp32 path (exact ties everywhere) and in the bf16
    # screen (random unit vectors, certified).
    rng = np.random.default_rng(11)
    k, sg = 3, retrieval.SUPER_GROUP
    tied_q, tied = quantized(rng, 21, levels=1), quantized(rng, 8 * 1600 + 5, levels=1)
    unit_q, unit = _unit(rng, 21, 16), _unit(rng, 8 * 4700 + 5, 16)
    for q, bank_np, n in ((tied_q, tied, k), (unit_q, unit, retrieval.SCREEN_FACTOR * k)):
        bank = PassageBank.build(bank_np, mesh=mesh_of(8), tile_rows=128, group_rows=4)
        groups_per_shard = bank.chunk_rows // 8 // 4
        assert (128 // 4) % sg == 0 and 4 * n * sg <= groups_per_shard
        if ndev == 1:
            bank = PassageBank.build(bank_np, mesh=mesh_of(1), tile_rows=128, group_rows=4)
        scores, ids = search(q, bank, k, query_block=16)
        ref_s, ref_i = brute_topk(q, bank_np, k)
        np.testing.assert_array_equal(ids, ref_i)
        np.testing.assert_allclose(scores, ref_s, rtol=0, atol=1e-6)
    if ndev == 1:  # the unit bank's screen certified its block: the screen's own path ran
        assert _screen_once(unit_q[:16], bank, k)[2].all()


def test_large_k_takes_the_plain_path_and_rescoring_memory_is_bounded():
    # Re-scoring k * group random rows per query costs more than scanning the
    # shard once k * group passes 1/GROUP_RATIO of it (k = 1,000 at 100k rows).
    assert retrieval._use_groups(100_352, 100, 8) and not retrieval._use_groups(100_352, 1000, 8)
    # The re-scoring gathers one candidate row per query per step: its buffers
    # do not grow with the candidate count (all candidates at once: ~26 MB here).
    Q, n, g, d = 64, 200, 8, 64
    fn = jax.jit(functools.partial(retrieval._rescore, first=0, n_end=4096, k_local=10, group=g, masked=True,
                                   precision=retrieval.HIGHEST))
    args = (np.ones((Q, d), np.float32), np.ones((4096, d), np.float32), np.zeros((Q, n), np.int32))
    temp = fn.lower(*args).compile().memory_analysis().temp_size_in_bytes
    assert temp < 4 * 2**20, temp


def test_tile_must_be_a_multiple_of_the_group():
    with pytest.raises(ValueError, match="tile_rows"):
        PassageBank.build(np.ones((5, DIM), np.float32), tile_rows=10, group_rows=4)


def test_ties_break_by_smaller_id_across_shards_and_chunks():
    # Every passage identical: all scores tie, so the answer is ids 0..k-1.
    bank_np = np.ones((50, DIM), np.float32)
    q = np.ones((3, DIM), np.float32)
    for max_rows in (None, 16):
        _, ids = search(q, PassageBank.build(bank_np, max_device_rows=max_rows), 12)
        np.testing.assert_array_equal(ids, np.tile(np.arange(12), (3, 1)))


def test_pad_rows_never_returned_even_when_all_scores_negative():
    # Real scores are all negative, pad rows would score 0 if left unmasked.
    bank_np = -np.ones((9, DIM), np.float32) * np.arange(1, 10)[:, None]
    q = np.ones((2, DIM), np.float32)
    scores, ids = search(q, bank_np, 9)  # 9 rows on 8 devices: 7 pad rows
    np.testing.assert_array_equal(ids[0], np.arange(9))
    assert np.all(scores < 0)


def test_float_random_vectors_match_numpy():
    rng = np.random.default_rng(1)
    bank_np = rng.standard_normal((301, 16)).astype(np.float32)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    scores, ids = search(q, bank_np, 10)
    ref = q @ bank_np.T
    ref_i = np.argsort(-ref, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, ref_i, 1), rtol=1e-5, atol=1e-5)


def test_one_compiled_shape_for_many_query_counts(data):
    q, bank_np = data
    bank = PassageBank.build(bank_np)
    retrieval._topk_step.cache_clear()
    for nq in (37, 33, 17):  # all pad to blocks of 16 -> one step function, one shape
        s, i = search(q[:nq], bank, 4, query_block=16)
        np.testing.assert_array_equal(i, brute_topk(q[:nq], bank_np, 4)[1])
    assert retrieval._topk_step.cache_info().currsize == 1
    assert retrieval._topk_step.cache_info().hits == 2


@pytest.mark.parametrize("ndev,max_rows", [(8, None), (1, None), (8, 64)])
def test_rank_of_equals_bruteforce(data, ndev, max_rows):
    rng = np.random.default_rng(2)
    q, bank_np = data
    pos = quantized(rng, len(q))
    pos[:5] = bank_np[:5]  # own passage duplicated in the pool: ties go to own
    bank = PassageBank.build(bank_np, mesh=mesh_of(ndev), max_device_rows=max_rows)
    ranks = rank_of(q, pos, bank, query_block=16)
    np.testing.assert_array_equal(ranks, brute_rank(q, pos, bank_np))
    assert ranks.min() >= 1


def test_rank_of_agrees_with_search(data):
    # rank 1 <=> own passage would beat the top-1 of the pool (or tie it).
    q, bank_np = data
    pos = bank_np[10:47]
    top_s, _ = search(q, bank_np, 1)
    own = np.sum(q * pos, axis=1)
    ranks = rank_of(q, pos, bank_np)
    np.testing.assert_array_equal(ranks == 1, own >= top_s[:, 0])


def test_bad_inputs():
    bank = PassageBank.build(np.ones((5, DIM), np.float32))
    with pytest.raises(ValueError, match="k must be"):
        search(np.ones((1, DIM), np.float32), bank, 6)
    with pytest.raises(ValueError, match="queries must be"):
        search(np.ones((1, DIM + 1), np.float32), bank, 1)
    with pytest.raises(ValueError, match="non-empty"):
        PassageBank.build(np.ones((0, DIM), np.float32))
    s, i = search(np.ones((0, DIM), np.float32), bank, 2)
    assert s.shape == (0, 2) and i.shape == (0, 2)


# ------------------------------------------------------------- the bf16 screen


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _screen_once(q: np.ndarray, bank: PassageBank, k: int):
    """The screen's (scores, ids, certified) for one block on a one-device bank."""
    fn = functools.partial(retrieval._screen, k_local=k, tile=bank.tile_rows, masked=True,
                           precision=retrieval.HIGHEST)
    out = jax.jit(fn)(q, bank.resident, bank.screen, np.int32(0), np.int32(bank.n),
                      np.asarray(bank.screen_err, np.float32))
    return [np.asarray(x) for x in out]


@pytest.mark.parametrize("ndev", [1, 8])
def test_bf16_screen_is_certified_on_random_vectors_and_exact(ndev):
    rng = np.random.default_rng(5)
    q, bank_np = _unit(rng, 40, 32), _unit(rng, 8 * 7700 + 3, 32)
    screened = PassageBank.build(bank_np, mesh=mesh_of(ndev), tile_rows=64)
    plain = PassageBank.build(bank_np, mesh=mesh_of(ndev), tile_rows=64, screen=False)
    assert retrieval._use_screen(screened, 10, retrieval.HIGHEST)
    assert not retrieval._use_screen(plain, 10, retrieval.HIGHEST)
    s1, i1 = search(q, screened, 10, query_block=16)
    s0, i0 = search(q, plain, 10, query_block=16)
    np.testing.assert_array_equal(i1, i0)
    np.testing.assert_array_equal(s1, s0)
    ref = q.astype(np.float64) @ bank_np.T.astype(np.float64)
    np.testing.assert_array_equal(i1, np.argsort(-ref, axis=1, kind="stable")[:, :10])
    if ndev == 1:  # the screen itself certified every query: the result did not come from the fallback
        v, ids, ok = _screen_once(q[:16], screened, 10)
        assert ok.all()
        np.testing.assert_array_equal(ids, i0[:16])


@pytest.mark.parametrize("levels", [3, 1000])  # 3 levels: ties everywhere, also across super-groups
def test_two_level_group_selection_equals_flat_top_k(levels):
    rng = np.random.default_rng(levels)
    tiles, nq, g, n = 8, 6, 4 * retrieval.SUPER_GROUP, 7
    gmax = rng.integers(0, levels, size=(tiles, nq, g)).astype(np.float32)
    gmax[:, 0] = 1.0  # one query whose groups all tie: the lowest ids win
    v, ids = jax.jit(retrieval._top_groups, static_argnums=1)(gmax, n)
    flat = gmax.transpose(1, 0, 2).reshape(nq, tiles * g)
    ref_i = np.stack([np.lexsort((np.arange(flat.shape[1]), -row))[:n] for row in flat])
    np.testing.assert_array_equal(np.asarray(ids), ref_i)
    np.testing.assert_array_equal(np.asarray(v), np.take_along_axis(flat, ref_i, 1))
    assert 4 * n * retrieval.SUPER_GROUP <= tiles * g  # the two-level path ran, not the flat fallback


def test_query_blocks_are_even_and_a_short_last_block_is_still_certified():
    assert retrieval._blocks(10_000, 1024) == (1000, 10)  # not 10 x 1,024 with 240 pad rows
    assert retrieval._blocks(1024, 1024) == (1024, 1) and retrieval._blocks(5, 1024) == (8, 1)
    rng = np.random.default_rng(7)
    q, bank_np = _unit(rng, 20, 32), _unit(rng, 1500, 32)
    bank = PassageBank.build(bank_np, mesh=mesh_of(1), tile_rows=64)
    block, n_blocks = retrieval._blocks(len(q), 16)
    last = retrieval._padded_block(q, n_blocks - 1, block)  # 4 real rows, 12 pad rows
    assert (block, n_blocks) == (16, 2) and last.shape == (16, 32)
    np.testing.assert_array_equal(last[:4], q[16:])
    # Pad rows must not defeat the certificate (zero rows would: they tie with
    # every passage), else every search with a short last block pays the fp32 path.
    _, ids, ok = _screen_once(last, bank, 10)
    assert ok.all()
    np.testing.assert_array_equal(ids[:4], brute_topk(q[16:], bank_np, 10)[1])


def test_bf16_screen_falls_back_on_ties():
    rng = np.random.default_rng(3)
    q, bank_np = quantized(rng, 16, levels=1), quantized(rng, 4001, levels=1)  # exact ties everywhere
    bank = PassageBank.build(bank_np, mesh=mesh_of(1), tile_rows=16, group_rows=4)
    assert retrieval._use_screen(bank, 5, retrieval.HIGHEST)
    _, _, ok = _screen_once(q, bank, 5)
    assert not ok.all()
    scores, ids = search(q, bank, 5, query_block=16)
    ref_s, ref_i = brute_topk(q, bank_np, 5)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_array_equal(scores, ref_s)


def test_bf16_screen_falls_back_where_rounding_hides_the_best_passage():
    # In bf16 every passage scores 1.0 (ties go to the lowest groups), in fp32
    # the last one scores highest: only the fp32 fallback can find it.
    bank_np = np.zeros((1024, DIM), np.float32)
    bank_np[:, 0] = 1.003  # rounds to 1.0 in bf16
    bank_np[-1, 0] = 1.0039  # the best in fp32; also rounds to 1.0
    q = np.zeros((1, DIM), np.float32)
    q[0, 0] = 1.0
    bank = PassageBank.build(bank_np, mesh=mesh_of(1), tile_rows=16)
    assert retrieval._use_screen(bank, 1, retrieval.HIGHEST)
    _, screened_ids, ok = _screen_once(q, bank, 1)
    assert not ok.all() and screened_ids[0, 0] != 1023  # the screen alone would be wrong
    scores, ids = search(q, bank, 1)
    assert ids[0, 0] == 1023 and scores[0, 0] == np.float32(1.0039)


def test_screen_bound_holds_where_rounding_errors_align():
    """Vectors whose bf16 rounding errors all point the same way make the bound
    nearly tight; it must still hold (dropping either rounding term breaks it)."""
    import jax.numpy as jnp

    dim = 64
    base = np.float32(1.0 + 0.99 * 2.0**-8)  # just under half a bf16 ulp above 1: rounds down by ~2^-8
    rng = np.random.default_rng(0)
    # Powers of two keep every component's relative rounding error the same;
    # all vectors are permutations of one (one norm), and each query is also a
    # passage (parallel vectors: Cauchy-Schwarz is tight).
    v = base * 2.0 ** rng.integers(-3, 4, size=dim)
    q = np.stack([rng.permutation(v) for _ in range(8)]).astype(np.float32)
    p = np.concatenate([q, np.stack([rng.permutation(v) for _ in range(42)])]).astype(np.float32)
    qb, pb = (x.astype(jnp.bfloat16).astype(np.float64) for x in (q, p))
    screen = qb @ pb.T  # bf16 products summed exactly
    exact = (q @ p.T).astype(np.float64)
    p_err = np.linalg.norm(pb - p, axis=1).max()
    p_norm = max(np.linalg.norm(pb, axis=1).max(), np.linalg.norm(p.astype(np.float64), axis=1).max())
    bound = np.asarray(retrieval.screen_bound(q, np.float32(p_err), np.float32(p_norm)), np.float64)
    gap = np.abs(screen - exact).max(axis=1)
    assert np.all(gap <= bound)
    assert np.all(gap > 0.9 * bound)  # nearly tight: the test would notice a missing term


# ------------------------------------------------------------ two processes

_WORKER = """
import json, sys
import jax, numpy as np
jax.distributed.initialize(f"127.0.0.1:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[1]))
from e5jax.retrieval import PassageBank, _use_screen, HIGHEST, rank_of, search
assert jax.device_count() == 4 and jax.local_device_count() == 2
rng = np.random.default_rng(0)  # the same data on both processes
def unit(n):
    x = rng.standard_normal((n, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
q, bank_np, pos = unit(21), unit(4 * 2400 + 3), unit(21)
res = {}
screened = PassageBank.build(bank_np, tile_rows=64)
res["screen_used"] = bool(_use_screen(screened, 3, HIGHEST))
for name, bank in (("screen", screened), ("fp32", PassageBank.build(bank_np, tile_rows=64, screen=False)),
                   ("streamed", PassageBank.build(bank_np, tile_rows=64, max_device_rows=1000))):
    s, i = search(q, bank, 3, query_block=16)
    res[name] = i.tolist()
res["rank"] = rank_of(q, pos, screened, query_block=16).tolist()
print("RESULT", json.dumps(res))
jax.distributed.shutdown()
"""


@pytest.mark.slow
def test_two_processes_search_and_rank_over_one_global_bank():
    """Two real JAX processes (2 CPU devices each) hold one bank split over all
    4 devices: the screened, fp32 and streamed searches and rank_of all equal
    the brute force, on both processes."""
    import json
    import pathlib
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    repo = pathlib.Path(__file__).resolve().parents[1]
    env = cpu_env(2, PYTHONPATH=str(repo))
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(i), str(port)], cwd=repo, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[7:]))
    rng = np.random.default_rng(0)
    q, bank_np, pos = _unit(rng, 21, 16), _unit(rng, 4 * 2400 + 3, 16), _unit(rng, 21, 16)
    _, ref_i = brute_topk(q, bank_np, 3)
    for res in results:
        assert res["screen_used"]
        for name in ("screen", "fp32", "streamed"):
            np.testing.assert_array_equal(np.asarray(res[name]), ref_i, err_msg=name)
        np.testing.assert_array_equal(np.asarray(res["rank"]), brute_rank(q, pos, bank_np))
