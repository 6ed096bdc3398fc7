"""Shared by the tpu_scripts/ tests: the example pod, a fake `gcloud`, and
ways to run a script, its dry run and the command its workers receive."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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
    "launch.sh": WHERE + ["--preset", PRESET, "--workdir", WORKDIR, "--data-dir", DATA_DIR, "--type", "v4-32"],
    "logs.sh": WHERE,
    "stop.sh": WHERE,
    "delete.sh": WHERE,
}

# Records its argv as JSON (for the tests that run a printed command line), or
# just leaves a marker (for the test that dry runs never call gcloud).
FAKE_GCLOUD = """#!/bin/sh
touch "$GCLOUD_MARKER"
if [ -n "${GCLOUD_ARGV:-}" ]; then
  exec "$PYTHON" -c 'import json, os, sys; json.dump(sys.argv[1:], open(os.environ["GCLOUD_ARGV"], "w"))' "$@"
fi
"""


def script(name: str, *args: str, env: dict | None = None, cwd: Path | None = None, path: Path = SCRIPTS):
    return subprocess.run(
        [str(path / name), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


def dry_run(name: str, *args: str, **kw) -> list[str]:
    proc = script(name, *args, "--dry-run", **kw)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def gcloud_argv(line: str, fake) -> list[str]:
    """Run a printed command line in bash against the fake gcloud; return gcloud's argv."""
    env, _, argv_file = fake
    proc = subprocess.run(["bash", "-c", line], env=dict(env, GCLOUD_ARGV=str(argv_file)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(argv_file.read_text())


def remote_command(name: str, *args: str, fake) -> str:
    """What the workers' shells receive: the --command of the gcloud ssh call."""
    *check, line = dry_run(name, *args)  # launch.sh's compile check comes first
    assert len(check) <= 1
    argv = gcloud_argv(line, fake)
    assert argv[:4] == ["compute", "tpus", "tpu-vm", "ssh"]
    return argv[argv.index("--command") + 1]
