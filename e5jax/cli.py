"""The one `e5jax` command: thin subcommands that call library functions.

Each subcommand lives in `e5jax/commands/<name>.py` and defines
`add_arguments(parser)` and `run(args) -> int`. Modules are imported lazily so
that `e5jax harvest` never pays for importing JAX.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from e5jax.errors import E5Error

# name -> (module, one-line help). Order is the order of the recipe.
COMMANDS: dict[str, tuple[str, str]] = {
    "harvest": ("e5jax.commands.harvest", "harvest (query, passage) pairs from public dumps"),
    "build": ("e5jax.commands.build", "build pair shards into a TFDS (ArrayRecord) dataset"),
    "fetch-model": ("e5jax.commands.fetch_model", "copy a model folder from gs:// to a local folder (resumable)"),
    "train": ("e5jax.commands.train", "pre-train or fine-tune from a config preset"),
    "compile": ("e5jax.commands.compile", "compile a preset's step for a TPU slice, without one: memory, cost"),
    "filter": ("e5jax.commands.filter", "consistency-based filtering of a pair dataset"),
    "convert": ("e5jax.commands.convert", "convert MS MARCO / NQ / NLI files to fine-tuning records"),
    "mine": ("e5jax.commands.mine", "mine hard negatives (dense or BM25)"),
    "score-teacher": ("e5jax.commands.score_teacher", "score fine-tuning records with a cross-encoder"),
    "eval": ("e5jax.commands.eval", "BEIR-format retrieval evaluation"),
    "eval-sts": ("e5jax.commands.eval_sts", "STS evaluation (Pearson / Spearman of cosine)"),
    "embed": ("e5jax.commands.embed", "embed texts into a .npy matrix, or a corpus into resumable shards (--output-dir)"),
    "export": ("e5jax.commands.export", "export a checkpoint as a transformers / sentence-transformers folder"),
    "demo": ("e5jax.commands.demo", "the whole recipe end to end on a small real corpus"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="e5jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"e5jax: error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"e5jax {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    if getattr(args, "argv", False) is None:  # a command that re-runs itself (compile's child process)
        args.argv = argv[1:]
    try:
        return int(module.run(args) or 0)
    except (E5Error, OSError) as e:  # OSError: a path that is a folder, a file, missing, unwritable...
        _report(f"e5jax {name}: error: {e}")
        return 2


def _report(line: str) -> None:
    """Write the one-line error in one write(2) call.

    print() writes the text and its newline separately, so a background thread's
    traceback (orbax's writer, gcsfs's event loop shutting down) could land in
    between and glue itself onto the error line. One syscall under PIPE_BUF bytes
    is atomic on a pipe.
    """
    sys.stderr.flush()
    data = (" ".join(line.split("\n")) + "\n").encode("utf-8", "replace")
    try:
        os.write(sys.stderr.fileno(), data)
    except (OSError, ValueError, AttributeError):  # stderr replaced by a non-file (pytest capsys)
        sys.stderr.write(data.decode("utf-8"))
        sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
