"""Each storage client e5jax uses, against the session's Cloud Storage server;
and a server that is down: one line naming the URL, in bounded time."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from e5jax.errors import E5Error
from tests.gcs.conftest import client_env, dead_endpoint


def test_epath_writes_lists_and_reads_back(gcs_bucket):
    from etils import epath

    d = epath.Path(f"{gcs_bucket}/clients/epath")
    (d / "a.txt").write_text("hello")
    assert (d / "a.txt").read_text() == "hello"
    assert [p.name for p in d.iterdir()] == ["a.txt"]
    assert str(d / "a.txt") == f"{gcs_bucket}/clients/epath/a.txt"  # not folded into gs:/


def test_orbax_checkpoint_saves_and_restores_through_tensorstore(gcs_bucket, gcs_server):
    import orbax.checkpoint as ocp
    from etils import epath

    path = epath.Path(f"{gcs_bucket}/clients/ckpt")
    mngr = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=True,
                                                                             enable_async_checkpointing=False))
    tree = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": {"c": np.ones(5, np.float32)}}
    mngr.save(1, args=ocp.args.StandardSave(tree))
    mngr.wait_until_finished()
    assert mngr.all_steps() == [1]
    back = mngr.restore(1, args=ocp.args.StandardRestore(tree))
    mngr.close()
    np.testing.assert_array_equal(back["w"], tree["w"])
    # The arrays went through the server (tensorstore), not into a local folder named gs:
    assert not os.path.exists("gs:")
    import fsspec

    files = fsspec.filesystem("gs").find(f"{gcs_bucket}/clients/ckpt/1")
    assert any("/default/d/" in f for f in files) and f"{gcs_bucket[5:]}/clients/ckpt/1/commit_success.txt" in files


def test_array_record_reader_reads_a_gs_shard(gcs_bucket, tmp_path):
    from array_record.python import array_record_module as am
    from etils import epath

    local = tmp_path / "x.array_record"
    w = am.ArrayRecordWriter(str(local), "group_size:1")
    for i in range(5):
        w.write(f"record {i}".encode())
    w.close()
    url = f"{gcs_bucket}/clients/ar/x.array_record"
    epath.Path(url).write_bytes(local.read_bytes())
    r = am.ArrayRecordReader(url, "readahead_buffer_size:0", file_reader_buffer_size=32768)
    assert r.num_records() == 5 and r.read([1, 4]) == [b"record 1", b"record 4"]
    r.close()
    # What the shard check is for: the C++ reader takes a missing gs:// object for an empty one.
    missing = am.ArrayRecordReader(f"{gcs_bucket}/clients/ar/none.array_record", "readahead_buffer_size:0")
    assert missing.num_records() == 0


def test_probe_answers_for_present_and_absent_paths(gcs_bucket):
    from etils import epath

    from e5jax import storage

    epath.Path(f"{gcs_bucket}/clients/probe/x").write_text("x")
    assert storage.check_reachable(f"{gcs_bucket}/clients/probe")
    assert not storage.check_reachable(f"{gcs_bucket}/clients/nothing-here")
    assert storage.check_reachable("/some/local/path")


PROBE = """
import sys, time
from e5jax import storage
from e5jax.errors import E5Error
t = time.monotonic()
try:
    storage.check_reachable(sys.argv[1], "--workdir")
except E5Error as e:
    print(f"{time.monotonic() - t:.1f}|{e}")
"""


def test_a_server_that_is_down_fails_in_bounded_time_with_one_line(gcs_server):
    env = {**os.environ, **client_env(dead_endpoint()), "E5JAX_STORAGE_TIMEOUT_S": "5"}
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-c", PROBE, "gs://e5jax-test/runs/x"], env=env, capture_output=True,
                         text=True, timeout=60)
    took, _, msg = out.stdout.strip().partition("|")
    assert time.monotonic() - t < 30 and float(took) < 9, (took, out.stderr[-2000:])
    assert msg.startswith("--workdir gs://e5jax-test/runs/x: ") and "\n" not in msg, msg
    assert env["STORAGE_EMULATOR_HOST"] in msg


def test_timeout_setting_is_checked(monkeypatch):
    from e5jax import storage

    monkeypatch.setenv("E5JAX_STORAGE_TIMEOUT_S", "soon")
    with pytest.raises(E5Error, match="E5JAX_STORAGE_TIMEOUT_S"):
        storage.check_reachable("gs://b/x")
