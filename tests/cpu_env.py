"""The XLA settings every test process runs with (pytest itself and the
processes tests start), in one place.

Compilation, not computation, is what the suite spends its time on: a tiny
model's gradient-cached step runs in under a second and takes 10 to 40 s to
compile on a 2-core CPU. Two settings cut that without touching what a test
checks:

* `--xla_backend_optimization_level=0`: LLVM's codegen passes run at -O0. The
  HLO (every fusion, sharding and collective the tests assert on) is the
  optimised one; only the machine code of each kernel is less tuned. It cut the
  compile time of the packed and gradient-cached steps by 30-45% on the 2-core
  AMD EPYC (Zen 3) CI machine. Production runs (the demo, `e5jax train`) keep
  XLA's default.
* a persistent compilation cache shared by the run's processes
  (`JAX_COMPILATION_CACHE_DIR`, set by conftest.py): many tests compile the
  same tiny step, and the resume and multi-process tests compile the same
  program in several processes.
"""

import os

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a CPU process with `devices` emulated devices."""
    return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


def cpu_env(devices: int, **extra: str) -> dict[str, str]:
    """The environment of a test's child process: this one's, on the CPU with `devices` devices."""
    return {**os.environ, "XLA_FLAGS": xla_flags(devices), "JAX_PLATFORMS": "cpu", **extra}
