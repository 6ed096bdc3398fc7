"""Paths named on the command line, checked before the work whose results they
will hold: a run must not compute for minutes and then fail to write."""

from __future__ import annotations

import os
import pathlib

from e5jax.errors import E5Error


def is_url(path: str | os.PathLike) -> bool:
    """gs://, s3://, ...: an object store, reached through epath/fsspec, where
    pathlib would fold `gs://b` into `gs:/b` and files cannot be appended to."""
    return "://" in str(path)


def local(path: str | os.PathLike, flag: str, why: str = "is read with local-file APIs") -> pathlib.Path:
    """`path` for what works only on a local (or mounted) file system. A URL
    gets a one-line error naming the fix, instead of the path pathlib would
    make of it (`gs://b/x` becomes `gs:/b/x`, then "not found")."""
    if is_url(path):
        raise E5Error(f"{flag} {path}: {why}; give a local path or a mounted folder (e.g. gcsfuse), not a URL")
    return pathlib.Path(path)


def _check_ancestors(path: pathlib.Path, given: str | os.PathLike, flag: str) -> None:
    """The nearest existing folder at or above `path` is a writable folder (it gets the new ones)."""
    full = path.absolute()
    for folder in (full, *full.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "" if folder == pathlib.Path(given).absolute() else f": {folder}"
                raise E5Error(f"{flag} {given}{where} is a file, not a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise E5Error(f"{flag} {given}: cannot write in folder {folder}")
            return


def check_folder(path: str | os.PathLike, flag: str) -> pathlib.Path:
    """`path` is a local folder, or can be made one."""
    folder = local(path, flag, "is written with local-file APIs")
    _check_ancestors(folder, path, flag)
    return folder


def check_file(path: str | os.PathLike, flag: str = "--output") -> pathlib.Path:
    """`path` can be written as a local file: not a folder, and its folder exists or can be made."""
    p = local(path, flag, "is written with local-file APIs")
    if p.is_dir():
        raise E5Error(f"{flag} {path} is a folder; give a file name")
    _check_ancestors(p.parent, path, flag)
    return p
