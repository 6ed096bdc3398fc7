"""The `e5jax` subcommands (one module each, see e5jax/cli.py) and the arguments they share.

`--query-instruction TASK` (decoder embedders, E5-mistral) is defined here once for
eval, filter, mine and embed; eval, filter and mine take it with their
`--query-prefix` / `--passage-prefix` pair (`add_prefix_arguments`, `resolve_prefixes`).
Nothing here imports JAX.
"""

from __future__ import annotations

import argparse

QUERY_INSTRUCTION_HELP = ('decoder embedders (E5-mistral): queries become "Instruct: TASK\\nQuery: {query}" '
                          "(replaces --query-prefix), passages get no prefix unless --passage-prefix is given")


def add_query_instruction(parser: argparse.ArgumentParser, help: str = QUERY_INSTRUCTION_HELP) -> None:
    parser.add_argument("--query-instruction", default="", metavar="TASK", help=help)


def add_prefix_arguments(parser: argparse.ArgumentParser, *, passages: str = "passages", note: str = "") -> None:
    """--query-prefix, --passage-prefix and --query-instruction; call `resolve_prefixes(args)` after parsing.
    `passages`: what the command calls its documents; `note`: put before each help (e.g. "dense: ")."""
    parser.add_argument("--query-prefix", default="query: ", help=f'{note}prepended to queries (default "query: ")')
    parser.add_argument("--passage-prefix", default=None,
                        help=f'{note}prepended to {passages} (default "passage: "; "" with --query-instruction)')
    add_query_instruction(parser)


def resolve_prefixes(args: argparse.Namespace) -> None:
    """--query-instruction sets the query prefix to the E5-mistral template
    (`decoder_export.query_prompt`); passages then get none unless --passage-prefix is given.
    Without it the passage prefix defaults to E5's "passage: "."""
    if args.query_instruction:
        from e5jax.decoder_export import query_prompt

        args.query_prefix = query_prompt(args.query_instruction)
        args.passage_prefix = "" if args.passage_prefix is None else args.passage_prefix
    elif args.passage_prefix is None:
        args.passage_prefix = "passage: "
