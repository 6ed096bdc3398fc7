"""Write an e5jax encoder as a folder that the PyTorch world loads as is.

`transformers.AutoModel.from_pretrained(dir)` and
`sentence_transformers.SentenceTransformer(dir)` load it with no extra code:
safetensors weights in HF names, `config.json`, the tokenizer, and the
sentence-transformers modules (Transformer → mean/CLS Pooling → Normalize)
with E5's prompts recorded as `{"query": "query: ", "passage": "passage: "}`.

A decoder encoder (Llama / Mistral / Qwen, `model.family=decoder`) is exported
with its LoRA adapters merged into the base weights, last-token pooling and the
E5-mistral query prompt (`Instruct: {task}\nQuery: `, documents get none); or,
`export_peft`, as a PEFT adapter folder for the base model (e5jax/decoder_export.py).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

from e5jax.errors import E5Error
from e5jax.model import hf
from e5jax.model.encoder import TextEncoder, encoder_params
from e5jax.paths import local

E5_PROMPTS = {"query": "query: ", "passage": "passage: "}


def check_output(out_dir: str | os.PathLike) -> pathlib.Path:
    """An export replaces only an earlier export (marked by `e5jax.json`) or an
    empty folder: never a workdir, a dataset or a file someone named by mistake."""
    out = local(out_dir, "--output", "the export is written to a temporary folder and renamed into place")
    if out.exists() and not out.is_dir():
        raise E5Error(f"--output {out} is a file; give a folder to write the export to")
    if out.is_dir() and any(out.iterdir()) and not (out / "e5jax.json").is_file():
        raise E5Error(f"--output {out} is a folder that is not an earlier e5jax export (no e5jax.json); "
                      "refusing to replace it: give a new or empty folder")
    return out


def _into_place(tmp: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """Rename a finished export over `out` (an earlier export is replaced only once the new one is whole)."""
    if out.exists():
        backup = out.with_name(out.name + ".old")
        shutil.rmtree(backup, ignore_errors=True)
        out.rename(backup)
        tmp.rename(out)
        shutil.rmtree(backup)
    else:
        tmp.rename(out)
    return out


def _temporary(out: pathlib.Path) -> pathlib.Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def export_decoder(model, tokenizer, out_dir: str | os.PathLike, *, max_seq_length: int = 512,
                   prompts: dict[str, str] | None = None, query_instruction: str = "") -> pathlib.Path:
    """A decoder encoder with its adapters merged: an HF folder (`AutoModel`: no missing or
    unexpected keys) that `SentenceTransformer` loads with last-token pooling and the query
    prompt `Instruct: {query_instruction}\nQuery: ` (documents: no prompt)."""
    from e5jax import decoder_export as dx
    from e5jax.data.finetune.synthetic import DEFAULT_INSTRUCTION

    out = check_output(out_dir)
    if prompts is None:
        prompts = {"query": dx.query_prompt(query_instruction or DEFAULT_INSTRUCTION), "passage": ""}
    tmp = _temporary(out)
    try:
        dx.write_merged(model, tokenizer, tmp, max_seq_length=max_seq_length, prompts=prompts)
        (tmp / "e5jax.json").write_text(json.dumps({"family": "decoder", "pooling": model.pooling,
                                                    "normalize": model.normalize, "prompts": prompts}, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _into_place(tmp, out)


def export_peft(model, out_dir: str | os.PathLike, *, base_model: str = "", tokenizer=None) -> pathlib.Path:
    """The LoRA adapters alone as a PEFT folder (adapter_config.json + adapter_model.safetensors)
    for `peft.PeftModel.from_pretrained(AutoModel.from_pretrained(base_model), out_dir)`;
    `base_model` (the folder the run started from) is recorded in adapter_config.json."""
    from e5jax import decoder_export as dx

    out = check_output(out_dir)
    tmp = _temporary(out)
    try:
        dx.write_peft(model, tmp, base_model=base_model)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        (tmp / "e5jax.json").write_text(json.dumps({"family": "decoder", "peft": True, "pooling": model.pooling,
                                                    "normalize": model.normalize}, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _into_place(tmp, out)


def export(model: TextEncoder, tokenizer, out_dir: str | os.PathLike, *, max_seq_length: int = 512,
           prompts: dict[str, str] | None = None, query_instruction: str = "") -> pathlib.Path:
    """Export atomically: written to a temporary sibling folder, then renamed,
    so a crash never leaves a half-written model where a good one was.

    A decoder goes to `export_decoder`; `query_instruction` is the task of its query
    prompt (decoders only: a BERT export's prompts are E5's prefixes)."""
    from safetensors.numpy import save_file

    from e5jax.decoder_export import is_decoder

    if is_decoder(model):
        return export_decoder(model, tokenizer, out_dir, max_seq_length=max_seq_length, prompts=prompts,
                              query_instruction=query_instruction)
    if query_instruction:
        raise E5Error("a query instruction is for decoder embedders (E5-mistral); this is a BERT model, "
                      "whose export records E5's \"query: \" / \"passage: \" prefixes")
    out = check_output(out_dir)
    tmp = _temporary(out)
    cfg = model.bert.cfg
    tensors = hf.params_to_hf(cfg, encoder_params(model))
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    hf_cfg = cfg.to_hf()
    hf_cfg["torch_dtype"] = "float32"
    (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    tokenizer.save_pretrained(str(tmp))

    pooling = model.pooling
    write_st_modules(tmp, hidden_size=cfg.hidden_size, pooling=pooling, normalize=model.normalize,
                     max_seq_length=min(max_seq_length, cfg.max_length),
                     prompts=dict(E5_PROMPTS if prompts is None else prompts))
    (tmp / "e5jax.json").write_text(json.dumps({"pooling": pooling, "normalize": model.normalize}, indent=2))
    return _into_place(tmp, out)


def write_st_modules(folder: pathlib.Path, *, hidden_size: int, pooling: str, normalize: bool,
                     max_seq_length: int, prompts: dict[str, str]) -> None:
    """The sentence-transformers files of an export: modules.json (Transformer → Pooling
    [→ Normalize]), the Pooling config, sentence_bert_config.json and the prompts. One
    writer for the BERT and the decoder exports, so both load the same way."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir()
    pool = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    if pooling == "last":
        # The instruction is part of the text the last token summarises.
        pool.update(pooling_mode_lasttoken=True, include_prompt=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pool, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({
        "prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}, indent=2))
