"""The Python side of `e5jax train`, `e5jax eval` and `e5jax export`, for notebooks.

Reached as `e5jax.train`, `e5jax.evaluate` and `e5jax.export` (see
`e5jax/__init__.py`); `e5jax.load` and `e5jax.Encoder` complete the set. The
examples run in the tests (tests/test_api.py) from the repository root, with
`data_dir` a TFDS folder holding the pair dataset `debian_pairs` (`e5jax
build` made it), `tokenizer_dir` a Hugging Face tokenizer folder, `tmp` a
scratch folder and `workdir` a training workdir.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable, Mapping, Sequence

from e5jax.errors import E5Error


def train(config, workdir: str | os.PathLike, *, overrides: Mapping[str, object] | None = None,
          laptop: bool = False, log: Callable[[str], None] | None = print) -> dict:
    """Train (or resume) like `e5jax train`; returns the final metrics.

    `config`: a preset file (`configs/*.py`) or a `Config`. `overrides`: dotted
    keys as with `--set` (typed values or strings). `laptop`: shrink the preset
    to a smoke run, as `--laptop` does. `log`: where progress lines go (None: nowhere).

    >>> import e5jax
    >>> metrics = e5jax.train("configs/tiny_pretrain.py", f"{tmp}/run", log=None, overrides={
    ...     "data.data_dir": data_dir, "data.name": "debian_pairs",
    ...     "model.tokenizer": tokenizer_dir, "train.steps": 2})
    >>> metrics["loss"] > 0, "heldout_loss" in metrics   # the last step's loss; the held-out split's
    (True, True)
    >>> e5jax.load(f"{tmp}/run").dim   # the trained encoder
    64
    """
    from e5jax.config import Config, load_config, replace
    from e5jax.config import laptop as shrink
    from e5jax.train.loop import train as run

    cfg = config if isinstance(config, Config) else load_config(config)
    if laptop:
        cfg = shrink(cfg)
    cfg = replace(cfg, **dict(overrides or {}))
    return run(cfg, str(workdir), log=log or (lambda line: None))


def evaluate(model, beir: str | os.PathLike | Sequence[str | os.PathLike], *, split: str = "test",
             query_prefix: str = "query: ", passage_prefix: str = "passage: ", max_length: int = 512,
             batch_size: int = 64, top_k: int = 1000, cache_dir: str | os.PathLike | None = None) -> dict:
    """BEIR-format retrieval evaluation, like `e5jax eval`; returns what its `--output` JSON holds.

    `model`: an `Encoder`, or a folder `e5jax.load` takes (export or workdir).
    `beir`: one BEIR-format folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)
    or several. Metrics are fractions (nDCG@10 = 0.5, not 50).

    >>> import e5jax
    >>> r = e5jax.evaluate(workdir, "tests/eval/fixtures/debian_beir")
    >>> r["datasets"]["debian_beir"]["n_docs"], r["datasets"]["debian_beir"]["n_queries"]
    (160, 46)
    >>> 0.0 <= r["average"]["nDCG@10"] <= 1.0
    True
    """
    from e5jax.eval import beir as beir_eval
    from e5jax.loading import load

    folders = [beir] if isinstance(beir, (str, os.PathLike)) else list(beir)
    if not folders:
        raise E5Error("evaluate: give at least one BEIR-format folder")
    for folder in folders:  # a bad dataset fails before the model is loaded
        beir_eval.load_beir(folder, split)
    encoder = load(model) if isinstance(model, (str, os.PathLike)) else model
    results = [beir_eval.evaluate_dataset(
        encoder.encode, folder, model_name=encoder.name, split=split, query_prefix=query_prefix,
        passage_prefix=passage_prefix, max_length=max_length, batch_size=batch_size,
        cache_dir=cache_dir, top_k=top_k) for folder in folders]
    return {
        "model": encoder.name,
        "settings": {"split": split, "query_prefix": query_prefix, "passage_prefix": passage_prefix,
                     "max_length": max_length, "batch_size": batch_size, "top_k": top_k},
        "datasets": {r["name"]: {k: r[k] for k in ("n_docs", "n_queries", "metrics")} for r in results},
        "average": beir_eval.average(results),
        "per_query": {r["name"]: r["per_query"] for r in results},
    }


def export(model, out_dir: str | os.PathLike, *, step: int | None = None,
           max_seq_length: int = 512, query_instruction: str = "", peft: bool = False,
           base_model: str | None = None) -> pathlib.Path:
    """Write a folder `transformers` and `sentence-transformers` load as is, like `e5jax export`.

    `model`: an `Encoder`, or a training workdir (`step`: which checkpoint,
    default the newest). `out_dir` must be new, empty or an earlier export.
    Decoder embedders only (as `--query-instruction` / `--peft`):
    `query_instruction` is the task in the merged export's query prompt;
    `peft=True` writes a LoRA run's adapters alone as a PEFT folder for
    `base_model` (default: the workdir's `model.init`).

    >>> import e5jax, numpy as np
    >>> out = e5jax.export(workdir, f"{tmp}/export")
    >>> sorted(p.name for p in out.glob("*.json"))[:3]
    ['config.json', 'config_sentence_transformers.json', 'e5jax.json']
    >>> a = e5jax.load(out).encode(["free office suite"], prefix="passage: ")
    >>> b = e5jax.load(workdir).encode(["free office suite"], prefix="passage: ")
    >>> bool(np.allclose(a, b, atol=1e-5))   # the export is the same model
    True
    """
    return export_model(model, out_dir, step=step, max_seq_length=max_seq_length,
                        query_instruction=query_instruction, peft=peft, base_model=base_model)[0]


def export_model(model, out_dir, *, step=None, max_seq_length=512, query_instruction="", peft=False,
                 base_model=None, names=("peft", "query_instruction")) -> tuple[pathlib.Path, str]:
    """`export`, for it and `e5jax export` alike: (the folder written, the base model recorded).
    `names`: what the caller calls the two decoder options, for its one-line refusals.
    A workdir's options are checked from its config.json, before the (slow) restore."""
    from e5jax.export import check_output, export_peft
    from e5jax.export import export as write
    from e5jax.loading import load

    is_path = isinstance(model, (str, os.PathLike))
    if step is not None and not is_path:
        raise E5Error("export: step picks a checkpoint of a workdir; it does not apply to a loaded Encoder")
    check_output(out_dir)
    cfg = _workdir_config(model) if is_path else None
    name = str(model) if is_path else (model.name or "this model")
    if cfg is not None:
        from e5jax.train.state import model_family

        _refuse(peft, query_instruction, names, name, decoder=model_family(cfg) == "decoder",
                lora=cfg.model.lora_rank > 0)
        base_model = cfg.model.init if base_model is None else base_model
    else:
        _refuse(peft, query_instruction, names, name)
    encoder = load(model, step=step) if is_path else model
    if cfg is None and (peft or query_instruction):  # an export folder or an Encoder: known once loaded
        from e5jax.decoder_export import is_decoder, lora_spec

        decoder = is_decoder(encoder.model)
        _refuse(peft, query_instruction, names, name, decoder=decoder,
                lora=decoder and lora_spec(encoder.model).rank > 0)
    base_model = base_model or ""
    if peft:
        return export_peft(encoder.model, out_dir, base_model=base_model, tokenizer=encoder.tokenizer), base_model
    return write(encoder.model, encoder.tokenizer, out_dir, max_seq_length=max_seq_length,
                 query_instruction=query_instruction), base_model


def _refuse(peft: bool, query_instruction: str, names, model: str, *, decoder: bool | None = None,
            lora: bool = False) -> None:
    """One-line refusals of the decoder options where they do not apply (`decoder` None: not known yet)."""
    peft_name, instruction_name = names
    if peft and query_instruction:
        raise E5Error(f"{instruction_name} sets the merged export's query prompt; a {peft_name} adapter folder "
                      "has no prompts: give one of the two")
    if decoder is None or not (peft or query_instruction):
        return
    what = peft_name if peft else instruction_name
    if not decoder:
        raise E5Error(f"{what} is for decoder embedders (model.family=decoder); {model} is a BERT-family model: "
                      f"export it without {what}")
    if peft and not lora:
        raise E5Error(f"{peft_name} writes LoRA adapters; {model} has none (model.lora_rank = 0): export the "
                      f"merged weights, without {peft_name}")


def _workdir_config(path):
    """A training workdir's Config, None for an export folder."""
    from e5jax.train.state import is_workdir, workdir_config

    return workdir_config(path) if is_workdir(path) else None
