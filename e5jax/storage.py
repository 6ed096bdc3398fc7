"""Object-store URLs (gs://...) checked before the work that needs them.

Three clients read and write `gs://` for e5jax, each with its own retry policy:
gcsfs (etils.epath: TFDS metadata, config.json, metrics), tensorstore (orbax's
checkpoint arrays) and google-cloud-cpp inside array_record (the C++ ArrayRecord
shard reader). Against a bucket that cannot be reached they retry for half a
minute (gcsfs) to many minutes (the C++ reader: it was seen to sit silently past
60 s): a pod job would hang on its first read. So each command probes its URLs
once, through gcsfs, with a wall-clock bound, and stops with one line naming
the URL; and the ArrayRecord shards a split needs are checked to be there, since
the C++ reader takes a missing `gs://` shard for an empty one.
"""

from __future__ import annotations

import os
import threading

from e5jax.errors import E5Error
from e5jax.paths import is_url

DEFAULT_TIMEOUT_S = 20.0


def timeout_s() -> float:
    """Seconds a probe waits for the store: E5JAX_STORAGE_TIMEOUT_S, else 20."""
    try:
        return float(os.environ.get("E5JAX_STORAGE_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    except ValueError:
        raise E5Error(f"E5JAX_STORAGE_TIMEOUT_S={os.environ['E5JAX_STORAGE_TIMEOUT_S']!r} is not a number") from None


def endpoint(url: str) -> str:
    """Where requests for `url` go (what a user checks when they do not arrive)."""
    if str(url).startswith("gs://"):
        return os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"
    return str(url).split("://", 1)[0] + " store"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:200] if text else "") or type(e).__name__


def _bounded(fn, url: str, flag: str, limit: float):
    """fn() in a daemon thread; its result, or one E5Error naming `url` if it
    raised or did not finish within `limit` seconds (the thread is abandoned:
    the process is about to stop)."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported below, in one line
            out["error"] = e

    t = threading.Thread(target=run, daemon=True, name=f"e5jax-probe {url}")
    t.start()
    t.join(limit)
    where = f"{flag} {url}" if flag else str(url)
    if t.is_alive():
        raise E5Error(f"{where}: no answer from the object store ({endpoint(url)}) within {limit:.0f} s; "
                      "check the bucket name, the network and credentials (E5JAX_STORAGE_TIMEOUT_S sets the wait)")
    if "error" in out:
        e = out["error"]
        if isinstance(e, PermissionError):
            raise E5Error(f"{where}: access denied by {endpoint(url)}: {_first_line(e)}") from e
        raise E5Error(f"{where}: cannot reach the object store ({endpoint(url)}): {_first_line(e)}") from e
    return out.get("value")


def _fs(url: str):
    """A fresh filesystem for `url` with no listing cache: a probe must not leave
    a stale listing in the instance the rest of the run uses."""
    import fsspec

    protocol = str(url).split("://", 1)[0]
    return fsspec.filesystem(protocol, skip_instance_cache=True, use_listings_cache=False)


def check_reachable(url: str, flag: str = "", *, limit: float | None = None) -> bool:
    """For a URL, whether it exists, asked once within a bounded time (one-line
    E5Error if the store does not answer, or refuses); local paths: True."""
    if not is_url(url):
        return True
    limit = timeout_s() if limit is None else limit
    return bool(_bounded(lambda: _fs(url).exists(str(url)), str(url), flag, limit))


def check_shards(folder, split: str, *, limit: float | None = None) -> None:
    """Every ArrayRecord shard of `split` that the dataset's metadata lists is
    in `folder` and not empty (one listing, bounded in time for a URL)."""
    import tensorflow_datasets as tfds

    folder = str(folder)
    info = tfds.builder_from_directory(folder).info
    if split not in info.splits:
        return  # the reader names the split and the ones there are
    wanted = [os.path.basename(str(p)) for p in info.splits[split].filepaths]

    def listing():
        if is_url(folder):
            fs = _fs(folder)
            return {os.path.basename(d["name"].rstrip("/")): d.get("size") or 0 for d in fs.ls(folder, detail=True)}
        return {n: os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)}

    limit = timeout_s() if limit is None else limit
    sizes = _bounded(listing, folder, "", limit) if is_url(folder) else listing()
    bad = [n for n in wanted if not sizes.get(n)]
    if bad:
        raise E5Error(f"dataset {folder}: {len(bad)} of the {len(wanted)} shards of split {split!r} are missing "
                      f"or empty (first: {bad[0]}); an interrupted or partial copy? rebuild it with `e5jax build`")


MARKER = "dataset_info.json"  # TFDS's: a version folder without it is not a built dataset (dataset_dir)


def upload_dataset(local_folder, url) -> None:
    """Copy a built TFDS version folder to `url`, replacing what is there.

    The ArrayRecord writer cannot write gs://, so builds are staged locally.
    Order is what makes an interruption safe: an old version loses its
    `dataset_info.json` first, and the new one gets it last, so at no moment
    does a partial folder look like a built dataset to `train`."""
    import fsspec

    fs = _fs(str(url))
    dest = str(url).rstrip("/")
    if fs.exists(f"{dest}/{MARKER}"):
        fs.rm(f"{dest}/{MARKER}")
    if fs.exists(dest):
        fs.rm(dest, recursive=True)
    local = fsspec.filesystem("file")
    files = sorted(str(p) for p in local.find(str(local_folder)))
    files.sort(key=lambda p: os.path.basename(p) == MARKER)  # the marker last
    for f in files:
        fs.put_file(f, f"{dest}/{os.path.relpath(f, str(local_folder))}")
