"""`e5jax embed --output-dir` at corpus scale (issue 22): a run killed between
shards and restarted writes byte-equal files to an uninterrupted run; two real
JAX processes write the same embeddings as one; bad input lines are counted,
listed and reported; `e5jax eval --corpus-embeddings` scores as encoding the
corpus does. A tiny random BERT (hidden 64, 2 layers, max 64 tokens) keeps it fast."""

import json
import pathlib
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from e5jax.cli import main
from tests.cpu_env import cpu_env

FIXTURE = pathlib.Path(__file__).parent / "eval" / "fixtures" / "debian_beir"
ARGS = ["--max-length", "64", "--batch-size", "8", "--prefix", "passage: "]
# Lines 3, 8, 13, 19, 25 of the test corpus are bad, each in its own way.
BAD = {3: "invalid JSON", 8: "missing text field 'text'", 13: "empty text", 19: "empty line",
       25: "not a JSON object"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, minilm_dir):
    """A random 2-layer BERT exported as an HF folder, with MiniLM's tokenizer."""
    from transformers import AutoTokenizer

    from e5jax.export import export
    from e5jax.model import axes as ax
    from e5jax.model.bert import BertConfig
    from e5jax.model.encoder import create_sharded

    cfg = BertConfig.from_hf(json.loads(pathlib.Path("configs/tiny_bert.json").read_text()))
    model = create_sharded(cfg, ax.make_mesh(devices=__import__("jax").devices()[:1]), seed=3)
    return export(model, AutoTokenizer.from_pretrained(str(minilm_dir)), tmp_path_factory.mktemp("tiny") / "m",
                  max_seq_length=64)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
    """A BEIR corpus.jsonl: 35 real documents of the eval fixture with 5 bad lines among them."""
    docs = (FIXTURE / "corpus.jsonl").read_text().splitlines()[:35]
    lines, it = [], iter(docs)
    for n in range(1, 41):
        bad = {3: '{"_id": "broken", "text": "no closing brace"', 8: '{"_id": "notext", "title": "t"}',
               13: '{"_id": "blank", "title": "", "text": "  "}', 19: "", 25: '["a", "list"]'}
        lines.append(bad[n] if n in bad else next(it))
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def files(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def reference(tiny_model, corpus, tmp_path_factory):
    """One uninterrupted in-process run (8 devices), shards of 8 lines: 5 shards."""
    out = tmp_path_factory.mktemp("ref") / "emb"
    assert main(["embed", "--model", str(tiny_model), "--input", str(corpus), "--output-dir", str(out),
                 "--shard-size", "8"] + ARGS) == 0
    return out


def _embed_cmd(model, corpus, out, *extra):
    return [sys.executable, "-m", "e5jax.cli", "embed", "--model", str(model), "--input", str(corpus),
            "--output-dir", str(out), "--shard-size", "8", *ARGS, *extra]


@pytest.mark.slow
def test_killed_and_restarted_equals_uninterrupted(tiny_model, corpus, reference, tmp_path, capsys, minilm_dir):
    out = tmp_path / "emb"
    # SIGKILL while shard 1's .json is half written (its .npy is in place): shard 0 is
    # finished, shard 1 half made (the worst moment: a matrix without its ids).
    proc = subprocess.run(_embed_cmd(tiny_model, corpus, out),
                          env=cpu_env(8, E5JAX_EMBED_KILL_AT="shard-00001.json:torn"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    left = set(files(out))
    # the torn file is a temp file: no reader ever sees a half-written shard-00001.json
    assert {"plan.json", "shard-00000.npy", "shard-00000.json", "shard-00001.npy"} == left, left
    assert [p.name for p in out.glob(".shard-00001.json.*.tmp")]
    first = (out / "shard-00000.npy").stat()

    def argv(model=tiny_model, inp=corpus, args=ARGS):
        return ["embed", "--model", str(model), "--input", str(inp), "--output-dir", str(out), "--shard-size", "8",
                *args]

    # a resume with other settings is refused in one line naming the flag; nothing is touched
    other = tmp_path / "other" / "corpus.jsonl"
    other.parent.mkdir()
    other.write_text(corpus.read_text().replace("game", "gamE"))
    for bad, flag in ((argv(args=["--max-length", "64", "--batch-size", "8", "--prefix", "query: "]), "--prefix"),
                      (argv(args=ARGS[:2] + ["--batch-size", "4"] + ARGS[4:]), "--batch-size"),
                      (argv(model=minilm_dir), "--model"), (argv(inp=other), "--input")):
        capsys.readouterr()
        assert main(bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0] and "--output-dir" in err[0], err
    assert set(files(out)) == left
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("keep me")  # a folder that is not ours is refused too
    assert main(argv()[:6] + [str(tmp_path / "notes")] + argv()[7:]) == 2
    assert "not empty" in capsys.readouterr().err and set(files(tmp_path / "notes")) == {"keep.txt"}

    assert main(argv()) == 0
    got, want = files(out), files(reference)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], name  # byte-equal: arrays, ids, bad lines, manifest
    assert not list(out.glob(".*"))  # the killed run's temp file is gone
    again = (out / "shard-00000.npy").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # finished shard skipped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(tiny_model, corpus, reference, tmp_path):
    out, port = tmp_path / "emb", _free_port()
    procs = [subprocess.Popen(_embed_cmd(tiny_model, corpus, out, "--coordinator", f"127.0.0.1:{port}",
                                         "--num-processes", "2", "--process-id", str(pid)),
                              env=cpu_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert "wrote 35 x 64" in outs[0] and "wrote" not in outs[1]  # process 0 writes the manifest
    got, want = files(out), files(reference)
    assert got.keys() == want.keys()
    for name in want:  # shards 0, 2, 4 from process 0 and 1, 3 from process 1
        if name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(out / name), np.load(reference / name), err_msg=name)
        else:
            assert got[name] == want[name], name


def test_bad_lines_counted_listed_and_reported(reference, corpus, tiny_model, tmp_path, capsys):
    from e5jax import embed

    man = json.loads((reference / "manifest.json").read_text())
    assert man["input_lines"] == 40 and man["rows"] == 35 and man["bad_lines"] == 5
    assert sum(s["rows"] + s["bad_lines"] for s in man["shards"]) == 40
    assert {line: why for line, _, why in man["bad_examples"]} == {
        line: (why if why != "invalid JSON" else man["bad_examples"][0][2]) for line, why in BAD.items()}
    assert man["bad_examples"][0][2].startswith("invalid JSON (")
    assert [rid for _, rid, _ in man["bad_examples"]] == [None, "notext", "blank", None, None]
    got = embed.load_embedded(reference, flag="--corpus-embeddings")
    docs = [json.loads(x)["_id"] for x in (FIXTURE / "corpus.jsonl").read_text().splitlines()[:35]]
    assert got.ids == docs and got.emb.shape == (35, 64) and len(got.bad) == 5
    norms = np.linalg.norm(got.emb, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)  # every row a real embedding, no zero rows

    # the log says it too: the count and the first line numbers, on stderr
    out = tmp_path / "emb"
    assert main(["embed", "--model", str(tiny_model), "--input", str(corpus), "--output-dir", str(out),
                 "--shard-size", "40"] + ARGS) == 0
    cap = capsys.readouterr()
    assert "5 bad input lines skipped" in cap.err and "line 3:" in cap.err and "line 25:" in cap.err
    assert "(id notext): missing text field" in cap.err
    assert "wrote 35 x 64 float32 embeddings of 40 input lines (5 bad)" in cap.out
    assert re.search(r"40(\.0)?/40(\.0)? \[\d\d:\d\d<\d\d:\d\d, +[\d.]+text/s\]", cap.err), cap.err  # progress


def test_jsonl_and_text_inputs(tiny_model, reference, tmp_path):
    """Generic JSONL (--text-field / --id-field) and plain text (ids = line numbers) give
    the BEIR run's rows for the same documents (title and text joined by hand here)."""
    from e5jax import embed

    ref = embed.load_embedded(reference, flag="ref")
    docs = [json.loads(x) for x in (FIXTURE / "corpus.jsonl").read_text().splitlines()[:35]]
    joined = [f"{d['title']} {d['text']}".strip() for d in docs]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"key": d["_id"], "body": t}) + "\n"
                                               for d, t in zip(docs, joined)) + '{"key": "nobody"}\n')
    (tmp_path / "in.txt").write_text("\n".join(joined[:3] + ["", *joined[3:]]) + "\n")
    for name, extra, ids, bad in (
            ("in.jsonl", ["--text-field", "body", "--id-field", "key"], ref.ids, [[36, "nobody", "missing text field 'body'"]]),
            ("in.txt", [], [str(n) for n in range(1, 37) if n != 4], [[4, "4", "empty text"]])):
        out = tmp_path / f"emb-{name}"
        assert main(["embed", "--model", str(tiny_model), "--input", str(tmp_path / name), "--output-dir", str(out),
                     "--shard-size", "40", *extra, *ARGS]) == 0
        got = embed.load_embedded(out, flag="got")
        assert got.ids == ids and got.bad == bad, name
        np.testing.assert_allclose(got.emb, ref.emb, atol=1e-6, err_msg=name)


def test_eval_with_corpus_embeddings_equals_encoding(tiny_model, tmp_path, capsys, minilm_dir, monkeypatch):
    emb = tmp_path / "emb"
    assert main(["embed", "--model", str(tiny_model), "--input", str(FIXTURE / "corpus.jsonl"),
                 "--output-dir", str(emb), "--shard-size", "64"] + ARGS) == 0
    def argv(out, model=tiny_model, max_length="64", *extra):
        return ["eval", "--model", str(model), "--beir", str(FIXTURE), "--max-length", max_length,
                "--batch-size", "8", "--top-k", "100", "--output", str(tmp_path / out), *extra]

    assert main(argv("a.json")) == 0
    from e5jax.model.encoder import Encoder

    encoded, encode = [], Encoder.encode
    monkeypatch.setattr(Encoder, "encode", lambda self, texts, prefix="", **kw: encoded.append(prefix)
                        or encode(self, texts, prefix, **kw))
    assert main(argv("b.json", tiny_model, "64", "--corpus-embeddings", str(emb))) == 0
    assert encoded == ["query: "]  # the corpus was read, not encoded
    assert "corpus embeddings from" in capsys.readouterr().out
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["datasets"] == b["datasets"] and a["per_query"] == b["per_query"]
    assert 0 < a["average"]["nDCG@10"] < 1

    # embedded with another model, prefix or length: refused in one line naming the flag
    for bad, flag in ((argv("c.json", minilm_dir), "--model"),
                      (argv("c.json", tiny_model, "64", "--passage-prefix", ""), "--passage-prefix"),
                      (argv("c.json", tiny_model, "32"), "--max-length")):
        capsys.readouterr()
        assert main(bad + ["--corpus-embeddings", str(emb)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0] and "--corpus-embeddings" in err[0], err
    assert not (tmp_path / "c.json").exists()


def test_filter_with_pool_embeddings_equals_encoding_the_pool(tiny_model, tmp_path, capsys, monkeypatch):
    """`e5jax embed --input-format pairs` of a pair dataset's passages feeds the filter's
    pool: the pool rows it ranks against are what encoding the pool gives."""
    from e5jax.data.ccpairs.builder import build_dataset
    from e5jax.filter import work_dir
    from tests.fixtures.real_text import debian_records

    recs = [r for r in debian_records() if r["short"].strip() and r["long"].strip()][:120]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"query": r["short"], "passage": r["long"],
                                                          "source": "debian"}) + "\n" for r in recs))
    data = tmp_path / "tfds"
    build_dataset([tmp_path / "p.jsonl"], data_dir=data, name="pairs", heldout_fraction=0.05)
    emb = tmp_path / "pool-emb"
    assert main(["embed", "--model", str(tiny_model), "--input-format", "pairs", "--input", str(data),
                 "--name", "pairs", "--output-dir", str(emb), "--shard-size", "50"] + ARGS) == 0

    def filt(out, *extra):
        return main(["filter", "--model", str(tiny_model), "--data-dir", str(data), "--name", "pairs",
                     "--pool-size", "20", "--output-name", out, "--max-length", "64", "--batch-size", "8",
                     "--block-size", "64", *extra])

    from e5jax import embed

    taken, take = [], embed.take
    monkeypatch.setattr(embed, "take", lambda *a, **kw: taken.append(len(a[2])) or take(*a, **kw))
    assert filt("f_emb", "--pool-embeddings", str(emb)) == 0
    assert taken == [20, 20]  # pools A and B were read from the folder, not encoded
    # the pools it read are the pool passages' embeddings, as encoding them gives
    from e5jax.data.ccpairs.builder import load_source
    from e5jax.model.encoder import Encoder

    source, enc = load_source(data, "pairs", "train"), Encoder.from_pretrained(tiny_model)
    with np.load(work_dir(data, "f_emb") / "pool.npz") as z:
        for idx, got in ((z["idx_a"], z["emb_a"]), (z["idx_b"], z["emb_b"])):
            texts = [r["passage"].decode() for r in source.__getitems__([int(i) for i in idx])]
            want = enc.encode(texts, prefix="passage: ", max_length=64, batch_size=8)
            assert got.shape == (20, 64)
            np.testing.assert_allclose(got, want, atol=1e-6)

    capsys.readouterr()  # another prefix than the pool was embedded with: one line naming the flag
    assert filt("f_bad", "--pool-embeddings", str(emb), "--passage-prefix", "") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--passage-prefix" in err[0] and "--pool-embeddings" in err[0], err
