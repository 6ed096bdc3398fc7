"""Harvest throughput (pairs/s per source) and peak memory on a ≥ 1 GB dump.

    .venv/bin/python benchmarks/harvest.py            # 1 GB Reddit file (a few minutes)
    .venv/bin/python benchmarks/harvest.py --quick    # 50 MB, seconds
    .venv/bin/python benchmarks/harvest.py --only wikipedia --repeat 5 --workers 2

Each harvest runs in its own process (`e5jax harvest …`), so its peak RSS is
measured alone (getrusage of the finished child). Generated inputs live in a
temporary folder that is removed at the end. Goals (issue 4): peak RSS
< 500 MB on the 1 GB Reddit file; ≥ 20,000 pairs/s jsonl; ≥ 2,000 pairs/s
wikipedia (the real shortened enwiki dump from the gensim 4.4.0 wheel, see
tests/harvest/conftest.py; skipped if it is not cached). `--workers N` sets
E5JAX_HARVEST_WORKERS for the children (wikipedia parses pages in N
processes; default: one per CPU); `--repeat K` runs each harvest K times and
reports the median pairs/s (this machine is shared, so single runs are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _sentences() -> list[str]:
    from tests.fixtures.real_text import debian_records

    return [" ".join(r["long"].split()[:60]) for r in debian_records()[:2000]]


def make_reddit(path: pathlib.Path, target_bytes: int) -> int:
    """Pushshift-format NDJSON: each post followed by 3 direct comments and 1 nested one."""
    sents = _sentences()
    n, size = 0, 0
    with open(path, "w") as f:
        while size < target_bytes:
            s = sents[n % len(sents)]
            lines = [json.dumps({"id": f"p{n}", "title": f"{sents[(n * 7) % len(sents)][:80]} #{n}",
                                 "selftext": s[:200], "score": n % 50, "subreddit": "bench"})]
            for j in range(3):
                lines.append(json.dumps({"id": f"c{n}_{j}", "link_id": f"t3_p{n}", "parent_id": f"t3_p{n}",
                                         "score": j, "body": f"{sents[(n + j * 13) % len(sents)]} [{n}.{j}]"}))
            lines.append(json.dumps({"id": f"c{n}_n", "link_id": f"t3_p{n}", "parent_id": f"t1_c{n}_0",
                                     "score": 99, "body": "nested"}))
            block = "\n".join(lines) + "\n"
            f.write(block)
            size += len(block)
            n += 1
    return n


def make_jsonl(path: pathlib.Path, n: int) -> None:
    sents = _sentences()
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"query": f"{sents[i % len(sents)][:60]} {i}",
                                "passage": f"{sents[(i * 31) % len(sents)]} {i}"}) + "\n")


def run_harvest(source: str, inputs: list[str], out: pathlib.Path, workers: int | None = None,
                repeat: int = 1) -> dict:
    """Harvest in a child process (`repeat` times); returns its summary plus
    peak RSS (MB), with the median pairs/s over the repeats."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if workers is not None:
        env["E5JAX_HARVEST_WORKERS"] = str(workers)
    rates = []
    for i in range(repeat):
        if i:
            shutil.rmtree(out)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "e5jax.cli", "harvest", source, "--input", *inputs,
                        "--output", str(out)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env=env)
        wall = time.perf_counter() - t
        rates.append(json.loads((out / "summary.json").read_text())["pairs_per_second"])
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux; max over children so far
    s = json.loads((out / "summary.json").read_text())
    return {"source": source, "kept": s["kept"], "seconds": s["seconds"], "wall_s": round(wall, 1),
            "pairs_per_s": statistics.median(rates), **({"runs": rates} if repeat > 1 else {}),
            **({"workers": workers} if workers is not None else {}), "input_mb": round(sum(os.path.getsize(i) for i in inputs) / 2**20, 1),
            "peak_rss_mb": round(rss / 1024, 1) if rss > before else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50 MB Reddit file instead of 1 GB")
    ap.add_argument("--only", nargs="+", choices=("jsonl", "wikipedia", "debian", "reddit"),
                    help="run only these sources")
    ap.add_argument("--workers", type=int, default=None,
                    help="E5JAX_HARVEST_WORKERS for the harvests (default: unset, one per CPU)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per source; pairs/s is their median")
    args = ap.parse_args()
    want = set(args.only or ("jsonl", "wikipedia", "debian", "reddit"))
    kw = {"workers": args.workers, "repeat": args.repeat}
    rows = []
    with tempfile.TemporaryDirectory(prefix="e5jax-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        # Small, fast sources first; the big Reddit file last (RSS is a max over children).
        if "jsonl" in want:
            make_jsonl(tmp / "pairs.jsonl", 200_000)
            rows.append(run_harvest("jsonl", [str(tmp / "pairs.jsonl")], tmp / "o-jsonl", **kw))
        from tests.conftest import CACHE

        wiki = CACHE / "enwiki-shortened.xml.bz2"
        if "wikipedia" not in want:
            pass
        elif wiki.exists():
            rows.append(run_harvest("wikipedia", [str(wiki)], tmp / "o-wiki", **kw))
        else:
            print(f"(wikipedia skipped: run the tests once to cache {wiki})", file=sys.stderr)
        if "debian" in want:
            from tests.harvest.formats import write_debian

            rows.append(run_harvest("debian", write_debian(tmp, n=3900), tmp / "o-debian", **kw))
        if "reddit" not in want:
            for r in rows:
                print(json.dumps(r))
            return 0
        target = (50 if args.quick else 1024) * 2**20
        t = time.perf_counter()
        posts = make_reddit(tmp / "RC_bench.ndjson", target)
        print(f"generated {posts:,} posts ({target / 2**20:.0f} MB) in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        rows.append(run_harvest("reddit", [str(tmp / "RC_bench.ndjson")], tmp / "o-reddit", workers=args.workers))
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
