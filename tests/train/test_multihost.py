"""Two real JAX processes on one machine (4 CPU devices each) train the tiny
preset together from one TFDS dataset; one process training on the same global
batches (process 0's rows, then process 1's) reports the same losses and ends
with the parameters a single process restores from their checkpoint onto a
different mesh."""

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


_ONE_PROCESS: dict = {}  # the reference run, shared by both layouts


def one_process_run(cfg) -> tuple[list[float], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Losses, initial and final state (by path) of `cfg.train.steps` plain padded steps in
    this one process on 8 devices, each on the global batch the two processes
    build: the host batches of processes 0 and 1, padded to one length, stacked."""
    if "run" in _ONE_PROCESS:
        return _ONE_PROCESS["run"]
    from flax import nnx

    from e5jax.data.ccpairs.builder import load_source
    from e5jax.data.global_batch import pad_last_axis, to_global
    from e5jax.data.pipeline import make_train_iterator
    from e5jax.train.loop import jit_steps
    from e5jax.train.state import create_state, load_tokenizer, state_shardings

    source, tokenizer = load_source(cfg.data.data_dir, cfg.data.name, "train"), load_tokenizer(cfg)
    hosts = [make_train_iterator(source, tokenizer=tokenizer, cfg=cfg.data, batch_size_per_process=8,
                                 process_index=p, process_count=2, seed=cfg.data.shuffle_seed) for p in range(2)]
    mesh = ax.make_mesh(cfg.mesh)
    assert mesh.devices.size == 8
    graphdef, state = create_state(cfg, mesh)
    flat = lambda st: {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(st)}  # noqa: E731
    init = flat(state)
    step, _ = jit_steps(cfg, graphdef, mesh, state_shardings(state, cfg, mesh))
    losses = []
    for _ in range(cfg.train.steps):
        parts = [next(it) for it in hosts]
        batch = {}
        for k in parts[0]:
            xs = [np.asarray(p[k]) for p in parts]
            if k.endswith(("_input_ids", "_attention_mask")):  # to_global pads to the longer host's length
                length = max(x.shape[-1] for x in xs)
                xs = [pad_last_axis(x, length) for x in xs]
            batch[k] = np.concatenate(xs)
        with ax.axis_rules(mesh):
            state, m = step(state, to_global(batch, mesh))
        losses.append(float(m["loss"]))
    _ONE_PROCESS["run"] = losses, init, flat(state)
    return _ONE_PROCESS["run"]


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

    # one process on the same global batches: the same losses (packed rows and
    # gradient caching give the padded plain step's, tests/train/test_packed_step.py)
    import json

    cfg = replace(load_config("configs/tiny_pretrain.py", tiny_overrides),
                  **{"train.steps": 3, "train.batch_size": 16})
    ref_losses, init, ref_state = one_process_run(cfg)
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert [f"{x:.4f}" for x in losses] == [seen[(0, s)][0] for s in (1, 2, 3)]  # the logged losses
    np.testing.assert_allclose(losses, ref_losses, atol=1e-4 if layout else 1e-5)

    # one checkpoint, restored by this single process onto a (2, 2, 2) mesh of 8 devices,
    # holds the one-process run's final parameters and optimizer moments
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]
    mesh = ax.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    _, abstract, shardings = abstract_state(cfg, mesh)
    mngr = ckpt.manager(str(workdir))
    step, state = ckpt.restore(mngr, abstract, shardings)
    mngr.close()
    assert step == 3
    from flax import nnx

    flat = {"/".join(map(str, k)): v[...] for k, v in nnx.to_flat_state(state)}
    assert flat.keys() == ref_state.keys()
    word = next(v for k, v in flat.items() if k.endswith("bert/embeddings/word"))
    assert word.sharding.mesh.shape == mesh.shape
    # 3e-7 (padded) and 6e-7 (packed, cached) at most when written; the updates are ~6e-4
    k = "0/bert/layers/0/mlp_in/kernel"
    assert np.abs(np.asarray(flat[k]) - init[k]).max() > 1e-4
    for k, want in ref_state.items():
        np.testing.assert_allclose(np.asarray(flat[k]), want, atol=1e-5, err_msg=k)
