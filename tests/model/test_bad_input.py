"""Bad input ends with one clear line naming the problem, not a traceback."""

import json
import shutil

import numpy as np
import pytest

from e5jax.cli import main


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_missing_model_folder(capsys, tmp_path):
    (tmp_path / "in.txt").write_text("hello\n")
    code, err = _run(capsys, ["embed", "--model", str(tmp_path / "nope"), "--input", str(tmp_path / "in.txt"),
                              "--output", str(tmp_path / "o.npy")])
    assert code == 2 and len(err) == 1 and "model folder not found" in err[0]


def test_unsupported_architecture(capsys, tmp_path, minilm_dir):
    model = tmp_path / "m"
    shutil.copytree(minilm_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (model / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "in.txt").write_text("hello\n")
    code, err = _run(capsys, ["embed", "--model", str(model), "--input", str(tmp_path / "in.txt"),
                              "--output", str(tmp_path / "o.npy")])
    assert code == 2 and len(err) == 1 and "unsupported architecture" in err[0] and "gpt2" in err[0]


def test_config_weight_shape_mismatch(capsys, tmp_path, minilm_dir):
    model = tmp_path / "m"
    shutil.copytree(minilm_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["intermediate_size"] = 1024
    (model / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "in.txt").write_text("hello\n")
    code, err = _run(capsys, ["embed", "--model", str(model), "--input", str(tmp_path / "in.txt"),
                              "--output", str(tmp_path / "o.npy")])
    assert code == 2 and len(err) == 1 and "shape mismatch" in err[0] and "intermediate.dense" in err[0]


def test_empty_input_file(capsys, tmp_path, minilm_dir):
    (tmp_path / "in.txt").write_text("")
    out = tmp_path / "o.npy"
    code, err = _run(capsys, ["embed", "--model", str(minilm_dir), "--input", str(tmp_path / "in.txt"),
                              "--output", str(out)])
    assert code == 2 and len(err) == 1 and "is empty" in err[0]
    assert not out.exists()


def test_pytorch_bin_checkpoint_loads(tmp_path, minilm_dir):
    """pytorch_model.bin works where torch is installed."""
    import torch
    from safetensors.torch import load_file

    model = tmp_path / "m"
    shutil.copytree(minilm_dir, model)
    torch.save(load_file(str(model / "model.safetensors")), str(model / "pytorch_model.bin"))
    (model / "model.safetensors").unlink()
    from e5jax.model.encoder import Encoder

    a = Encoder.from_pretrained(model).encode(["a test"])
    b = Encoder.from_pretrained(minilm_dir).encode(["a test"])
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("bad", ["notjson"])
def test_broken_config_json(capsys, tmp_path, minilm_dir, bad):
    model = tmp_path / "m"
    shutil.copytree(minilm_dir, model)
    (model / "config.json").write_text(bad)
    (tmp_path / "in.txt").write_text("hello\n")
    code, err = _run(capsys, ["embed", "--model", str(model), "--input", str(tmp_path / "in.txt"),
                              "--output", str(tmp_path / "o.npy")])
    assert code == 2 and len(err) == 1 and "config.json is not valid JSON" in err[0]


def test_remote_model_folders_are_refused_with_the_fix(monkeypatch, minilm_dir):
    """HF folders are read with local-file APIs: a gs:// one is named, with the fix,
    instead of failing on a mangled path ("gs:/b/...") deep inside a loader."""
    import importlib.util

    from e5jax.config import Config, ModelConfig
    from e5jax.errors import E5Error
    from e5jax.train import state

    cfg = Config(model=ModelConfig(init=str(minilm_dir), tokenizer="gs://b/tok"))
    with pytest.raises(E5Error, match=r"^model\.tokenizer=gs://b/tok: .*local disk.*setup\.sh --weights$"):
        state.load_tokenizer(cfg)
    if importlib.util.find_spec("gcsfs") is None:
        # Deciding whether gs://... is a training workdir needs gcsfs: say so, in one line.
        with pytest.raises(E5Error, match=r"^cannot read gs://b/bert-base-uncased: .*gcsfs"):
            state.is_workdir("gs://b/bert-base-uncased")
    monkeypatch.setattr(state, "is_workdir", lambda path: False)  # what gcsfs answers for an HF folder
    cfg = Config(model=ModelConfig(init="gs://b/bert-base-uncased"))
    for load in (state.bert_config, state.load_tokenizer):
        with pytest.raises(E5Error, match=r"^model\.init=gs://b/bert-base-uncased: .*local disk"):
            load(cfg)


def _no_model_load(monkeypatch):
    """Loading the model means the bad flag was not checked up front: fail the test there."""
    from e5jax.model.encoder import Encoder

    def refuse(cls, *args, **kwargs):
        pytest.fail("the model loaded before the bad input was refused")

    monkeypatch.setattr(Encoder, "from_pretrained", classmethod(refuse))


@pytest.mark.parametrize("flag,value", [("--batch-size", "-4"), ("--batch-size", "0"),
                                        ("--max-length", "0"), ("--max-length", "1")])
def test_embed_refuses_nonpositive_batch_size_and_max_length(capsys, tmp_path, minilm_dir, monkeypatch, flag, value):
    _no_model_load(monkeypatch)
    (tmp_path / "in.txt").write_text("hello\n")
    out = tmp_path / "o.npy"
    code, err = _run(capsys, ["embed", "--model", str(minilm_dir), "--input", str(tmp_path / "in.txt"),
                              "--output", str(out), flag, value])
    assert code == 2 and len(err) == 1 and flag in err[0] and value in err[0]
    assert not out.exists()


def test_encode_refuses_nonpositive_batch_size_and_max_length(minilm_dir):
    from e5jax.errors import E5Error
    from e5jax.model.encoder import Encoder

    enc = Encoder.from_pretrained(minilm_dir)
    for kwargs, what in [({"batch_size": 0}, "batch_size"), ({"batch_size": -4}, "batch_size"),
                         ({"max_length": 0}, "max_length"), ({"max_length": 1}, "max_length")]:
        for texts in (["a test"], []):  # an empty input is no excuse for a bad argument
            with pytest.raises(E5Error, match=rf"^{what} must be >= \d.*got {list(kwargs.values())[0]}$"):
                enc.encode(texts, **kwargs)
    # None is the encoder's default length; an explicit short one is honoured, not replaced by it
    np.testing.assert_allclose(enc.encode(["a test"], max_length=None), enc.encode(["a test"]), atol=1e-6)
    long_text = "the quick brown fox jumps over the lazy dog " * 4
    assert not np.allclose(enc.encode([long_text], max_length=4), enc.encode([long_text]), atol=1e-3)


def test_embed_output_without_npy_suffix_reports_the_file_written(capsys, tmp_path, minilm_dir):
    (tmp_path / "in.txt").write_text("hello\nworld\n")
    code = main(["embed", "--model", str(minilm_dir), "--input", str(tmp_path / "in.txt"),
                 "--output", str(tmp_path / "sub" / "emb")])
    out = capsys.readouterr().out
    assert code == 0 and np.load(tmp_path / "sub" / "emb.npy").shape == (2, 384)
    assert out.strip().endswith(f"to {tmp_path / 'sub' / 'emb.npy'}")
    assert not (tmp_path / "sub" / "emb").exists()


@pytest.mark.parametrize("output", ["adir", "afile/o.npy", "adir2"])
def test_embed_output_that_cannot_be_a_file_is_refused_first(capsys, tmp_path, minilm_dir, monkeypatch, output):
    _no_model_load(monkeypatch)
    (tmp_path / "in.txt").write_text("hello\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir2.npy").mkdir()  # what np.save would write `--output adir2` to
    (tmp_path / "afile").write_text("keep me\n")
    code, err = _run(capsys, ["embed", "--model", str(minilm_dir), "--input", str(tmp_path / "in.txt"),
                              "--output", str(tmp_path / output)])
    assert code == 2 and len(err) == 1 and "--output" in err[0]
    assert ("is a file, not a folder" if output.startswith("afile") else "is a folder") in err[0]
    assert not (tmp_path / "adir.npy").exists() and list((tmp_path / "adir").iterdir()) == []
    assert (tmp_path / "afile").read_text() == "keep me\n"
