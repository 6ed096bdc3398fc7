"""Sequence packing: several texts share one row, so padding is not computed.

Pre-training pairs are short and uneven (a title next to a paragraph): padded
to a common length, a batch computes ~1.8x its real tokens. Packed, each row of
`pack_len` tokens holds as many whole texts as fit (first-fit decreasing), and
attention stays inside each text (`BertModel` builds a block-diagonal mask from
the segment ids); mean pooling sums each text's own tokens.

Layout. The N texts of a tower are split into G equal *groups* of consecutive
texts, and each group is packed on its own into R rows (R = the most any group
needs, rounded up to `row_step` so that a run compiles a handful of shapes).
Arrays are [G, R, pack_len]:

* ``input_ids``   — token ids, `pad_id` where empty;
* ``segment_ids`` — 1 + the text's index inside its group, 0 where empty;
* ``positions``   — each token's index inside its own text.

R rounds up to a multiple of a power of two no larger than 1/16 of the rows
needed (`default_row_step`): at most ~6% empty rows, and a run whose batches
need similar row counts compiles a handful of shapes.

Towers together (`pack_towers`). The towers share the encoder, so their texts
can share rows: group g then holds each tower's texts of that group, tower
after tower, and the arrays are named ``joint_*``. A short query fills the
room a passage left in its row, and one encoder pass embeds every tower.

Groups are what keeps packing compatible with sharding and gradient caching:
the train loop asks for one group per (device along the batch axes, gradient
-cache chunk), so a device's rows hold exactly its own texts and a chunk's rows
exactly that chunk's texts; group g holds texts g*b .. g*b+b-1 (b = N / G), so
pooled embeddings come back in batch order by a reshape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def first_fit_decreasing(lengths: Sequence[int], pack_len: int) -> list[list[int]]:
    """Text indices per row: longest first, each into the first row with room (deterministic)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        if n > pack_len:
            raise ValueError(f"text of {n} tokens does not fit a packed row of {pack_len}")
        for r, free in enumerate(room):
            if free >= n:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(pack_len - n)
    return rows


def default_row_step(rows_needed: int) -> int:
    """The largest power of two <= rows_needed / 16 (at least 1): few shapes, <= ~6% waste."""
    return 1 << max(0, (rows_needed // 16).bit_length() - 1)


def balanced_order(lengths: Sequence[int], blocks: int, groups: int) -> np.ndarray:
    """Slot -> text (index inside its block) so a block's groups get equal text counts
    and near-equal token counts: longest first, dealt in snake order over the groups."""
    n = len(lengths)
    per_block, per_group = n // blocks, groups // blocks
    b = per_block // per_group
    order = np.empty(n, np.int64)
    for blk in range(blocks):
        lo = blk * per_block
        ranked = sorted(range(per_block), key=lambda i: (-lengths[lo + i], i))
        slots = [[] for _ in range(per_group)]
        for r, i in enumerate(ranked):
            lap, k = divmod(r, per_group)
            slots[k if lap % 2 == 0 else per_group - 1 - k].append(i)
        for k, members in enumerate(slots):
            order[lo + k * b:lo + (k + 1) * b] = sorted(members)
    return order


def _pack_groups(group_texts: Sequence[Sequence[Sequence[int]]], pack_len: int, pad_id: int,
                 row_step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each group's texts (in slot order) packed on its own: ids, segment ids
    (1 + slot), positions, all [G, R, pack_len] with R the most rows any group needs."""
    plans = [first_fit_decreasing([len(t) for t in texts], pack_len) for texts in group_texts]
    need = max(len(p) for p in plans)
    step = row_step or default_row_step(need)
    rows = -(-need // step) * step
    G = len(group_texts)
    ids = np.full((G, rows, pack_len), pad_id, np.int32)
    seg = np.zeros((G, rows, pack_len), np.int32)
    pos = np.zeros((G, rows, pack_len), np.int32)
    for g, plan in enumerate(plans):
        for r, members in enumerate(plan):
            at = 0
            for i in sorted(members):  # within a row, texts in slot order
                t = group_texts[g][i]
                ids[g, r, at:at + len(t)] = t
                seg[g, r, at:at + len(t)] = i + 1
                pos[g, r, at:at + len(t)] = np.arange(len(t))
                at += len(t)
    return ids, seg, pos


def _slot_order(token_rows: Sequence[Sequence[int]], groups: int, blocks: int, what: str):
    """(texts in slot order, their lengths, the `order` array or None) for one tower."""
    n = len(token_rows)
    if groups < 1 or n % groups or (blocks and (groups % blocks or n % blocks)):
        raise ValueError(f"{n} {what} cannot be split into {groups} equal packing groups over {blocks or 1} blocks")
    lengths = [len(r) for r in token_rows]
    if not (blocks and groups > blocks):
        return list(token_rows), lengths, None
    order = balanced_order(lengths, blocks, groups)
    per_block = n // blocks
    slot_text = order + np.repeat(np.arange(blocks) * per_block, per_block)
    return ([token_rows[i] for i in slot_text], [lengths[i] for i in slot_text],
            order.astype(np.int32).reshape(blocks, -1))  # [blocks, N / blocks]: shards like the rows


def pack(
    token_rows: Sequence[Sequence[int]], *, groups: int, pack_len: int, pad_id: int, row_step: int = 0,
    blocks: int = 0,
) -> dict[str, np.ndarray]:
    """Pack N tokenised texts into `groups` groups (module docstring). Returns the
    three [G, R, pack_len] int32 arrays and ``lengths`` [N] (tokens per text).

    `blocks` > 0 (the devices; `groups` a multiple of it, one group per chunk):
    the texts of each block are spread over its groups by length
    (`balanced_order`) instead of in consecutive runs, so that small
    gradient-cache chunks need as few rows as the plain step. ``order``
    [blocks, N / blocks] then says which text of its block each slot holds
    (slots in group order: group g holds slots g*b .. g*b+b-1); ``lengths`` is
    in slot order too."""
    texts, lengths, order = _slot_order(token_rows, groups, blocks, "texts")
    b = len(texts) // groups
    ids, seg, pos = _pack_groups([texts[g * b:(g + 1) * b] for g in range(groups)], pack_len, pad_id, row_step)
    out = dict(input_ids=ids, segment_ids=seg, positions=pos, lengths=np.asarray(lengths, np.int32))
    if order is not None:
        out["order"] = order
    return out


JOINT = "joint"  # key prefix of the arrays that hold several towers' texts (`pack_towers`)


def pack_towers(
    towers: Mapping[str, Sequence[Sequence[int]]], *, groups: int, pack_len: int, pad_id: int, row_step: int = 0,
    blocks: int = 0,
) -> dict[str, np.ndarray]:
    """Pack several towers' texts *together*: group g holds, tower after tower
    (in `towers`' order), each tower's b_t = N_t / G texts of that group, so a
    short query fills the room a passage left in its row and both towers run
    through the encoder as one set of rows (the towers share the encoder).

    Returns ``joint_input_ids`` / ``joint_segment_ids`` / ``joint_positions``
    [G, R, pack_len] — a segment id is 1 + the text's slot in its group, the
    slots of tower t being offset by the b of the towers before it — and, per
    tower, ``{t}_lengths`` [N_t] and (with `blocks`, as in `pack`) ``{t}_order``.
    On benchmarks/train_step.py's 4 batches (32 Debian (short, long) pairs, 128
    tokens) the rows compute 1.04x the FLOPs of the real tokens against 1.08x
    with the towers packed apart (87 rows against 91); in 4 gradient-cache
    chunks 1.14x against 1.29x (the "padding" that script prints).

    The train step reads the slots in the order query, passage, negative
    (`pipeline.pack_tokens` passes them so); pack them in that order."""
    out: dict[str, np.ndarray] = {}
    per_tower = []
    for name, rows in towers.items():
        texts, lengths, order = _slot_order(rows, groups, blocks, f"{name} texts")
        per_tower.append((texts, len(texts) // groups))
        out[f"{name}_lengths"] = np.asarray(lengths, np.int32)
        if order is not None:
            out[f"{name}_order"] = order
    group_texts = [[t for texts, b in per_tower for t in texts[g * b:(g + 1) * b]] for g in range(groups)]
    ids, seg, pos = _pack_groups(group_texts, pack_len, pad_id, row_step)
    out.update({f"{JOINT}_input_ids": ids, f"{JOINT}_segment_ids": seg, f"{JOINT}_positions": pos})
    return out


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """[G, R, L] -> [G, rows, L] with empty rows (zeros: segment 0 = padding)."""
    extra = rows - x.shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad {x.shape[1]} packed rows down to {rows}")
    return x if extra == 0 else np.pad(x, [(0, 0), (0, extra), (0, 0)])
