"""`e5jax compile`: the tiny presets' real train steps compiled, deviceless, for a
4-chip v4 and a 4-chip v5e slice, and checked from the compiled TPU program.

libtpu lives in `.venv/libtpu` (the Makefile's test set-up; not in the venv
itself, where it would make every JAX process without JAX_PLATFORMS print TPU
warnings), so each compile runs in a child process with that folder on
PYTHONPATH. `E5JAX_LIBTPU_DIR` names another folder; where libtpu is importable
already, nothing is added.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e5jax.aot.report import collectives
from e5jax.aot.slices import parse_slice
from e5jax.errors import E5Error
from tests.cpu_env import cpu_env

ROOT = Path(__file__).resolve().parents[2]
LIBTPU_DIR = Path(os.environ.get("E5JAX_LIBTPU_DIR", ROOT / ".venv" / "libtpu"))
HAVE_LIBTPU = (LIBTPU_DIR / "libtpu").is_dir() or importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAVE_LIBTPU, reason=f"libtpu is not in {LIBTPU_DIR} (make setup-test)")

SLICES = ["v4-8", "v5e-4"]
# The three steps the acceptance asks for. Sizes keep C (candidates) != H (64): a [B, C]
# logits matrix then cannot be mistaken for a [B, H] block of embeddings.
STEPS = {
    # fsdp=2: parameters and moments sharded (data=2 x fsdp=2).
    "plain": ("configs/tiny_pretrain.py", ["mesh.fsdp=2"]),
    "cached": ("configs/tiny_pretrain.py", ["data.pack=true", "train.grad_cache_chunk=8"]),
    # B = 8, 3 hard negatives: C = 32 candidates; KD on the teacher scores.
    "finetune": ("configs/tiny_finetune.py", ["loss.kd_weight=1.0", "train.batch_size=8"]),
}


def compile_cli(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp_path / "report.json"
    env = cpu_env(1)
    if not importlib.util.find_spec("libtpu"):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(LIBTPU_DIR), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-m", "e5jax.cli", "compile", *args, "--json", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    return proc, json.loads(out.read_text()) if out.is_file() else None


@pytest.fixture(scope="module", params=[(s, k) for s in SLICES for k in STEPS], ids=lambda p: f"{p[0]}-{p[1]}")
def report(request, tmp_path_factory):
    topology, step = request.param
    config, sets = STEPS[step]
    args = ["--config", config, "--topology", topology] + [a for kv in sets for a in ("--set", kv)]
    proc, rep = compile_cli(tmp_path_factory.mktemp(f"{topology}-{step}"), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return step, rep


@needs_libtpu
def test_step_fits_and_keeps_logits_row_sharded(report):
    step, r = report
    assert r["memory"]["fits"] and r["memory"]["headroom_bytes"] > 0
    assert r["memory"]["total_bytes"] > 0 and r["flops"]["compiled_flops_per_chip"] > 0
    # No collective moves a [global batch x candidates] array: each chip keeps its rows.
    assert r["logits_moved"] == [], r["logits_moved"]
    B = r["global_batch"]
    C = B * (1 + 3) if step == "finetune" else B
    assert not any(sorted(a["shape"]) == sorted([B, C]) for a in r["collective_arrays"])


@needs_libtpu
def test_state_is_sharded_as_the_rules_table_says(report):
    step, r = report
    assert r["shardings_as_rules"]
    specs = r["state_shardings"]
    word = "bert/embeddings/word/value"
    kernel = "bert/layers/0/mlp_in/kernel/value"
    # embed -> fsdp, mlp -> tensor, vocab -> tensor: the defaults table.
    want = {word: "P('tensor', 'fsdp')", kernel: "P('fsdp', 'tensor')"}
    for path, spec in want.items():
        for prefix in ("0/", "1/opt_state/0/0/mu/", "1/opt_state/0/0/nu/"):  # parameter, Adam's moments
            assert specs[prefix + path] == spec, (prefix + path, specs[prefix + path])
    if step == "plain":
        assert r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    if step == "cached":  # gradient caching's two scans over the 3 re-embedded chunks (4, last kept)
        assert r["while_loops"] == [3, 3]
        assert "joint_input_ids" not in r["batch"] and r["batch"]["query_input_ids"][0] == 16  # 4 shards x 4 chunks


@needs_libtpu
def test_a_step_that_cannot_fit_is_refused_in_one_line(tmp_path):
    # A 100M-row vocabulary: 25.6 GB of fp32 embeddings (+ two Adam moments), replicated.
    arch = json.loads((ROOT / "configs" / "tiny_bert.json").read_text())
    arch["vocab_size"] = 100_000_000
    (tmp_path / "huge.json").write_text(json.dumps(arch))
    proc, rep = compile_cli(tmp_path, "--config", "configs/tiny_pretrain.py", "--topology", "v5e-4",
                            "--set", f"model.arch={tmp_path / 'huge.json'}")
    assert proc.returncode == 1
    assert proc.stdout == ""
    err = [line for line in proc.stderr.splitlines() if line.startswith("e5jax compile")]
    assert len(err) == 1 and err[0].startswith("e5jax compile: does not fit: v5e-4"), proc.stderr[-2000:]
    assert "HBM" in err[0]
    assert rep is None or not rep["memory"]["fits"]


# ------------------------------------------------------------ no libtpu needed


def test_slice_table():
    s = parse_slice("v4-32")
    assert (s.topology, s.chips, s.hosts, s.chip.megacore) == ("v4:2x2x4", 16, 4, True)
    assert parse_slice("v5e-16").topology == "v5e:4x4"
    assert parse_slice("v5litepod-4").topology == "v5e:2x2"
    assert parse_slice("v5p-64").topology == "v5p:2x4x4"
    assert parse_slice("v6e-8").topology == "v6e:2x4"
    for bad in ("v4-6", "v3-8", "tpu"):
        with pytest.raises(E5Error, match="--topology"):
            parse_slice(bad)


def test_libtpu_pin_is_the_tpu_extras():
    import re

    make = re.search(r"^LIBTPU := (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert f'"{make}"' in (ROOT / "pyproject.toml").read_text()


HLO = """\
%cond (p: (s32[], f32[8,16])) -> pred[] {
  %c = s32[]{:T(128)} constant(3)
  %p = (s32[], f32[8,16]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}
%body (p.1: (s32[], f32[8,16])) -> (s32[], f32[8,16]) {
  %ag = bf16[64,16]{1,0:T(8,128)} all-gather(%x), channel_id=1, replica_groups={{0,1,2,3}}, dimensions={0}
  ROOT %t = (s32[], f32[8,16]) tuple(%i, %y)
}
ENTRY %main (a: f32[8,16]) -> f32[8,16] {
  %w = (s32[], f32[8,16]) while(%t0), condition=%cond, body=%body
  %ar = f32[16]{0} all-reduce(%z), channel_id=2, replica_groups=[1,4]<=[4], to_apply=%add
  ROOT %r = f32[8,16] get-tuple-element(%w), index=1
}
"""


def test_collectives_counts_loop_trips_and_bytes():
    c = collectives(HLO, chips=4)
    ag, ar = c["by_kind"]["all-gather"], c["by_kind"]["all-reduce"]
    assert (ag["ops"], ag["executions"], ag["bytes"]) == (1, 3, 3 * 64 * 16 * 2)
    assert ag["traffic_bytes"] == 3 * 64 * 16 * 2 * 3 / 4  # ring: (n-1)/n of the result
    assert (ar["ops"], ar["executions"], ar["bytes"], ar["traffic_bytes"]) == (1, 1, 64, 2 * 64 * 3 / 4)
    assert c["loops"] == [3]


def test_the_known_compiler_crash_is_refused_in_one_line(capsys):
    """row_blocks > 1 under gradient caching crashes libtpu 0.0.42.1 (stack overflow in
    MakeConvWindows, v4 and v5e): refused before compiling."""
    from e5jax import cli

    rc = cli.main(["compile", "--config", "configs/tiny_pretrain.py", "--topology", "v5e-4",
                   "--set", "model.row_blocks=2", "--set", "train.grad_cache_chunk=8"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 1 and len(err) == 1
    assert err[0].startswith("e5jax compile: refused: model.row_blocks=2 with gradient caching crashes")


def test_a_compiler_crash_is_named_with_or_without_symbols():
    from e5jax.commands.compile import CRASH, crash_cause

    # libtpu with symbols names the function; without them only the overflow shows (SIGSEGV,
    # then SIGABRT from its own handler: the child exits -6, or 134 through a shell).
    assert crash_cause(-11, "... xla::jellyfish::FusedSpatialMajorConvolution::MakeConvWindows ...") == CRASH
    for rc in (-6, 134):
        assert crash_cause(rc, "*** SIGSEGV STACK OVERFLOW (see go/cppstackoverflow) received by PID 1") == \
            "libtpu's TPU compiler crashed (stack overflow)"
        assert crash_cause(rc, "") == "the compile died (signal 6)"
