"""Decoder LLM embedders through the user-facing entry points: `Encoder.from_pretrained`,
`e5jax.load` (export folder and training workdir, LoRA), `e5jax export` (merged with
--query-instruction, --peft), `e5jax eval`, and --query-instruction reaching the encoder
from `e5jax mine` and `e5jax filter`.

The model is configs/tiny_decoder_finetune.py's (2-layer, 64-wide Mistral, LoRA rank 8), random
init with non-zero adapters, saved as a workdir checkpoint without training (no step compiled);
the tokenizer is tests/decoder_tokenizer.py's (its post-processor appends the EOS).
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

import e5jax
from e5jax.cli import main as cli_main
from e5jax.decoder_export import query_prompt
from tests.decoder_tokenizer import INSTRUCTION, build_tokenizer
from tests.fixtures.real_text import debian_records

ROOT = pathlib.Path(__file__).resolve().parent.parent
BEIR = ROOT / "tests" / "eval" / "fixtures" / "debian_beir"
MAX_LEN = 32


def _write_workdir(workdir: pathlib.Path, cfg, state=None) -> pathlib.Path:
    """config.json + checkpoints/ as `e5jax train` leaves them (one checkpoint, step 1, when `state`)."""
    from e5jax.train import checkpoint as ckpt

    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if state is not None:
        mngr = ckpt.manager(str(workdir))
        try:
            ckpt.save(mngr, 1, state)
        finally:
            mngr.close()
    return workdir


def _config(tokenizer_dir, **overrides):
    from e5jax.config import load_config, replace

    cfg = load_config(ROOT / "configs" / "tiny_decoder_finetune.py")
    return replace(cfg, **{"model.tokenizer": str(tokenizer_dir), **overrides})


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.getbasetemp() / "decoder_tokenizer")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tokenizer_dir):
    """A LoRA decoder workdir whose adapters' B is non-zero (as after training): the adapters count."""
    from e5jax.model import axes as ax
    from e5jax.train.state import create_state

    cfg = _config(tokenizer_dir)
    mesh = ax.make_mesh(devices=jax.devices()[:1])
    graphdef, state = create_state(cfg, mesh)
    model, opt = nnx.merge(graphdef, state)
    rng = np.random.default_rng(0)
    lora = nnx.state(model, nnx.LoRAParam)
    for path, v in nnx.to_flat_state(lora):
        if path[-1] == "lora_b":
            v[...] = (0.1 * rng.standard_normal(v.shape)).astype(np.float32)
    nnx.update(model, lora)
    _, state = nnx.split((model, opt))
    return _write_workdir(tmp_path_factory.mktemp("dec") / "run", cfg, state)


@pytest.fixture(scope="module")
def exported(workdir, tmp_path_factory):
    """`e5jax export --query-instruction`: the merged folder."""
    out = tmp_path_factory.mktemp("dec_export") / "merged"
    assert cli_main(["export", "--workdir", str(workdir), "--output", str(out), "--max-seq-length", "64",
                     "--query-instruction", INSTRUCTION]) == 0
    return out


def texts() -> list[str]:
    recs = debian_records()[200:212]
    return [r["short"] for r in recs[:6]] + [r["long"] for r in recs[6:]]  # short and long (cut at 32 tokens)


def cosines(a, b) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_encoder_from_a_decoder_export_equals_the_trained_module(workdir, exported, tokenizer_dir):
    """Encoder.from_pretrained(merged export), packed and padded, = the workdir's own LoRA module
    on the tokenizer's ids (EOS last, truncated texts too), last-token pooled; queries with the
    export's prompt."""
    from transformers import AutoTokenizer

    from e5jax.loading import restore_workdir
    from e5jax.model.decoder import DecoderTextEncoder

    prompt = query_prompt(INSTRUCTION)
    st = json.loads((exported / "config_sentence_transformers.json").read_text())["prompts"]
    assert st == {"query": prompt, "passage": ""}  # --query-instruction reached the ST prompt
    assert json.loads((exported / "e5jax.json").read_text())["family"] == "decoder"

    enc = e5jax.Encoder.from_pretrained(exported, dtype="float32")
    assert isinstance(enc.model, DecoderTextEncoder) and enc.model.pooling == "last"
    assert enc.dim == 64 and enc.max_length == 128  # from the decoder config (max_position_embeddings)

    model, _, _ = restore_workdir(str(workdir), dtype="float32")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    # Instructed queries and cut documents fill a packed row each; bare summaries (~8 tokens) share
    # rows, so causal attention within each text of a row is what makes them equal.
    groups = [(texts()[:6], prompt), (texts()[6:], ""), (texts()[:6], "")]
    batch = [prefix + t for group, prefix in groups for t in group]
    ids = tok(batch, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="np")
    last = ids["input_ids"][np.arange(len(batch)), ids["attention_mask"].sum(-1) - 1]
    assert (last == tok.eos_token_id).all() and ids["attention_mask"].sum(-1).max() == MAX_LEN
    want = np.asarray(nnx.jit(lambda m, i, k: m(i, k))(model, ids["input_ids"], ids["attention_mask"]))

    [(rows, _, _)] = enc.packed_plan(enc.tokenize(texts()[:6], MAX_LEN), MAX_LEN, 64)
    assert max(len(set(r[r > 0])) for r in rows["segment_ids"].reshape(-1, rows["segment_ids"].shape[-1])) >= 2

    for packed in (True, False):
        got = np.concatenate([enc.encode(group, prefix=prefix, max_length=MAX_LEN, packed=packed)
                              for group, prefix in groups])
        assert cosines(got, want).min() >= 0.99999, (packed, cosines(got, want))
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_load_of_the_workdir_equals_load_of_its_export(workdir, exported):
    a = e5jax.load(workdir, dtype="float32")
    b = e5jax.load(exported, dtype="float32")
    assert a.dim == b.dim == 64
    qa = a.encode(texts()[:6], prefix=query_prompt(INSTRUCTION), max_length=MAX_LEN)
    qb = b.encode(texts()[:6], prefix=query_prompt(INSTRUCTION), max_length=MAX_LEN)
    assert cosines(qa, qb).min() >= 0.99999
    da, db = a.encode(texts()[6:], max_length=MAX_LEN), b.encode(texts()[6:], max_length=MAX_LEN)
    assert cosines(da, db).min() >= 0.99999
    assert cosines(qa, da).max() < 0.999  # distinct texts, distinct vectors (nothing degenerate)


def test_plain_hf_decoder_folder_pools_the_last_token(exported, tmp_path):
    """A Mistral folder without e5jax.json or sentence-transformers files: E5-mistral's last-token
    pooling, normalised; the export's weights give the export's embeddings."""
    import shutil

    plain = tmp_path / "plain"
    plain.mkdir()
    for p in exported.iterdir():
        if p.is_file() and (p.name in ("config.json", "model.safetensors") or p.name.startswith(("tokenizer", "special"))):
            shutil.copy(p, plain / p.name)
    a = e5jax.Encoder.from_pretrained(plain, dtype="float32")
    b = e5jax.Encoder.from_pretrained(exported, dtype="float32")
    assert (a.model.pooling, a.model.normalize) == ("last", True)
    np.testing.assert_allclose(a.encode(texts(), max_length=MAX_LEN), b.encode(texts(), max_length=MAX_LEN),
                               atol=1e-6)


def test_embed_cli_corpus_of_a_decoder_export(exported, tmp_path):
    """`e5jax embed --output-dir` reads the hidden size from the decoder config and embeds the queries
    with the instruction, as `Encoder.encode` does."""
    from e5jax.embed import load_embedded

    src = tmp_path / "q.txt"
    src.write_text("\n".join(texts()[:6]) + "\n")
    out = tmp_path / "emb"
    assert cli_main(["embed", "--model", str(exported), "--input", str(src), "--output-dir", str(out),
                     "--query-instruction", INSTRUCTION, "--max-length", str(MAX_LEN)]) == 0
    got = load_embedded(out, flag="--output-dir").emb
    want = e5jax.Encoder.from_pretrained(exported, dtype="float32").encode(
        texts()[:6], prefix=query_prompt(INSTRUCTION), max_length=MAX_LEN)
    assert got.shape == (6, 64) and cosines(got, want).min() >= 0.99999


def test_eval_cli_on_a_decoder_export_with_an_instruction(exported, tmp_path):
    out = tmp_path / "r.json"
    assert cli_main(["eval", "--model", str(exported), "--beir", str(BEIR), "--query-instruction", INSTRUCTION,
                     "--max-length", str(MAX_LEN), "--top-k", "10", "--output", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["settings"]["query_prefix"] == query_prompt(INSTRUCTION) and r["settings"]["passage_prefix"] == ""
    assert r["datasets"]["debian_beir"]["n_docs"] == 160
    assert 0.0 <= r["average"]["nDCG@10"] <= 1.0


def test_export_peft_of_a_lora_workdir(workdir, tmp_path, capsys):
    from safetensors.numpy import load_file

    out = tmp_path / "adapter"
    assert cli_main(["export", "--workdir", str(workdir), "--output", str(out), "--peft"]) == 0
    conf = json.loads((out / "adapter_config.json").read_text())
    assert (conf["peft_type"], conf["r"], conf["lora_alpha"]) == ("LORA", 8, 16.0)
    assert len(load_file(str(out / "adapter_model.safetensors"))) == 2 * 7 * 2  # 2 layers x 7 projections x A, B
    assert "PeftModel.from_pretrained" in capsys.readouterr().out
    # The adapter folder is not a whole model: loading it says so in one line.
    with pytest.raises(e5jax.E5Error, match="PEFT adapter folder"):
        e5jax.load(out)


@pytest.mark.parametrize("run, flags, why", [
    ("bert", ["--peft"], "--peft is for decoder embedders"),
    ("bert", ["--query-instruction", "Find it"], "--query-instruction is for decoder embedders"),
    ("decoder_no_lora", ["--peft"], "model.lora_rank = 0"),
    ("decoder", ["--peft", "--query-instruction", "Find it"], "give one of the two"),
])
def test_export_flags_refused_in_one_line_before_the_restore(run, flags, why, tmp_path, tokenizer_dir, capsys):
    """No checkpoint in these workdirs: the refusal comes from config.json, before any restore."""
    from e5jax.config import load_config

    cfg = {"bert": lambda: load_config(ROOT / "configs" / "tiny_pretrain.py"),
           "decoder_no_lora": lambda: _config(tokenizer_dir, **{"model.lora_rank": 0}),
           "decoder": lambda: _config(tokenizer_dir)}[run]()
    wd = _write_workdir(tmp_path / "run", cfg)
    rc = cli_main(["export", "--workdir", str(wd), "--output", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("e5jax export: error:") and why in err[0], err
    assert not (tmp_path / "out").exists()


def _recording_encode(monkeypatch) -> list[str]:
    """Every prefix `Encoder.encode` is called with."""
    from e5jax.model.encoder import Encoder

    seen: list[str] = []
    real = Encoder.encode

    def encode(self, texts, prefix="", **kw):
        seen.append(prefix)
        return real(self, texts, prefix, **kw)

    monkeypatch.setattr(Encoder, "encode", encode)
    return seen


def test_mine_with_a_query_instruction(exported, tmp_path, monkeypatch):
    seen = _recording_encode(monkeypatch)
    out = tmp_path / "mined.jsonl"
    assert cli_main(["mine", "--model", str(exported), "--queries", str(BEIR / "queries.jsonl"),
                     "--corpus", str(BEIR / "corpus.jsonl"), "--qrels", str(BEIR / "qrels" / "test.tsv"),
                     "--query-instruction", INSTRUCTION, "--max-length", str(MAX_LEN), "--top-n", "10",
                     "--rank-window", "0:10", "--num-negatives", "2", "--output", str(out)]) == 0
    assert set(seen) == {query_prompt(INSTRUCTION), ""}
    assert len(out.read_text().splitlines()) > 0


def test_filter_with_a_query_instruction(exported, tmp_path, monkeypatch):
    from e5jax.data.ccpairs.builder import build_dataset

    recs = [r for r in debian_records() if r["short"].strip() and r["long"].strip()][:48]
    shard = tmp_path / "pairs.jsonl"
    shard.write_text("".join(json.dumps({"query": r["short"], "passage": r["long"], "source": "debian"}) + "\n"
                             for r in recs))
    build_dataset([shard], data_dir=tmp_path / "tfds", name="pairs", heldout_fraction=0.1)
    seen = _recording_encode(monkeypatch)
    assert cli_main(["filter", "--model", str(exported), "--data-dir", str(tmp_path / "tfds"), "--name", "pairs",
                     "--pool-size", "8", "--top-k", "2", "--output-name", "pairs_f", "--max-length", str(MAX_LEN),
                     "--query-instruction", INSTRUCTION]) == 0
    assert set(seen) == {query_prompt(INSTRUCTION), ""}


def test_python_export_takes_the_decoder_options(workdir, exported, tmp_path):
    """`e5jax.export(..., query_instruction=)` writes the CLI's merged folder (same prompts, same
    weights); `peft=True` the CLI's adapter folder with the workdir's base model recorded; a
    loaded Encoder exports too; both options at once are refused before anything is written."""
    from safetensors.numpy import load_file

    merged = e5jax.export(workdir, tmp_path / "merged", max_seq_length=64, query_instruction=INSTRUCTION)
    prompts = lambda d: json.loads((d / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts(merged) == prompts(exported) and prompts(merged)["query"] == query_prompt(INSTRUCTION)
    a, b = load_file(str(merged / "model.safetensors")), load_file(str(exported / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    adapter = e5jax.export(e5jax.load(workdir), tmp_path / "adapter", peft=True, base_model="BASE")
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "BASE"
    # A workdir whose run started from a base folder: that folder is recorded by default.
    import shutil

    base = tmp_path / "base"
    base.mkdir()
    shutil.copy(ROOT / "configs" / "tiny_decoder.json", base / "config.json")
    run = shutil.copytree(workdir, tmp_path / "run_from_base")
    conf = json.loads((run / "config.json").read_text())
    conf["model"]["init"] = str(base)
    (run / "config.json").write_text(json.dumps(conf))
    from_wd = e5jax.export(run, tmp_path / "adapter2", peft=True)
    assert json.loads((from_wd / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    x, y = load_file(str(adapter / "adapter_model.safetensors")), load_file(str(from_wd / "adapter_model.safetensors"))
    assert x.keys() == y.keys() and len(x) == 2 * 7 * 2 and all(np.array_equal(x[k], y[k]) for k in x)

    with pytest.raises(e5jax.E5Error, match="give one of the two"):
        e5jax.export(workdir, tmp_path / "both", peft=True, query_instruction="Find it")
    assert not (tmp_path / "both").exists()
