"""The step `e5jax train` would run on a TPU slice, lowered and compiled without one.

Nothing here is a copy of the trainer: the mesh is `axes.make_mesh` over the
slice's devices, the state `state.abstract_state` with its shardings, the step
`loop.jit_steps` (same shardings and donation), and the batch is what the real
input pipeline (`pipeline.TokenizeBatch`, packing included) makes of one host
batch of synthetic records, at the preset's global batch and lengths. Only the
token ids are fake: every text is `text_tokens` long (default: the longest the
preset allows, the worst case for memory).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from e5jax.aot.slices import Slice, devices
from e5jax.config import Config, replace
from e5jax.errors import E5Error
from e5jax.model import axes as ax


class DoesNotFit(E5Error):
    """The TPU compiler refused the step: it needs more HBM than a chip has."""


class _LengthTokenizer:
    """Stands in for the HF tokenizer: every text becomes `n` tokens (cut at max_length)."""

    pad_token_id = 0

    def __init__(self, n: int):
        self.n = n

    def __call__(self, texts, *, truncation=True, max_length=None, padding=False):
        n = min(self.n, max_length) if max_length else self.n
        return {"input_ids": [[1] * n for _ in texts]}


def tpu_config(cfg: Config, arch: str = "") -> Config:
    """The preset as the TPU resolves it: settings that `e5jax train` resolves from the
    backend it runs on are resolved for a TPU here (this process's backend is the CPU),
    and a model whose weights are not on this machine is built from its architecture file."""
    import pathlib

    updates = {}
    if cfg.model.row_blocks == 0:
        updates["model.row_blocks"] = 1  # config.resolve_row_blocks on an accelerator
    if cfg.model.dtype == "auto":
        updates["model.dtype"] = "bfloat16"  # encoder.default_dtype on a TPU
    arch = arch or cfg.model.arch
    if cfg.model.init and not pathlib.Path(cfg.model.init).is_dir():
        if not arch:
            raise E5Error(f"model.init={cfg.model.init} is not on this machine: give its architecture "
                          "(an HF config.json) with --arch or --set model.arch=FILE")
        updates.update({"model.init": "", "model.arch": arch})
    return replace(cfg, **updates)


def synthetic_records(cfg: Config) -> list[dict]:
    """One host batch of records of the kind the preset trains on."""
    k = cfg.data.num_hard_negatives
    rec = {"query": "q", "passage": "p"}
    if k:
        rec = dict(rec, negatives=["n"] * k, teacher_scores=[0.0] * (1 + k))
    return [dict(rec) for _ in range(cfg.train.batch_size)]


def abstract_batch(cfg: Config, mesh, text_tokens: int = 0) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch (shapes, dtypes, the train loop's batch sharding) of one step."""
    from e5jax.data.pipeline import TokenizeBatch
    from e5jax.train.loop import _local_batch_shards, pack_groups

    longest = max(cfg.data.max_query_length, cfg.data.max_passage_length)
    tok = _LengthTokenizer(text_tokens or longest)
    host = TokenizeBatch(tok, cfg.data, pack_groups(cfg, mesh, train=True), _local_batch_shards(mesh)).map(
        synthetic_records(cfg))
    sharding = NamedSharding(mesh, P(ax.BATCH_AXES))  # loop.jit_steps's in_shardings for the batch
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in host.items()}


def abstract_train_state(cfg: Config, mesh):
    """(graphdef, state of ShapeDtypeStructs carrying their shardings, shardings)."""
    from e5jax.train.state import abstract_state

    graphdef, abstract, shardings = abstract_state(cfg, mesh)
    leaves, treedef = jax.tree.flatten(abstract)  # one leaf per Variable, as in `shardings`
    state = treedef.unflatten([jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
                               for a, s in zip(leaves, jax.tree.leaves(shardings), strict=True)])
    return graphdef, state, shardings


@dataclass
class Compiled:
    cfg: Config  # as compiled (tpu_config)
    slice: Slice
    mesh: object
    state: object  # abstract state (ShapeDtypeStructs)
    batch: dict
    compiled: object  # jax.stages.Compiled
    lower_s: float
    compile_s: float
    text_tokens: int = 0  # tokens per synthetic text (0 = each tower's max length)


def check_divisible(cfg: Config, mesh) -> None:
    """The train loop's batch checks (loop.train), before anything is traced."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if cfg.train.batch_size % shards:
        raise E5Error(f"train.batch_size={cfg.train.batch_size} is not divisible by the {shards} batch shards "
                      "(mesh data*fsdp); change train.batch_size or mesh")
    if cfg.train.grad_cache_chunk and cfg.train.grad_cache_chunk % shards:
        raise E5Error(f"train.grad_cache_chunk={cfg.train.grad_cache_chunk} must be a multiple of the "
                      f"{shards} batch shards")


def compile_step(cfg: Config, s: Slice, *, text_tokens: int = 0, arch: str = "") -> Compiled:
    """Lower and compile the preset's train step for slice `s` (deviceless)."""
    from e5jax.train.loop import jit_steps

    cfg = tpu_config(cfg, arch)
    mesh = ax.make_mesh(cfg.mesh, devices(s))
    check_divisible(cfg, mesh)
    graphdef, state, shardings = abstract_train_state(cfg, mesh)
    batch = abstract_batch(cfg, mesh, text_tokens)
    step_fn, _ = jit_steps(cfg, graphdef, mesh, shardings)
    t0 = time.perf_counter()
    with ax.axis_rules(mesh, cfg.mesh.rules):
        lowered = step_fn.lower(state, batch)
    t1 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses a program over HBM itself
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "RESOURCE_EXHAUSTED" in msg:
            raise DoesNotFit(f"{s.name}: {msg.removeprefix('RESOURCE_EXHAUSTED: ')}") from e
        raise
    return Compiled(cfg, s, mesh, state, batch, compiled, t1 - t0, time.perf_counter() - t1, text_tokens)

