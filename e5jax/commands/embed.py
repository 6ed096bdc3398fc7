"""`e5jax embed`: one row per input text, float32, in input order.

    e5jax embed --model DIR --input texts.txt --output emb.npy        # one .npy, in memory
    e5jax embed --model DIR --input DATA/scifact/corpus.jsonl --output-dir emb/scifact \
        --prefix "passage: " [--shard-size 50000] [--coordinator H:P --num-processes N --process-id I]

--output-dir is the corpus-scale form (`e5jax.embed`): BEIR corpus.jsonl, JSONL,
text, or a pair dataset's passages (--input-format pairs) in; .npy shards + ids +
manifest.json out, resumable after a kill (run the same command again), one
slice of the shards per process on a pod; bad input lines are skipped and
listed. `e5jax eval --corpus-embeddings` and `e5jax filter --pool-embeddings` read it.
"""

from __future__ import annotations

import json
import pathlib
import sys

from e5jax.commands import add_query_instruction
from e5jax.errors import E5Error
from e5jax.paths import local


def add_arguments(p):
    p.add_argument("--model", required=True, help="HF folder or e5jax export")
    p.add_argument("--input", required=True, help="text file (one text a line) or JSONL with a 'text' field")
    p.add_argument("--output", default=None, help="output .npy file (.npy is appended when missing)")
    p.add_argument("--output-dir", default=None,
                   help="corpus scale: a folder of .npy shards + ids + manifest.json, resumable (instead of --output)")
    p.add_argument("--input-format", default="auto", choices=["auto", "beir", "jsonl", "text", "pairs"],
                   help="--output-dir input: auto = BEIR for corpus.jsonl or records with _id and text, JSONL for "
                        ".jsonl or a first line starting with '{', else text (one a line); pairs = --input is a TFDS data dir, "
                        "--name a pair dataset in it (the filter's --pool-embeddings)")
    p.add_argument("--name", default=None, help="--input-format pairs: the pair dataset")
    p.add_argument("--split", default="train", help="--input-format pairs: its split (default train)")
    p.add_argument("--text-field", default=None, help="JSONL field holding the text (default: text)")
    p.add_argument("--id-field", default=None, help="JSONL field holding the id (default: the line number)")
    p.add_argument("--shard-size", type=int, default=50_000, help="input lines per shard (default 50000)")
    p.add_argument("--coordinator", default="", help="multi-host: jax.distributed coordinator HOST:PORT")
    p.add_argument("--num-processes", type=int, default=0, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, default=-1, help="multi-host: this process's id")
    p.add_argument("--prefix", default="", help='prepended to every text, e.g. "query: "')
    add_query_instruction(p, help='decoder embedders (E5-mistral): the texts are queries, prefixed with '
                                  '"Instruct: TASK\\nQuery: " (replaces --prefix)')
    p.add_argument("--max-length", type=int, default=512, help="tokens, prefix included")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute dtype (default: bf16 where the hardware has it, else fp32)")


def read_texts(path: pathlib.Path) -> list[str]:
    if not path.is_file():
        raise E5Error(f"input file not found: {path}")
    raw = path.read_text(encoding="utf-8", errors="replace")
    lines = raw.splitlines()
    if not raw.strip():
        raise E5Error(f"input file {path} is empty; give one text a line or JSONL with a 'text' field")
    if path.suffix in (".jsonl", ".ndjson") or lines[0].lstrip().startswith("{"):
        texts = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                texts.append(str(rec["text"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise E5Error(f"{path}:{n}: expected a JSON object with a 'text' field") from None
        return texts
    return lines


def npy_path(output: str) -> pathlib.Path:
    """The file the embeddings go to: --output, with `.npy` appended as `np.save`
    does when it lacks one; checked before the model loads."""
    from e5jax.paths import check_file

    path = check_file(output)
    if path.name.endswith(".npy"):
        return path
    return check_file(str(path.with_name(path.name + ".npy")))


def run(args) -> int:
    import numpy as np

    from e5jax.model.encoder import Encoder

    if args.max_length < 2 or args.batch_size < 1:
        raise E5Error(f"--max-length must be >= 2, --batch-size >= 1; got {args.max_length} and {args.batch_size}")
    if args.query_instruction:  # before either path (one file or a corpus) reads args.prefix
        from e5jax.decoder_export import query_prompt

        args.prefix = query_prompt(args.query_instruction)
    if (args.output is None) == (args.output_dir is None):
        raise E5Error("give one of --output FILE.npy (one matrix) or --output-dir DIR (sharded, resumable)")
    if args.output_dir is not None:
        return run_corpus(args)
    only_dir = [f for f, v in (("--input-format", args.input_format != "auto"), ("--text-field", args.text_field),
                               ("--id-field", args.id_field), ("--name", args.name), ("--coordinator", args.coordinator))
                if v]
    if only_dir:
        raise E5Error(f"{only_dir[0]} applies to --output-dir (corpus scale), not to --output FILE.npy")
    out = npy_path(args.output)
    texts = read_texts(local(args.input, "--input"))
    enc = Encoder.from_pretrained(args.model, dtype=args.dtype)
    emb = enc.encode(texts, prefix=args.prefix, max_length=args.max_length, batch_size=args.batch_size,
                     show_progress=len(texts) > 4 * args.batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, emb.astype(np.float32))
    print(f"wrote {emb.shape[0]} x {emb.shape[1]} float32 embeddings to {out}")
    return 0


def run_corpus(args) -> int:
    """--output-dir: `e5jax.embed.embed_corpus` on this process's devices."""
    from e5jax import embed
    from e5jax.paths import check_folder

    if args.shard_size < 1:
        raise E5Error(f"--shard-size must be >= 1, got {args.shard_size}")
    out = check_folder(args.output_dir, "--output-dir")
    spec = embed.input_spec(args.input, args.input_format, args.text_field, args.id_field, args.name, args.split)
    model_sha = embed.model_sha256(args.model)  # also: a missing --model fails before JAX starts
    from e5jax.model.encoder import read_model_config

    dim = read_model_config(local(args.model, "--model")).hidden_size  # BERT or decoder
    from e5jax.train.loop import maybe_initialize_distributed

    maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    import jax

    from e5jax.config import MeshConfig
    from e5jax.model import axes as ax
    from e5jax.model.encoder import Encoder, default_dtype

    dtype = args.dtype or default_dtype()
    plan = embed.start(
        spec, out, model=str(local(args.model, "--model").resolve()), model_sha=model_sha, dim=dim,
        prefix=args.prefix, max_length=args.max_length, batch_size=args.batch_size, shard_size=args.shard_size,
        compute_dtype=dtype,
    )  # fmt: skip
    # This process's own devices: shards are independent (see e5jax.embed, "Multi-process").
    mesh = ax.make_mesh(MeshConfig(), jax.local_devices())
    enc = Encoder.from_pretrained(args.model, dtype=dtype, mesh=mesh)
    if enc.dim != dim:
        raise E5Error(f"--model {args.model}: config.json says hidden size {dim}, the encoder gives {enc.dim}")

    def encode(texts, prefix):
        return enc.encode(texts, prefix=prefix, max_length=args.max_length, batch_size=args.batch_size,
                          show_progress=False)

    manifest = embed.embed_corpus(encode, spec, out, plan)
    if manifest is not None:  # process 0
        if manifest["bad_lines"]:
            print(embed.describe_bad(manifest), file=sys.stderr)
        print(f"wrote {manifest['rows']} x {manifest['dim']} float32 embeddings of {manifest['input_lines']} input "
              f"lines ({manifest['bad_lines']} bad) in {len(manifest['shards'])} shards to {out}")
    return 0
