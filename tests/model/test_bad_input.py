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
