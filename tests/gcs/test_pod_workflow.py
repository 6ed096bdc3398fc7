"""The pod workflow on gs://, against the session's Cloud Storage server: build a
dataset into the bucket, train the tiny preset with a gs:// data dir and
workdir, SIGKILL it after a checkpoint, resume it while the store fails a
checkpoint save (it stops in one line), resume to the end, export from the
bucket, start fine-tuning from it; equal, step by step, to the same run on
local folders."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from etils import epath

from e5jax.cli import main
from e5jax.config import load_config, replace
from e5jax.errors import E5Error
from tests.cpu_env import cpu_env
from tests.fixtures.real_text import debian_records
from tests.gcs.conftest import client_env, dead_endpoint
from tests.gcs.faults import FaultProxy

STEPS, EVERY = 9, 3
NAME = "debian_pairs"


def _overrides(data_dir, minilm_dir):
    return [f"data.data_dir={data_dir}", f"data.name={NAME}", f"model.tokenizer={minilm_dir}",
            "model.row_blocks=1", f"train.steps={STEPS}", f"train.checkpoint_every={EVERY}", "model.dropout=0.1"]


@pytest.fixture(scope="module")
def datasets(gcs_bucket, tmp_path_factory):
    """The same JSONL pairs built into a local data dir and, by `e5jax build`, into the bucket."""
    from e5jax.data.ccpairs.builder import build_dataset

    root = tmp_path_factory.mktemp("gcs-pairs")
    with open(root / "pairs.jsonl", "w") as f:
        for r in debian_records()[:800]:
            f.write(json.dumps({"query": r["short"], "passage": r["long"], "source": "debian"}) + "\n")
    build_dataset([root / "pairs.jsonl"], data_dir=root / "tfds", name=NAME, heldout_fraction=0.1)
    remote = f"{gcs_bucket}/tfds"
    assert main(["build", "--pairs", str(root / "pairs.jsonl"), "--data-dir", remote, "--name", NAME,
                 "--heldout-fraction", "0.1"]) == 0
    return str(root / "tfds"), remote


def _records(workdir: str) -> dict[int, dict]:
    out = {}
    for line in epath.Path(workdir, "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["split"] == "train":
            out[r["step"]] = r
    return out


def _params(workdir: str) -> dict[str, np.ndarray]:
    from flax import nnx

    from e5jax.train.state import load_trained

    model, _, _ = load_trained(workdir)
    return {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _committed(url: str) -> bool:
    import fsspec

    return fsspec.filesystem("gs", skip_instance_cache=True, use_listings_cache=False).exists(url)


def test_dataset_built_into_the_bucket_equals_the_local_one(datasets):
    from e5jax.data.ccpairs.builder import load_source

    local, remote = datasets
    for split in ("train", "heldout"):
        a, b = load_source(local, NAME, split), load_source(remote, NAME, split)
        assert len(a) == len(b) > 0
        assert [a[i] for i in range(0, len(a), 37)] == [b[i] for i in range(0, len(b), 37)]


def test_train_on_gs_equals_local_resumes_after_sigkill_and_exports(datasets, gcs_bucket, minilm_dir, tmp_path):
    from e5jax.train.loop import train

    local_data, remote_data = datasets
    local_run, remote_run = str(tmp_path / "local-run"), f"{gcs_bucket}/runs/tiny"
    cfg = load_config("configs/tiny_pretrain.py", _overrides(local_data, minilm_dir))
    train(cfg, local_run, log=lambda s: None)

    cmd = [sys.executable, "-m", "e5jax.cli", "train", "--config", "configs/tiny_pretrain.py", "--workdir", remote_run]
    for o in _overrides(remote_data, minilm_dir):
        cmd += ["--set", o]
    env = cpu_env(8, HOME=str(tmp_path / "home"))  # the remote run's metrics spool goes there
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not _committed(f"{remote_run}/checkpoints/{EVERY}/commit_success.txt"):
        assert proc.poll() is None, f"run ended before its first checkpoint: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # metrics.jsonl reaches the bucket before each checkpoint: the history up to the
    # committed checkpoint is there whenever the kill comes.
    done = _records(remote_run)
    assert set(range(1, EVERY + 1)) <= set(done), sorted(done)
    assert max(done) < STEPS, "the kill came too late to test anything"

    # Resumed, but the store fails the next checkpoint's array writes (a fault-injecting
    # proxy in front of the server): the run stops with one line naming the last good one.
    good = max(s for s in range(EVERY, STEPS, EVERY) if _committed(f"{remote_run}/checkpoints/{s}/commit_success.txt"))
    bad = good + EVERY
    fail = lambda method, path: method in ("POST", "PUT") and f"name={remote_run.split('/', 3)[3]}/checkpoints/{bad}/" in path \
        and "/d/" in path
    with FaultProxy(os.environ["STORAGE_EMULATOR_HOST"], fail) as proxy:
        faulty = {**env, **client_env(proxy.endpoint), "E5JAX_GCS_RETRIES": "2", "HOME": str(tmp_path / "home2")}
        out = subprocess.run(cmd, env=faulty, capture_output=True, text=True, timeout=600)
    # orbax's writer thread also logs the failure with its traceback; e5jax's own
    # report is one line, whole, and not buried under the writes still in flight
    # calling back into orbax's closed loop (once seen splitting that line).
    ours = [x for x in out.stderr.splitlines() if x.startswith("e5jax train: error:")]
    assert len(ours) == 1, (out.returncode, out.stderr[-4000:])
    assert "Event loop is closed" not in out.stderr, out.stderr[-3000:]
    last = ours[0]
    assert out.returncode == 2 and proxy.failed, (out.returncode, out.stderr[-3000:])
    assert last.startswith(f"e5jax train: error: checkpoint {bad} could not be written") and \
        last.endswith(f"last good checkpoint: step {good}"), last

    env["HOME"] = str(tmp_path / "home3")  # a fresh host: the history comes from the bucket
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from step {good} in {remote_run}" in out.stdout  # not from the half-written one

    a, b = _records(local_run), _records(remote_run)
    lines = [json.loads(x) for x in epath.Path(remote_run, "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in lines if r["split"] == "train"]) == STEPS  # no step twice after two resumes
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    assert [a[s]["data_crc"] for s in a] == [b[s]["data_crc"] for s in a]  # the same batches, in order
    assert [a[s]["loss"] for s in a] == [b[s]["loss"] for s in a]
    pa, pb = _params(local_run), _params(remote_run)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    assert json.loads(epath.Path(remote_run, "config.json").read_text())["data"]["data_dir"] == remote_data

    # Export reads the checkpoint back from the bucket.
    for run, out_dir in ((local_run, tmp_path / "export-local"), (remote_run, tmp_path / "export-remote")):
        assert main(["export", "--workdir", run, "--output", str(out_dir)]) == 0
    assert (tmp_path / "export-local" / "model.safetensors").read_bytes() == \
        (tmp_path / "export-remote" / "model.safetensors").read_bytes()

    # Fine-tuning starts from the pre-training run on the bucket (model.init=gs://...):
    # the same encoder weights as from the local run.
    from flax import nnx

    from e5jax.model import axes as ax
    from e5jax.train.state import create_model, is_workdir

    assert is_workdir(remote_run)
    mesh = ax.make_mesh(cfg.mesh)
    init = {}
    for run in (local_run, remote_run):
        ft = replace(cfg, **{"model.init": run, "model.arch": "", "model.tokenizer": ""})
        model = create_model(ft, mesh)
        init[run] = {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert init[local_run].keys() == init[remote_run].keys() and init[local_run]
    for k in init[local_run]:
        np.testing.assert_array_equal(init[local_run][k], init[remote_run][k], err_msg=k)
        if k in pa:
            np.testing.assert_array_equal(init[remote_run][k], pa[k], err_msg=k)


def test_missing_shard_in_the_bucket_is_named_not_read_as_empty(datasets, gcs_bucket, minilm_dir, tmp_path):
    import fsspec

    from e5jax.data.ccpairs.builder import dataset_dir
    from e5jax.train.loop import train

    _, remote_data = datasets
    fs = fsspec.filesystem("gs", skip_instance_cache=True, use_listings_cache=False)
    src = str(dataset_dir(remote_data, NAME)).removeprefix("gs://")
    copy = f"{gcs_bucket[5:]}/tfds-partial/{NAME}/{src.rsplit('/', 1)[1]}"
    fs.copy(src, copy, recursive=True)
    shard = next(p for p in fs.ls(copy) if "-train.array_record-" in p)
    fs.rm(shard)
    cfg = load_config("configs/tiny_pretrain.py", _overrides(f"{gcs_bucket}/tfds-partial", minilm_dir))
    with pytest.raises(E5Error) as err:
        train(cfg, str(tmp_path / "run"), log=lambda s: None)
    msg = str(err.value)
    assert "\n" not in msg and shard.rsplit("/", 1)[1] in msg and "missing" in msg


@pytest.mark.parametrize("command", ["train", "build"])
def test_a_bucket_whose_server_is_down_fails_in_one_line_within_bounds(command, minilm_dir, tmp_path):
    env = cpu_env(8, **client_env(dead_endpoint()), E5JAX_STORAGE_TIMEOUT_S="5")
    if command == "train":
        args = ["train", "--config", "configs/tiny_pretrain.py", "--workdir", "gs://e5jax-test/runs/down"]
        for o in _overrides("gs://e5jax-test/tfds", minilm_dir):
            args += ["--set", o]
        url = "gs://e5jax-test/tfds"
    else:
        (tmp_path / "p.jsonl").write_text(json.dumps({"query": "q", "passage": "p"}) + "\n")
        args = ["build", "--pairs", str(tmp_path / "p.jsonl"), "--data-dir", "gs://e5jax-test/tfds", "--name", "x"]
        url = "gs://e5jax-test/tfds"
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "e5jax.cli", *args], env=env, capture_output=True, text=True,
                         timeout=120)
    took = time.monotonic() - t
    err = out.stderr.strip().splitlines()
    assert out.returncode != 0 and took < 30, (took, out.stderr[-2000:])
    assert len(err) == 1 and url in err[0] and "within 5 s" in err[0], out.stderr[-2000:]


def test_beam_direct_runner_build_into_the_bucket_equals_the_local_build(datasets, gcs_bucket, tmp_path):
    from e5jax.data.ccpairs.builder import load_source

    local, _ = datasets
    pairs = os.path.join(os.path.dirname(local), "pairs.jsonl")
    remote = f"{gcs_bucket}/tfds-beam"
    assert main(["build", "--pairs", pairs, "--data-dir", remote, "--name", NAME, "--heldout-fraction", "0.1",
                 "--beam-runner", "DirectRunner"]) == 0
    for split in ("train", "heldout"):
        a, b = load_source(local, NAME, split), load_source(remote, NAME, split)
        assert sorted(map(repr, (a[i] for i in range(len(a))))) == sorted(map(repr, (b[i] for i in range(len(b)))))


def test_a_remote_beam_runner_cannot_write_a_gs_data_dir_and_says_so(capsys, tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"query": "q", "passage": "p"}) + "\n")
    code = main(["build", "--pairs", str(tmp_path / "p.jsonl"), "--data-dir", "gs://e5jax-test/tfds", "--name", "x",
                 "--beam-runner", "DataflowRunner"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "gs://e5jax-test/tfds" in err[0] and "gcsfuse" in err[0]
