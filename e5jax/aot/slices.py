"""TPU slices by their Cloud name (`v4-32`, `v5e-16`, ...): libtpu topology, chip
figures, and the slice's devices for deviceless compilation.

Chip figures are Google's public ones (bf16 peak, HBM capacity and bandwidth
from the Cloud TPU system-architecture pages, docs.cloud.google.com/tpu/docs/
v4, /v5e, /v5p, /v6e). ICI is the bidirectional per-chip bandwidth: v5e 400 GB/s
and v6e 800 GB/s (their pages), v5p 4,800 Gbps = 600 GB/s (its page); the v4
page gives none, so v4 takes 6 links x 2 directions x 45 GB/s = 540 GB/s (the
per-link figure of the JAX scaling book, jax-ml.github.io/scaling-book).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from e5jax.errors import E5Error


@dataclass(frozen=True)
class Chip:
    kind: str  # libtpu's generation prefix of the topology name
    hbm_bytes: int  # HBM capacity per chip
    peak_flops: float  # bf16 FLOP/s per chip
    hbm_bw: float  # HBM bytes/s per chip
    ici_bw: float  # inter-chip interconnect, bytes/s per chip, both directions of all links
    ici_ports: int  # ICI links per chip (4: 2D torus, 6: 3D)
    cores_in_name: bool  # the Cloud name counts TensorCores (2 per chip), not chips
    megacore: bool  # two TensorCores presented as one device (v4, v5p)
    chips_per_host: int
    accelerator: str  # the Cloud accelerator-type prefix (TPU_ACCELERATOR_TYPE)


GiB = 1 << 30
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 32 * GiB, 275e12, 1200e9, 540e9, 6, True, True, 4, "v4"),
    "v5e": Chip("v5e", 16 * 10**9, 197e12, 819e9, 400e9, 4, False, False, 8, "v5litepod"),
    "v5p": Chip("v5p", 95 * 10**9, 459e12, 2765e9, 600e9, 6, True, True, 4, "v5p"),
    "v6e": Chip("v6e", 32 * 10**9, 918e12, 1638e9, 800e9, 4, False, False, 8, "v6e"),
}

# chips -> physical shape (the Cloud docs' slice shapes; v4 and v5p are 3D tori, v5e and v6e 2D).
SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
             512: "8x8x8"}
SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


@dataclass(frozen=True)
class Slice:
    name: str  # as given, e.g. "v4-32"
    chip: Chip
    chips: int
    topology: str  # libtpu's name, e.g. "v4:2x2x4"

    @property
    def hosts(self) -> int:
        return max(1, self.chips // self.chip.chips_per_host)


def parse_slice(name: str) -> Slice:
    m = re.fullmatch(r"(v4|v5e|v5litepod|v5p|v6e)-(\d+)", name.strip().lower())
    if not m:
        raise E5Error(f"--topology {name!r}: expected a Cloud TPU type such as v4-32, v5e-16, v5p-64, v6e-8")
    kind = "v5e" if m.group(1) == "v5litepod" else m.group(1)
    chip = CHIPS[kind]
    n = int(m.group(2))
    chips = n // 2 if chip.cores_in_name else n
    shapes = SHAPES_3D if chip.megacore else SHAPES_2D
    if chips not in shapes or (chip.cores_in_name and n % 2):
        sizes = ", ".join(f"{kind}-{c * 2 if chip.cores_in_name else c}" for c in shapes)
        raise E5Error(f"--topology {name}: unknown {kind} slice; known: {sizes}")
    return Slice(name, chip, chips, f"{kind}:{shapes[chips]}")


def deviceless_env(s: Slice) -> None:
    """On a machine without TPU chips, libtpu looks for the slice in the environment and
    prints a screenful of warnings when it is not there (no network query: JAX sets
    TPU_SKIP_MDS_QUERY itself where no chip is found): name it. And libtpu takes a
    machine-wide lock (/tmp/libtpu_lockfile) that would fail a second compile running at
    the same time; with no chip to guard there is nothing to lock. Never on a TPU VM,
    whose runtime reads the real values."""
    import glob

    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):  # TPU chips (as train.loop._on_tpu_vm)
        return
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{s.chip.accelerator}-{s.name.split('-')[1]}")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def devices(s: Slice) -> list:
    """The slice's TPU devices (one per chip), from libtpu: no TPU needed."""
    deviceless_env(s)
    try:
        import libtpu  # noqa: F401  (only to name the fix when it is missing)
    except ImportError as e:
        raise E5Error('deviceless TPU compilation needs libtpu: pip install ".[tpu]"') from e
    from jax.experimental import topologies

    kw = {"chip_config_name": "megacore"} if s.chip.megacore else {}
    topo = topologies.get_topology_desc(topology_name=s.topology, platform="tpu", **kw)
    if len(topo.devices) != s.chips:
        raise E5Error(f"{s.name}: libtpu gave {len(topo.devices)} devices for {s.topology}, expected {s.chips}")
    return list(topo.devices)
