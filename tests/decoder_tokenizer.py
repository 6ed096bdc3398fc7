"""A small byte-level BPE tokenizer for decoder tests and benchmarks.

No Llama / Mistral / Qwen tokenizer is on this machine (and tests never use a
model hub), so tests train one with the `tokenizers` library on the repository's
real text (tests/fixtures: Debian package descriptions) in about a second. It has
what a decoder embedder needs from its tokenizer: byte-level BPE like Llama 3 /
Qwen (any text encodes), `<pad>` = 0, `<s>` = 1, `</s>` = 2 (Mistral's ids), and
its post-processor appends `</s>` to every text. The EOS is then appended by the
tokenizer itself (after truncation, so it is always the last token), and e5jax's
pipeline and `Encoder`, `transformers` and `sentence-transformers` all tokenize
through this same tokenizer.json: the EOS is honoured identically by all three.
"""

from __future__ import annotations

import os
import pathlib
import shutil

VOCAB_SIZE = 2048  # configs/tiny_decoder.json's vocab_size
PAD, BOS, EOS = "<pad>", "<s>", "</s>"


def build_tokenizer(out_dir: str | pathlib.Path, vocab_size: int = VOCAB_SIZE) -> pathlib.Path:
    """Train, wrap as a `PreTrainedTokenizerFast` and save to `out_dir` (returned)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.fixtures.real_text import debian_records

    out = pathlib.Path(out_dir)
    if (out / "tokenizer.json").is_file():
        return out
    texts = [t for r in debian_records() for t in (r["short"], r["long"])]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}",
                                                       special_tokens=[(EOS, tok.token_to_id(EOS))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   padding_side="right")
    # Saved beside and renamed into place: parallel test workers may build it at once.
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    fast.save_pretrained(str(tmp))
    try:
        tmp.rename(out)
    except OSError:  # another process got there first: same inputs, same tokenizer
        shutil.rmtree(tmp, ignore_errors=True)
    return out


INSTRUCTION = "Given a Debian package summary, retrieve the package description"


def debian_decoder_records(n: int, start: int = 0, instruction: str = INSTRUCTION) -> list[dict]:
    """Real fine-tuning records for decoder tests: query = instructed package summary
    (the E5-mistral template), positive = its description, negative = the description of
    a package far away in the file (neighbours are often siblings, libfoo / libfoo-dev, with
    near-identical descriptions: as negatives they would contradict the positives)."""
    from e5jax.data.finetune.synthetic import format_query
    from tests.fixtures.real_text import debian_records

    recs = debian_records()
    out = []
    for i in range(start, start + n):
        r, other = recs[i % len(recs)], recs[(i + len(recs) // 2) % len(recs)]
        out.append({"query": format_query(r["short"], instruction), "positive": r["long"],
                    "negatives": [other["long"]], "source": "debian", "id": r["package"]})
    return out
