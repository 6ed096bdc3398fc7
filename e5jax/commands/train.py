"""`e5jax train --config configs/X.py --workdir DIR [--set a.b=value ...]`."""

from __future__ import annotations


def add_arguments(p):
    p.add_argument("--config", required=True, help="preset file defining get_config()")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics, TensorBoard (local or gs://)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--laptop", action="store_true", help="shrink the preset to a laptop smoke run")
    p.add_argument("--coordinator", default="", help="multi-host: coordinator HOST:PORT (not needed on TPU pods)")
    p.add_argument("--num-processes", type=int, default=0, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, default=-1, help="multi-host: this process's id")


def run(args) -> int:
    from e5jax.config import laptop, load_config, parse_overrides, replace
    from e5jax.train.loop import maybe_initialize_distributed, train

    cfg = load_config(args.config)  # validate before touching devices
    if args.laptop:
        cfg = laptop(cfg)
    cfg = replace(cfg, **parse_overrides(args.set))
    maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    metrics = train(cfg, args.workdir)
    held = {k: v for k, v in metrics.items() if k.startswith("heldout_")}
    if held:
        print("final held-out: " + ", ".join(f"{k[8:]}={v:.4f}" for k, v in sorted(held.items())))
    return 0
