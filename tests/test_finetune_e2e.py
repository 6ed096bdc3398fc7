"""Fine-tuning end to end on real text (Debian package descriptions).

1. Hard negatives help: from one tiny pre-training checkpoint, the same
   fine-tuning run (steps, seed, batch, data order) with 3 BM25-mined hard
   negatives per query beats the run with in-batch negatives only, on a
   held-out BEIR-format retrieval set (nDCG@10) whose corpus holds every long
   description (see `tests/finetune_data.py`).
2. The E5-small fine-tuning preset, shrunk with --set, fine-tunes from a
   pre-training workdir through the real CLI, resumes, and exports a folder
   that sentence-transformers loads and that embeds like `Encoder`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from e5jax.cli import main
from e5jax.config import load_config
from e5jax.train.loop import train
from tests import finetune_data as fd

PT_STEPS = 150  # tiny pre-training on the training pairs (in-batch negatives)
FT_STEPS = 120  # fine-tuning steps of each of the two compared runs
SEED = 0
MIN_MARGIN = 0.005  # nDCG@10 (0..1) the hard-negative run must win by (seen: +0.018, +0.029 for seeds 0, 1)


@pytest.fixture(scope="module")
def ft_data(tmp_path_factory):
    """Mined fine-tuning records (train packages), the TFDS dataset and the BEIR folder."""
    root = tmp_path_factory.mktemp("ft_data")
    info = fd.build_finetune_dataset(root, k=3, window=(0, 10))
    assert len(info["records"]) > 3000 and info["stats"]["short_negatives"] < 10
    return info


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, minilm_dir):
    """A tiny pre-training workdir: in-batch InfoNCE on the training packages' pairs."""
    root = tmp_path_factory.mktemp("pt")
    data_dir, name = fd.build_pairs_dataset(root / "data")
    cfg = load_config("configs/tiny_pretrain.py", [
        f"data.data_dir={data_dir}", f"data.name={name}", f"model.tokenizer={minilm_dir}",
        "data.num_buckets=1", "train.batch_size=32", f"train.steps={PT_STEPS}",
        "train.checkpoint_every=100000", "train.log_every=1000", "optim.warmup_steps=10"])
    train(cfg, str(root / "work"), log=lambda s: None)
    return root / "work"


def _finetune(workdir, init, data, num_hard_negatives):
    cfg = load_config("configs/tiny_finetune.py", [
        f"model.init={init}", f"data.data_dir={data['data_dir']}", f"data.name={data['name']}",
        f"data.num_hard_negatives={num_hard_negatives}", "data.num_buckets=1",
        f"train.steps={FT_STEPS}", f"train.seed={SEED}", f"data.shuffle_seed={SEED}",
        "train.checkpoint_every=100000", "train.log_every=1000"])
    return train(cfg, str(workdir), log=lambda s: None)


def test_hard_negatives_beat_in_batch_negatives_on_heldout_ndcg(tmp_path, ft_data, pretrained):
    ndcg = {}
    for k in (3, 0):
        _finetune(tmp_path / f"k{k}", pretrained, ft_data, k)
        ndcg[k] = fd.ndcg_at_10(tmp_path / f"k{k}", ft_data["beir"])
    print(f"held-out nDCG@10: hard negatives {ndcg[3]:.4f}, in-batch only {ndcg[0]:.4f}, "
          f"margin {ndcg[3] - ndcg[0]:+.4f}")
    assert ndcg[3] >= ndcg[0] + MIN_MARGIN


# ---------------------------------------------------------------- E5-small preset via the CLI


def _with_teacher_scores(records, n):
    """The first n records; every other one gets (made-up but ordered) teacher scores."""
    out = []
    for i, r in enumerate(records[:n]):
        r = dict(r)
        if i % 2 == 0:
            r["teacher_scores"] = [6.0] + [3.0 - j for j in range(len(r["negatives"]))]
        out.append(r)
    return out


def test_e5_small_finetune_preset_runs_resumes_and_exports(tmp_path, ft_data, pretrained, capsys):
    from e5jax.data.ccpairs.builder import build_dataset
    from e5jax.data.finetune.records import write_records

    write_records(_with_teacher_scores(ft_data["records"], 256), tmp_path / "ft.jsonl")
    build_dataset([tmp_path / "ft.jsonl"], data_dir=tmp_path / "tfds", name="small_ft", kind="finetune",
                  heldout_fraction=0.0)
    work = tmp_path / "work"
    shrink = [
        f"model.init={pretrained}", f"data.data_dir={tmp_path / 'tfds'}", "data.name=small_ft",
        "data.max_query_length=32", "data.max_passage_length=64", "data.num_buckets=1",
        "data.num_hard_negatives=3", "train.batch_size=16", "train.grad_cache_chunk=8",
        "train.checkpoint_every=2", "train.log_every=1", "optim.warmup_steps=2",
    ]

    def run(steps):
        args = ["train", "--config", "configs/e5_small_finetune.py", "--workdir", str(work)]
        for s in shrink + [f"train.steps={steps}"]:
            args += ["--set", s]
        assert main(args) == 0
        return capsys.readouterr().out

    first = run(4)
    assert "resumed from step" not in first and "step 4/4" in first
    second = run(6)
    assert "resumed from step 4 in" in second and "step 6/6" in second
    steps = [json.loads(line)["step"] for line in (work / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
    cfg = json.loads((work / "config.json").read_text())
    assert cfg["model"]["init"] == str(pretrained) and cfg["loss"]["kd_weight"] > 0

    # Started from the pre-training checkpoint: 6 AdamW steps at lr <= 2e-5 move each weight < 2e-4.
    from flax import nnx

    from e5jax.train.state import load_trained

    def params(workdir):
        model, _, _ = load_trained(str(workdir))
        return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}

    before, after = params(pretrained), params(work)
    assert before.keys() == after.keys()
    assert max(float(np.abs(before[k] - after[k]).max()) for k in before) < 2e-4
    assert any(not np.array_equal(before[k], after[k]) for k in before)

    out = tmp_path / "export"
    assert main(["export", "--workdir", str(work), "--output", str(out)]) == 0
    assert "exported to" in capsys.readouterr().out

    from sentence_transformers import SentenceTransformer

    from e5jax.model.encoder import Encoder

    texts = [r["query"] for r in ft_data["records"][:12]] + [r["positive"] for r in ft_data["records"][:12]]
    st = SentenceTransformer(str(out), device="cpu")
    enc = Encoder.from_pretrained(out)
    for prompt in ("query", "passage"):
        want = st.encode(texts, prompt_name=prompt, batch_size=8)
        got = enc.encode(texts, prefix=st.prompts[prompt], max_length=512, batch_size=8)
        assert got.shape == want.shape == (len(texts), 64)
        np.testing.assert_allclose(got, want, atol=1e-5)
