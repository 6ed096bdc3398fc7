"""Consistency filter: real Debian pairs with planted wrong passages, a real
pre-trained model (all-MiniLM-L6-v2), real TFDS datasets, a killed run resumed."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from e5jax import filter as filt
from e5jax import filter_files
from e5jax.cli import main as cli_main
from e5jax.data.ccpairs.builder import build_dataset, load_source
from e5jax.errors import E5Error
from tests.fixtures.real_text import debian_records
from tests.cpu_env import cpu_env


def swapped_dataset(root: pathlib.Path, n: int, swap_fraction: float, name: str) -> tuple[pathlib.Path, set[str]]:
    """Build `name` from n real (short -> long description) pairs, `swap_fraction` of them
    given another pair's passage (a random derangement). Returns (data_dir, ids of swapped pairs)."""
    recs = [r for r in debian_records() if r["short"].strip() and r["long"].strip()][:n]
    rng = np.random.default_rng(0)
    chosen = rng.choice(n, int(swap_fraction * n), replace=False)
    donor = {int(a): int(b) for a, b in zip(chosen, np.roll(chosen, 1))}  # nobody keeps its own
    lines = [json.dumps({"query": r["short"], "passage": recs[donor.get(i, i)]["long"],
                         "source": "debian_a" if i % 3 else "debian_b",
                         "id": f"{'swap' if i in donor else 'true'}-{i}"}) for i, r in enumerate(recs)]
    shard = root / f"{name}.jsonl"
    shard.write_text("\n".join(lines) + "\n")
    build_dataset([shard], data_dir=root / "tfds", name=name, heldout_fraction=0.05)
    return root / "tfds", {f"swap-{i}" for i in donor}


def records(data_dir, name: str, split: str) -> list[dict]:
    src = load_source(data_dir, name, split)
    return src.__getitems__(list(range(len(src))))


@pytest.fixture(scope="module")
def encoder_1dev(minilm_dir):
    import jax

    return filt.load_encoder(minilm_dir, devices=jax.local_devices()[:1])


# ------------------------------------------------------------------ acceptance 4

POOL, TOP_K, N_PAIRS = 150, 2, 400


@pytest.fixture(scope="module")
def filtered(tmp_path_factory, encoder_1dev):
    """(data_dir, swapped ids, report) of one filter run over 400 pairs, 30% swapped."""
    data_dir, swapped = swapped_dataset(tmp_path_factory.mktemp("acc4"), N_PAIRS, 0.3, "debian_noisy")
    # all-MiniLM-L6-v2 was trained without prefixes. Pool 150: the pool and its reserve
    # need 2 x 150 distinct passages out of the ~380 train pairs.
    cfg = filt.FilterConfig(pool_size=POOL, top_k=TOP_K, query_prefix="", passage_prefix="",
                            max_length=64, batch_size=64, block_size=128)
    report = filt.filter_dataset(encoder_1dev, data_dir=data_dir, name="debian_noisy",
                                 output_name="debian_noisy_filtered", cfg=cfg, model_id="minilm", progress=False)
    return data_dir, swapped, report


def test_filter_keeps_true_pairs_and_drops_swapped_ones(filtered):
    data_dir, swapped, report = filtered
    train_ids = [r["id"].decode() for r in records(data_dir, "debian_noisy", "train")]
    kept_ids = {r["id"].decode() for r in records(data_dir, "debian_noisy_filtered", "train")}
    true_ids = [i for i in train_ids if i not in swapped]
    bad_ids = [i for i in train_ids if i in swapped]
    true_kept = sum(i in kept_ids for i in true_ids) / len(true_ids)
    bad_dropped = sum(i not in kept_ids for i in bad_ids) / len(bad_ids)
    print(f"\nfilter (pool {POOL}, top-{TOP_K}, {len(train_ids)} train pairs): kept {true_kept:.1%} of "
          f"{len(true_ids)} true pairs, dropped {bad_dropped:.1%} of {len(bad_ids)} swapped; {report['rank_histogram']}")
    assert true_kept >= 0.90 and bad_dropped >= 0.80
    assert kept_ids <= set(train_ids)


def test_report_counts_match_the_dataset_and_heldout_is_copied(filtered):
    data_dir, _, report = filtered
    train = records(data_dir, "debian_noisy", "train")
    assert report["pairs"] == len(train)
    assert report["kept"] == len(records(data_dir, "debian_noisy_filtered", "train"))
    assert sum(report["rank_histogram"].values()) == len(train)
    assert report["rank_histogram"]["1"] + report["rank_histogram"]["2"] == report["kept"]  # k = 2
    assert {s: v["pairs"] for s, v in report["per_source"].items()} == {
        s: sum(r["source"].decode() == s for r in train) for s in ("debian_a", "debian_b")}
    assert sum(v["kept"] for v in report["per_source"].values()) == report["kept"]
    # Every pool passage is some pair's own passage: those pairs used the reserve pool.
    assert report["ranked_against_reserve_pool"] >= POOL
    held_in = sorted(r["id"] for r in records(data_dir, "debian_noisy", "heldout"))
    held_out = sorted(r["id"] for r in records(data_dir, "debian_noisy_filtered", "heldout"))
    assert held_in == held_out and report["copied_splits"] == {"heldout": len(held_in)}
    on_disk = json.loads((filt.work_dir(data_dir, "debian_noisy_filtered") / "report.json").read_text())
    assert on_disk["kept"] == report["kept"] and on_disk["per_source"] == report["per_source"]


def test_filtered_dataset_feeds_the_training_pipeline(filtered, encoder_1dev):
    from e5jax.config import DataConfig
    from e5jax.data.pipeline import make_train_iterator

    data_dir, _, _ = filtered
    it = make_train_iterator(load_source(data_dir, "debian_noisy_filtered", "train"), tokenizer=encoder_1dev.tokenizer,
                             cfg=DataConfig(max_query_length=16, max_passage_length=32, num_buckets=2),
                             batch_size_per_process=8, process_index=0, process_count=1, seed=0)
    batch = next(it)
    assert batch["query_input_ids"].shape[0] == 8 and batch["passage_attention_mask"].sum() > 0


# ------------------------------------------------------------------ acceptance 5


class Killed(Exception):
    pass


def test_killed_run_resumes_to_the_dataset_of_an_uninterrupted_run(tmp_path, minilm_dir):
    data_dir, _ = swapped_dataset(tmp_path, 120, 0.3, "small")
    encoder = filt.load_encoder(minilm_dir)  # all local devices, as the CLI does
    model_id = filt.model_fingerprint(minilm_dir)
    flags = dict(pool_size=30, top_k=2, query_prefix="", passage_prefix="", max_length=32, batch_size=16,
                 block_size=16)
    cfg = filt.FilterConfig(**flags)

    def kill_after(j):
        def hook(b):
            if b == j:
                raise Killed
        return hook

    with pytest.raises(Killed):
        filt.filter_dataset(encoder, data_dir=data_dir, name="small", output_name="small_resumed", cfg=cfg,
                            model_id=model_id, on_block=kill_after(2), progress=False)
    work = filt.work_dir(data_dir, "small_resumed")
    log = work / "progress-p00000.log"
    assert sorted(filt.read_log(log)[0]) == [0, 1, 2]
    with open(log, "ab") as f:  # a writer killed mid-record leaves a torn tail
        f.write(filt.block_record(3, 48, 64, np.ones(16), np.ones(16, bool))[:30])
    assert not (data_dir / "small_resumed").exists()

    # The same command again, through the CLI, finishes the remaining blocks only.
    argv = ["filter", "--model", str(minilm_dir), "--data-dir", str(data_dir), "--name", "small",
            "--output-name", "small_resumed"]
    argv += [a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    assert cli_main(argv) == 0

    filt.filter_dataset(encoder, data_dir=data_dir, name="small", output_name="small_straight", cfg=cfg,
                        model_id=model_id, progress=False)
    bounds = filt.block_bounds(len(load_source(data_dir, "small", "train")), 16)
    assert log.stat().st_size == sum(filter_files._HEAD.size + 5 * (hi - lo) for lo, hi in bounds)  # no block twice
    for split in ("train", "heldout"):
        assert records(data_dir, "small_resumed", split) == records(data_dir, "small_straight", split)
    a = filt.read_progress(work, bounds)
    b = filt.read_progress(filt.work_dir(data_dir, "small_straight"), bounds)
    assert all(np.array_equal(a[i][0], b[i][0]) for i in range(len(bounds)))

    # Other settings in the same work folder are refused, not mixed in.
    with pytest.raises(E5Error, match="other settings"):
        filt.filter_dataset(encoder, data_dir=data_dir, name="small", output_name="small_resumed",
                            cfg=filt.FilterConfig(**{**flags, "top_k": 3}), model_id=model_id, overwrite=True)


@pytest.mark.slow
def test_two_processes_filter_to_the_dataset_of_one(tmp_path, minilm_dir):
    """Two real JAX processes split the blocks (b % 2 == process id), each logs its
    own, process 0 merges: the same dataset and ranks as a single process."""
    import socket
    import subprocess
    import sys

    data_dir, _ = swapped_dataset(tmp_path, 120, 0.3, "small")
    flags = dict(pool_size=30, top_k=2, query_prefix="", passage_prefix="", max_length=32, batch_size=16,
                 block_size=16)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = cpu_env(2)
    procs = []
    for pid in range(2):
        argv = [sys.executable, "-m", "e5jax.cli", "filter", "--model", str(minilm_dir), "--data-dir", str(data_dir),
                "--name", "small", "--output-name", "small_2p", "--coordinator", f"127.0.0.1:{port}",
                "--num-processes", "2", "--process-id", str(pid)]
        argv += [a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", str(v))]
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]

    encoder = filt.load_encoder(minilm_dir)
    filt.filter_dataset(encoder, data_dir=data_dir, name="small", output_name="small_1p",
                        cfg=filt.FilterConfig(**flags), model_id=filt.model_fingerprint(minilm_dir), progress=False)
    bounds = filt.block_bounds(len(load_source(data_dir, "small", "train")), 16)
    work2 = filt.work_dir(data_dir, "small_2p")
    for pid in range(2):  # each process ranked its own blocks only
        assert sorted(filt.read_log(work2 / f"progress-p{pid:05d}.log")[0]) == list(range(pid, len(bounds), 2))
    two, one = filt.read_progress(work2, bounds), filt.read_progress(filt.work_dir(data_dir, "small_1p"), bounds)
    assert sorted(two) == sorted(one) == list(range(len(bounds)))
    assert all(np.array_equal(two[b][0], one[b][0]) and np.array_equal(two[b][1], one[b][1]) for b in one)
    for split in ("train", "heldout"):
        assert records(data_dir, "small_2p", split) == records(data_dir, "small_1p", split)
    assert 0 < len(records(data_dir, "small_2p", "train")) < 120


# ------------------------------------------------------------------ units


def test_progress_log_skips_torn_and_corrupt_tails_and_counts_a_block_once(tmp_path):
    log = tmp_path / "progress-p00000.log"
    recs = [filt.block_record(b, 10 * b, 10 * b + 10, np.arange(10) + b, np.arange(10) % 2 == 0) for b in range(3)]
    for r in recs:
        filt.append_record(log, r)
    filt.append_record(log, recs[1])  # the same block recorded twice (e.g. two hosts)
    log.write_bytes(log.read_bytes() + recs[2][:-3])  # torn tail
    got, valid = filt.read_log(log)
    assert sorted(got) == [0, 1, 2] and valid == sum(map(len, recs)) + len(recs[1])
    assert np.array_equal(got[2][2], np.arange(10) + 2) and list(got[2][3]) == [True, False] * 5
    filt.repair_log(log)
    assert log.stat().st_size == valid
    filt.append_record(log, filt.block_record(3, 30, 40, np.ones(10), np.ones(10, bool)))
    assert sorted(filt.read_log(log)[0]) == [0, 1, 2, 3]  # appended on a record boundary
    data = bytearray(log.read_bytes())
    data[len(recs[0]) + 30] ^= 0xFF  # flip a byte inside block 1's payload
    log.write_bytes(bytes(data))
    assert sorted(filt.read_log(log)[0]) == [0]  # the CRC stops reading there
    with pytest.raises(E5Error, match="not the plan"):
        filt.read_progress(tmp_path, [(0, 5)])


def test_pair_whose_passage_is_in_the_pool_is_ranked_against_the_reserve():
    # Pool A holds the pair's own text and three passages that beat it; reserve pool B
    # holds only weaker ones. Routed to A the pair would rank 4 (or 5 if its copy won a tie).
    vec = {"q": [1.0, 0.0], "own": [0.6, 0.8], "strong": [0.9, 0.1], "weak": [0.1, 0.9]}

    def encode(texts, prefix):
        return np.asarray([vec[t] for t in texts], np.float32)

    bank_a = np.asarray([vec["own"]] + [vec["strong"]] * 3, np.float32)
    bank_b = np.asarray([vec["weak"]] * 4, np.float32)
    cfg = filt.FilterConfig(pool_size=4)
    pairs = [{"query": b"q", "passage": b"own"}, {"query": b"q", "passage": b"weak"}]
    ranks = filt.rank_block(pairs, cfg, encode, (bank_a, bank_b), {filt.text_hash("own")}, query_block=8)
    assert list(ranks) == [1, 5]  # "weak" is not in A: ranked against A, where all four beat it


def test_pools_are_distinct_texts_and_the_draw_is_seeded():
    class Source(list):
        def __getitems__(self, idx):
            return [self[i] for i in idx]

    src = Source({"passage": f"p{i % 40}".encode()} for i in range(100))  # 40 distinct texts
    a, b = filt.draw_pools(src, 20, seed=3)
    texts = [src[i]["passage"] for i in np.concatenate([a, b])]
    assert len(set(texts)) == 40
    assert np.array_equal(a, filt.draw_pools(src, 20, seed=3)[0]) and not np.array_equal(a, filt.draw_pools(src, 20, 4)[0])
    with pytest.raises(E5Error, match="distinct passages"):
        filt.draw_pools(src, 21, seed=3)


def test_rank_histogram_bins():
    assert filt.rank_histogram([1, 2, 3, 5, 6, 10, 11, 100, 101, 10**6]) == {
        "1": 1, "2": 1, "3-5": 2, "6-10": 2, "11-100": 2, ">100": 2}


def test_url_data_dir_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """Progress logs are appended and fsynced: an object-store data dir cannot hold
    them, and pathlib would turn gs://b into a local folder gs:/b. One line, no files."""
    monkeypatch.chdir(tmp_path)
    code = cli_main(["filter", "--model", str(tmp_path / "no-model"), "--data-dir", "gs://b/tfds", "--name", "pairs",
                 "--pool-size", "10", "--output-name", "pairs_f"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--data-dir gs://b/tfds" in err[0] and "POSIX file system" in err[0] and "gcsfuse" in err[0]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(E5Error, match="POSIX file system"):
        filt.work_dir("gs://b/tfds", "pairs_f")


@pytest.mark.parametrize("pool,k,ok", [(10, 10, True), (10, 11, False), (1, 2, False), (10, 0, False)])
def test_top_k_must_fit_the_pool(pool, k, ok):
    """Ranks run 1..N+1 against N competitors: a k above N would keep every pair."""
    if ok:
        filt.FilterConfig(pool_size=pool, top_k=k)
    else:
        with pytest.raises(E5Error, match="--top-k"):
            filt.FilterConfig(pool_size=pool, top_k=k)


def test_cli_refuses_top_k_above_the_pool_before_loading_anything(tmp_path, capsys):
    code = cli_main(["filter", "--model", str(tmp_path / "no-model"), "--data-dir", str(tmp_path / "tfds"),
                     "--name", "pairs", "--pool-size", "10", "--top-k", "50", "--output-name", "pairs_f"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--top-k 50 is larger than --pool-size 10" in err[0], err
    assert list(tmp_path.iterdir()) == []
