"""Round trip: import → export → sentence-transformers / transformers load it."""

import numpy as np
import pytest

from e5jax.cli import main
from e5jax.export import export
from e5jax.model.encoder import Encoder

MAX_LEN = 64


@pytest.fixture(scope="module")
def exported(minilm_dir, tmp_path_factory):
    enc = Encoder.from_pretrained(minilm_dir)
    out = tmp_path_factory.mktemp("export") / "model"
    export(enc.model, enc.tokenizer, out, max_seq_length=MAX_LEN)
    return out


def test_sentence_transformers_with_prompt_equals_e5jax_embed(exported, real_sentences, tmp_path):
    from sentence_transformers import SentenceTransformer

    texts = [t for t in real_sentences if t.strip()][:40]
    st = SentenceTransformer(str(exported), device="cpu")
    assert st.prompts["query"] == "query: " and st.prompts["passage"] == "passage: "
    want = st.encode(texts, prompt_name="query", batch_size=16)
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")
    out = tmp_path / "out.npy"
    assert main(["embed", "--model", str(exported), "--input", str(inp), "--output", str(out),
                 "--prefix", "query: ", "--max-length", str(MAX_LEN), "--batch-size", "16"]) == 0
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_automodel_loads_with_no_missing_or_unexpected_keys(exported, minilm_dir):
    import torch
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(str(exported), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ref = AutoModel.from_pretrained(str(minilm_dir))
    for (k, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(ref.state_dict().items())):
        assert torch.equal(a, b), k  # the weights survive the round trip bit for bit


def test_embed_jsonl_input(minilm_dir, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"text": "first line"}\n{"text": "second"}\n')
    out = tmp_path / "o.npy"
    assert main(["embed", "--model", str(minilm_dir), "--input", str(inp), "--output", str(out)]) == 0
    got = np.load(out)
    want = Encoder.from_pretrained(minilm_dir).encode(["first line", "second"])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_export_replaces_only_an_earlier_export(exported, minilm_dir, tmp_path, capsys):
    """A mistyped --output (a workdir, a dataset, a file) is refused and left as it
    was; an earlier export (e5jax.json) or an empty folder is replaced."""
    from e5jax.errors import E5Error

    enc = Encoder.from_pretrained(minilm_dir)
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "10").mkdir(parents=True)
    (workdir / "config.json").write_text("{}")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    for target, needle in ((workdir, "not an earlier e5jax export"), (a_file, "is a file")):
        with pytest.raises(E5Error, match=needle):
            export(enc.model, enc.tokenizer, target, max_seq_length=MAX_LEN)
    assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints", "config.json"]
    assert (workdir / "checkpoints" / "10").is_dir() and a_file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "run"]  # no temp or .old leftovers
    # The CLI refuses before restoring anything (a workdir that does not exist is never read).
    capsys.readouterr()
    code = main(["export", "--workdir", str(tmp_path / "missing"), "--output", str(workdir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not an earlier e5jax export" in err[0]
    assert (workdir / "config.json").read_text() == "{}"
    # An earlier export and an empty folder are fine to (re)write.
    (tmp_path / "empty").mkdir()
    for target in (exported, tmp_path / "empty"):
        out = export(enc.model, enc.tokenizer, target, max_seq_length=MAX_LEN)
        assert (out / "e5jax.json").is_file() and (out / "model.safetensors").is_file()
