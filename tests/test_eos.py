"""Last-token pooling pools an appended EOS: `e5jax.model.eos.ensure_eos` makes a tokenizer
that does not append one (Mistral-7B-v0.1 / Llama add only the BOS, Qwen nothing) append it,
keeping the BOS, within truncation, and in the folder an export saves. The tokenizers are the
test decoder tokenizer (tests/decoder_tokenizer.py) with Mistral's and Qwen's post-processing."""

from __future__ import annotations

import pathlib

import pytest

from e5jax.errors import E5Error
from e5jax.model.eos import appends_eos, ensure_eos
from tests.decoder_tokenizer import build_tokenizer
from tests.fixtures.real_text import debian_records

BOS_ID, EOS_ID = 1, 2


def _variant(tmp: pathlib.Path, kind: str) -> pathlib.Path:
    """A tokenizer folder: "mistral" (LlamaTokenizerFast, `<s> $A`, add_eos_token off), "qwen"
    (nothing added), "no_eos" (nothing added and no eos_token)."""
    from tokenizers import Tokenizer, processors
    from transformers import LlamaTokenizerFast, PreTrainedTokenizerFast

    base = build_tokenizer(tmp.parent / "decoder_tokenizer")
    tj = Tokenizer.from_file(str(base / "tokenizer.json"))
    if kind == "mistral":
        tj.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                          special_tokens=[("<s>", BOS_ID)])
        tok = LlamaTokenizerFast(tokenizer_object=tj, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                 add_bos_token=True, add_eos_token=False)
    else:
        tj.post_processor = None
        tok = PreTrainedTokenizerFast(tokenizer_object=tj, bos_token="<s>", pad_token="<pad>",
                                      eos_token=None if kind == "no_eos" else "</s>")
    out = tmp / kind
    tok.save_pretrained(str(out))
    return out


def _texts() -> list[str]:
    return [r["long"] for r in debian_records()[:8]]


@pytest.mark.parametrize("kind, bos", [("mistral", True), ("qwen", False)])
def test_ensure_eos_appends_it_keeps_the_bos_truncates_around_it_and_saves_it(kind, bos, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(_variant(tmp_path, kind)))
    before = tok(_texts())["input_ids"]
    assert not appends_eos(tok) and all(ids[-1] != EOS_ID for ids in before)
    ensure_eos(tok)
    after = tok(_texts())["input_ids"]
    assert [ids[:-1] for ids in after] == before and all(ids[-1] == EOS_ID for ids in after)
    assert all((ids[0] == BOS_ID) == bos for ids in after)
    cut = tok(_texts(), truncation=True, max_length=12)["input_ids"]
    assert all(len(ids) == 12 and ids[-1] == EOS_ID for ids in cut)  # room kept for the EOS
    tok.save_pretrained(str(tmp_path / "saved"))  # what an export writes
    again = AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    assert again(_texts())["input_ids"] == after


def test_a_tokenizer_without_eos_is_refused_in_one_line(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(_variant(tmp_path, "no_eos")))
    with pytest.raises(E5Error, match="has no eos_token") as e:
        ensure_eos(tok, "the tokenizer in X")
    assert "\n" not in str(e.value)


def test_training_and_encoder_tokenizers_end_in_eos_only_for_last_pooling(tmp_path):
    """`load_tokenizer` (training, filter, mine, eval, export of a workdir) appends the EOS when
    model.pooling='last' and leaves a mean-pooling run's tokenizer as it is; so does
    `Encoder.from_pretrained` for a plain decoder folder."""
    import json

    from e5jax.config import load_config, replace
    from e5jax.model.encoder import Encoder
    from e5jax.train.state import load_tokenizer

    folder = _variant(tmp_path, "mistral")
    root = pathlib.Path(__file__).resolve().parent.parent
    cfg = replace(load_config(root / "configs" / "tiny_decoder_finetune.py"), **{"model.tokenizer": str(folder)})
    assert cfg.model.pooling == "last"
    assert all(ids[-1] == EOS_ID for ids in load_tokenizer(cfg)(_texts())["input_ids"])
    mean = load_tokenizer(replace(cfg, **{"model.pooling": "mean"}))
    assert not appends_eos(mean)

    # A plain Mistral-style HF folder: random tiny weights from the test config, this tokenizer.
    import numpy as np
    import torch
    from transformers import MistralConfig, MistralModel

    arch = json.loads((root / "configs" / "tiny_decoder.json").read_text())
    torch.manual_seed(0)
    hf = MistralModel(MistralConfig(**{k: v for k, v in arch.items() if k not in ("architectures", "model_type")}))
    plain = tmp_path / "plain"
    hf.save_pretrained(str(plain))
    for p in folder.iterdir():
        (plain / p.name).write_bytes(p.read_bytes())
    enc = Encoder.from_pretrained(plain, dtype="float32")
    ids = enc.tokenize(_texts(), max_length=16)
    assert all(len(x) <= 16 and x[-1] == EOS_ID and x[0] == BOS_ID for x in ids)
    assert np.isfinite(enc.encode(_texts()[:2], max_length=16)).all()
