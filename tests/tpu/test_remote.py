"""tpu_scripts/: the remote commands (what each worker's shell receives over ssh)
run locally in a scratch $HOME, under bash and dash, against a fake `e5jax` /
`python3`: the quoting survives both the local shell and the worker's shell,
and launch / stop / setup do what they say on a worker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.tpu.helpers import PRESET, WORKDIR, DATA_DIR, WHERE, ARGS, remote_command

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
    remote = remote_command("setup.sh", *WHERE, "--repo", str(src), "--weights", "gs://b/models/m", fake=fake_gcloud)
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
        "pip install --quiet --upgrade -e .[tpu] gcsfs"
        " -f https://storage.googleapis.com/jax-releases/libtpu_releases.html",
        "e5jax --help",
        "e5jax fetch-model gs://b/models/m ckpt/m",  # tests/gcs/test_fetch_model.py runs it for real
    ]
    assert (home / "e5jax" / "ckpt" / "m").is_dir()
    # Running it again moves the existing clone to the new head of --ref.
    second = commit("two")
    _, head = run_setup()
    assert head == second != first
