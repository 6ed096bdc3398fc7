"""The first stage of the pod workflow on gs://: `e5jax harvest --beam` (DirectRunner)
reads dump files from the bucket and writes its pair shards and summary there, and
`e5jax build --pairs gs://...` builds them into a gs:// data dir — the same pairs
and the same dataset as the local route. A local (non-Beam) harvest refuses gs://
in one line naming --beam."""

from __future__ import annotations

import json

import fsspec
import pytest

from e5jax.cli import main
from tests.harvest import formats
from tests.harvest.helpers import read_pairs


def _upload(paths: list[str], url: str) -> list[str]:
    fs = fsspec.filesystem("gs", skip_instance_cache=True)
    out = []
    for p in paths:
        dest = f"{url}/{p.rsplit('/', 1)[1]}"
        fs.put_file(p, dest)
        out.append(dest)
    return out


def _remote_pairs(url: str) -> list[dict]:
    fs = fsspec.filesystem("gs", skip_instance_cache=True, use_listings_cache=False)
    rows = []
    for name in sorted(fs.glob(f"{url}/pairs-*")):
        with fs.open(name, "rb", compression="infer") as f:
            rows += [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
    return rows


def _key(p: dict) -> tuple:
    return p["id"], p["query"], p["passage"], p["source"]


def test_beam_harvest_reads_and_writes_the_bucket_and_builds_from_it(gcs_bucket, tmp_path):
    pytest.importorskip("apache_beam")
    from e5jax.data.ccpairs.builder import load_source

    local_inputs = formats.write_reddit(tmp_path)
    remote_inputs = _upload(local_inputs, f"{gcs_bucket}/dumps/reddit")
    remote_out = f"{gcs_bucket}/pairs/reddit"
    assert main(["harvest", "reddit", "--input", *local_inputs, "--output", str(tmp_path / "local")]) == 0
    assert main(["harvest", "reddit", "--beam", "--input", *remote_inputs, "--output", remote_out]) == 0

    local, remote = read_pairs(tmp_path / "local"), _remote_pairs(remote_out)
    assert local and sorted(map(_key, remote)) == sorted(map(_key, local))
    fs = fsspec.filesystem("gs", skip_instance_cache=True, use_listings_cache=False)
    summary = json.loads(fs.cat_file(f"{remote_out}/summary.json"))
    assert summary["kept"] == len(local)

    # The harvested shards in the bucket are the build's input, and its output is the bucket too.
    shards = sorted(fs.glob(f"{remote_out}/pairs-*"))
    assert main(["build", "--pairs", *(f"gs://{s}" for s in shards), "--data-dir", f"{gcs_bucket}/tfds-harvest",
                 "--name", "reddit_pairs", "--heldout-fraction", "0"]) == 0
    built = load_source(f"{gcs_bucket}/tfds-harvest", "reddit_pairs", "train")
    queries = sorted(str(built[i]["query"], "utf-8") if isinstance(built[i]["query"], bytes) else str(built[i]["query"])
                     for i in range(len(built)))
    assert queries == sorted(p["query"] for p in local)


def test_a_local_harvest_refuses_the_bucket_in_one_line(gcs_bucket, capsys):
    rc = main(["harvest", "reddit", "--input", f"{gcs_bucket}/dumps/reddit/RS_2023-01.zst",
               "--output", f"{gcs_bucket}/pairs/x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--beam" in err[0] and "gs://" in err[0], err
