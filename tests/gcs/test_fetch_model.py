"""`e5jax fetch-model` against the session's Cloud Storage server: what
`tpu_scripts/setup.sh --weights gs://...` runs on every worker. A real model
folder (all-MiniLM-L6-v2) goes up to the bucket and comes back byte for byte and
loadable; a rerun copies nothing; a download cut midway leaves no file under its
final name, and a process killed midway resumes; a missing folder, a folder that
is not a model, a destination that is a file and a server that is down each stop
in one line; and the weights part of setup.sh's remote command runs as printed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import fsspec
import pytest

from e5jax.cli import main
from tests.gcs.conftest import client_env, dead_endpoint
from tests.tpu.helpers import ARGS, FAKE_GCLOUD, dry_run, gcloud_argv

FOLDER = "all-MiniLM-L6-v2"


def _files(root) -> dict[str, bytes]:
    root = str(root)
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def _sizes(root) -> dict[str, int]:
    root = str(root)
    return {os.path.relpath(os.path.join(d, n), root): os.path.getsize(os.path.join(d, n))
            for d, _, names in os.walk(root) for n in names}


@pytest.fixture(scope="module")
def remote_model(gcs_bucket, minilm_dir) -> str:
    """The MiniLM folder uploaded, file by file, to gs://e5jax-test/models/all-MiniLM-L6-v2."""
    url = f"{gcs_bucket}/models/{FOLDER}"
    fs = fsspec.filesystem("gs", skip_instance_cache=True)
    for rel in sorted(_sizes(minilm_dir)):
        fs.put_file(os.path.join(minilm_dir, rel), f"{url}/{rel}")
    return url


def _fetch(capsys, *args) -> tuple[int, list[str], list[str]]:
    code = main(["fetch-model", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out.rstrip().splitlines(), out.err.strip().splitlines()


def test_copies_the_model_byte_for_byte_it_loads_and_a_rerun_copies_nothing(remote_model, minilm_dir, tmp_path,
                                                                            capsys):
    dest = tmp_path / "ckpt" / FOLDER
    code, out, err = _fetch(capsys, remote_model, dest)
    source = _files(minilm_dir)
    assert code == 0 and not err, err
    assert _files(dest) == source  # every file, .gitattributes and 1_Pooling/ included
    assert len(out) == len(source) + 1 and out[-1].startswith(f"{remote_model} -> {dest}: 13 files copied"), out
    assert all(line.startswith("  copied ") for line in out[:-1]), out

    code, out, err = _fetch(capsys, remote_model, dest)
    assert code == 0 and not err
    assert out[-1].endswith("0 files copied (0 B), 13 files already there (91.6 MB)"), out[-1]

    from e5jax.model.encoder import Encoder

    a = Encoder.from_pretrained(dest).encode(["a test of the copied weights"])
    b = Encoder.from_pretrained(minilm_dir).encode(["a test of the copied weights"])
    assert a.shape == (1, 384) and (a == b).all()


class _CutsTheWeights:
    """The bucket's filesystem, except that model.safetensors arrives half written
    and then the connection drops (as when a worker loses the network)."""

    def __init__(self, fs):
        self.fs = fs

    def get_file(self, path, lpath):
        self.fs.get_file(path, lpath)
        if path.endswith("model.safetensors"):
            os.truncate(lpath, os.path.getsize(lpath) // 2)
            raise ConnectionResetError(104, "Connection reset by peer")

    def __getattr__(self, name):
        return getattr(self.fs, name)


def test_a_cut_download_leaves_no_half_file_and_the_rerun_resumes(remote_model, minilm_dir, tmp_path, capsys,
                                                                   monkeypatch):
    from e5jax.commands import fetch_model

    real = fetch_model.list_files

    def cut(source):
        fs, files = real(source)
        return _CutsTheWeights(fs), files

    monkeypatch.setattr(fetch_model, "list_files", cut)
    dest = tmp_path / FOLDER
    code, out, err = _fetch(capsys, remote_model, dest)
    assert code == 2 and len(err) == 1, err
    assert f"{remote_model}/model.safetensors: download failed (ConnectionResetError" in err[0], err
    names = set(_sizes(dest))
    assert "model.safetensors" not in names and not [n for n in names if n.endswith(".part")], names
    assert {"config.json", "README.md", "1_Pooling/config.json"} <= names

    monkeypatch.setattr(fetch_model, "list_files", real)
    code, out, err = _fetch(capsys, remote_model, dest)
    assert code == 0 and not err
    assert _files(dest) == _files(minilm_dir)
    copied = [line.split()[1] for line in out if line.startswith("  copied ")]
    assert copied[0] == "model.safetensors" and len(copied) == 13 - 6, out  # 6 sort before it


class _StallsOnTheWeights(_CutsTheWeights):
    """model.safetensors: a quarter arrives, then the connection stays open and sends nothing."""

    def get_file(self, path, lpath):
        if not path.endswith("model.safetensors"):
            return self.fs.get_file(path, lpath)
        with self.fs.open(path, "rb") as src, open(lpath, "wb") as dst:
            dst.write(src.read(self.fs.size(path) // 4))
            dst.flush()
            time.sleep(60)


def test_a_stalled_download_stops_in_one_line_within_the_timeout(remote_model, tmp_path, capsys, monkeypatch):
    from e5jax.commands import fetch_model

    real = fetch_model.list_files
    monkeypatch.setattr(fetch_model, "list_files", lambda source: (_StallsOnTheWeights(real(source)[0]),
                                                                  real(source)[1]))
    monkeypatch.setenv("E5JAX_STORAGE_TIMEOUT_S", "2")
    dest = tmp_path / FOLDER
    start = time.monotonic()
    code, out, err = _fetch(capsys, remote_model, dest)
    took = time.monotonic() - start
    assert code == 2 and len(err) == 1, err
    assert f"{remote_model}/model.safetensors: download stalled (no bytes for 2 s" in err[0], err
    assert "run again to resume" in err[0] and took < 20, (took, err)
    names = set(_sizes(dest))
    assert "model.safetensors" not in names and not [n for n in names if n.endswith(".part")], names


def test_a_killed_copy_never_leaves_a_short_file_and_resumes(remote_model, minilm_dir, tmp_path):
    """SIGKILL as soon as the first files are reported (the 91 MB weights come next)."""
    dest = tmp_path / FOLDER
    cmd = [sys.executable, "-m", "e5jax.cli", "fetch-model", remote_model, str(dest)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    seen = [proc.stdout.readline() for _ in range(3)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stdout.close()
    assert all(line.startswith("  copied ") for line in seen), seen
    want = _sizes(minilm_dir)
    got = {n: s for n, s in _sizes(dest).items() if not n.endswith(".part")}
    assert 3 <= len(got) and all(want[n] == s for n, s in got.items()), (got, want)

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    summary = rerun.stdout.strip().splitlines()[-1]
    assert f"{len(got)} files already there" in summary, summary
    assert _files(dest) == _files(minilm_dir)  # and no .part file left behind


def test_bad_sources_and_destinations_stop_in_one_line(remote_model, gcs_bucket, minilm_dir, tmp_path, capsys):
    fs = fsspec.filesystem("gs", skip_instance_cache=True)
    fs.put_file(os.path.join(minilm_dir, "vocab.txt"), f"{gcs_bucket}/models/vocab-only/vocab.txt")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "empty").mkdir()
    cases = [
        (f"{gcs_bucket}/models/no-such-model", tmp_path / "d1", "no such folder"),
        (f"{gcs_bucket}/models/vocab-only", tmp_path / "d2", "has no config.json at its top"),
        (remote_model, tmp_path / "a-file", "is a file, not a folder"),
        (f"{remote_model}/config.json", tmp_path / "d3", "is a file, not a model folder"),
        (str(tmp_path / "empty"), tmp_path / "d4", "the folder is empty"),
    ]
    for source, dest, why in cases:
        code, out, err = _fetch(capsys, source, dest)
        assert code == 2 and len(err) == 1, (source, err)
        assert err[0].startswith("e5jax fetch-model: error: ") and source in err[0] and why in err[0], err
    assert not (tmp_path / "d2").exists()  # nothing copied from a folder that is not a model


def test_a_server_that_is_down_stops_in_one_line_within_bounds(tmp_path):
    env = dict(os.environ, **client_env(dead_endpoint()), E5JAX_STORAGE_TIMEOUT_S="5")
    url = f"gs://e5jax-test/models/{FOLDER}"
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "e5jax.cli", "fetch-model", url, str(tmp_path / FOLDER)], env=env,
                         capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and took < 20, (took, out.stderr[-2000:])
    assert len(err) == 1 and err[0].startswith("e5jax fetch-model: error: "), out.stderr[-2000:]
    assert url in err[0] and "within 5 s" in err[0], err
    assert not (tmp_path / FOLDER).exists()


def test_setup_sh_weights_commands_run_on_a_worker(remote_model, minilm_dir, tmp_path):
    """The part of setup.sh's remote command that --weights adds, taken from its dry
    run and run as a worker would, from ~/e5jax with the venv's `e5jax` (a shim
    to this one), against the server: the README's `--weights gs://...` for real."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               GCLOUD_MARKER=str(tmp_path / "gcloud-called"), PYTHON=sys.executable)
    env.pop("GCLOUD_ARGV", None)
    (line,) = dry_run("setup.sh", *ARGS["setup.sh"], "--weights", remote_model + "/")
    remote = gcloud_argv(line, (env, None, tmp_path / "gcloud-argv.json"))[-1]
    weights = remote[remote.index("; mkdir -p ckpt/") + 2:remote.index("; echo ")]
    assert weights == f"mkdir -p ckpt/{FOLDER}; .venv/bin/e5jax fetch-model {remote_model} ckpt/{FOLDER}", weights

    checkout = tmp_path / "home" / "e5jax"
    (checkout / ".venv" / "bin").mkdir(parents=True)
    shim = checkout / ".venv" / "bin" / "e5jax"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m e5jax.cli "$@"\n')
    shim.chmod(0o755)
    for _ in range(2):  # setup.sh run again: nothing copied twice
        proc = subprocess.run(["bash", "-c", f"set -e; cd \"$HOME/e5jax\"; {weights}"], capture_output=True, text=True,
                              env=dict(os.environ, HOME=str(tmp_path / "home")), timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1].endswith("0 files copied (0 B), 13 files already there (91.6 MB)")
    assert _files(checkout / "ckpt" / FOLDER) == _files(minilm_dir)
