"""A small real pair dataset (Debian package descriptions) built once per session."""

import json

import pytest

from tests.fixtures.real_text import debian_records


@pytest.fixture(scope="session")
def pair_dataset(tmp_path_factory):
    from e5jax.data.ccpairs.builder import build_dataset

    root = tmp_path_factory.mktemp("pairs")
    with open(root / "pairs.jsonl", "w") as f:
        for r in debian_records():
            f.write(json.dumps({"query": r["short"], "passage": r["long"], "source": "debian"}) + "\n")
    build_dataset([root / "pairs.jsonl"], data_dir=root / "tfds", name="debian_pairs", heldout_fraction=0.1)
    return root / "tfds", "debian_pairs"


@pytest.fixture(scope="session")
def tiny_overrides(pair_dataset, minilm_dir):
    data_dir, name = pair_dataset
    # One row block, not the CPU default of two: two compile every packed encoder
    # pass twice, and compilation is what these tests spend their time on. That
    # blocks change nothing is tested in tests/model/test_packing.py, and the
    # default at the step level in test_packed_step.py.
    return [f"data.data_dir={data_dir}", f"data.name={name}", f"model.tokenizer={minilm_dir}", "model.row_blocks=1"]
