#!/usr/bin/env bash
# Every preset compiled, deviceless, for the slice its docstring names, at its own
# global batch: one `e5jax compile` after the other (each takes minutes and up to
# ~20 GB of RAM for the pre-training presets), a JSON report and a log per preset
# in OUT. Needs libtpu: pip install ".[tpu]" (or PYTHONPATH=.venv/libtpu).
#   benchmarks/tpu_compile.sh OUT [preset ...]    (default: all six)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:?usage: benchmarks/tpu_compile.sh OUT [preset ...]}
shift
mkdir -p "$out"
declare -A SLICE=([e5_small_pretrain]=v4-32 [e5_small_finetune]=v4-32 [e5_base_pretrain]=v4-32
  [e5_base_finetune]=v4-32 [e5_large_pretrain]=v4-32 [e5_large_finetune]=v4-32)
presets=("$@")
((${#presets[@]})) || presets=(e5_small_finetune e5_base_finetune e5_large_finetune e5_small_pretrain
  e5_base_pretrain e5_large_pretrain)
for p in "${presets[@]}"; do
  echo "=== $(date -u +%H:%M:%S) $p on ${SLICE[$p]}"
  JAX_PLATFORMS=cpu .venv/bin/python -m e5jax.cli compile --config "configs/$p.py" --topology "${SLICE[$p]}" \
    --json "$out/$p.${SLICE[$p]}.json" > "$out/$p.${SLICE[$p]}.log" 2>&1 || echo "exit $? (see $out/$p.${SLICE[$p]}.log)"
  grep -v '^[WI]0000' "$out/$p.${SLICE[$p]}.log" | tail -n 8
done
