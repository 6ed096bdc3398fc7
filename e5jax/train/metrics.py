"""Metrics out: JSONL (always), TensorBoard (tensorboardX), and a readable progress line."""

from __future__ import annotations

import json
import pathlib
import time

from etils import epath

from e5jax.paths import is_url as is_remote  # a module name the tests can patch


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class MetricWriter:
    """Writes on process 0 only; every host computes the same global metrics.

    Object stores (gs://) have no append: a remote run keeps its JSONL on local
    disk (`~/e5jax-metrics/<run>/`, seeded from the remote copy, so a resumed
    run keeps its history) and rewrites the remote `metrics.jsonl` whole, at
    most every `sync_every_s` seconds and at close."""

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True,
                 sync_every_s: float = 60.0, resumed_at: int | None = None):
        self.enabled = enabled
        self.path = epath.Path(workdir) / "metrics.jsonl"
        self.local = self.path
        self.sync_every_s = sync_every_s
        self.synced_at = time.monotonic()
        self.tb = None
        if not enabled:
            return
        remote = is_remote(workdir)
        if remote:
            self.local = pathlib.Path.home() / "e5jax-metrics" / epath.Path(str(workdir)).name / "metrics.jsonl"
            self.local.parent.mkdir(parents=True, exist_ok=True)
            self.local.write_text(self.path.read_text() if self.path.exists() else "")
        if resumed_at is not None:
            self._drop_after(resumed_at)
        if tensorboard:
            from tensorboardX import SummaryWriter

            tb_dir = str(epath.Path(workdir) / "tensorboard")
            if remote:
                # tensorboardX writes local files; a gs:// run logs its events next to
                # the process (sync them up with `gcloud storage rsync` if wanted).
                tb_dir = str(pathlib.Path.home() / "e5jax-tensorboard" / epath.Path(str(workdir)).name)
            self.tb = SummaryWriter(tb_dir)

    def write(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        rec = {"step": step, "split": prefix, "time": time.time(), **metrics}
        with self.local.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.local != self.path and time.monotonic() - self.synced_at >= self.sync_every_s:
            self.sync()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)
            self.tb.flush()

    def _drop_after(self, step: int) -> None:
        """Forget the records a killed run wrote past its last checkpoint.

        The resumed run repeats those steps on the same batches; keeping the old
        records too would leave each of them twice in the history."""
        if not self.local.exists():
            return
        lines = self.local.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                if json.loads(line).get("step", 0) > step:
                    continue
            except ValueError:  # a line cut short by the kill
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
        if kept != lines:
            tmp = self.local.with_name(self.local.name + ".tmp")
            tmp.write_text("".join(kept))
            tmp.replace(self.local)  # a local workdir's history is never half-rewritten
            if self.local != self.path:
                self.sync()

    def sync(self) -> None:
        """Rewrite the remote copy from the local log (a no-op for a local workdir)."""
        if self.enabled and self.local != self.path:
            self.path.write_text(self.local.read_text())
            self.synced_at = time.monotonic()

    def close(self) -> None:
        self.sync()
        if self.tb is not None:
            self.tb.close()


class Progress:
    """`step 120/1000 | loss 1.234 | acc 0.81 | lr 2.0e-05 | 5,120 tok/s | ETA 3m10s`."""

    def __init__(self, total_steps: int, start_step: int):
        self.total = total_steps
        self.start_step = start_step
        self.t0 = time.perf_counter()
        self.tokens = 0

    def update(self, tokens: int) -> None:
        """Count the real (non-padding) tokens of one step."""
        self.tokens += tokens

    def line(self, step: int, metrics: dict[str, float], lr: float) -> str:
        elapsed = time.perf_counter() - self.t0
        done = step - self.start_step
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        eta = elapsed / done * (self.total - step) if done > 0 else 0.0
        return (f"step {step}/{self.total} | loss {metrics['loss']:.4f} | acc {metrics.get('accuracy', 0):.3f}"
                f" | lr {lr:.2e} | {rate:,.0f} tok/s | ETA {format_duration(eta)}")
