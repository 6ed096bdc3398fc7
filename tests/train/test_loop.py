"""The train loop: exact resume after SIGKILL, non-finite loss, bad overrides, learning."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from e5jax.cli import main
from e5jax.config import load_config, replace
from e5jax.errors import E5Error
from e5jax.train import checkpoint as ckpt
from e5jax.train.loop import train
from e5jax.train.state import abstract_state, load_trained
from e5jax.model import axes as ax
from tests.cpu_env import cpu_env


def _records(workdir):
    """Last record per step from metrics.jsonl (a resumed run re-logs nothing twice it kept)."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["split"] == "train":
            out[r["step"]] = r
    return out


def _params(workdir):
    model, _, _ = load_trained(str(workdir))
    from flax import nnx

    return {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _cmd(workdir, overrides, steps):
    args = [sys.executable, "-m", "e5jax.cli", "train", "--config", "configs/tiny_pretrain.py",
            "--workdir", str(workdir)]
    for o in overrides + [f"train.steps={steps}", "train.checkpoint_every=3", "model.dropout=0.1"]:
        args += ["--set", o]
    return args


def test_resume_after_sigkill_is_exact(tmp_path, tiny_overrides):
    steps = 9
    env = cpu_env(2)
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cmd(full, tiny_overrides, steps), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_cmd(killed, tiny_overrides, steps), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "3").is_dir():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _records(killed)
    assert max(done) < steps, "the kill came too late to test anything"

    out = subprocess.run(_cmd(killed, tiny_overrides, steps), check=True, env=env, capture_output=True, text=True)
    assert "resumed from step" in out.stdout

    a, b = _records(full), _records(killed)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    assert [a[s]["data_crc"] for s in a] == [b[s]["data_crc"] for s in a]  # the same batches, in order
    assert [a[s]["loss"] for s in a] == [b[s]["loss"] for s in a]
    pa, pb = _params(full), _params(killed)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def test_non_finite_loss_stops_with_one_line_and_keeps_last_good_checkpoint(tmp_path, tiny_overrides):
    cfg = replace(load_config("configs/tiny_pretrain.py", tiny_overrides),
                  **{"train.steps": 8, "train.checkpoint_every": 2})

    def poison(step, metrics):
        return {**metrics, "loss": float("nan")} if step == 5 else metrics

    with pytest.raises(E5Error) as err:
        train(cfg, str(tmp_path), step_hook=poison, log=lambda s: None)
    msg = str(err.value)
    assert "\n" not in msg and "non-finite loss" in msg and "step 5" in msg and "step 4" in msg
    mngr = ckpt.manager(str(tmp_path))
    assert mngr.latest_step() == 4
    mngr.close()
    params = _params(tmp_path)
    assert all(np.isfinite(v).all() for v in params.values())


@pytest.mark.parametrize("override,needle", [
    ("train.nope=1", "train.nope"),
    ("train.steps=abc", "train.steps"),
    ("model.dtype=float16", "model.dtype"),
    ("nosection.x=1", "nosection.x"),
])
def test_bad_override_is_refused_naming_the_key(capsys, tmp_path, override, needle):
    code = main(["train", "--config", "configs/tiny_pretrain.py", "--workdir", str(tmp_path), "--set", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0]
    assert not (tmp_path / "checkpoints").exists()


def test_broken_config_file_is_refused(capsys, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n")
    code = main(["train", "--config", str(bad), "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "bad.py" in err[0]


def test_learning_works_from_random_init(tmp_path, tiny_overrides):
    """Pre-training the tiny preset from scratch on ~3,500 real pairs lifts held-out
    in-batch accuracy far above both chance and the untrained model."""
    base = replace(load_config("configs/tiny_pretrain.py", tiny_overrides),
                   **{"train.batch_size": 32, "train.eval_batches": 8, "train.checkpoint_every": 1000,
                      "train.log_every": 50, "optim.warmup_steps": 10})
    before = train(replace(base, **{"train.steps": 0}), str(tmp_path / "untrained"), log=lambda s: None)
    after = train(replace(base, **{"train.steps": 150}), str(tmp_path / "trained"), log=lambda s: None)
    chance = 1 / 32
    print(f"held-out accuracy: untrained {before['heldout_accuracy']:.3f}, "
          f"trained {after['heldout_accuracy']:.3f}, chance {chance:.3f}")
    assert after["heldout_accuracy"] >= 10 * chance
    assert after["heldout_accuracy"] >= before["heldout_accuracy"] + 0.15


def test_restore_onto_a_different_mesh(tmp_path, tiny_overrides):
    cfg = replace(load_config("configs/tiny_pretrain.py", tiny_overrides), **{"train.steps": 2})
    train(cfg, str(tmp_path), log=lambda s: None)  # saved from a data=8 mesh
    from e5jax.config import MeshConfig

    mesh = ax.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    graphdef, abstract, shardings = abstract_state(cfg, mesh)
    mngr = ckpt.manager(str(tmp_path))
    step, state = ckpt.restore(mngr, abstract, shardings)
    mngr.close()
    assert step == 2
    from flax import nnx

    flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(state)}
    key = "0/bert/embeddings/word"  # the model's table (1/... is the optimizer's)
    assert flat[key][...].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    np.testing.assert_array_equal(np.asarray(flat[key][...]), _params(tmp_path)["bert/embeddings/word"])


def test_relative_workdir(tmp_path, tiny_overrides, monkeypatch):
    """`--workdir runs/x` (relative, as users type it) trains, checkpoints and exports."""
    monkeypatch.chdir(tmp_path)
    cfg = replace(load_config(str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "tiny_pretrain.py"),
                              tiny_overrides), **{"train.steps": 1})
    train(cfg, "runs/rel", log=lambda s: None)
    assert (tmp_path / "runs" / "rel" / "checkpoints" / "1").is_dir()
    assert main(["export", "--workdir", "runs/rel", "--output", "runs/rel-export"]) == 0
    assert (tmp_path / "runs" / "rel-export" / "model.safetensors").is_file()


def test_remote_metrics_log_is_rewritten_whole_and_keeps_history(tmp_path, monkeypatch):
    """gs:// has no append: a remote run logs locally (seeded from the remote
    copy, so a resumed run keeps its history) and rewrites the remote file whole.
    A local folder stands in for the bucket; `is_remote` is what gs:// answers."""
    import json

    from e5jax.train import metrics as mw

    workdir = tmp_path / "bucket" / "e5-base"
    workdir.mkdir(parents=True)
    (workdir / "metrics.jsonl").write_text(json.dumps({"step": 10, "split": "train", "loss": 3.0}) + "\n")
    monkeypatch.setattr(mw, "is_remote", lambda w: True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    remote_opens = []
    real_open = mw.epath.Path.open

    def spy(self, mode="r", *a, **kw):
        if str(self).startswith(str(workdir)) and "a" in mode:
            remote_opens.append(mode)
        return real_open(self, mode, *a, **kw)

    monkeypatch.setattr(mw.epath.Path, "open", spy, raising=False)
    w = mw.MetricWriter(str(workdir), tensorboard=False, sync_every_s=3600)
    w.write(20, {"loss": 2.0})
    w.write(30, {"loss": 1.0})
    # Not yet synced (an hour between syncs): the remote copy still holds the old run only.
    assert [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()] == [10]
    w.close()
    steps = [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30]
    assert (tmp_path / "home" / "e5jax-metrics" / "e5-base" / "metrics.jsonl").read_text() == (
        workdir / "metrics.jsonl").read_text()
    assert remote_opens == []  # never appended to the remote file
    # A resumed run on a fresh host (empty home) starts from the remote history.
    monkeypatch.setenv("HOME", str(tmp_path / "home2"))
    w = mw.MetricWriter(str(workdir), sync_every_s=0)
    w.write(40, {"loss": 0.5})
    steps = [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40]
    w.close()
    # TensorBoard events of a remote run go next to the process, not to the bucket.
    assert list((tmp_path / "home2" / "e5jax-tensorboard" / "e5-base").glob("events.out.tfevents.*"))
    assert not (workdir / "tensorboard").exists()


def test_resumed_history_drops_the_records_a_killed_run_wrote_past_its_checkpoint(tmp_path):
    """The resumed run repeats steps 4..6 on the same batches: their old records
    (and a line the kill cut short) go, so each step appears once."""
    from e5jax.train import metrics as mw

    workdir = tmp_path / "run"
    workdir.mkdir()
    rec = lambda s: json.dumps({"step": s, "split": "train", "loss": 1.0 / s}) + "\n"
    (workdir / "metrics.jsonl").write_text("".join(rec(s) for s in range(1, 7)) + '{"step": 7, "spl')
    w = mw.MetricWriter(str(workdir), tensorboard=False, resumed_at=3)
    for s in range(4, 8):
        w.write(s, {"loss": 1.0 / s})
    w.close()
    steps = [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 8))


def test_a_run_that_cannot_start_leaves_the_workdir_as_it_was(capsys, tmp_path, tiny_overrides):
    """config.json is what load_trained/export read: a failed start (a missing
    dataset, another architecture) must not rewrite it, and resuming with
    another model is refused in one line instead of an orbax tree dump."""
    cfg = replace(load_config("configs/tiny_pretrain.py", tiny_overrides), **{"train.steps": 2})
    workdir = tmp_path / "run"
    train(cfg, str(workdir), log=lambda s: None)
    saved = (workdir / "config.json").read_text()
    base = ["train", "--config", "configs/tiny_pretrain.py", "--workdir", str(workdir)]
    for o in tiny_overrides:
        base += ["--set", o]
    arch = json.loads(pathlib.Path("configs/tiny_bert.json").read_text())
    other = tmp_path / "wider.json"
    other.write_text(json.dumps(dict(arch, hidden_size=2 * arch["hidden_size"])))
    for extra, needle in ((["--set", "data.name=nope"], "no dataset 'nope'"),
                          (["--set", f"model.arch={other}", "--set", "train.steps=4"],
                           "holds checkpoints of another model (hidden_size differ")):
        capsys.readouterr()
        code = main(base + extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], err
        assert (workdir / "config.json").read_text() == saved
    model, _, _ = load_trained(str(workdir))  # the checkpoints still load with the kept config
    assert model.bert.cfg.hidden_size == arch["hidden_size"]
    # A first run that cannot start leaves no config.json behind.
    code = main(["train", "--config", "configs/tiny_pretrain.py", "--workdir", str(tmp_path / "new"),
                 "--set", "data.name=nope", *[x for o in tiny_overrides if not o.startswith("data.name") for x in
                                              ("--set", o)]])
    assert code == 2 and not (tmp_path / "new" / "config.json").exists()
