"""Corpus-scale embedding (`e5jax embed --output-dir`): sharded, resumable, multi-process.

    input (BEIR corpus.jsonl | JSONL | text | a pair dataset's split) ──scan: lines + hash──▶ plan.json
    lines, in shards of --shard-size ──encode──▶ shard-NNNNN.npy + shard-NNNNN.json
    all shards present ──▶ manifest.json (written last, by process 0)

Rules (each one a choice; the why is next to it):

- A shard is a fixed range of input *lines* (shard k = lines k*S+1 .. (k+1)*S,
  1-based), so which text lands in which shard depends only on the input and
  --shard-size, never on how many processes ran or where a run was killed.
- Files are written to a temporary name, fsynced and renamed: a reader sees a
  whole file or none. A shard's .json (ids, bad lines) is written after its
  .npy, so a shard is finished exactly when its .json exists; manifest.json is
  written after every shard is finished. A killed run leaves finished shards,
  at most one half-made shard per process (its .npy without .json, or a temp
  file) and no manifest; a restart redoes only the unfinished shards, with the
  same texts in the same encoder calls, so the files come out byte-equal to an
  uninterrupted run's.
- Resume is refused (one line, naming the flag) when plan.json records another
  model (a content hash of its weights, config and tokenizer files), input (a
  content hash of the file), prefix, max length, batch size, shard size, text
  or id field or compute dtype: mixing them would make one matrix of
  incomparable rows.
- Bad lines (not JSON, not an object, the text or id field missing, text not a
  string, text empty after the BEIR title+text join, an empty line) are
  *skipped and listed*, never given a zero row: a zero vector is a valid-looking
  embedding that retrieval would happily rank, while a listed skip is visible
  to every reader. Each shard's .json lists all of its bad lines
  ([line, id or null, reason]); the manifest and the log give the count and
  the first few.
- Ids: BEIR `_id`, or --id-field of a JSONL; otherwise the 1-based line number
  (the same numbering the bad-line reports use); for a pair dataset (`e5jax
  build` output) the 0-based record index, which is how the filter names its
  pool passages (`e5jax filter --pool-embeddings`). Always strings.
- Readers: `load_embedded` (all rows, e.g. `e5jax eval --corpus-embeddings`)
  and `take` (rows for some ids, memory-mapped shard by shard); both check the
  manifest's model, prefix and max length against the caller's first.
- Multi-process (a pod): shard k is embedded by process k % process_count on
  that process's *own* devices (`jax.local_devices()`). Shards are independent,
  so there is nothing to reduce across hosts: a global mesh would only make
  every process wait for the slowest at every batch and require all processes
  to feed the same global batch in lockstep (an uneven last shard, or one
  process resuming fewer shards, would then deadlock). Processes meet once, at
  the end, before process 0 writes the manifest. The output folder must be
  shared by all processes (as the filter's work folder is).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import socket
import sys
from collections.abc import Callable, Iterator

import numpy as np

from e5jax.errors import E5Error
from e5jax.paths import local

FORMAT = "e5jax-embeddings"
VERSION = 1
BAD_EXAMPLES = 10  # bad lines named in the log and the manifest (all of them are in the shards' .json)
CHUNK_BATCHES = 16  # texts per encoder call = CHUNK_BATCHES * batch_size: the progress bar's step
# Fault injection for tests: "FILE:torn" SIGKILLs this process while FILE (e.g.
# shard-00001.json) is half written to its temp name; "FILE:written" right after it
# is renamed into place (tests/test_embed_corpus.py kills a run so).
KILL_ENV = "E5JAX_EMBED_KILL_AT"

# What plan.json records -> the flag that sets it (named when a resume is refused).
PLAN_FLAGS = {
    "model_sha256": "--model", "input_sha256": "--input", "input_lines": "--input", "input_format": "--input-format",
    "text_field": "--text-field", "id_field": "--id-field", "prefix": "--prefix", "max_length": "--max-length",
    "batch_size": "--batch-size", "shard_size": "--shard-size", "compute_dtype": "--dtype",
    "format": "--output-dir", "version": "--output-dir",
}


# ------------------------------------------------------------------ input


@dataclasses.dataclass(frozen=True)
class InputSpec:
    path: pathlib.Path | str  # pairs: the TFDS data dir (may be gs://)
    fmt: str  # "beir" | "jsonl" | "text" | "pairs"
    text_field: str | None  # jsonl: --text-field; pairs: "passage" or "query"
    id_field: str | None  # beir: "_id"; jsonl: --id-field or None (= line numbers)
    name: str | None = None  # pairs: the dataset
    split: str | None = None  # pairs: its split

    def describe(self) -> str:
        if self.fmt == "pairs":
            return f"{self.path}/{self.name}[{self.split}]"
        return str(local(self.path, "--input", "the embed input is read with local-file APIs").resolve())


def input_spec(path: str | os.PathLike, fmt: str = "auto", text_field: str | None = None,
               id_field: str | None = None, name: str | None = None, split: str = "train") -> InputSpec:
    """The input and how to read it; `auto`: a file named corpus.jsonl, or JSONL whose
    first record has `_id` and `text` (no --text-field / --id-field given), is BEIR; a
    .jsonl / .ndjson file or one whose first line starts with '{' is JSONL, else text.
    `pairs`: the `split` of the pair dataset `name` in the TFDS data dir `path`
    (what `e5jax build` writes), ids = record index (0-based, what the filter uses)."""
    if fmt == "pairs":
        from e5jax.data.ccpairs.builder import dataset_dir

        if not name:
            raise E5Error("--input-format pairs needs --name (the pair dataset in the --input data dir)")
        if id_field is not None or text_field not in (None, "passage", "query"):
            raise E5Error("--input-format pairs embeds --text-field passage (default) or query; ids are the "
                          "record indices (no --id-field)")
        dataset_dir(path, name)  # a missing dataset fails here, naming what to build
        return InputSpec(str(path), "pairs", text_field or "passage", None, name, split)
    if name is not None:
        raise E5Error("--name applies to --input-format pairs")
    p = local(path, "--input")
    if not p.is_file():
        raise E5Error(f"--input {path}: file not found")
    if fmt == "auto":
        with open(p, "rb") as f:
            first = f.readline().strip()
        if p.name == "corpus.jsonl":
            fmt = "beir"
        elif p.suffix in (".jsonl", ".ndjson") or first.startswith(b"{"):
            fmt = "jsonl"
            try:  # BEIR records under another file name: `_id` + `text` (+ `title`, joined as BEIR does)
                rec = json.loads(first)
                if text_field is None and id_field is None and isinstance(rec, dict) and {"_id", "text"} <= set(rec):
                    fmt = "beir"
            except json.JSONDecodeError:
                pass
        else:
            fmt = "text"
    if fmt not in ("beir", "jsonl", "text"):
        raise E5Error(f"--input-format must be auto, beir, jsonl or text, got {fmt!r}")
    if fmt == "beir":
        if text_field not in (None, "text") or id_field not in (None, "_id"):
            raise E5Error("--text-field / --id-field do not apply to a BEIR corpus (it has _id, title, text); "
                          "use --input-format jsonl to pick other fields")
        return InputSpec(p, "beir", None, "_id")
    if fmt == "text":
        if text_field is not None or id_field is not None:
            raise E5Error("--text-field / --id-field apply to JSONL input; this --input is read as plain text "
                          "(one text a line): use --input-format jsonl")
        return InputSpec(p, "text", None, None)
    return InputSpec(p, "jsonl", text_field or "text", id_field)


def _pairs_source(spec: InputSpec):
    from e5jax.data.ccpairs.builder import load_source

    return load_source(spec.path, spec.name, spec.split)


def pairs_identity(data_dir, name: str, split: str) -> tuple[int, str]:
    """(records, sha256 of the dataset's dataset_info.json + split): a rebuilt dataset is another input."""
    from e5jax.data.ccpairs.builder import dataset_dir, load_source

    n = len(load_source(data_dir, name, split))
    info = (dataset_dir(data_dir, name) / "dataset_info.json").read_bytes()
    return n, hashlib.sha256(info + f"\n{split}\n{n}".encode()).hexdigest()


def scan_input(spec: InputSpec) -> tuple[int, str]:
    """(lines or records, content hash) of the input."""
    return pairs_identity(spec.path, spec.name, spec.split) if spec.fmt == "pairs" else scan(spec.path)


def scan(path: pathlib.Path, block: int = 1 << 24) -> tuple[int, str]:
    """(lines, sha256 of the bytes): one read of the file. A last line without a
    newline counts; the digest identifies the input whatever its path."""
    h, lines, last = hashlib.sha256(), 0, b"\n"
    with open(path, "rb") as f:
        while buf := f.read(block):
            h.update(buf)
            lines += buf.count(b"\n")
            last = buf[-1:]
    return lines + (last != b"\n"), h.hexdigest()


def parse_line(spec: InputSpec, line_no: int, raw: bytes) -> tuple[str | None, str | None, str | None]:
    """(id, text, None) for a good line, (id or None, None, reason) for a bad one."""
    from e5jax.eval.beir import doc_text

    line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    if spec.fmt == "text":
        return (str(line_no), line, None) if line.strip() else (str(line_no), None, "empty text")
    if not line.strip():
        return None, None, "empty line"
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        return None, None, f"invalid JSON ({e.msg})"
    if not isinstance(rec, dict):
        return None, None, "not a JSON object"
    if spec.id_field is None:
        rid = str(line_no)
    elif spec.id_field not in rec or rec[spec.id_field] is None:
        return None, None, f"missing id field {spec.id_field!r}"
    else:
        rid = str(rec[spec.id_field])
    field = "text" if spec.fmt == "beir" else spec.text_field
    if field not in rec:
        return rid, None, f"missing text field {field!r}"
    text = rec[field]
    title = rec.get("title") if spec.fmt == "beir" else None
    if not isinstance(text, str) or not (title is None or isinstance(title, str)):
        return rid, None, f"{field!r} is not a string"
    text = doc_text(title, text) if spec.fmt == "beir" else text
    return (rid, text, None) if text.strip() else (rid, None, "empty text")


@dataclasses.dataclass
class Shard:
    index: int
    first_line: int  # 1-based, inclusive
    last_line: int
    ids: list[str]
    texts: list[str]
    bad: list[list]  # [line, id or None, reason]


def iter_shards(spec: InputSpec, lines: int, shard_size: int, wanted: set[int]) -> Iterator[Shard]:
    """The `wanted` shards in order, parsed; the other lines are read past, not parsed."""
    if not wanted:
        return
    if spec.fmt == "pairs":  # random access: read only the wanted records
        source = _pairs_source(spec)
        for k in sorted(wanted):
            lo, hi = k * shard_size, min(lines, (k + 1) * shard_size)
            shard = Shard(k, lo + 1, hi, [], [], [])
            for i, rec in zip(range(lo, hi), source.__getitems__(list(range(lo, hi)))):
                v = rec[spec.text_field]
                text = v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
                if text.strip():
                    shard.ids.append(str(i))
                    shard.texts.append(text)
                else:
                    shard.bad.append([i + 1, str(i), "empty text"])
            yield shard
        return
    last_wanted = max(wanted)
    cur: Shard | None = None
    with open(spec.path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            k = (line_no - 1) // shard_size
            if k > last_wanted:
                break
            if k not in wanted:
                continue
            if cur is None or cur.index != k:
                if cur is not None:
                    yield cur
                cur = Shard(k, line_no, min(lines, (k + 1) * shard_size), [], [], [])
            rid, text, why = parse_line(spec, line_no, raw)
            if why is None:
                cur.ids.append(rid)
                cur.texts.append(text)
            else:
                cur.bad.append([line_no, rid, why])
    if cur is not None:
        yield cur


# ------------------------------------------------------------------ identity


MODEL_FILES = ("config.json", "modules.json", "1_Pooling/config.json", "tokenizer.json", "tokenizer_config.json",
               "vocab.txt", "special_tokens_map.json", "sentencepiece.bpe.model", "spiece.model")


def model_sha256(path: str | os.PathLike, flag: str = "--model") -> str:
    """Hash of what decides a model's embeddings: weights, config, pooling and
    tokenizer files, by content (a copied or re-touched model is the same model)."""
    folder = local(path, flag, "a model folder is read with local-file APIs")
    if not folder.is_dir():
        raise E5Error(f"{flag} {path} is not a folder")
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    if not weights:
        raise E5Error(f"{flag} {path} holds no *.safetensors / *.bin weights; give a model folder "
                      "(`e5jax export` writes one from a training workdir)")
    h = hashlib.sha256()
    for p in weights + [folder / n for n in MODEL_FILES]:
        if p.is_file():
            h.update(f"{p.relative_to(folder)}:{p.stat().st_size}\n".encode())
            with open(p, "rb") as f:
                while buf := f.read(1 << 24):
                    h.update(buf)
    return h.hexdigest()


# ------------------------------------------------------------------ files


def _atomic_write(path: pathlib.Path, write: Callable) -> None:
    """`write(file)` into a temp sibling, fsync, rename: readers see the whole file or none.
    The temp name carries host and pid: processes on several hosts share the folder."""
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        if os.environ.get(KILL_ENV) == f"{path.name}:torn":
            f.truncate(f.tell() // 2)
            _kill()
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if os.environ.get(KILL_ENV) == f"{path.name}:written":
        _kill()


def _kill() -> None:
    import signal

    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _write_json(path: pathlib.Path, obj) -> None:
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode()))


def shard_paths(out: pathlib.Path, k: int) -> tuple[pathlib.Path, pathlib.Path]:
    return out / f"shard-{k:05d}.npy", out / f"shard-{k:05d}.json"


def _shard_done(out: pathlib.Path, k: int, dim: int) -> bool:
    """Finished = its .json exists and the .npy holds that many rows (a torn pair is redone)."""
    npy, meta = shard_paths(out, k)
    if not meta.is_file() or not npy.is_file():
        return False
    try:
        rows = len(json.loads(meta.read_text(encoding="utf-8"))["ids"])
        return np.load(npy, mmap_mode="r").shape == (rows, dim)
    except (ValueError, KeyError, OSError):
        return False


def check_plan(out: pathlib.Path, plan: dict) -> None:
    """Write plan.json on a fresh start; refuse a folder holding other settings or other files."""
    path = out / "plan.json"
    if not path.is_file():
        if out.exists() and not out.is_dir():
            raise E5Error(f"--output-dir {out} is a file; give a folder")
        # Hidden entries are temp files; plan.json may appear meanwhile (another process wrote it).
        others = [p for p in out.iterdir() if not p.name.startswith(".") and p.name != "plan.json"] \
            if out.is_dir() else []
        if others and not path.is_file():
            raise E5Error(f"--output-dir {out} is not empty and holds no e5jax embeddings (plan.json); "
                          "give a new or empty folder")
        out.mkdir(parents=True, exist_ok=True)
        _write_json(path, plan)  # every process may write it: same content, atomic rename
    old = json.loads(path.read_text(encoding="utf-8"))
    diff = [k for k in PLAN_FLAGS if old.get(k) != plan.get(k)]
    if diff:
        flags = sorted({PLAN_FLAGS[k] for k in diff})
        k = diff[0]
        raise E5Error(f"--output-dir {out} holds embeddings made with another {' / '.join(flags)} "
                      f"({k}: {old.get(k)!r} there, {plan.get(k)!r} now); give a new --output-dir, or the "
                      "same settings to resume")


# ------------------------------------------------------------------ the run


def start(spec: InputSpec, out: pathlib.Path, *, model: str, model_sha: str, dim: int, prefix: str,
          max_length: int, batch_size: int, shard_size: int, compute_dtype: str) -> dict:
    """Scan the input and write or check plan.json; before the model loads, so a
    refused resume costs nothing. Returns the plan."""
    if shard_size < 1:
        raise E5Error(f"--shard-size must be >= 1, got {shard_size}")
    lines, sha = scan_input(spec)
    if lines == 0:
        raise E5Error(f"--input {spec.describe()} is empty")
    plan = {"format": FORMAT, "version": VERSION, "model": model, "model_sha256": model_sha,
            "input": spec.describe(), "input_sha256": sha, "input_lines": lines, "input_format": spec.fmt,
            "text_field": spec.text_field, "id_field": spec.id_field, "prefix": prefix, "max_length": max_length,
            "batch_size": batch_size, "shard_size": shard_size, "compute_dtype": compute_dtype, "dim": dim,
            "dtype": "float32"}
    check_plan(out, plan)
    return plan


def embed_corpus(encode: Callable, spec: InputSpec, out: pathlib.Path, plan: dict, *,
                 progress: bool | None = None) -> dict | None:
    """Embed `spec` into `out` as `plan` (from `start`) says; resumes a killed run.

    `encode(texts, prefix)` -> float32 [n, dim]. Returns the manifest on
    process 0, None on the others.
    """
    import jax
    from tqdm.auto import tqdm

    lines, shard_size, dim, prefix = plan["input_lines"], plan["shard_size"], plan["dim"], plan["prefix"]
    batch_size = plan["batch_size"]
    pid, nproc = jax.process_index(), jax.process_count()
    n_shards = math.ceil(lines / shard_size)
    todo = [k for k in range(pid, n_shards, nproc) if not _shard_done(out, k, dim)]
    for k in todo:  # what a killed run of ours left of these shards (nobody else writes them)
        for p in out.glob(f".shard-{k:05d}.*.tmp"):
            p.unlink(missing_ok=True)
    total = sum(min(lines, (k + 1) * shard_size) - k * shard_size for k in todo)
    chunk = CHUNK_BATCHES * batch_size
    # On by default, also where stderr is a log file (a pod's, a nohup run's): there one
    # line every 30 s (texts done, texts/s, ETA) instead of a redraw every 0.1 s.
    tty = sys.stderr.isatty()
    with tqdm(total=total, unit="text", unit_scale=True, desc="embed" if nproc == 1 else f"embed p{pid}",
              file=sys.stderr, disable=False if progress is None else not progress, dynamic_ncols=tty,
              mininterval=0.1 if tty else 30.0) as bar:
        for shard in iter_shards(spec, lines, shard_size, set(todo)):
            parts = [np.zeros((0, dim), np.float32)]
            bar.update(len(shard.bad))
            for lo in range(0, len(shard.texts), chunk):
                part = shard.texts[lo:lo + chunk]
                parts.append(np.asarray(encode(part, prefix), np.float32))
                bar.update(len(part))
            emb = np.concatenate(parts)
            if emb.shape != (len(shard.ids), dim):
                raise E5Error(f"the encoder returned {emb.shape} for {len(shard.ids)} texts of dim {dim}")
            npy, meta = shard_paths(out, shard.index)
            _atomic_write(npy, lambda f, a=emb: np.save(f, a, allow_pickle=False))
            _write_json(meta, {"shard": shard.index, "first_line": shard.first_line, "last_line": shard.last_line,
                               "rows": len(shard.ids), "ids": shard.ids, "bad": shard.bad})
    if nproc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("e5jax-embed-shards")
    # No barrier after this: if process 0 refuses to write the manifest (a shard missing),
    # the others must not wait for it forever; they have nothing left to do.
    return _write_manifest(out, plan, n_shards, dim) if pid == 0 else None


def _write_manifest(out: pathlib.Path, plan: dict, n_shards: int, dim: int) -> dict:
    missing = [k for k in range(n_shards) if not _shard_done(out, k, dim)]
    if missing:
        raise E5Error(f"{len(missing)} of {n_shards} shards are missing in {out} (first: shard-{missing[0]:05d}): "
                      "a process failed, or --output-dir is not one folder shared by all processes; "
                      "run the same command again to finish them")
    rows, bad, shards = 0, [], []
    for k in range(n_shards):
        meta = json.loads(shard_paths(out, k)[1].read_text(encoding="utf-8"))
        rows += meta["rows"]
        bad += meta["bad"]
        shards.append({"npy": shard_paths(out, k)[0].name, "json": shard_paths(out, k)[1].name, "rows": meta["rows"],
                       "bad_lines": len(meta["bad"])})
    manifest = {**plan, "rows": rows, "shards": shards, "bad_lines": len(bad),
                "bad_examples": bad[:BAD_EXAMPLES]}
    _write_json(out / "manifest.json", manifest)
    return manifest


def describe_bad(manifest: dict) -> str:
    """One line: how many bad lines, and the first few with their reasons."""
    n = manifest["bad_lines"]
    ex = "; ".join(f"line {line}{f' (id {rid})' if rid is not None else ''}: {why}"
                   for line, rid, why in manifest["bad_examples"])
    return (f"{n} bad input line{'s' if n != 1 else ''} skipped (no embedding row), each listed in its shard's "
            f".json; first: {ex}")


# ------------------------------------------------------------------ reading


@dataclasses.dataclass(frozen=True)
class Embedded:
    manifest: dict
    ids: list[str]
    emb: np.ndarray  # float32 [rows, dim], rows in input order
    bad: list[list]  # every bad line: [line, id or None, reason]


def read_manifest(path: str | os.PathLike, flag: str) -> tuple[pathlib.Path, dict]:
    folder = local(path, flag)
    man = folder / "manifest.json"
    if not man.is_file():
        why = ("an unfinished `e5jax embed` (run it again to finish)" if (folder / "plan.json").is_file()
               else "not an `e5jax embed --output-dir` folder")
        raise E5Error(f"{flag} {path}: no manifest.json — {why}")
    manifest = json.loads(man.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise E5Error(f"{flag} {path}: manifest.json is not an {FORMAT} v{VERSION} manifest")
    return folder, manifest


def check_embedded(path: str | os.PathLike, *, flag: str, model: str | os.PathLike | None = None,
                   prefix: str | None = None, prefix_flag: str = "--passage-prefix",
                   max_length: int | None = None) -> tuple[pathlib.Path, dict]:
    """(folder, manifest) of a finished embedded corpus, checked against the model /
    prefix / max length the caller encodes its queries with: one line naming the
    flag when they differ (None = not checked). Reads only the manifest (and the model)."""
    folder, m = read_manifest(path, flag)
    if model is not None and model_sha256(model) != m["model_sha256"]:
        raise E5Error(f"{flag} {path} was embedded with another model ({m['model']}) than --model {model}; "
                      "embed the corpus with this model, or pass the model it was embedded with")
    if prefix is not None and prefix != m["prefix"]:
        raise E5Error(f"{flag} {path} was embedded with prefix {m['prefix']!r}, not {prefix_flag} {prefix!r}; "
                      f"pass {prefix_flag} {m['prefix']!r} or embed again")
    if max_length is not None and max_length != m["max_length"]:
        raise E5Error(f"{flag} {path} was embedded with max length {m['max_length']}, not --max-length "
                      f"{max_length}; pass --max-length {m['max_length']} or embed again")
    return folder, m


def load_embedded(path: str | os.PathLike, *, flag: str, **check) -> Embedded:
    """An embedded corpus (all shards, in input order), `check_embedded(**check)` first."""
    folder, m = check_embedded(path, flag=flag, **check)
    ids, embs, bad = [], [], []
    for s in m["shards"]:
        meta = json.loads((folder / s["json"]).read_text(encoding="utf-8"))
        e = np.load(folder / s["npy"], allow_pickle=False)
        if e.shape != (len(meta["ids"]), m["dim"]):
            raise E5Error(f"{flag} {path}: {s['npy']} holds {e.shape}, its .json {len(meta['ids'])} ids; "
                          "the folder is damaged: embed again")
        ids += meta["ids"]
        embs.append(e)
        bad += meta["bad"]
    emb = np.concatenate(embs) if embs else np.zeros((0, m["dim"]), np.float32)
    return Embedded(m, ids, emb, bad)


def align(embedded: Embedded, ids: list[str], *, flag: str, path) -> tuple[np.ndarray, list[int]]:
    """Rows of `embedded` for `ids`: (emb [len(kept), dim], kept positions of `ids`).

    An id the input listed as a bad line (e.g. an empty document) is left out
    (the caller reports it); any other id without a row is an error: the folder
    holds another corpus.
    """
    row = {}
    for i, rid in enumerate(embedded.ids):
        if row.setdefault(rid, i) != i:
            raise E5Error(f"{flag} {path}: id {rid!r} has two embeddings (duplicate ids in the embedded input)")
    bad_ids = {b[1] for b in embedded.bad if b[1] is not None}
    kept, rows, missing = [], [], []
    for pos, rid in enumerate(ids):
        if rid in row:
            kept.append(pos)
            rows.append(row[rid])
        elif rid not in bad_ids:
            missing.append(rid)
    if missing:
        raise E5Error(f"{flag} {path}: {len(missing)} of {len(ids)} documents have no embedding (first: "
                      f"{missing[0]!r}); it holds another corpus: embed this one")
    extra = len(row) - len(rows)
    if extra > 0:
        raise E5Error(f"{flag} {path}: holds {extra} embeddings of documents not in this corpus; "
                      "it holds another corpus: embed this one")
    return embedded.emb[np.asarray(rows, np.int64)], kept


def take(path: str | os.PathLike, manifest: dict, ids: list[str], shard_of: Callable[[str], int], *,
         flag: str) -> np.ndarray:
    """Rows for `ids` ([len(ids), dim], in that order), reading only the shards
    `shard_of(id)` names, each memory-mapped: a pool of 2M rows out of a corpus of
    hundreds of millions never loads the corpus."""
    folder = local(path, flag)
    out = np.zeros((len(ids), manifest["dim"]), np.float32)
    by_shard: dict[int, list[int]] = {}
    for pos, rid in enumerate(ids):
        by_shard.setdefault(shard_of(rid), []).append(pos)
    for k, positions in sorted(by_shard.items()):
        if not 0 <= k < len(manifest["shards"]):
            raise E5Error(f"{flag} {path}: no shard {k} for id {ids[positions[0]]!r}: it embeds another input")
        s = manifest["shards"][k]
        meta = json.loads((folder / s["json"]).read_text(encoding="utf-8"))
        row = {rid: i for i, rid in enumerate(meta["ids"])}
        emb = np.load(folder / s["npy"], mmap_mode="r", allow_pickle=False)
        for pos in positions:
            if ids[pos] not in row:
                why = next((b[2] for b in meta["bad"] if b[1] == ids[pos]), "not in this input")
                raise E5Error(f"{flag} {path}: id {ids[pos]!r} has no embedding ({why})")
            out[pos] = emb[row[ids[pos]]]
    return out
