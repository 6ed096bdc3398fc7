"""Last-token pooling needs every text to end in the EOS; not every decoder tokenizer appends it.

E5-mistral pools the hidden state of an EOS appended to each text (its released tokenizer
sets `add_eos_token`), but Mistral-7B-v0.1's and Llama's own tokenizers add only the BOS,
and Qwen's add nothing: trained with those as they are, "last" would pool whatever word a
text happened to end on. `ensure_eos` makes the tokenizer itself append the EOS, so that
truncation keeps room for it (the fast tokenizer counts post-processor tokens) and so that
the tokenizer an export saves does the same in `transformers` and `sentence-transformers`.
"""

from __future__ import annotations

from e5jax.errors import E5Error

_PROBE = "a"


def appends_eos(tok) -> bool:
    ids = tok(_PROBE)["input_ids"]
    return bool(ids) and tok.eos_token_id is not None and ids[-1] == tok.eos_token_id


def ensure_eos(tok, where: str = "the tokenizer"):
    """`tok`, changed in place if needed so that every encoded text ends in its EOS (BOS kept
    where it had one). One-line E5Error when the tokenizer has no EOS or cannot be changed."""
    if tok.eos_token is None or tok.eos_token_id is None:
        raise E5Error(f"{where} has no eos_token; last-token pooling (model.pooling='last') pools the EOS "
                      "appended to each text: set eos_token in its tokenizer_config.json")
    head = tok(_PROBE)["input_ids"][:1]  # the BOS, where the tokenizer adds one, must stay first

    def right() -> bool:
        return appends_eos(tok) and tok(_PROBE)["input_ids"][:1] == head

    if appends_eos(tok):
        return tok
    had_bos = tok.bos_token_id is not None and head == [tok.bos_token_id]
    if hasattr(tok, "add_eos_token"):  # Llama / Mistral tokenizers: the flag persists in tokenizer_config.json
        try:
            tok.add_eos_token = True
            if hasattr(tok, "add_bos_token"):
                tok.add_bos_token = had_bos
        except (AttributeError, TypeError, ValueError):
            pass
    if not right() and getattr(tok, "is_fast", False):  # any fast tokenizer: its post-processor
        from tokenizers import processors

        bos, eos = tok.bos_token, tok.eos_token
        prefix = f"{bos} " if had_bos else ""
        special = [(eos, tok.eos_token_id)] + ([(bos, tok.bos_token_id)] if had_bos else [])
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{prefix}$A {eos}", pair=f"{prefix}$A {eos} $B {eos}", special_tokens=special)
    if not right():
        raise E5Error(f"{where} does not append its EOS ({tok.eos_token!r}) and e5jax cannot make it: use a fast "
                      "(tokenizer.json) tokenizer, or one whose post-processor appends the EOS")
    return tok
