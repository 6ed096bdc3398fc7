"""Data dirs and inputs on gs:// are found and read through the code training
and building use, against a local folder standing in for the bucket (an fsspec
filesystem registered for gs://, no server)."""

from __future__ import annotations

import importlib
import pathlib
import shutil

import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from e5jax.data.ccpairs import builder, records
from e5jax.data.finetune import records as ft_records
from e5jax.data.harvest.streams import iter_json_records
from e5jax.errors import E5Error
from tests.data.conftest import N_PAIRS, finetune_lines, write_jsonl


@pytest.fixture
def bucket(tmp_path, monkeypatch) -> pathlib.Path:
    """gs://bucket/... is `tmp_path/bucket/...` for everything that goes through
    fsspec (epath's gs:// backend when TensorFlow is absent, as here)."""

    class LocalBucket(DirFileSystem):
        protocol = ("gs", "gcs")

        def __init__(self, *args, **kwargs):  # epath passes gcsfs options (finalize_on_close)
            super().__init__(path=str(tmp_path), fs=LocalFileSystem())

    for name in ("gs", "gcs"):
        # `fsspec.registry` is the read-only view; the module holds the dict.
        monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, name, LocalBucket)
    cached = type(epath_backend.fsspec_backend)._get_filesystem
    cached.cache_clear()  # epath keeps one filesystem per protocol for the process
    LocalBucket.clear_instance_cache()
    yield tmp_path / "bucket"
    cached.cache_clear()


def test_a_dataset_under_a_gs_data_dir_is_found_and_loaded(built, bucket):
    data_dir, name = built
    shutil.copytree(pathlib.Path(data_dir) / name, bucket / "tfds" / name)
    found = builder.dataset_dir("gs://bucket/tfds", name)
    assert str(found) == f"gs://bucket/tfds/{name}/1.0.0"
    # What training (train/loop.py) and the filter call: the split's length comes
    # from the dataset_info.json read through epath. (Its records would be read by
    # ArrayRecord's C++ reader, which only a real bucket or the emulator serves.)
    source = builder.load_source("gs://bucket/tfds", name, "train")
    assert len(source) == len(builder.load_source(data_dir, name, "train"))
    assert builder.load_summary("gs://bucket/tfds", name)["kind"] == "pairs"
    with pytest.raises(E5Error, match=r"no dataset 'other' in gs://bucket/tfds"):
        builder.dataset_dir("gs://bucket/tfds", "other")


def test_pair_shards_on_gs_are_expanded_and_read(pair_shards, bucket):
    shutil.copytree(pair_shards, bucket / "shards" / "nested")
    files = records.expand_inputs(["gs://bucket/shards"])
    assert [str(f) for f in files] == ["gs://bucket/shards/nested/part-0.jsonl", "gs://bucket/shards/nested/part-1.jsonl.gz"]
    kept = sum(
        1
        for i, f in enumerate(files)
        for split in records.SPLITS
        for _ in records.examples_from_file(f, i, kind="pairs", split=split, heldout_fraction=0.1,
                                            max_chars=records.DEFAULT_MAX_CHARS, count=lambda _: None)
    )
    assert kept == N_PAIRS


def test_harvest_and_finetune_inputs_on_gs_are_read(tmp_path, bucket):
    write_jsonl(bucket.parent / "ft.jsonl.gz", finetune_lines(20))
    shutil.copy(bucket.parent / "ft.jsonl.gz", (bucket.mkdir() or bucket) / "ft.jsonl.gz")
    assert len(list(ft_records.read_records("gs://bucket/ft.jsonl.gz"))) == 20
    assert len(list(iter_json_records("gs://bucket/ft.jsonl.gz", 1 << 20))) == 20
    with pytest.raises(E5Error, match="input file not found: gs://bucket/missing.jsonl"):
        ft_records.read_records("gs://bucket/missing.jsonl").__next__()


def test_a_gs_data_dir_without_gcsfs_is_a_one_line_error(monkeypatch):
    """Where gcsfs is not installed the error names it, in one line, not a traceback."""

    def missing(self, name):
        raise ImportError("Please install gcsfs to access Google Storage")

    monkeypatch.setattr(type(epath_backend.fsspec_backend), "_get_filesystem", missing)
    with pytest.raises(E5Error, match=r"^cannot read gs://b/tfds: Please install gcsfs"):
        builder.dataset_dir("gs://b/tfds", "pairs")
