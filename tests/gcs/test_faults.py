"""Faults on gs://: a checkpoint save that the store fails midway, and a dataset
upload cut short. The last good checkpoint restores; nothing incomplete is
taken for complete."""

import os
import subprocess
import sys

import pytest
from etils import epath

from e5jax.errors import E5Error
from tests.gcs.conftest import client_env
from tests.gcs.faults import FaultProxy

# Runs in its own process: tensorstore reads its endpoint (the proxy) once per process.
SAVE_TWO = """
import sys, time
import numpy as np
import jax
from flax import nnx
from e5jax.errors import E5Error
from e5jax.train import checkpoint as ckpt

url = sys.argv[1]
def state(seed):
    return nnx.state(nnx.Linear(4, 3, rngs=nnx.Rngs(seed)))
mngr = ckpt.manager(url)
ckpt.save(mngr, 1, state(1))
t = time.monotonic()
try:
    ckpt.save(mngr, 2, state(2))
    print("SAVED 2")
except E5Error as e:
    print(f"ERR|{time.monotonic() - t:.1f}|{e}")
mngr.close()
"""


def test_checkpoint_save_failing_midway_leaves_the_previous_one_restorable(gcs_bucket, tmp_path):
    import jax
    import numpy as np
    from flax import nnx

    from e5jax.train import checkpoint as ckpt

    run = f"{gcs_bucket}/faults/ckpt-run"
    # Fail the array data of step 2 (tensorstore's writes), let its metadata through:
    # the step folder is half written when the save gives up.
    rule = lambda method, path: method in ("POST", "PUT") and "checkpoints/2/" in path and "/d/" in path
    with FaultProxy(os.environ["STORAGE_EMULATOR_HOST"], rule) as proxy:
        env = {**os.environ, **client_env(proxy.endpoint), "E5JAX_GCS_RETRIES": "2", "JAX_PLATFORMS": "cpu"}
        out = subprocess.run([sys.executable, "-c", SAVE_TWO, run], env=env, capture_output=True, text=True,
                             timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("ERR|"), (line, out.stderr[-2000:])
    _, took, msg = line.split("|", 2)
    assert float(took) < 60 and "checkpoint 2 could not be written" in msg and run in msg, msg
    assert proxy.failed, "the fault was never hit"
    assert epath.Path(run, "checkpoints", "2").exists(), "step 2 was not even started: nothing half-written tested"

    mngr = ckpt.manager(run)
    assert mngr.latest_step() == 1 and mngr.all_steps() == [1]
    abstract = nnx.state(nnx.eval_shape(lambda: nnx.Linear(4, 3, rngs=nnx.Rngs(0))))
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: dev, abstract)
    step, restored = ckpt.restore(mngr, abstract, shardings)
    mngr.close()
    want = nnx.state(nnx.Linear(4, 3, rngs=nnx.Rngs(1)))
    assert step == 1
    np.testing.assert_array_equal(np.asarray(restored["kernel"][...]), np.asarray(want["kernel"][...]))


def test_dataset_upload_cut_short_is_not_a_dataset(gcs_bucket, tmp_path, monkeypatch):
    """The upload is cut at its last file (dataset_info.json): `train` refuses the
    folder as no dataset, and a rebuild with --overwrite replaces it."""
    import json

    from e5jax import storage
    from e5jax.data.ccpairs.builder import build_dataset, dataset_dir

    (tmp_path / "p.jsonl").write_text("".join(
        json.dumps({"query": f"query {i}", "passage": f"passage number {i}"}) + "\n" for i in range(40)))
    data_dir = f"{gcs_bucket}/faults/tfds"
    real_put = None

    def cut(fs_self, lpath, rpath, *a, **kw):
        if rpath.endswith(storage.MARKER):
            raise ConnectionError("connection reset (injected)")
        return real_put(fs_self, lpath, rpath, *a, **kw)

    real_put = type(storage._fs(data_dir)).put_file
    monkeypatch.setattr(type(storage._fs(data_dir)), "put_file", cut)
    with pytest.raises(ConnectionError):
        build_dataset([tmp_path / "p.jsonl"], data_dir=data_dir, name="cut", heldout_fraction=0.0)
    monkeypatch.undo()
    assert any(p.name.startswith("cut-train") for p in epath.Path(data_dir, "cut", "1.0.0").iterdir())
    with pytest.raises(E5Error) as err:
        dataset_dir(data_dir, "cut")
    assert "\n" not in str(err.value) and "cut" in str(err.value)
    build_dataset([tmp_path / "p.jsonl"], data_dir=data_dir, name="cut", heldout_fraction=0.0, overwrite=True)
    assert str(dataset_dir(data_dir, "cut")).endswith("/cut/1.0.0")
