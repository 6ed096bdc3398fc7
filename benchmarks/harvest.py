"""Harvest throughput (pairs/s per source) and peak memory on a ≥ 1 GB dump.

    .venv/bin/python benchmarks/harvest.py            # 1 GB Reddit file (a few minutes)
    .venv/bin/python benchmarks/harvest.py --quick    # 50 MB, seconds

Each harvest runs in its own process (`e5jax harvest …`), so its peak RSS is
measured alone (getrusage of the finished child). Generated inputs live in a
temporary folder that is removed at the end. Goals (issue 4): peak RSS
< 500 MB on the 1 GB Reddit file; ≥ 20,000 pairs/s jsonl; ≥ 2,000 pairs/s
wikipedia (the real shortened enwiki dump from the gensim 4.4.0 wheel, see
tests/harvest/conftest.py; skipped if it is not cached).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
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


def run_harvest(source: str, inputs: list[str], out: pathlib.Path) -> dict:
    """Harvest in a child process; returns its summary plus peak RSS (MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "e5jax.cli", "harvest", source, "--input", *inputs,
                    "--output", str(out)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                   env={**os.environ, "TQDM_DISABLE": "1"})
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux; max over children so far
    s = json.loads((out / "summary.json").read_text())
    return {"source": source, "kept": s["kept"], "seconds": s["seconds"], "wall_s": round(wall, 1),
            "pairs_per_s": s["pairs_per_second"], "input_mb": round(sum(os.path.getsize(i) for i in inputs) / 2**20, 1),
            "peak_rss_mb": round(rss / 1024, 1) if rss > before else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50 MB Reddit file instead of 1 GB")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="e5jax-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        # Small, fast sources first; the big Reddit file last (RSS is a max over children).
        make_jsonl(tmp / "pairs.jsonl", 200_000)
        rows.append(run_harvest("jsonl", [str(tmp / "pairs.jsonl")], tmp / "o-jsonl"))
        from tests.harvest.conftest import CACHE

        wiki = CACHE / "enwiki-shortened.xml.bz2"
        if wiki.exists():
            rows.append(run_harvest("wikipedia", [str(wiki)], tmp / "o-wiki"))
        else:
            print(f"(wikipedia skipped: run the tests once to cache {wiki})", file=sys.stderr)
        from tests.harvest.formats import write_debian

        rows.append(run_harvest("debian", write_debian(tmp, n=3900), tmp / "o-debian"))
        target = (50 if args.quick else 1024) * 2**20
        t = time.perf_counter()
        posts = make_reddit(tmp / "RC_bench.ndjson", target)
        print(f"generated {posts:,} posts ({target / 2**20:.0f} MB) in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        rows.append(run_harvest("reddit", [str(tmp / "RC_bench.ndjson")], tmp / "o-reddit"))
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
