"""Host batches -> global batch-sharded jax.Arrays (8 emulated devices; 2 real processes)."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from e5jax.data.global_batch import agree_lengths, batch_sharding, pad_last_axis, to_global
from e5jax.errors import E5Error

REPO = pathlib.Path(__file__).resolve().parents[2]


def _mesh(data=4, fsdp=2):
    return jax.make_mesh((data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)


def _host_batch(b=16, lq=16, lp=24, rng=0):
    r = np.random.default_rng(rng)
    return {
        "query_input_ids": r.integers(1, 1000, (b, lq)).astype(np.int32),
        "query_attention_mask": np.ones((b, lq), np.int32),
        "passage_input_ids": r.integers(1, 1000, (b, lp)).astype(np.int32),
        "passage_attention_mask": np.ones((b, lp), np.int32),
        "passage_key": r.integers(-(2**31), 2**31 - 1, (b,)).astype(np.int32),
        "negative_input_ids": r.integers(1, 1000, (b, 2, lp)).astype(np.int32),
        "teacher_scores": r.normal(size=(b, 3)).astype(np.float32),
    }


def test_to_global_on_8_devices():
    assert jax.device_count() == 8
    mesh, host = _mesh(), _host_batch()
    out = to_global(host, mesh)
    assert out.keys() == host.keys()
    for k, x in out.items():
        assert x.shape == host[k].shape and x.dtype == host[k].dtype
        assert x.sharding.spec == P(("data", "fsdp")) and x.sharding.mesh.shape == mesh.shape
        np.testing.assert_array_equal(np.asarray(x), host[k])
        # Each device holds 2 consecutive rows, whole along every other axis.
        for shard in x.addressable_shards:
            assert shard.data.shape == (2,) + host[k].shape[1:]
            np.testing.assert_array_equal(np.asarray(shard.data), host[k][shard.index])


def test_axes_missing_from_the_mesh_are_ignored_and_divisibility_is_checked():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    assert batch_sharding(mesh).spec == P(("data",))
    with pytest.raises(E5Error, match="not divisible by the 8 devices"):
        to_global(_host_batch(b=12), mesh)


def test_single_process_agreement_is_a_no_op():
    host = _host_batch(lq=8, lp=40)
    assert agree_lengths(host) == {
        "negative_input_ids": 40, "passage_attention_mask": 40, "passage_input_ids": 40,
        "query_attention_mask": 8, "query_input_ids": 8,
    }
    x = np.ones((2, 3, 5), np.int32)
    padded = pad_last_axis(x, 8)
    assert padded.shape == (2, 3, 8) and padded[..., :5].all() and not padded[..., 5:].any()


_WORKER = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax, numpy as np
pid = int(sys.argv[1])
jax.distributed.initialize(f"127.0.0.1:{sys.argv[2]}", num_processes=2, process_id=pid)
from jax.sharding import AxisType
from e5jax.data.global_batch import to_global
mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
lq = 8 if pid == 0 else 24          # each host picked its own bucket
ids = np.full((4, lq), pid + 1, np.int32)
host = {"query_input_ids": ids, "query_attention_mask": np.ones_like(ids), "passage_key": np.arange(4, dtype=np.int32) + 10 * pid}
out = to_global(host, mesh)
res = {k: list(v.shape) for k, v in out.items()}
for shard in out["query_input_ids"].addressable_shards:
    rows = np.asarray(shard.data)
    res.setdefault("rows", []).append([int(shard.index[0].start), rows[:, :lq].tolist(), int(rows[:, lq:].sum())])
res["mask_sum"] = int(jax.jit(lambda m: m.sum())(out["query_attention_mask"]))
print("RESULT", json.dumps(res))
jax.distributed.shutdown()
"""


@pytest.mark.slow
def test_two_processes_agree_on_lengths(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(i), str(port)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(next(l for l in out.splitlines() if l.startswith("RESULT"))[7:]))
    for pid, res in enumerate(results):
        assert res["query_input_ids"] == res["query_attention_mask"] == [8, 24] and res["passage_key"] == [8]
        assert res["mask_sum"] == 4 * 8 + 4 * 24  # padding added by the agreement is masked out
        lq = 8 if pid == 0 else 24
        for start, rows, pad_sum in res["rows"]:
            assert start // 4 == pid  # process 0's rows come first
            assert rows == [[pid + 1] * lq] * len(rows) and pad_sum == 0
