"""The trainer, told in sections: Mesh → Input → Model/Opt → Step → Checkpoint → Loop → Eval.

`train(cfg, workdir)` pre-trains or fine-tunes (fine-tuning = a dataset with
hard negatives and, optionally, teacher scores). It resumes from the newest
checkpoint in `workdir` by itself, so the same command restarts a killed run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zlib
from collections.abc import Callable

import jax
import numpy as np
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from e5jax.config import Config
from e5jax.errors import E5Error
from e5jax.model import axes as ax
from e5jax.storage import check_reachable
from e5jax.train import checkpoint as ckpt
from e5jax.train.metrics import MetricWriter, Progress
from e5jax.train.optimizer import schedule
from e5jax.train.state import (abstract_state, bert_config, compute_dtype, create_state, load_tokenizer,
                               workdir_config)
from e5jax.train.step import make_eval_step, make_train_step


def maybe_initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """Multi-host JAX: from flags, or by itself where the environment asks (TPU VM pods)."""
    if coordinator:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise E5Error("--coordinator needs --num-processes N and --process-id in [0, N)")
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    elif _on_tpu_vm() or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        # Cloud TPU VMs (one host or a pod slice): JAX discovers the other hosts and
        # the topology from the TPU metadata by itself. Must run before any device use.
        jax.distributed.initialize()


def _on_tpu_vm() -> bool:
    """TPU chips are visible as /dev/accel* (v2-v4) or /dev/vfio/N (v5e and later)."""
    import glob

    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _host_batch_size(cfg: Config) -> int:
    n = jax.process_count()
    if cfg.train.batch_size % n:
        raise E5Error(f"train.batch_size={cfg.train.batch_size} is not divisible by the {n} processes")
    return cfg.train.batch_size // n


def _local_batch_shards(mesh) -> int:
    """How many shards of the batch axes this process's devices hold."""
    return max(1, mesh.shape["data"] * mesh.shape["fsdp"] // jax.process_count())


def pack_groups(cfg: Config, mesh, *, train: bool) -> int:
    """Packing groups per host batch: one per (local batch shard, gradient-cache chunk).

    A device's rows then hold only its own texts, and a chunk's only its own."""
    chunks = cfg.train.batch_size // cfg.train.grad_cache_chunk if train and cfg.train.grad_cache_chunk else 1
    return _local_batch_shards(mesh) * chunks


def _iterators(cfg: Config, tokenizer, split: str, *, train: bool, mesh):
    from e5jax.data.ccpairs.builder import dataset_dir, load_source
    from e5jax.data.pipeline import make_eval_iterator, make_train_iterator
    from e5jax.storage import check_shards

    # The C++ shard reader takes a missing gs:// shard for an empty one: check first.
    check_shards(dataset_dir(cfg.data.data_dir, cfg.data.name), split)
    source = load_source(cfg.data.data_dir, cfg.data.name, split)
    kw = dict(tokenizer=tokenizer, cfg=cfg.data, batch_size_per_process=_host_batch_size(cfg),
              process_index=jax.process_index(), process_count=jax.process_count(),
              pack_groups=pack_groups(cfg, mesh, train=train))
    if train:
        return make_train_iterator(source, seed=cfg.data.shuffle_seed, pack_blocks=_local_batch_shards(mesh), **kw)
    return make_eval_iterator(source, **kw)


def _scalars(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def fingerprint(batch: dict[str, np.ndarray]) -> int:
    """crc32 of this host's token ids: tells (in metrics.jsonl) which data a step saw."""
    crc = 0
    for k in sorted(batch):
        if k.endswith("input_ids"):
            crc = zlib.crc32(np.ascontiguousarray(batch[k]).tobytes(), crc)
    return crc


def _real_tokens(batch: dict[str, np.ndarray]) -> int:
    counts = [v.sum() for k, v in batch.items() if k.endswith(("attention_mask", "_lengths"))]
    return int(sum(counts)) * jax.process_count()


def jit_steps(cfg: Config, graphdef, mesh, shardings, *, wrap=lambda f: f):
    """The one place where jit, shardings and donation are applied.

    `wrap` decorates the pure step before jit (tests count traces with it)."""
    batch_sharding = NamedSharding(mesh, P(ax.BATCH_AXES))
    step_fn = jax.jit(wrap(make_train_step(cfg, graphdef, mesh)), in_shardings=(shardings, batch_sharding),
                      out_shardings=(shardings, None), donate_argnums=(0,))
    eval_fn = jax.jit(make_eval_step(cfg, graphdef, mesh), in_shardings=(shardings, batch_sharding))
    return step_fn, eval_fn


def _check_same_model(cfg: Config, workdir: epath.Path) -> None:
    """Resuming: the model must be the one the checkpoints hold (else orbax fails
    deep in a tree of mismatched shapes)."""
    path = workdir / "config.json"
    if not path.is_file():
        return
    saved = workdir_config(str(workdir))
    try:
        old = bert_config(saved)
    except E5Error:  # its model folder is gone or moved: nothing to compare with; the restore decides
        return
    new = bert_config(cfg)
    diff = [f.name for f in dataclasses.fields(old)
            if f.name not in ("hidden_dropout_prob", "attention_probs_dropout_prob")
            and getattr(old, f.name) != getattr(new, f.name)]
    if diff:
        raise E5Error(f"{workdir} holds checkpoints of another model ({', '.join(diff[:4])} differ: it was "
                      f"trained with model.init={saved.model.init!r} model.arch={saved.model.arch!r}); "
                      "resume with that model or use a new --workdir")


def train(cfg: Config, workdir: str, *, step_hook: Callable[[int, dict], dict] | None = None,
          log: Callable[[str], None] = print) -> dict:
    """Run (or resume) training; returns the final metrics.

    `step_hook(step, metrics) -> metrics` sees each step's metrics before they
    are checked (fault-injection tests use it to fake a non-finite loss).
    """
    workdir_p = epath.Path(workdir)
    is_main = jax.process_index() == 0
    # A gs:// bucket that does not answer fails here, in bounded time and one line,
    # not minutes later inside a C++ reader's or tensorstore's retry loop.
    check_reachable(cfg.data.data_dir, "data.data_dir")
    check_reachable(workdir, "--workdir")

    # ---------------------------------------------------------------- Mesh
    mesh = ax.make_mesh(cfg.mesh)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if cfg.train.batch_size % shards:
        raise E5Error(f"train.batch_size={cfg.train.batch_size} is not divisible by the {shards} "
                      f"batch shards (mesh data*fsdp); change train.batch_size or mesh")
    if cfg.train.grad_cache_chunk and cfg.train.grad_cache_chunk % shards:
        raise E5Error(f"train.grad_cache_chunk={cfg.train.grad_cache_chunk} must be a multiple of the "
                      f"{shards} batch shards")

    # --------------------------------------------------------------- Input
    tokenizer = load_tokenizer(cfg)
    train_it = _iterators(cfg, tokenizer, cfg.data.split, train=True, mesh=mesh)

    # ------------------------------------------------- Model / optimizer
    graphdef, abstract, shardings = abstract_state(cfg, mesh)
    mngr = ckpt.manager(workdir, keep=cfg.train.keep_checkpoints)
    if mngr.latest_step() is not None:
        _check_same_model(cfg, workdir_p)
        start, state = ckpt.restore(mngr, abstract, shardings, iterator=train_it)
        log(f"resumed from step {start} in {mngr.directory}")
    else:
        graphdef, state = create_state(cfg, mesh)
        start = 0
    # Only now, with the data, model and checkpoint in hand: a run that fails to
    # start never rewrites the config a workdir's checkpoints were trained with.
    if is_main:
        (workdir_p / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    if is_main:
        layout = "padded to length buckets"
        if cfg.data.pack:
            layout = "packed rows, " + ("all towers sharing rows" if cfg.data.pack_joint else "each tower in its own")
        log(f"compute dtype {compute_dtype(cfg)} (model.dtype={cfg.model.dtype}); texts {layout}; "
            f"mesh {dict(mesh.shape)}")

    # ---------------------------------------------------------------- Step
    step_fn, eval_fn = jit_steps(cfg, graphdef, mesh, shardings)
    lr_at = schedule(cfg.optim, cfg.train.steps)

    # ---------------------------------------------------------------- Loop
    from e5jax.data.global_batch import to_global

    writer = MetricWriter(workdir, enabled=is_main, resumed_at=start if start else None)
    progress = Progress(cfg.train.steps, start)
    metrics: dict[str, float] = {}
    last_saved = start if start else None
    step = start
    try:
        while step < cfg.train.steps:
            host_batch = next(train_it)
            batch = to_global(host_batch, mesh, ax.BATCH_AXES)
            with ax.axis_rules(mesh, cfg.mesh.rules):
                state, m = step_fn(state, batch)
            step += 1
            metrics = _scalars(m)
            if step_hook is not None:
                metrics = step_hook(step, metrics)
            if not math.isfinite(metrics["loss"]):
                where = f"step {last_saved} in {mngr.directory}" if last_saved else "none saved yet"
                raise E5Error(f"non-finite loss ({metrics['loss']}) at step {step}; "
                              f"stopped without saving; last good checkpoint: {where}")
            progress.update(_real_tokens(host_batch))
            metrics["learning_rate"] = float(lr_at(step - 1))
            metrics["data_crc"] = fingerprint(host_batch)
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                writer.write(step, metrics)
                line = progress.line(step, metrics, metrics["learning_rate"])
                if jax.process_count() > 1:  # each host reports its own view (and its own data)
                    line = f"[process {jax.process_index()}] {line} | host data crc {metrics['data_crc']}"
                log(line)
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.steps:
                _evaluate(cfg, tokenizer, mesh, eval_fn, state, writer, step, log)
            if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
                # Metrics reach a remote workdir before the checkpoint does: once a
                # checkpoint is visible, the history up to it is too (a kill in
                # between loses nothing that resume does not repeat).
                writer.sync()
                try:
                    ckpt.save(mngr, step, state, train_it)
                except E5Error as e:
                    where = f"step {last_saved}" if last_saved else "none"
                    raise E5Error(f"{e}; last good checkpoint: {where}") from e
                last_saved = step

        # ------------------------------------------------------------ Eval
        held = _evaluate(cfg, tokenizer, mesh, eval_fn, state, writer, step, log)
        metrics.update({f"heldout_{k}": v for k, v in held.items()})
    finally:
        writer.close()
        mngr.close()
    return metrics


def _evaluate(cfg, tokenizer, mesh, eval_fn, state, writer, step, log) -> dict[str, float]:
    """Mean in-batch metrics over up to `eval_batches` held-out batches."""
    from e5jax.data.global_batch import to_global

    try:
        it = _iterators(cfg, tokenizer, cfg.data.eval_split, train=False, mesh=mesh)
    except (E5Error, KeyError, ValueError) as e:
        log(f"held-out evaluation skipped: {e}")
        return {}
    sums: dict[str, float] = {}
    n = 0
    for host_batch in it:
        with ax.axis_rules(mesh, cfg.mesh.rules):
            m = _scalars(eval_fn(state, to_global(host_batch, mesh, ax.BATCH_AXES)))
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        if n >= cfg.train.eval_batches:
            break
    if not n:
        log(f"held-out evaluation skipped: split {cfg.data.eval_split!r} has fewer than one batch")
        return {}
    out = {k: v / n for k, v in sums.items()}
    writer.write(step, out, prefix="heldout")
    if jax.process_index() == 0:
        log(f"held-out ({n} batches of {cfg.train.batch_size}): loss {out['loss']:.4f} "
            f"accuracy {out['accuracy']:.3f} (chance {1 / cfg.train.batch_size:.3f})")
    return out
