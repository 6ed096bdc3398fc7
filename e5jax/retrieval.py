"""Sharded exact top-k: the one retrieval core of evaluation, filtering and mining.

A `PassageBank` holds passage embeddings with their rows split across every
device of a mesh (all hosts). `search` scores query blocks against it by dot
product: each device multiplies the block by its own shard and keeps a local
top-k, the local results are all-gathered (with global ids) and reduced to the
global top-k. A bank too big for device memory is kept on the host and streams
through the devices in fixed-size chunks while a running top-k is merged.

Exactness: fp32 everywhere and `Precision.HIGHEST` (TPUs default to bf16
passes and GPUs to TF32 for fp32 matmuls); no approximate top-k.

Speed: a shard is scored tile by tile (`tile_rows` passages at a time), so the
[queries, tile] score block stays in cache instead of writing a [queries,
shard] matrix to memory; each tile is reduced at once to the maximum of every
group of `group_rows` consecutive passages. The top-k *groups* by maximum hold
the exact top-k passages (each of the k best passages lies in a group whose
maximum is at least as high, and at most k groups can have such a maximum, ties
going to the lower group as they do for passages), so only k * group_rows
candidates are re-scored and sorted instead of the whole shard. The top-k
groups themselves are chosen in two levels too (`_top_groups`: super-groups
of 32 groups first), because XLA:CPU's TopK over every group is not cheap. The
candidates' scores are recomputed with a dot of the same fp32 rows; they equal
the tile's scores up to the order of fp32 accumulation.

The bf16 screen (`PassageBank.build(screen=True)`, the default; resident
banks, `search` at `Precision.HIGHEST`): group maxima come from a bf16 copy of
the bank (bf16 products are exact in fp32, summed in fp32), the best 3k groups
of 4 are re-scored in fp32, and a rigorous bound on the bf16 error certifies
that no other passage can reach the top-k. A block that is not certified
(e.g. exact ties at the k-th score) takes the fp32 path, so results are those
of the fp32 path in every case (`_screen`).

Determinism: equal scores are ordered by the smaller passage id. This rests on
XLA TopK's documented rule ("if two elements are equal, the lower-index element
appears first") and on laying every candidate list out in increasing-id order:
shards are contiguous row ranges in device order, `all_gather` concatenates in
device order, and a running result (earlier chunks, smaller ids) is placed
before the new chunk's candidates.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

HIGHEST = jax.lax.Precision.HIGHEST


def default_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh named "bank" over every device of every process."""
    n = jax.device_count()
    return jax.make_mesh((n,), ("bank",), axis_types=(jax.sharding.AxisType.Auto,))


def _put(x: np.ndarray, mesh: jax.sharding.Mesh, spec: P) -> jax.Array:
    """Place a host array (the same on every process) onto the mesh.

    `make_array_from_callback` works multi-host too: each process fills only the
    shards its own devices hold."""
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda idx: x[idx])


@dataclasses.dataclass(frozen=True)
class PassageBank:
    """Passage embeddings [n, d] split by rows over all devices of `mesh`.

    Build it with `PassageBank.build`. Rows are padded up to a multiple of the
    device count (and of the chunk size); pad rows score -inf and are never
    returned. `chunk_rows` is how many rows are on the devices at once: the
    whole (padded) bank when it fits `max_device_rows`, else one host chunk.
    """

    mesh: jax.sharding.Mesh
    n: int  # real rows
    dim: int
    chunk_rows: int  # rows per chunk (multiple of the device count)
    tile_rows: int  # passages scored at once per device (divides a shard)
    group_rows: int  # passages per group of the two-level top-k (divides a tile)
    resident: jax.Array | None = dataclasses.field(repr=False)  # whole bank on the devices, or None
    host: np.ndarray | None = dataclasses.field(repr=False)  # the bank on the host when it streams
    # bf16 copy for the certified screen (resident banks only): each device's
    # rows as [tiles, d, tile], and (max ||p~ - p||, max(||p~||, ||p||)).
    screen: jax.Array | None = dataclasses.field(default=None, repr=False)
    screen_err: tuple[float, float] | None = None

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        *,
        mesh: jax.sharding.Mesh | None = None,
        max_device_rows: int | None = None,
        tile_rows: int = 1024,
        group_rows: int = 8,
        screen: bool = True,
    ) -> "PassageBank":
        """Shard `embeddings` [n, d] over `mesh` (default: all devices).

        `max_device_rows` caps the rows held on the devices at once (all devices
        together); a larger bank stays on the host and streams in chunks.
        `tile_rows` and `group_rows` set the blocking of the scoring (module
        docstring); they change speed, never results. A shard is padded to a
        whole number of tiles (a tile shrinks to fit a small shard).
        `screen` keeps a bf16 copy of a resident bank for `search`'s certified
        screen (`_screened_topk`: same results, fewer fp32 FLOPs; +50% memory).
        """
        if tile_rows < 1 or group_rows < 1 or tile_rows % group_rows:
            raise ValueError(f"tile_rows ({tile_rows}) must be a positive multiple of group_rows ({group_rows})")
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise ValueError(f"bank embeddings must be a non-empty [n, d] matrix, got shape {emb.shape}")
        mesh = mesh or default_mesh()
        ndev = mesh.size
        n, dim = emb.shape
        if max_device_rows is None or max_device_rows >= n:
            n_chunks = 1
        else:  # equal chunks, each a multiple of the device count: one compiled shape
            n_chunks = math.ceil(n / max(int(max_device_rows) // ndev * ndev, ndev))
        per_device = math.ceil(math.ceil(n / n_chunks) / ndev)
        tile = min(tile_rows, math.ceil(per_device / group_rows) * group_rows)
        chunk_rows = math.ceil(per_device / tile) * tile * ndev
        padded = np.zeros((n_chunks * chunk_rows, dim), np.float32)
        padded[:n] = emb
        blocking = dict(tile_rows=tile, group_rows=group_rows)
        if n_chunks > 1:
            return cls(mesh, n, dim, chunk_rows, resident=None, host=padded, **blocking)
        resident = _put(padded, mesh, P(mesh.axis_names))
        if not screen or tile % SCREEN_GROUP:
            return cls(mesh, n, dim, chunk_rows, resident=resident, host=None, **blocking)
        low = padded.astype(jnp.bfloat16)  # a numpy bf16 array on the host (jax's ml_dtypes type)
        tiles = np.ascontiguousarray(low.reshape(-1, tile, dim).transpose(0, 2, 1))  # [all tiles, d, tile]
        err = np.linalg.norm(low.astype(np.float64) - padded, axis=1).max()
        norm = max(np.linalg.norm(low.astype(np.float64), axis=1).max(), np.linalg.norm(padded, axis=1).max())
        return cls(mesh, n, dim, chunk_rows, resident=resident, host=None,
                   screen=_put(tiles, mesh, P(mesh.axis_names)), screen_err=(float(err), float(norm)), **blocking)

    @property
    def n_chunks(self) -> int:
        return 1 if self.host is None else self.host.shape[0] // self.chunk_rows

    def chunks(self) -> Iterator[tuple[int, jax.Array]]:
        """(first global id, device array) for each chunk, moving host chunks on demand."""
        if self.resident is not None:
            yield 0, self.resident
            return
        for c in range(self.n_chunks):
            lo = c * self.chunk_rows
            yield lo, _put(self.host[lo : lo + self.chunk_rows], self.mesh, P(self.mesh.axis_names))


def _mask_pad(s, first_row, n_end):
    """Scores of rows first_row, first_row+1, ... (last axis); rows >= n_end (bank padding) -> -inf."""
    rows = first_row + jnp.arange(s.shape[-1], dtype=jnp.int32)
    return jnp.where(rows < n_end, s, -jnp.inf)


def _tiles(shard, tile: int):
    """[S, d] -> ([S/tile, tile, d], first local row of each tile)."""
    n_tiles = shard.shape[0] // tile
    return shard.reshape(n_tiles, tile, shard.shape[1]), jnp.arange(n_tiles, dtype=jnp.int32) * tile


# Two-level top-k only when the candidates (k groups) are at most 1/GROUP_RATIO
# of the shard: re-scoring a candidate (a random fp32 row read) costs far more
# than a passage of the tiled scan. Measured (2-core CPU, 1,024 queries x 100k
# passages, dim 384; a plain dot + top-k: 0.70 s): k = 100 took 0.73 s on the
# fp32 path (800 candidates, about even) and 0.60 s with the bf16 screen (1,200);
# k = 1,000 (8,000 candidates) took 12.1 s before re-scoring went row by row.
GROUP_RATIO = 64


def _use_groups(shard_rows: int, k_local: int, group: int) -> bool:
    """Two-level top-k pays when the candidates (k groups) are a small part of the shard."""
    return group > 1 and GROUP_RATIO * k_local * group <= shard_rows


def _group_maxima(q, shard, first, n_end, *, tile, group, masked, precision):
    """[tiles, Q, tile / group]: each query's best score in every group of
    `group` passages, scored tile by tile (the [Q, tile] block never leaves the
    cache); group id = tile * (tile / group) + index in the tile."""
    dot = functools.partial(jnp.dot, precision=precision, preferred_element_type=jnp.float32)

    def tile_group_max(_, xs):
        rows, t0 = xs
        s = dot(q, rows.T)
        if masked:
            s = _mask_pad(s, first + t0, n_end)
        return None, s.reshape(q.shape[0], tile // group, group).max(-1)

    return jax.lax.scan(tile_group_max, None, _tiles(shard, tile))[1]


# Groups per super-group in `_top_groups`' two-level selection.
SUPER_GROUP = 32


def _top_groups(gmax, n: int):
    """`lax.top_k` over all groups, from group maxima in the scan's layout
    [tiles, Q, g]: (values [Q, n], group ids [Q, n]), equal to
    `top_k(gmax.transpose(1, 0, 2).reshape(Q, -1), n)`, ties included.

    XLA:CPU's TopK costs about as much per element as the bf16 scan's dot
    spends on a passage, so this avoids running it over every group (and the
    [Q, groups] transpose): the top n super-groups of SUPER_GROUP consecutive
    groups by their maximum, then the top n groups among those n * SUPER_GROUP.
    Exact: a top-n group's super-group has a group (its maximum) at least as
    high, ties included by id, in each super-group ahead of it, so at most
    n - 1 are ahead of it and it is among the n chosen; the candidates are laid
    out in increasing id order, so TopK's lower-index-first rule breaks ties as
    the flat top-k does.
    """
    T, Q, g = gmax.shape
    sg = SUPER_GROUP
    if g % sg or 4 * n * sg > T * g:  # no whole super-groups, or too few groups to pay
        return jax.lax.top_k(jnp.swapaxes(gmax, 0, 1).reshape(Q, T * g), n)
    per_tile = g // sg
    blocks = gmax.reshape(T, Q, per_tile, sg)
    smax = jnp.swapaxes(blocks.max(-1), 0, 1).reshape(Q, T * per_tile)  # super-group id = t * per_tile + s
    sid = jnp.sort(jax.lax.top_k(smax, n)[1], axis=1)  # increasing id order
    cand = blocks[sid // per_tile, jnp.arange(Q)[:, None], sid % per_tile]  # [Q, n, sg]
    v, pos = jax.lax.top_k(cand.reshape(Q, n * sg), n)
    gid = (sid[:, :, None] * sg + jnp.arange(sg, dtype=sid.dtype)).reshape(Q, n * sg)
    return v, jnp.take_along_axis(gid, pos, axis=1)


def _local_topk(q, shard, first, n_end, *, k_local, tile, group, masked, precision):
    """This device's exact top-k_local of its shard (ids local to the shard)."""
    dot = functools.partial(jnp.dot, precision=precision, preferred_element_type=jnp.float32)
    S, d = shard.shape
    if not _use_groups(S, k_local, group):
        s = dot(q, shard.T)
        return jax.lax.top_k(_mask_pad(s, first, n_end) if masked else s, k_local)

    gmax = _group_maxima(q, shard, first, n_end, tile=tile, group=group, masked=masked, precision=precision)
    _, best = _top_groups(gmax, min(k_local, S // group))
    return _rescore(q, shard, best, first, n_end, k_local=k_local, group=group, masked=masked, precision=precision)


def _rescore(q, shard, best, first, n_end, *, k_local, group, masked, precision):
    """Exact fp32 top-k_local among the passages of groups `best` [Q, n_groups].

    One candidate passage of every query per scan step: a [Q, d] gather that
    stays in cache and one row-wise dot, the same shapes whatever the group
    size, so the screen (groups of 4) and the fp32 path (`group_rows`) compute
    every candidate score identically. Gathering all [Q, n_groups, group, d]
    rows at once was slower on XLA:CPU (80 candidates of 1,024 queries: 83 ms
    against 8 ms) and held them all (12.9 GB at k = 1,000)."""
    Q = q.shape[0]
    best = jnp.sort(best, axis=1)  # candidates in increasing id order: ties keep going to the smaller id
    ids = (best[:, :, None] * group + jnp.arange(group, dtype=jnp.int32)).reshape(Q, -1)

    def score_row(_, r):  # r [Q]: one candidate row per query
        rows = jnp.take(shard, r, axis=0)  # [Q, d]
        return None, jnp.einsum("qd,qd->q", q, rows, precision=precision, preferred_element_type=jnp.float32)

    _, cs = jax.lax.scan(score_row, None, ids.T)  # [candidates, Q]
    cs = cs.T
    if masked:
        cs = jnp.where(first + ids < n_end, cs, -jnp.inf)
    v, pos = jax.lax.top_k(cs, k_local)
    return v, jnp.take_along_axis(ids, pos, axis=1)


# The bf16 screen (PassageBank.build(screen=True)): groups of SCREEN_GROUP
# passages, SCREEN_FACTOR * k candidate groups per query. On 10,000 random unit
# queries against 100,000 passages (dim 384) every top-10 was certified with
# 3 * k groups of 4 (and 3 failed with 2.5 * k).
SCREEN_GROUP, SCREEN_FACTOR = 4, 3
_U32 = 2.0**-24  # fp32 unit roundoff


def screen_bound(q: jax.Array, p_err, p_norm) -> jax.Array:
    """[Q] upper bound on |fp32 score - bf16-screen score| of each query against
    any passage p with ||p~ - p|| <= p_err and ||p~||, ||p|| <= p_norm:
    (q~·p~ - q·p) = (q~ - q)·p~ + q·(p~ - p), plus both dots' fp32 summation
    error (bf16 products are exact in fp32; gamma_{d+1} per sum, doubled)."""
    d = q.shape[-1]
    q_norm = jnp.linalg.norm(q, axis=-1)
    q_err = jnp.linalg.norm(q.astype(jnp.bfloat16).astype(jnp.float32) - q, axis=-1)
    summation = 2.5 * (d + 1) * _U32 * (2.0 * q_norm + q_err) * p_norm
    return (q_err * p_norm + q_norm * p_err + summation) * 1.01  # 1%: the bound's own fp32 rounding


def _screened_topk(q, shard, tiles_bf16, first, n_end, err, *, k_local, tile, group, masked, precision):
    """Exact top-k_local: the certified bf16 screen, or the bank's own fp32 path
    (`group` = its group_rows) for a block it cannot certify."""
    v, ids, ok = _screen(q, shard, tiles_bf16, first, n_end, err, k_local=k_local, tile=tile, masked=masked,
                         precision=precision)
    exact = functools.partial(_local_topk, k_local=k_local, tile=tile, group=group, masked=masked,
                              precision=precision)
    return jax.lax.cond(jnp.all(ok), lambda: (v, ids), lambda: exact(q, shard, first, n_end))


def _bf16_group_maxima(q, tiles_bf16, tile: int):
    """[tiles, Q, tile / SCREEN_GROUP]: bf16 scores' maxima per group of
    SCREEN_GROUP passages, from the bank's pre-tiled bf16 copy [tiles, d, tile]
    (bf16 products are exact in fp32 and summed in fp32).

    Pad rows are not masked here (they score 0): that can only raise the
    screen's m, i.e. weaken the certificate; the re-scoring masks them."""
    qb = q.astype(jnp.bfloat16)

    def tile_group_max(_, cols):  # cols [d, tile] bf16
        s = jnp.dot(qb, cols, preferred_element_type=jnp.float32)
        return None, s.reshape(q.shape[0], tile // SCREEN_GROUP, SCREEN_GROUP).max(-1)

    return jax.lax.scan(tile_group_max, None, tiles_bf16)[1]


def _screen(q, shard, tiles_bf16, first, n_end, err, *, k_local, tile, masked, precision):
    """(top-k_local scores, ids, certified [Q]) of the bf16 screen.

    1. Group maxima of bf16 scores (bf16 products are exact in fp32 and summed
       in fp32), from the bank's pre-tiled bf16 copy [tiles, d, tile].
    2. Exact fp32 re-scoring of the SCREEN_FACTOR * k best groups.
    3. Certificate. For any passage p, |fp32 score - bf16 score| <= E(q) =
       ||q~ - q|| max||p~|| + ||q|| max||p~ - p|| + fp32 summation terms
       (q~, p~ the bf16-rounded vectors; Cauchy-Schwarz on each rounding
       error). Every passage outside the candidates lies in a group whose bf16
       maximum is <= m, the smallest candidate group's maximum, so it scores
       <= m + E(q). If that is below the k-th exact candidate score, no outside
       passage can enter (or tie into) the top-k: the result is exact.
    A block with any query not certified takes the fp32 path (`_screened_topk`).
    """
    p_err, p_norm = err[0], err[1]  # max ||p~ - p||, max(||p~||, ||p||) over the bank
    gmax = _bf16_group_maxima(q, tiles_bf16, tile)
    mvals, best = _top_groups(gmax, SCREEN_FACTOR * k_local)
    v, ids = _rescore(q, shard, best, first, n_end, k_local=k_local, group=SCREEN_GROUP, masked=masked,
                      precision=precision)
    bound = screen_bound(q, p_err, p_norm)
    # min, not [:, -1]: on XLA:CPU a slice of TopK's values turned the TopK into a ~80x slower sort
    m, v_k = mvals.min(axis=1), v.min(axis=1)  # the smallest candidate group's maximum; the k-th score
    return v, ids, m + bound < v_k


def _use_screen(bank: PassageBank, k: int, precision) -> bool:
    """The screen pays when its candidates are a small part of a shard; it is exact only against fp32 HIGHEST."""
    shard_rows = bank.chunk_rows // bank.mesh.size
    return (bank.screen is not None and precision == HIGHEST
            and _use_groups(shard_rows, SCREEN_FACTOR * min(k, shard_rows), SCREEN_GROUP))


@functools.lru_cache(maxsize=None)
def _topk_step(mesh: jax.sharding.Mesh, shard_rows: int, k: int, masked: bool, precision, tile: int, group: int,
               screened: bool = False):
    """jit(shard_map) step: (q, chunk, bf16 tiles, screen bounds, first id, end id, running top-k) -> merged
    top-k. The bf16 tiles and bounds are used only when `screened`."""
    axes = mesh.axis_names
    k_local = min(k, shard_rows)  # k may exceed a shard: take the whole shard

    def step(q, shard, tiles_bf16, err, offset, n_end, prev_s, prev_i):
        first = offset + jax.lax.axis_index(axes) * shard_rows
        if screened:
            ls, li = _screened_topk(q, shard, tiles_bf16, first, n_end, err, k_local=k_local, tile=tile,
                                    group=group, masked=masked, precision=precision)
        else:
            ls, li = _local_topk(q, shard, first, n_end, k_local=k_local, tile=tile, group=group, masked=masked,
                                 precision=precision)
        # Device order == id order, and the running result (smaller ids) goes
        # first, so TopK's lower-index-first rule breaks ties by smaller id.
        gs = jax.lax.all_gather(ls, axes, axis=1, tiled=True)
        gi = jax.lax.all_gather(li + first, axes, axis=1, tiled=True)
        cs = jnp.concatenate([prev_s, gs], axis=1)
        ci = jnp.concatenate([prev_i, gi], axis=1)
        ts, pos = jax.lax.top_k(cs, k)
        return ts, jnp.take_along_axis(ci, pos, axis=1)

    rep = P()
    # all_gather's result is the same on every device, but the replication
    # checker types it as varying: the check is off and out_specs P() is true.
    fn = jax.shard_map(
        step, mesh=mesh, in_specs=(rep, P(axes), P(axes) if screened else rep, rep, rep, rep, rep, rep),
        out_specs=(rep, rep), check_vma=False,
    )
    return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def _count_step(mesh: jax.sharding.Mesh, shard_rows: int, masked: bool, precision, tile: int):
    """jit(shard_map) step: count bank rows scoring strictly above each query's own score."""
    axes = mesh.axis_names

    def step(q, own_score, shard, offset, n_end, prev):
        first = offset + jax.lax.axis_index(axes) * shard_rows

        def count_tile(c, xs):  # tile by tile: the scores never leave the cache
            rows, t0 = xs
            s = jnp.dot(q, rows.T, precision=precision, preferred_element_type=jnp.float32)
            if masked:
                s = _mask_pad(s, first + t0, n_end)
            return c + jnp.sum(s > own_score[:, None], axis=1, dtype=jnp.int32), None

        c, _ = jax.lax.scan(count_tile, jnp.zeros(q.shape[:1], jnp.int32), _tiles(shard, tile))
        return prev + jax.lax.psum(c, axes)

    rep = P()
    # The scan's zero carry is typed replicated and its update device-varying:
    # the check is off; psum makes the result truly replicated.
    fn = jax.shard_map(step, mesh=mesh, in_specs=(rep, rep, P(axes), rep, rep, rep), out_specs=rep,
                       check_vma=False)
    return jax.jit(fn)


def _blocks(nq: int, query_block: int) -> tuple[int, int]:
    """(block size, number of blocks): the fewest blocks of at most `query_block`
    rows, all of one size (one compiled shape), as even as a multiple of 8 allows
    (10,000 queries in blocks of <= 1,024: 10 of 1,000, not 10 of 1,024 with 240
    pad rows)."""
    n_blocks = max(1, math.ceil(nq / max(query_block, 1)))
    block = max(8, math.ceil(nq / n_blocks / 8) * 8)
    return block, max(1, math.ceil(nq / block))


def _fetch(x: jax.Array) -> np.ndarray:
    """A replicated result to host memory: any local copy is the whole array
    (np.asarray alone refuses arrays that span other processes' devices)."""
    return np.asarray(x.addressable_data(0))


def _bar(total: int, desc: str, progress: bool | None) -> tqdm:
    """A progress bar; `progress=None` lets tqdm show it only on a terminal."""
    return tqdm(total=total, desc=desc, unit="block", disable=None if progress is None else not progress, leave=False)


def _as_bank(bank: "PassageBank | np.ndarray", mesh: jax.sharding.Mesh | None, screen: bool) -> PassageBank:
    return bank if isinstance(bank, PassageBank) else PassageBank.build(bank, mesh=mesh, screen=screen)


def _padded_block(x: np.ndarray, b: int, block: int) -> np.ndarray:
    """Rows b*block ... of `x` as a full block; a short last block repeats its
    last row. (Zero rows would tie at score 0 with every passage, so the bf16
    screen could never certify them and the whole block would take the fp32
    path; the pad rows' results are dropped either way.)"""
    part = np.asarray(x[b * block : (b + 1) * block], np.float32)
    return np.pad(part, [(0, block - len(part))] + [(0, 0)] * (part.ndim - 1), mode="edge")


def search(
    queries: np.ndarray,
    bank: PassageBank | np.ndarray,
    k: int,
    *,
    query_block: int = 1024,
    mesh: jax.sharding.Mesh | None = None,
    precision=HIGHEST,
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-`k` passages by dot product for each query.

    Returns (scores [nq, k] float32, ids [nq, k] int64), each row sorted by
    score descending, equal scores by smaller id. `bank` may be a numpy array
    (then sharded over `mesh`, default all devices). Queries go in blocks of
    at most `query_block` rows (evened out, a multiple of 8); larger blocks use
    the dot better and hold a [block, shard / 4] buffer of group maxima per
    device. `progress=None` shows a bar only on a terminal.
    """
    bank = _as_bank(bank, mesh, screen=True)
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != bank.dim:
        raise ValueError(f"queries must be [nq, {bank.dim}], got shape {q.shape}")
    if not 1 <= k <= bank.n:
        raise ValueError(f"k must be in [1, {bank.n}] (the bank size), got {k}")
    nq = q.shape[0]
    if nq == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    block, n_blocks = _blocks(nq, query_block)
    masked = bank.n_chunks * bank.chunk_rows != bank.n
    screened = _use_screen(bank, k, precision)
    step = _topk_step(bank.mesh, bank.chunk_rows // bank.mesh.size, k, masked, precision, bank.tile_rows,
                      bank.group_rows, screened)
    tiles_bf16 = bank.screen if screened else np.zeros((), np.float32)
    err = np.asarray(bank.screen_err if screened else (0.0, 0.0), np.float32)
    init_s = _put(np.full((block, k), -np.inf, np.float32), bank.mesh, P())
    init_i = _put(np.full((block, k), -1, np.int32), bank.mesh, P())
    q_dev = [None] * n_blocks  # queries move to the devices once, even when the bank streams
    running = [(init_s, init_i)] * n_blocks
    with _bar(n_blocks * bank.n_chunks, "top-k", progress) as bar:
        for offset, chunk in bank.chunks():
            n_end = np.int32(min(offset + bank.chunk_rows, bank.n))
            for b in range(n_blocks):
                if q_dev[b] is None:
                    q_dev[b] = _put(_padded_block(q, b, block), bank.mesh, P())
                running[b] = step(q_dev[b], chunk, tiles_bf16, err, np.int32(offset), n_end, *running[b])
                bar.update()
            if bank.host is not None:
                jax.block_until_ready(running)  # hold one host chunk on the devices at a time
    scores = np.concatenate([_fetch(s) for s, _ in running])[:nq]
    ids = np.concatenate([_fetch(i) for _, i in running])[:nq].astype(np.int64)
    return scores, ids


def rank_of(
    queries: np.ndarray,
    positives: np.ndarray,
    bank: PassageBank | np.ndarray,
    *,
    query_block: int = 1024,
    mesh: jax.sharding.Mesh | None = None,
    precision=HIGHEST,
    progress: bool | None = None,
) -> np.ndarray:
    """Rank of each query's own passage among bank ∪ {own}: int64 [n].

    rank = 1 + #bank passages scoring strictly higher than the own passage, so
    ties go to the own passage (a duplicate of it in the pool does not push it
    down). The own score is q·p in fp32; bank scores come from the blocked
    matmul, so "equal" means equal after fp32 rounding of each.
    """
    bank = _as_bank(bank, mesh, screen=False)  # counting does not use the screen
    q = np.asarray(queries, dtype=np.float32)
    p = np.asarray(positives, dtype=np.float32)
    if q.shape != p.shape or q.ndim != 2 or q.shape[1] != bank.dim:
        raise ValueError(f"queries and positives must both be [n, {bank.dim}], got {q.shape} and {p.shape}")
    nq = q.shape[0]
    if nq == 0:
        return np.zeros((0,), np.int64)
    block, n_blocks = _blocks(nq, query_block)
    masked = bank.n_chunks * bank.chunk_rows != bank.n
    step = _count_step(bank.mesh, bank.chunk_rows // bank.mesh.size, masked, precision, bank.tile_rows)
    own_fn = jax.jit(lambda a, b: jnp.einsum("bd,bd->b", a, b, precision=precision))
    q_dev, own = [None] * n_blocks, [None] * n_blocks
    counts = [_put(np.zeros((block,), np.int32), bank.mesh, P())] * n_blocks
    with _bar(n_blocks * bank.n_chunks, "rank", progress) as bar:
        for offset, chunk in bank.chunks():
            n_end = np.int32(min(offset + bank.chunk_rows, bank.n))
            for b in range(n_blocks):
                if q_dev[b] is None:
                    q_dev[b] = _put(_padded_block(q, b, block), bank.mesh, P())
                    own[b] = own_fn(q_dev[b], _put(_padded_block(p, b, block), bank.mesh, P()))
                counts[b] = step(q_dev[b], own[b], chunk, np.int32(offset), n_end, counts[b])
                bar.update()
            if bank.host is not None:
                jax.block_until_ready(counts)
    return 1 + np.concatenate([_fetch(c) for c in counts])[:nq].astype(np.int64)
