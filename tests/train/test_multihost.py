"""Two real JAX processes on one machine (4 CPU devices each) train the tiny
preset together from one TFDS dataset, and a single process restores their
checkpoint onto a different mesh."""

import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from e5jax.config import MeshConfig, load_config, replace
from e5jax.model import axes as ax
from e5jax.train import checkpoint as ckpt
from e5jax.train.state import abstract_state
from tests.cpu_env import cpu_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("layout", [
    [],  # padded rows, plain step
    # packed rows (queries and passages sharing them, as in the E5 presets) + gradient
    # caching: each host packs 4 devices x 2 chunks groups and the hosts agree on the
    # packed row count every step
    ["data.pack=true", "data.pack_towers=joint", "train.grad_cache_chunk=8"],
], ids=["padded", "packed-joint-cached"])
def test_two_processes_train_and_checkpoint(tmp_path, tiny_overrides, layout):
    port = _free_port()
    workdir = tmp_path / "work"
    env = cpu_env(4)
    procs = []
    for pid in range(2):
        args = [sys.executable, "-m", "e5jax.cli", "train", "--config", "configs/tiny_pretrain.py",
                "--workdir", str(workdir), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                "--process-id", str(pid)]
        for o in tiny_overrides + ["train.steps=3", "train.checkpoint_every=3", "train.batch_size=16"] + layout:
            args += ["--set", o]
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
        outs.append(out)

    assert ("texts packed rows, all towers sharing rows" in outs[0]) == bool(layout)
    pattern = re.compile(r"\[process (\d)\] step (\d)/3 \| loss ([0-9.]+) .*host data crc (\d+)")
    seen = {}
    for out in outs:
        for m in pattern.finditer(out):
            seen[(int(m[1]), int(m[2]))] = (m[3], m[4])
    assert len(seen) == 6, outs
    for step in (1, 2, 3):
        loss0, crc0 = seen[(0, step)]
        loss1, crc1 = seen[(1, step)]
        assert loss0 == loss1  # one global batch, one loss, reported identically by both hosts
        assert crc0 != crc1  # ...made of different host-local data
    # each process really read its own disjoint slice of the dataset
    from e5jax.data.pipeline import process_slice

    idx = np.arange(1000)
    a, b = set(idx[process_slice(1000, 0, 2)]), set(idx[process_slice(1000, 1, 2)])
    assert a and b and not a & b

    # one checkpoint, restored by this single process onto a (2, 2, 2) mesh of 8 devices
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]
    cfg = replace(load_config("configs/tiny_pretrain.py", tiny_overrides), **{"train.steps": 3})
    mesh = ax.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    _, abstract, shardings = abstract_state(cfg, mesh)
    mngr = ckpt.manager(str(workdir))
    step, state = ckpt.restore(mngr, abstract, shardings)
    mngr.close()
    assert step == 3
    from flax import nnx

    flat = {"/".join(map(str, k)): v[...] for k, v in nnx.to_flat_state(state)}
    word = next(v for k, v in flat.items() if k.endswith("bert/embeddings/word"))
    assert word.sharding.mesh.shape == mesh.shape
    assert np.isfinite(np.asarray(word)).all()
