"""The shared test fixtures fail loudly when their real data cannot be had."""

from __future__ import annotations

import pathlib
import subprocess
import zipfile

import pytest

from tests import conftest


def _fake_wheel(folder: pathlib.Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "gensim-4.4.0-cp311-cp311-any.whl", "w") as z:
        z.writestr(conftest.ENWIKI, b"BZh9 dump bytes")


def test_enwiki_fixture_fails_naming_the_pip_command_when_the_download_fails(tmp_path, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for gensim==4.4.0\n")
    monkeypatch.setattr(conftest.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(pytest.fail.Exception, match=r"pip download --no-deps gensim==4\.4\.0 .*No matching distribution"):
        conftest.fetch_enwiki(tmp_path)


def test_enwiki_fixture_unpacks_a_downloaded_wheel(tmp_path, monkeypatch):
    def download(cmd, **_):
        _fake_wheel(pathlib.Path(cmd[cmd.index("-d") + 1]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(conftest.subprocess, "run", download)
    out = conftest.fetch_enwiki(tmp_path)
    assert out.read_bytes() == b"BZh9 dump bytes"
    monkeypatch.setattr(conftest.subprocess, "run", None)  # second call: the cached file, no download
    assert conftest.fetch_enwiki(tmp_path) == out
