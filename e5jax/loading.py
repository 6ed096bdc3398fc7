"""Load a trained model: the one way filter, mine, eval, export, the demo and users do it.

A model lives in one of two kinds of folder:

- a **model folder**: what `e5jax export` writes, or any Hugging Face /
  sentence-transformers folder of the BERT family or of a decoder LLM
  (Llama / Mistral / Qwen2 / Qwen3, `encoder.read_model_config`)
  (`*.safetensors` or `pytorch_model.bin` + `config.json` + the tokenizer);
  local disk only;
- a **training workdir**: what `e5jax train` writes (`config.json` +
  `checkpoints/`), BERT or decoder (LoRA adapters applied as trained);
  local or `gs://` (orbax restores from Cloud Storage).

The module is not called `load.py` on purpose: `e5jax.load` is this module's
`load` function (see `e5jax/__init__.py`), and importing a submodule of that
name would replace the function on the package.
"""

from __future__ import annotations

import os
from typing import Sequence

from e5jax.errors import E5Error
from e5jax.paths import is_url, local


def is_model_folder(folder) -> bool:
    """HF weights in it: an e5jax export, a Hugging Face or sentence-transformers folder."""
    return any(folder.glob("*.safetensors")) or (folder / "pytorch_model.bin").exists()


def load(path: str | os.PathLike, *, step: int | None = None, devices: Sequence | None = None,
         dtype: str | None = None):
    """An `Encoder` (the model + its tokenizer) from an export folder or a training workdir.

    `step`: a workdir's checkpoint to load (default: its newest). `devices`: the
    devices to hold the model and split each batch over (default: this
    process's first device). `dtype`: the compute dtype, e.g. "float32"
    (default: `default_dtype()`, bf16 where the hardware has it; parameters
    stay fp32), the same for both kinds of folder, so a workdir and its export
    give the same embeddings. `.model` and `.tokenizer` are the parts.

    >>> import e5jax
    >>> enc = e5jax.load(workdir)                     # a training workdir (or: an export folder)
    >>> emb = enc.encode(["how to resize a partition"], prefix="query: ")
    >>> emb.shape, round(float((emb ** 2).sum()), 4)  # one unit-length vector per text
    ((1, 64), 1.0)
    """
    import jax

    from e5jax.config import MeshConfig
    from e5jax.model import axes as ax
    from e5jax.model.encoder import Encoder, default_dtype
    from e5jax.train.state import is_workdir

    dtype = dtype or default_dtype()
    mesh = ax.make_mesh(MeshConfig(), list(devices) if devices else jax.local_devices()[:1])
    if is_workdir(str(path)):  # before any local-disk check: a workdir may be on gs://
        model, tokenizer, _ = restore_workdir(str(path), mesh=mesh, step=step, dtype=dtype)
        name = str(path) if is_url(str(path)) else str(local(path, "model").resolve())
        return Encoder(model, tokenizer, name=name, mesh=mesh)
    folder = local(path, "model", "an exported model folder is read from local disk (a training workdir may be on gs://)")
    if not folder.exists():
        raise E5Error(f"{path} does not exist; give an exported model folder or a training workdir")
    if not folder.is_dir():
        raise E5Error(f"{path} is a file; give an exported model folder or a training workdir")
    if not is_model_folder(folder):
        raise E5Error(f"{path} is neither a model folder (no *.safetensors or pytorch_model.bin: write one with "
                      "`e5jax export`) nor an e5jax training workdir (no config.json + checkpoints/)")
    if step is not None:
        raise E5Error(f"step={step} picks a checkpoint of a training workdir; {path} is an exported model folder")
    return Encoder.from_pretrained(folder, dtype=dtype, mesh=mesh)


def restore_workdir(workdir: str, *, mesh=None, step: int | None = None, dtype: str | None = None):
    """(TextEncoder, tokenizer, Config) from a workdir's newest (or given) checkpoint, restored
    onto `mesh` (default: one device) whatever mesh saved it. `dtype` replaces the run's
    compute dtype (parameters are fp32 either way). The lower-level half of `load`: training
    code that needs the Config too (fine-tuning from a pre-training run) calls it."""
    import jax
    from flax import nnx

    from e5jax.config import MeshConfig, replace
    from e5jax.model import axes as ax
    from e5jax.train import checkpoint as ckpt
    from e5jax.train.state import abstract_state, load_tokenizer, workdir_config

    cfg = workdir_config(workdir)
    if dtype:
        cfg = replace(cfg, **{"model.dtype": dtype})
    mesh = mesh or ax.make_mesh(MeshConfig(), jax.devices()[:1])
    # The checkpoint holds the optimizer too: restore into the whole train state's shapes.
    graphdef, abstract, shardings = abstract_state(cfg, mesh)
    mngr = ckpt.manager(workdir, keep=cfg.train.keep_checkpoints)
    try:
        _, state = ckpt.restore(mngr, abstract, shardings, step=step)
    finally:
        mngr.close()
    model, _ = nnx.merge(graphdef, state)
    return model, load_tokenizer(cfg), cfg
