#!/usr/bin/env bash
# Launch `e5jax train` on every worker of a TPU VM at once, in the
# background, with data and checkpoints on GCS.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="Usage: $PROG --name NAME --zone ZONE --preset CONFIG --workdir gs://BUCKET/RUN --data-dir gs://BUCKET/tfds --type TYPE [--set key=value ...] [--skip-compile-check] [--project P] [--dry-run]

First, on this machine, compile the step for the slice without a TPU,
  .venv/bin/e5jax compile --config CONFIG --topology TYPE --set data.data_dir=DATA_DIR [--set ...]
(needs pip install \".[tpu]\" here): a preset that does not fit the slice's
HBM stops here, in minutes, before the pod runs anything.

Start, on every worker at once (--worker=all),
  e5jax train --config CONFIG --workdir WORKDIR --set data.data_dir=DATA_DIR [--set ...]
from ~/e5jax (made by setup.sh), detached with setsid + nohup, appending to
~/e5jax-train.log on each worker (follow it with logs.sh; stop with stop.sh).
On a TPU pod, jax.distributed.initialize() finds the other hosts by itself:
no coordinator flags are needed. Every host must see the same workdir and
data, so use gs:// paths (orbax writes checkpoints there, TFDS reads there).
A worker that already runs a job refuses to start a second one. Re-launching
with the same workdir resumes from its latest checkpoint.

  --name NAME         TPU name
  --zone ZONE         its zone
  --preset CONFIG     preset file, relative to the repo, e.g. configs/e5_base_pretrain.py
  --workdir DIR       checkpoints, metrics and TensorBoard logs (gs://...)
  --data-dir DIR      TFDS data dir holding the pair dataset (gs://...)
  --set key=value     more config overrides, passed on to e5jax train (repeatable)
  --type TYPE         the slice's accelerator type (as given to create.sh), e.g. v4-32: the compile check's target
  --skip-compile-check  start without compiling for the slice here first
  --project P         Google Cloud project (default: gcloud's configured one)
  --dry-run           print the gcloud command instead of running it
  -h, --help          this text"
VALUE_FLAGS=(name zone preset workdir data-dir set project type)
BOOL_FLAGS=(skip-compile-check)
REQUIRED=(name zone preset workdir data-dir)
parse_flags "$@"
if [[ -z ${OPT[skip-compile-check]:-} && -z ${OPT[type]:-} ]]; then
  die "give --type (the slice's accelerator type, e.g. v4-32) for the compile check, or --skip-compile-check"
fi

for key in workdir data-dir; do
  if [[ ${OPT[$key]} != gs://* ]]; then
    printf '%s: warning: --%s %s is not on gs://; on a multi-host pod every worker needs the same path\n' \
      "$PROG" "$key" "${OPT[$key]}" >&2
  fi
done

train=(.venv/bin/e5jax train --config "${OPT[preset]}" --workdir "${OPT[workdir]}"
  --set "data.data_dir=${OPT[data-dir]}")
for kv in "${SETS[@]}"; do
  train+=(--set "$kv")
done
preset=$(quote "${OPT[preset]}")

# The compile check, here, from this checkout (the preset path is relative to it).
if [[ -z ${OPT[skip-compile-check]:-} ]]; then
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  check=("$root/.venv/bin/e5jax" compile --config "$root/${OPT[preset]}" --topology "${OPT[type]}"
    --set "data.data_dir=${OPT[data-dir]}")
  for kv in "${SETS[@]}"; do
    check+=(--set "$kv")
  done
  if ((!DRY_RUN)) && [[ ! -x ${check[0]} ]]; then
    die "no ${check[0]} for the compile check (make setup; pip install \".[tpu]\"), or use --skip-compile-check"
  fi
  run "${check[@]}" || die "the compile check failed for ${OPT[type]} (see above); --skip-compile-check starts anyway"
fi

remote="set -e"
remote+="; cd \"$REMOTE_DIR\""
remote+="; preset=$preset"
remote+="; if [ ! -f \"\$preset\" ]; then echo \"\$(hostname): no preset \$preset in $REMOTE_DIR (run setup.sh)\" >&2; exit 1; fi"
remote+="; if [ -f \"$REMOTE_PID\" ] && kill -0 \"\$(cat \"$REMOTE_PID\")\" 2>/dev/null; then echo \"\$(hostname): e5jax train is already running (stop.sh stops it)\" >&2; exit 1; fi"
remote+="; echo \"=== \$(date -u) launch\" >> \"$REMOTE_LOG\""
remote+="; setsid nohup $(quote_cmd "${train[@]}") >> \"$REMOTE_LOG\" 2>&1 < /dev/null & echo \$! > \"$REMOTE_PID\""
remote+="; echo \"\$(hostname): started e5jax train, pid \$!, log $REMOTE_LOG\""

tpu_ssh all "$remote"
