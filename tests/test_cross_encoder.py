"""The cross-encoder teacher reproduces transformers' *ForSequenceClassification
logits (BERT and XLM-R heads), sharded and bucketed, and `e5jax score-teacher`
fills fine-tuning records with those scores."""

import collections
import json

import numpy as np
import pytest
import torch

from e5jax.cli import main
from e5jax.config import MeshConfig
from e5jax.data.finetune.records import make_record, read_records, write_records
from e5jax.errors import E5Error
from e5jax.model import axes as ax
from e5jax.model.cross_encoder import load_cross_encoder
from e5jax.teacher import Teacher, fill_teacher_scores, resolve_label

MAX_LEN = 64
WORDS = ("the a of and to in is for with on how do i what cat dog fish sun moon water river city data "
         "model package library python file system support tool").split()
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789?.,-'()/:")


def _bert_tokenizer():
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + CHARS + ["##" + c for c in CHARS]
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})


def _xlmr_tokenizer():
    from transformers import XLMRobertaTokenizer

    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁" + w, -1.0) for w in WORDS] + [(c, -3.0) for c in CHARS] + [("▁", -2.0), ("<mask>", 0.0)]
    return XLMRobertaTokenizer(vocab=pieces)


def _perturb(model):
    """HF zero-inits biases and one-inits LayerNorm: randomise them so that a
    wrong mapping or a skipped bias/LayerNorm really changes the logits."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            if ("classifier" in name or "pooler" in name) and name.endswith("weight"):
                p.mul_(10.0)  # logits of order 1, so 1e-4 is a real tolerance
    return model.eval()


def _save(tmp_path_factory, name, model, tok):
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def _bert(tmp_path_factory, num_labels):
    from transformers import BertConfig, BertForSequenceClassification

    tok = _bert_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=MAX_LEN, num_labels=num_labels,
                     initializer_range=0.1)
    torch.manual_seed(num_labels)
    model = _perturb(BertForSequenceClassification(cfg))
    return _save(tmp_path_factory, f"bert{num_labels}", model, tok), model, tok


@pytest.fixture(scope="module")
def bert1(tmp_path_factory):
    return _bert(tmp_path_factory, 1)


@pytest.fixture(scope="module")
def bert3(tmp_path_factory):
    return _bert(tmp_path_factory, 3)


@pytest.fixture(scope="module")
def xlmr(tmp_path_factory):
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    tok = _xlmr_tokenizer()
    cfg = XLMRobertaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=MAX_LEN + 2, type_vocab_size=1,
                           pad_token_id=1, num_labels=2, initializer_range=0.1)
    torch.manual_seed(7)
    model = _perturb(XLMRobertaForSequenceClassification(cfg))
    return _save(tmp_path_factory, "xlmr", model, tok), model, tok


@pytest.fixture(scope="module")
def pairs(real_sentences):
    """Real-text pairs of varied length: queries short, passages long (truncated)."""
    texts = [t for t in real_sentences if len(t.split()) >= 8]
    qs = [" ".join(t.split()[:n]) for t, n in zip(texts[:12], [2, 3, 5, 8, 1, 4] * 2)]
    return qs, texts[20:32]


@pytest.fixture(scope="module")
def mesh():
    # fsdp=2 splits the hidden dim of the weights: loading must place each shard.
    return ax.make_mesh(MeshConfig(data=4, fsdp=2))


def _reference(model, tok, queries, passages, max_length=MAX_LEN):
    batch = tok(list(queries), list(passages), padding=True, truncation=True, max_length=max_length,
                return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.numpy()


@pytest.mark.parametrize("fixture", ["bert1", "bert3", "xlmr"])
def test_logits_match_transformers(request, fixture, pairs, mesh):
    path, ref, tok = request.getfixturevalue(fixture)
    queries, passages = pairs
    want = _reference(ref, tok, queries, passages)
    assert want.std() > 0.1  # the tolerance below is meaningful for logits of this spread
    label = None if want.shape[1] == 1 else 0
    teacher = Teacher.from_pretrained(path, mesh=mesh, max_length=MAX_LEN, label=label)
    got = teacher.logits(queries, passages, batch_size=4)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # Passages of very different lengths land in different buckets, yet only a
    # handful of shapes are compiled.
    assert teacher._forward._cache_size() <= 3


def test_model_direct_call_and_sharding(bert3, pairs, mesh):
    """The NNX module itself (no bucketing) on a padded batch, and its params sharded."""
    import jax
    import jax.numpy as jnp

    path, ref, tok = bert3
    queries, passages = pairs
    model = load_cross_encoder(path, mesh=mesh)
    kernel = model.bert.layers[0].attention.query.kernel[...]
    assert kernel.sharding.spec[0] == "fsdp" and len(kernel.addressable_shards) == 8
    assert model.head.out.kernel[...].shape == (64, 3)
    b = tok(queries[:8], passages[:8], padding=True, truncation=True, max_length=MAX_LEN, return_tensors="np")
    got = jax.jit(lambda *a: model(*a))(*(jnp.asarray(b[k]) for k in ("input_ids", "attention_mask",
                                                                      "token_type_ids")))
    np.testing.assert_allclose(np.asarray(got), _reference(ref, tok, queries[:8], passages[:8]), atol=1e-4)
    # token_type_ids are really used: dropping them changes BERT's logits.
    no_types = jax.jit(lambda i, m: model(i, m))(jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"]))
    assert np.abs(np.asarray(no_types) - np.asarray(got)).max() > 1e-3


def test_score_picks_label_column(bert3, pairs, mesh):
    path, ref, tok = bert3
    queries, passages = pairs
    want = _reference(ref, tok, queries, passages)
    by_name = Teacher.from_pretrained(path, mesh=mesh, max_length=MAX_LEN, label="LABEL_2")
    np.testing.assert_allclose(by_name.score(queries, passages, batch_size=8), want[:, 2], atol=1e-4)
    with pytest.raises(E5Error, match="3 labels"):
        Teacher.from_pretrained(path, mesh=mesh, max_length=MAX_LEN)


def test_resolve_label():
    assert resolve_label(["LABEL_0"], None) == 0
    assert resolve_label(["contradiction", "entailment", "neutral"], "entailment") == 1
    assert resolve_label(["a", "b"], "1") == 1
    with pytest.raises(E5Error, match="out of range"):
        resolve_label(["a", "b"], 2)
    with pytest.raises(E5Error, match="not one of"):
        resolve_label(["a", "b"], "c")


def test_fill_keeps_precomputed_and_aligns_scores():
    """Pure bookkeeping with a fake scorer: scores land on the right record and
    slot across chunk boundaries; precomputed scores are never recomputed."""
    recs = [make_record(f"q{i}", f"p{i}", [f"n{i}_{j}" for j in range(i % 3)], "t", str(i)) for i in range(5)]
    recs[2] = make_record("q2", "p2", ["n2_0", "n2_1"], "t", "2", teacher_scores=[9.0, 8.0, 7.0])
    seen = []

    def fake(qs, ps):
        seen.extend(zip(qs, ps))
        return np.array([float(len(q) * 100 + len(p)) + sum(map(ord, p)) % 7 for q, p in zip(qs, ps)])

    counts = collections.Counter()
    out = list(fill_teacher_scores(recs, fake, chunk=2, counts=counts))
    assert [r["id"] for r in out] == ["0", "1", "2", "3", "4"]
    assert out[2]["teacher_scores"] == [9.0, 8.0, 7.0]
    assert all(q != "q2" for q, _ in seen)
    for r in out[:2] + out[3:]:
        texts = [r["positive"], *r["negatives"]]
        assert r["teacher_scores"] == [float(len(r["query"]) * 100 + len(p)) + sum(map(ord, p)) % 7 for p in texts]
    assert (counts["kept"], counts["scored"]) == (1, 4)


# ------------------------------------------------------------------ CLI


def _cli(capsys, argv):
    capsys.readouterr()  # drop what fixtures printed (save_pretrained's progress bar)
    code = main(["score-teacher", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def test_score_teacher_end_to_end(capsys, tmp_path, bert1, real_sentences):
    path, ref, tok = bert1
    s = real_sentences
    recs = [make_record(" ".join(s[i].split()[:4]), s[i + 10], [s[i + 20 + j] for j in range(i % 3 + 1)],
                        "test", f"r{i}") for i in range(5)]
    recs[3] = make_record(recs[3]["query"], recs[3]["positive"], recs[3]["negatives"], "test", "r3",
                          teacher_scores=[0.5] * (1 + len(recs[3]["negatives"])))
    inp, out = tmp_path / "records.jsonl", tmp_path / "scored" / "scored.jsonl"
    write_records(recs, inp)
    code, stdout, err = _cli(capsys, ["--model", str(path), "--input", str(inp), "--output", str(out),
                                      "--batch-size", "3", "--max-length", "48", "--chunk", "2"])
    assert code == 0, err
    assert "4 scored" in stdout and "1 kept" in stdout
    got = list(read_records(out))
    assert [r["id"] for r in got] == [r["id"] for r in recs]
    assert not list(out.parent.glob("*.tmp"))
    for before, after in zip(recs, got):
        if "teacher_scores" in before:
            assert after["teacher_scores"] == before["teacher_scores"]
            continue
        texts = [before["positive"], *before["negatives"]]
        want = _reference(ref, tok, [before["query"]] * len(texts), texts, max_length=48)[:, 0]
        np.testing.assert_allclose(after["teacher_scores"], want, atol=1e-4)
        assert {k: v for k, v in after.items() if k != "teacher_scores"} == before


def test_missing_model_folder(capsys, tmp_path):
    write_records([make_record("q", "p", ["n"], "t", "0")], tmp_path / "in.jsonl")
    code, _, err = _cli(capsys, ["--model", str(tmp_path / "nope"), "--input", str(tmp_path / "in.jsonl"),
                                 "--output", str(tmp_path / "o.jsonl")])
    assert code == 2 and len(err) == 1 and "model folder not found" in err[0]
    assert not (tmp_path / "o.jsonl").exists()


def test_folder_without_classification_head(capsys, tmp_path):
    from transformers import BertConfig, BertModel

    tok = _bert_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=MAX_LEN)
    BertModel(cfg).save_pretrained(str(tmp_path / "enc"))
    tok.save_pretrained(str(tmp_path / "enc"))
    write_records([make_record("q", "p", ["n"], "t", "0")], tmp_path / "in.jsonl")
    code, _, err = _cli(capsys, ["--model", str(tmp_path / "enc"), "--input", str(tmp_path / "in.jsonl"),
                                 "--output", str(tmp_path / "o.jsonl")])
    assert code == 2 and len(err) == 1 and "no classification head" in err[0], err
    assert not (tmp_path / "o.jsonl").exists()


def test_multilabel_without_label_and_empty_input(capsys, tmp_path, bert3):
    path = bert3[0]
    write_records([make_record("q", "p", ["n"], "t", "0")], tmp_path / "in.jsonl")
    code, _, err = _cli(capsys, ["--model", str(path), "--input", str(tmp_path / "in.jsonl"),
                                 "--output", str(tmp_path / "o.jsonl")])
    assert code == 2 and len(err) == 1 and "--label" in err[0]
    (tmp_path / "empty.jsonl").write_text("")
    code, _, err = _cli(capsys, ["--model", str(path), "--input", str(tmp_path / "empty.jsonl"),
                                 "--output", str(tmp_path / "o.jsonl"), "--label", "0"])
    assert code == 2 and len(err) == 1 and "no records" in err[0]
    assert json.loads((tmp_path / "in.jsonl").read_text())["query"] == "q"  # input untouched
