"""Fixtures for the harvest tests: the real (shortened) enwiki dump from the
gensim 4.4.0 wheel, downloaded once into ~/.cache/e5jax-test."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

ENWIKI = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
CACHE = pathlib.Path(os.environ.get("E5JAX_TEST_CACHE", pathlib.Path.home() / ".cache" / "e5jax-test"))


@pytest.fixture(scope="session")
def enwiki_dump() -> str:
    """Path of the real shortened enwiki pages-articles dump (.xml.bz2)."""
    out = CACHE / "enwiki-shortened.xml.bz2"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        wheels = list(CACHE.glob("gensim-4.4.0-*.whl"))
        if not wheels:
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "gensim==4.4.0", "-d", str(CACHE)],
                capture_output=True, text=True)
            wheels = list(CACHE.glob("gensim-4.4.0-*.whl"))
            if not wheels:
                pytest.skip(f"pip could not download gensim==4.4.0 (registry unreachable?): {proc.stderr[-300:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            tmp = out.with_suffix(".tmp")
            tmp.write_bytes(z.read(ENWIKI))
            tmp.replace(out)
    return str(out)
