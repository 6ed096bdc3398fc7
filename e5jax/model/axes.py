"""Logical axis names → mesh axes, and the one place meshes are made.

Model code names only *logical* axes (`batch`, `length`, `embed`, `mlp`,
`heads`, `vocab`, ...). A rules table (per preset, `MeshConfig.rules`) maps
each onto zero or more *mesh* axes (`data`, `fsdp`, `tensor`). Changing how a
model is sharded therefore never touches model code.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from e5jax.config import DEFAULT_RULES, MeshConfig
from e5jax.errors import E5Error

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, Sequence[str]]]
# The batch dimension of every input/activation is split over these mesh axes.
BATCH_AXES = ("data", "fsdp")


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one size may be -1 (= the devices left over)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sizes.count(-1) > 1:
        raise E5Error("mesh: at most one of data/fsdp/tensor may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise E5Error(f"mesh: {len(devices)} devices are not divisible by fsdp*tensor*... = {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise E5Error(
            f"mesh: data*fsdp*tensor = {'*'.join(map(str, sizes))} = {math.prod(sizes)} "
            f"but there are {len(devices)} devices; set mesh.data=-1 or change the sizes"
        )
    # Auto axes: GSPMD propagates shardings through gathers (embedding lookups)
    # that Explicit mode would reject.
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(names: Sequence[str | None], rules: Rules = DEFAULT_RULES,
                    shape: Sequence[int] | None = None, mesh: Mesh | None = None) -> P:
    """PartitionSpec for an array whose dims carry `names`.

    A mesh axis is used at most once per array (first dim wins), and when a
    shape and mesh are given, mesh axes that do not divide the dim are dropped
    (e.g. an odd vocabulary stays replicated instead of failing).
    """
    table = {k: tuple(v) for k, v in rules}
    used: set[str] = set()
    out = []
    for i, name in enumerate(names):
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise E5Error(f"logical axis {name!r} has no rule; add it to mesh.rules")
        axes = []
        for ax in table[name]:
            if ax in used:
                continue
            if mesh is not None and shape is not None:
                size = mesh.shape[ax] * math.prod(mesh.shape[a] for a in axes)
                if shape[i] % size:
                    continue
            axes.append(ax)
        used.update(axes)
        out.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
    return P(*out)


def state_specs(state: nnx.State, rules: Rules, mesh: Mesh | None = None):
    """PartitionSpec tree for an nnx.State whose Variables carry `axes` metadata."""

    def spec(v):
        axes = v.get_metadata().get("axes")
        shape = v.shape if hasattr(v, "shape") else np.shape(v[...])
        if axes is None:
            return P()
        return logical_to_spec(axes, rules, shape, mesh)

    return jax.tree.map(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs(state, rules, mesh))


# --------------------------------------------------- activation constraints

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar("e5jax_axes", default=None)


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
    """Within this block (at trace time), `constrain` pins activation shardings."""
    token = _ACTIVE.set((mesh, tuple((k, tuple(v)) for k, v in rules)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_platform() -> str | None:
    """The platform of the mesh being traced for ("tpu", "gpu", "cpu"), None outside
    `axis_rules`. The target, not the host: `e5jax compile` traces on a CPU for TPU devices."""
    active = _ACTIVE.get()
    return None if active is None else active[0].devices.flat[0].platform


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside `axis_rules`."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, rules, x.shape, mesh)))


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading dim split over the batch axes, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))
