"""`e5jax embed`: one row per input text, float32, in input order."""

from __future__ import annotations

import json
import pathlib

from e5jax.errors import E5Error
from e5jax.paths import local


def add_arguments(p):
    p.add_argument("--model", required=True, help="HF folder or e5jax export")
    p.add_argument("--input", required=True, help="text file (one text a line) or JSONL with a 'text' field")
    p.add_argument("--output", required=True, help="output .npy file (.npy is appended when missing)")
    p.add_argument("--prefix", default="", help='prepended to every text, e.g. "query: "')
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
    out = npy_path(args.output)
    texts = read_texts(local(args.input, "--input"))
    enc = Encoder.from_pretrained(args.model, dtype=args.dtype)
    emb = enc.encode(texts, prefix=args.prefix, max_length=args.max_length, batch_size=args.batch_size,
                     show_progress=len(texts) > 4 * args.batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, emb.astype(np.float32))
    print(f"wrote {emb.shape[0]} x {emb.shape[1]} float32 embeddings to {out}")
    return 0
