"""orbax checkpoints: the (model, optimizer) state and the grain iterator, together.

Saving both in one `CheckpointManager` step is what makes resume exact: a
restored run continues with the very batch the interrupted run would have
drawn next. orbax writes each step to a temporary folder and renames it when
complete, so a crash mid-save never damages the previous checkpoint.
"""

from __future__ import annotations

import os
import sys

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from e5jax.errors import E5Error
from e5jax.paths import is_url


def _bound_gcs_retries() -> None:
    """tensorstore (orbax's array writer) retries a failing GCS request 32 times,
    backing off up to 32 s: many silent minutes when a bucket has gone away.
    E5JAX_GCS_RETRIES sets that count. orbax 0.12.8 builds every tensorstore
    context from these module defaults and has no public setting for it."""
    n = os.environ.get("E5JAX_GCS_RETRIES")
    if not n:
        return
    from orbax.checkpoint._src.serialization import tensorstore_utils as tsu

    for ctx in (tsu._BASE_TS_CONTEXT, tsu._DEFAULT_OCDBT_TS_CONTEXT):
        ctx["gcs_request_retries"] = {"max_retries": int(n)}


def _is_orphaned_loop_callback(unraisable) -> bool:
    """A tensorstore operation finishing after orbax closed the event loop it was
    awaited on: orbax runs each save on a private loop and closes it as soon as one
    write fails, and every other write still in flight then reports
    `RuntimeError: Event loop is closed` from a tensorstore thread. Nothing waits
    for those results; printed, they are hundreds of lines of traceback that bury
    (and, written from other threads, can split) the run's one-line error."""
    if unraisable.exc_type is not RuntimeError or str(unraisable.exc_value) != "Event loop is closed":
        return False
    tb = unraisable.exc_traceback
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
            return True
        tb = tb.tb_next
    return False


def _quiet_orphaned_loop_callbacks() -> None:
    """Drop only those reports (sys.unraisablehook: tensorstore's C++ threads have
    no Python caller to raise into); every other unraisable error goes on to the
    hook that was there before."""
    if getattr(sys.unraisablehook, "_e5jax", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _is_orphaned_loop_callback(unraisable):
            previous(unraisable)

    hook._e5jax = True
    sys.unraisablehook = hook


def manager(workdir: str, *, keep: int = 3) -> ocp.CheckpointManager:
    _bound_gcs_retries()
    _quiet_orphaned_loop_callbacks()
    # orbax wants absolute paths; local relative workdirs (the common case) are resolved.
    path = (epath.Path(workdir) if is_url(workdir) else epath.Path(workdir).resolve()) / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(path, options=options, item_names=("state", "data"))


def save(mngr: ocp.CheckpointManager, step: int, state: nnx.State, iterator=None) -> None:
    import grain

    items = {"state": ocp.args.StandardSave(nnx.to_pure_dict(state))}
    if iterator is not None:
        items["data"] = grain.checkpoint.CheckpointSave(iterator)
    try:
        mngr.save(step, args=ocp.args.Composite(**items), force=True)
        mngr.wait_until_finished()
    except Exception as e:  # a store that fails mid-save: orbax never finalizes the step
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise E5Error(f"checkpoint {step} could not be written to {mngr.directory} ({first}); "
                      "it is not finalized, so resume takes the one before it") from e


def restore(mngr: ocp.CheckpointManager, abstract: nnx.State, shardings, *, step: int | None = None,
            iterator=None) -> tuple[int, nnx.State]:
    """Restore onto `shardings` — which may be a different mesh than the one that saved."""
    import grain

    step = mngr.latest_step() if step is None else step
    if step is None:
        raise E5Error(f"no checkpoint in {mngr.directory}")
    if step not in mngr.all_steps():
        raise E5Error(f"no checkpoint of step {step} in {mngr.directory}; it holds steps "
                      f"{', '.join(map(str, sorted(mngr.all_steps())))}")
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nnx.to_pure_dict(abstract), nnx.to_pure_dict(shardings))
    items = {"state": ocp.args.StandardRestore(target)}
    if iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(iterator)
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, TypeError) as e:  # orbax's message is a dump of the whole tree
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise E5Error(f"checkpoint {step} in {mngr.directory} does not fit this model and optimizer "
                      f"(saved with another model.arch / model.init?): {first}") from e
    state = jax.tree.map(lambda x: x, abstract)
    nnx.replace_by_pure_dict(state, restored["state"])
    return step, state
