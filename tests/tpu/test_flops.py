"""The loop-aware FLOPs count of a compiled step (`e5jax.aot.hlo.matmul_flops`):
XLA's cost analysis counts a while loop's body once, so a gradient-cached step
(two scans over its chunks) looks cheaper than it is. Counting every dot and
convolution as often as its computation runs gives the step's real matmul work,
which must match what remat and gradient caching add by design."""

from __future__ import annotations

import pytest

from e5jax.aot.hlo import conv_flops, hbm_traffic, matmul_flops
from tests.tpu.test_compile import compile_cli, needs_libtpu

# Same model, batch and packing; only gradient caching differs (4 chunks of 8, last kept).
SETS = ["data.pack=true"]
CACHED = SETS + ["train.grad_cache_chunk=8"]


def _report(tmp_path_factory, topology, sets):
    args = ["--config", "configs/tiny_pretrain.py", "--topology", topology] + [a for kv in sets for a in ("--set", kv)]
    proc, rep = compile_cli(tmp_path_factory.mktemp(topology), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return rep


@needs_libtpu
@pytest.mark.parametrize("topology", ["v4-8", "v5e-4"])
def test_loop_aware_flops_of_the_gradient_cached_step(tmp_path_factory, topology):
    cached = _report(tmp_path_factory, topology, CACHED)
    plain = _report(tmp_path_factory, topology, SETS)
    fc, fp = cached["flops"], plain["flops"]
    assert cached["while_loops"] == [3, 3] and plain["while_loops"] == []
    # Within 10% of the by-design count (remat + the 3 re-embedded chunks' extra forward).
    assert 0.9 < fc["loop_aware_flops_per_chip"] / fc["expected_flops_per_chip"] < 1.1, fc
    # ... and of the plain step's count times the designed ratio of the two steps.
    ratio = fc["expected_flops_per_chip"] / fp["expected_flops_per_chip"]
    assert 0.9 < fc["loop_aware_flops_per_chip"] / (fp["loop_aware_flops_per_chip"] * ratio) < 1.1
    # The plain step has no loop: the loop-aware count is each op once, and below XLA's own by
    # the elementwise work (softmax, LayerNorm, GELU, AdamW), some 20% in a 64-wide model.
    assert fp["loop_aware_flops_per_chip"] == fp["loop_aware_once_flops_per_chip"]
    assert 0.7 < fp["loop_aware_flops_per_chip"] / fp["compiled_flops_per_chip"] <= 1.0
    # Ignoring the trip counts (each op once, as XLA's cost analysis does) misses >10%.
    assert fc["loop_aware_once_flops_per_chip"] / fc["expected_flops_per_chip"] < 0.9
    # The roofline takes the loop-aware counts, FLOPs and HBM bytes.
    ro = cached["roofline"]
    assert ro["loops"] and ro["compute_s"] == pytest.approx(fc["loop_aware_flops_per_chip"] / ro["peak_flops"])
    factor = fc["hbm_bytes_loop_aware"] / fc["hbm_bytes_loop_aware_once"]
    assert ro["loop_scale"] == pytest.approx(factor)
    assert ro["hbm_s"] == pytest.approx(fc["hbm_bytes_accessed"] * factor / ro["hbm_bw"])
    assert plain["roofline"]["hbm_s"] == pytest.approx(fp["hbm_bytes_accessed"] / ro["hbm_bw"])
    # HBM bytes: the loops multiply the bytes of their bodies (the tiny model's optimizer update
    # outside them weighs a lot); without loops the count is each op once. It takes a fusion's
    # whole operands where XLA counts the part read (a gather from the word table, a slice), so
    # it runs above XLA's "bytes accessed": the roofline takes only its loop factor.
    assert fc["hbm_bytes_loop_aware"] > 1.1 * fc["hbm_bytes_loop_aware_once"]
    assert fp["hbm_bytes_loop_aware"] == fp["hbm_bytes_loop_aware_once"]
    assert 0.7 < fp["hbm_bytes_loop_aware"] / fp["hbm_bytes_accessed"] < 2.0, fp


# ------------------------------------------------------------ no libtpu needed

HLO = """\
%cond (p: (s32[], f32[8,16])) -> pred[] {
  %c = s32[]{:T(128)} constant(3)
  %p = (s32[], f32[8,16]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}
%fused_dot (param_0: bf16[8,32], param_1: bf16[32,16]) -> f32[8,16] {
  %param_0 = bf16[8,32]{1,0} parameter(0)
  %param_1 = bf16[32,16]{1,0} parameter(1)
  ROOT %convolution.1 = f32[8,16]{1,0} convolution(%param_0, %param_1), dim_labels=bf_io->bf
}
%body (p.1: (s32[], f32[8,16])) -> (s32[], f32[8,16]) {
  %x = bf16[8,32]{1,0} parameter(0)
  %w = bf16[32,16]{1,0} constant({...})
  %f = f32[8,16]{1,0} fusion(%x, /*index=1*/%w), kind=kOutput, calls=%fused_dot
  ROOT %t = (s32[], f32[8,16]) tuple(%i, %f)
}
ENTRY %main (a: f32[8,16]) -> f32[8,16] {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[8,16]{1,0} parameter(1)
  %d = f32[4,16]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %loop = (s32[], f32[8,16]) while(%t0), condition=%cond, body=%body
  ROOT %r = f32[8,16] get-tuple-element(%loop), index=1
}
"""


def test_matmul_flops_multiplies_loop_bodies_by_their_trip_count():
    r = matmul_flops(HLO)
    dot, conv = 2 * 4 * 16 * 8, 2 * 8 * 16 * 32  # entry's dot once; the fused conv in the body, 3 times
    assert r["ops"] == 2
    assert r["flops_once"] == dot + conv
    assert r["flops"] == dot + 3 * conv


def test_hbm_traffic_counts_top_level_operands_and_results_per_trip():
    r = hbm_traffic(HLO)
    fusion = 4 * 8 * 16 + 2 * 8 * 32 + 2 * 32 * 16  # f32 result + its two bf16 operands; its body is on-chip
    dot = 4 * 4 * 16 + 4 * 4 * 8 + 4 * 8 * 16
    compare = 1 + 4 + 4  # the loop condition's i < 3, counted as often as its caller runs
    assert r["bytes_once"] == dot + fusion + compare
    assert r["bytes"] == dot + 3 * fusion + compare
    assert r["by_array"][("written", "f32", (8, 16))] == 3 * 4 * 8 * 16


def test_conv_flops_counts_only_real_taps_of_a_base_dilated_window():
    # A batched matmul as libtpu writes it: [2 batch, 4 heads] as spatial dims, the window's
    # lhs dilation equal to its size, so one tap in 2 x 4 lands on an element. Per output
    # element 64 multiply-adds (the kernel's i dim): 2 * (2*4*64*16) * 64.
    rest = "window={size=2x4 stride=1x3 lhs_dilate=2x4}, dim_labels=01bf_01io->01bf"
    assert conv_flops((2, 4, 64, 16), (2, 4, 64, 64), (2, 4, 64, 16), rest) == 2 * 2 * 4 * 64 * 16 * 64
    # A plain 1-D convolution, window 3 over 10 positions with padding 1 on both sides: the two
    # edge outputs lose one tap each.
    rest = "window={size=3 pad=1_1}, dim_labels=b0f_0io->b0f"
    assert conv_flops((1, 10, 1), (1, 10, 1), (3, 1, 1), rest) == 2 * (10 * 3 - 2)


# Parameters of the tiny model (configs/tiny_bert.json: 2 layers, H 64, I 128, 128 positions) by shape.
TINY_PARAMS = {(64, 64): 8, (64, 128): 2, (128, 64): 2 + 1, (30522, 64): 1}


@needs_libtpu
def test_gradient_caching_gathers_each_parameter_once_per_step(tmp_path_factory):
    """With fsdp, the parameters are gathered once before gradient caching's loops
    (step._gathered), not again for every chunk in pass 1, pass 2's forward and its backward:
    no parameter-shaped array is all-gathered more often than there are such parameters."""
    r = _report(tmp_path_factory, "v4-8", CACHED + ["mesh.fsdp=2"])
    assert r["mesh"]["fsdp"] == 2 and r["while_loops"] == [3, 3]
    gathered = {}
    for a in r["collective_arrays"]:
        if a["op"] == "all-gather" and tuple(a["shape"]) in TINY_PARAMS:
            gathered[tuple(a["shape"])] = gathered.get(tuple(a["shape"]), 0) + a["executions"]
    assert gathered, r["collective_arrays"]  # the weights are sharded: they are gathered somewhere
    for shape, n in gathered.items():
        assert n <= TINY_PARAMS[shape], (shape, n, r["collective_arrays"])


@needs_libtpu
def test_decoder_lora_flops_and_row_sharded_logits(tmp_path_factory):
    """The tiny E5-mistral preset (GQA, SwiGLU, LoRA on a frozen base, a hard negative),
    gradient-cached with remat: the compiled dots match the decoder's by-design count (a
    frozen weight costs no gradient of its own) and the logits stay row-sharded. 16 queries
    + 16 negatives = 32 candidates, not the hidden size (64), so [B, C] logits cannot be
    mistaken for the [B, H] candidate embeddings the loss gathers."""
    sets = ["train.batch_size=16", "train.grad_cache_chunk=4", "model.remat=true"]
    args = ["--config", "configs/tiny_decoder_finetune.py", "--topology", "v5e-4"]
    proc, r = compile_cli(tmp_path_factory.mktemp("decoder"), *args, *[a for kv in sets for a in ("--set", kv)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    f = r["flops"]
    assert r["while_loops"] == [3, 3]
    assert f["frozen_params"] > 0 and 0 < f["adapter_params"] < f["frozen_params"]
    assert 0.9 < f["loop_aware_flops_per_chip"] / f["expected_flops_per_chip"] < 1.1, f
    assert not r["logits_shape_ambiguous"] and r["logits_moved"] == [], r["logits_moved"]
