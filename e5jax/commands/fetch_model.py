"""`e5jax fetch-model`: copy a model folder from Cloud Storage to a local folder.

    e5jax fetch-model gs://my-bucket/bert-base-uncased ckpt/bert-base-uncased

What `tpu_scripts/setup.sh --weights` runs on every worker (Hugging Face model
folders must be on local disk). Every file under SOURCE (recursive; any fsspec
URL or a local folder) goes through gcsfs/fsspec to DEST under a temporary name
(`.NAME.part`, beside it), renamed once complete, so DEST never holds half a
file under its final name. A file already in DEST with the size of the source's
is skipped: a run cut short (killed, preempted) resumes where it stopped. A
download that stalls (no bytes for E5JAX_STORAGE_TIMEOUT_S, default 20 s) stops
in one line instead of hanging the worker's setup.
SOURCE must hold a `config.json` at its top (a Hugging Face model folder);
nothing is copied otherwise.
"""

from __future__ import annotations

import argparse
import os
import posixpath

from e5jax.errors import E5Error

PART = ".part"  # suffix of the temporary name a file is downloaded under


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", help="model folder: gs://BUCKET/FOLDER, another fsspec URL, "
                                                         "or a local folder")
    parser.add_argument("dest", metavar="DEST", help="local folder to copy it into (made if missing)")
    parser.add_argument("--quiet", action="store_true", help="no line per file, only the summary")


def _size(n: float) -> str:
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            break
    return f"{n:.1f} {unit}"


def list_files(source: str) -> tuple[object, dict[str, tuple[str, int]]]:
    """(filesystem, {relative path: (source path, size)}) of every file under `source`;
    for a URL asked within a bounded time (one-line E5Error naming it otherwise)."""
    import fsspec

    from e5jax.paths import is_url
    from e5jax.storage import _bounded, _fs, check_reachable, timeout_s

    if is_url(source):
        if not check_reachable(source):  # bounded: a bucket that does not answer is one line
            raise E5Error(f"{source}: no such folder (nothing under that prefix); check the bucket and folder name")
        fs = _fs(source)
    else:
        if not os.path.exists(source):
            raise E5Error(f"{source}: no such folder")
        fs = fsspec.filesystem("file")
    root = fs._strip_protocol(source).rstrip("/")

    def find():
        if fs.isfile(root):
            return None
        return fs.find(root, detail=True)

    found = _bounded(find, source, "", timeout_s()) if is_url(source) else find()
    if found is None:
        raise E5Error(f"{source} is a file, not a model folder")
    files = {}
    for path, info in found.items():
        if info.get("type", "file") != "file" or path.endswith("/"):
            continue  # a folder placeholder object
        rel = posixpath.relpath(path, root)
        if rel.startswith("..") or rel == ".":
            continue
        files[rel] = (path, int(info.get("size") or 0))
    return fs, files


def fetch(source: str, dest: str, *, log=print) -> dict[str, int]:
    """Copy the model folder `source` into the local folder `dest`; counts of what it did."""
    from e5jax.paths import check_folder
    from e5jax.storage import _first_line

    source = str(source).rstrip("/") or str(source)
    try:
        folder = check_folder(dest, "destination")
    except E5Error as e:
        raise E5Error(f"cannot copy {source}: {e}") from None
    fs, files = list_files(source)
    if not files:
        raise E5Error(f"{source}: the folder is empty; nothing to copy")
    if "config.json" not in files:
        raise E5Error(f"{source} has no config.json at its top: not a Hugging Face model folder "
                      f"({len(files)} files, first: {sorted(files)[0]}); nothing copied")
    done = {"files": 0, "bytes": 0, "skipped": 0, "skipped_bytes": 0}
    for rel in sorted(files):
        path, size = files[rel]
        target = folder.joinpath(*rel.split("/"))
        if target.is_file() and target.stat().st_size == size:
            done["skipped"] += 1
            done["skipped_bytes"] += size
            log(f"  skipped {rel} ({_size(size)}, already there)")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}{PART}")
        try:
            try:
                _get_watched(fs, path, part, f"{source}/{rel}")
            except E5Error as e:
                raise E5Error(f"{e}; {done['files']} files copied before it; run again to resume") from None
            except Exception as e:  # noqa: BLE001 - gcsfs/aiohttp/OS errors: one line naming the object
                raise E5Error(f"{source}/{rel}: download failed ({type(e).__name__}: {_first_line(e)}); "
                              f"{done['files']} files copied before it; run again to resume") from e
            got = part.stat().st_size
            if got != size:
                raise E5Error(f"{source}/{rel}: got {got} bytes of {size}; the object changed or the copy "
                              "was cut; run again")
            os.replace(part, target)
        finally:
            if part.exists():
                part.unlink()
        done["files"] += 1
        done["bytes"] += size
        log(f"  copied {rel} ({_size(size)})")
    return done


def _get_watched(fs, path: str, part, name: str) -> None:
    """fs.get_file(path, part) in a daemon thread, stopped (one-line E5Error) when the
    partial file has not grown for the storage timeout: a connection that stalls without
    closing would otherwise hang every worker's setup forever."""
    import threading
    import time

    from e5jax.storage import timeout_s

    limit, out = timeout_s(), {}

    def run():
        try:
            fs.get_file(path, str(part))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = e

    t = threading.Thread(target=run, daemon=True, name=f"e5jax-fetch {name}")
    t.start()
    seen, since = -1, time.monotonic()
    while t.is_alive():
        t.join(min(0.5, limit))
        size = part.stat().st_size if part.exists() else 0
        if size != seen:
            seen, since = size, time.monotonic()
        elif t.is_alive() and time.monotonic() - since > limit:
            raise E5Error(f"{name}: download stalled (no bytes for {limit:.0f} s after {_size(size)}); check the "
                          "network (E5JAX_STORAGE_TIMEOUT_S sets the wait)")
    if "error" in out:
        raise out["error"]


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def _say(line: str) -> None:
    print(line, flush=True)  # each file as it lands (setup.sh's ssh session shows it live)


def run(args: argparse.Namespace) -> int:
    done = fetch(args.source, args.dest, log=(lambda line: None) if args.quiet else _say)
    print(f"{args.source} -> {args.dest}: {_files(done['files'])} copied ({_size(done['bytes'])}), "
          f"{_files(done['skipped'])} already there ({_size(done['skipped_bytes'])})", flush=True)
    return 0
