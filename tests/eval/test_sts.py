"""STS: reading pairs, and `e5jax eval-sts` against sentence-transformers + scipy."""

import json
import pathlib

import numpy as np
import pytest
from scipy import stats

from e5jax import cli
from e5jax.errors import E5Error
from e5jax.eval import sts

PAIRS = pathlib.Path(__file__).parent / "fixtures" / "sts_pairs.tsv"


def test_read_pairs_header_optional(tmp_path):
    s1, s2, gold = sts.read_pairs(PAIRS)
    assert len(s1) == len(s2) == len(gold) == 32 and gold.min() == 0.0
    no_header = tmp_path / "p.tsv"
    no_header.write_text("".join(PAIRS.read_text().splitlines(keepends=True)[1:]))
    assert sts.read_pairs(no_header)[0] == s1


@pytest.mark.parametrize("text,match", [("a\tb\n", "expected"), ("a\tb\t1\nc\td\tx\n", "not a number"),
                                        ("a\tb\t1\n", "at least 2")])
def test_bad_pairs(tmp_path, text, match):
    p = tmp_path / "p.tsv"
    p.write_text(text)
    with pytest.raises(E5Error, match=match):
        sts.read_pairs(p)


def test_correlations_by_hand():
    sims, gold = np.array([0.1, 0.5, 0.3, 0.9]), np.array([1.0, 3.0, 4.0, 5.0])
    r = sts.correlations(sims, gold)
    assert r["pearson"] == pytest.approx(np.corrcoef(sims, gold)[0, 1])
    assert r["spearman"] == pytest.approx(0.8)  # ranks 1,3,2,4 vs 1,2,3,4


def test_eval_sts_equals_sentence_transformers(minilm_dir, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "sts.json"
    assert cli.main(["eval-sts", "--model", str(minilm_dir), "--pairs", str(PAIRS), "--output", str(out)]) == 0
    ours = json.loads(out.read_text())
    assert "spearman" in capsys.readouterr().out

    s1, s2, gold = sts.read_pairs(PAIRS)
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    a, b = st.encode(s1), st.encode(s2)
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert ours["pearson"] == pytest.approx(stats.pearsonr(cos, gold).statistic, abs=1e-4)
    assert ours["spearman"] == pytest.approx(stats.spearmanr(cos, gold).statistic, abs=1e-4)
    assert ours["spearman"] > 0.7  # the hand-graded pairs are easy for a real model


def _no_model_load(monkeypatch):
    """Loading the model means the bad flag was not checked up front: fail the test there."""
    from e5jax.model.encoder import Encoder

    def refuse(cls, *args, **kwargs):
        pytest.fail("the model loaded before the bad input was refused")

    monkeypatch.setattr(Encoder, "from_pretrained", classmethod(refuse))


@pytest.mark.parametrize("flag,value", [("--batch-size", "-2"), ("--batch-size", "0"), ("--max-length", "0")])
def test_eval_sts_refuses_nonpositive_batch_size_and_max_length(tmp_path, capsys, monkeypatch, flag, value):
    _no_model_load(monkeypatch)
    rc = cli.main(["eval-sts", "--model", str(tmp_path), "--pairs", str(PAIRS), flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and flag in err[0] and value in err[0]


@pytest.mark.parametrize("output,match", [("adir", "is a folder"), ("afile/sts.json", "is a file, not a folder")])
def test_eval_sts_output_is_checked_before_the_evaluation(tmp_path, capsys, monkeypatch, output, match):
    _no_model_load(monkeypatch)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("keep me\n")
    rc = cli.main(["eval-sts", "--model", str(tmp_path), "--pairs", str(PAIRS), "--output", str(tmp_path / output)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--output" in err[0] and match in err[0]
    assert (tmp_path / "afile").read_text() == "keep me\n" and not any((tmp_path / "adir").iterdir())


def test_eval_sts_output_in_a_new_folder_is_written(tmp_path, capsys, monkeypatch):
    """The results of the whole evaluation are not lost to a missing output folder."""
    from e5jax.model.encoder import Encoder

    class Fake:
        name = "fake"

        def encode(self, texts, prefix="", *, max_length, batch_size):
            return np.array([[len(t), t.count(" ") + 1.0] for t in texts], np.float32)

    monkeypatch.setattr(Encoder, "from_pretrained", classmethod(lambda cls, *a, **k: Fake()))
    out = tmp_path / "new" / "sub" / "sts.json"
    assert cli.main(["eval-sts", "--model", str(tmp_path), "--pairs", str(PAIRS), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["n_pairs"] == 32
