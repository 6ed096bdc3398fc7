"""Fixtures of the tpu_scripts/ tests: no test ever reaches a real gcloud."""

from __future__ import annotations

import os
import sys

import pytest

from tests.tpu.helpers import FAKE_GCLOUD


@pytest.fixture(autouse=True)
def _never_the_real_gcloud(tmp_path_factory, monkeypatch):
    """Whatever goes wrong in a script, these tests never reach a real gcloud."""
    bin_dir = tmp_path_factory.mktemp("guard")
    (bin_dir / "gcloud").write_text("#!/bin/sh\necho 'guard: a test ran gcloud' >&2\nexit 97\n")
    (bin_dir / "gcloud").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


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
