"""`e5jax convert {msmarco,nq,nli,synthetic}`: public fine-tuning data → fine-tuning JSONL.

Examples::

    e5jax convert msmarco --input data/msmarco --output ft/msmarco.jsonl
    e5jax convert msmarco --input collection.tsv queries.train.tsv qrels.train.tsv \\
        msmarco-hard-negatives.jsonl.gz --output ft/msmarco.jsonl --num-negatives 7
    e5jax convert nq --input biencoder-nq-train.json --output ft/nq.jsonl
    e5jax convert nli --input snli_1.0_train.jsonl multinli_1.0_train.jsonl --output ft/nli.jsonl
    e5jax convert synthetic --input e5_synthetic.jsonl --output ft/synthetic.jsonl --num-negatives 1

MS MARCO inputs are recognised by their published names (a folder is
searched for them): collection*.tsv, queries*.<split>.tsv, qrels*.<split>.tsv,
*hard-negatives*.jsonl, qidpidtriples*.tsv, triples*.tsv (text triples);
each may be .gz / .bz2 / .zst compressed.
"""

from __future__ import annotations

import argparse
import itertools
import re

from etils import epath

from e5jax.data.finetune import msmarco, nli, nq, synthetic
from e5jax.data.finetune.records import Stats, write_records
from e5jax.errors import E5Error
from e5jax.paths import check_file

NEGATIVE_SOURCES = ("hard-negatives", "triples", "text-triples", "random")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=("msmarco", "nq", "nli", "synthetic"), help="input dataset format")
    parser.add_argument("--input", nargs="+", required=True, help="input file(s); for msmarco also a folder")
    parser.add_argument("--output", required=True, help="fine-tuning JSONL file to write")
    parser.add_argument("--num-negatives", type=int, default=7, help="negatives per record (-1 = keep all)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling negatives (per record id)")
    parser.add_argument("--split", default="train", help="msmarco: which queries/qrels split (train, dev)")
    parser.add_argument(
        "--negatives",
        choices=("auto",) + NEGATIVE_SOURCES,
        default="auto",
        help="msmarco: where negatives come from (auto = the best file given: hard-negatives > triples > "
        "text-triples > random passages)",
    )
    parser.add_argument("--instruction", default=synthetic.DEFAULT_INSTRUCTION,
                        help="synthetic: the task instruction for records that carry none")


def _classify(paths: list[str], split: str) -> dict[str, epath.Path]:
    """Map MS MARCO file roles → paths by their published names."""
    files: list[epath.Path] = []
    for p in map(epath.Path, paths):  # local or gs://: open_text reads both
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise E5Error(f"--input {p}: no such file or folder")
    patterns = {  # role -> name regex (compression suffix allowed)
        "collection": r"collection.*\.tsv",
        "queries": rf"queries(\.{split})?\.tsv",
        "qrels": rf"qrels\.{split}\.tsv",
        "hard-negatives": r".*hard-negatives.*\.jsonl",
        "triples": r"qidpidtriples.*\.tsv",
        "text-triples": r"triples\..*\.tsv",
    }
    roles: dict[str, epath.Path] = {}
    for f in files:
        for role, pat in patterns.items():
            if re.fullmatch(pat + r"(\.gz|\.bz2|\.zst)?", f.name):
                if role in roles:
                    raise E5Error(f"two {role} files: {roles[role]} and {f}; pass only one")
                roles[role] = f
    return roles


def _convert_msmarco(args: argparse.Namespace, k: int | None, stats: Stats):
    roles = _classify(args.input, args.split)
    mode = args.negatives
    if mode == "auto":
        mode = next((m for m in NEGATIVE_SOURCES[:3] if m in roles), "random")
    elif mode != "random" and mode not in roles:
        raise E5Error(f"--negatives {mode}: no {mode} file among the inputs")
    if mode == "text-triples":
        return mode, msmarco.convert_text_triples(roles[mode], k, args.seed, stats)
    need = ["collection", "queries"] + (["qrels"] if mode == "random" else [])
    missing = [r for r in need if r not in roles]
    if missing:
        raise E5Error(f"msmarco ({mode} negatives) needs {', '.join(missing)} file(s) for split {args.split!r}")
    collection = msmarco.read_id_text_tsv(roles["collection"], stats, "collection")
    queries = msmarco.read_id_text_tsv(roles["queries"], stats, "queries")
    qrels = msmarco.read_qrels(roles["qrels"], stats) if "qrels" in roles else None
    if mode == "hard-negatives":
        negs = msmarco.read_hard_negatives(roles[mode], stats)
    elif mode == "triples":
        negs = ((q, p, n) for q, (p, n) in msmarco.read_id_triples(roles[mode], stats).items())
    else:
        negs = None
    return mode, msmarco.convert_msmarco(collection, queries, qrels, negs, k, args.seed, stats)


def _nothing_converted(inputs: list[str], what: str, output: str, stats: Stats) -> str:
    """The one-line error when no record came out: what was seen, and that `output` is untouched."""
    seen = stats.nonzero() or "nothing found in it"
    first = f"; first malformed: {stats.malformed_examples[0]}" if stats.malformed_examples else ""
    return (
        f"nothing converted from --input {' '.join(inputs)} ({seen}{first}); "
        f"is it {what} data? {output} was not written"
    )


def run(args: argparse.Namespace) -> int:
    if args.num_negatives < -1:
        raise E5Error(f"--num-negatives must be >= 0 (or -1 for all), got {args.num_negatives}")
    k = None if args.num_negatives == -1 else args.num_negatives
    check_file(args.output)  # before reading (possibly large) inputs
    stats = Stats()
    if args.format == "msmarco":
        mode, records = _convert_msmarco(args, k, stats)
        what = f"msmarco ({mode} negatives)"
    elif args.format == "nq":
        if len(args.input) != 1:
            raise E5Error("nq takes one DPR JSON file as --input")
        records = nq.convert_nq(nq.load_dpr(args.input[0]), k, args.seed, stats, epath.Path(args.input[0]).name)
        what = "nq"
    elif args.format == "synthetic":
        records = synthetic.convert_synthetic(synthetic.read_synthetic(args.input, stats), k, args.seed, stats,
                                              default_instruction=args.instruction)
        what = "synthetic (E5-mistral)"
    else:
        records = nli.convert_nli(nli.read_nli(args.input, stats), k, args.seed, stats)
        what = "nli"
    records = iter(records)
    first = next(records, None)
    if first is None:  # never replace an existing output with an empty file
        raise E5Error(_nothing_converted(args.input, what, args.output, stats))
    n = write_records(itertools.chain([first], records), args.output, stats)
    print(f"e5jax convert {what}: wrote {n} records to {args.output}")
    print(stats.summary())
    return 0
