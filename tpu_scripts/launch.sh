#!/usr/bin/env bash
# Launch `e5jax train` on every worker of a TPU VM at once, in the
# background, with data and checkpoints on GCS.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="Usage: $PROG --name NAME --zone ZONE --preset CONFIG --workdir gs://BUCKET/RUN --data-dir gs://BUCKET/tfds [--set key=value ...] [--project P] [--dry-run]

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
  --project P         Google Cloud project (default: gcloud's configured one)
  --dry-run           print the gcloud command instead of running it
  -h, --help          this text"
VALUE_FLAGS=(name zone preset workdir data-dir set project)
REQUIRED=(name zone preset workdir data-dir)
parse_flags "$@"

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

remote="set -e"
remote+="; cd \"$REMOTE_DIR\""
remote+="; preset=$preset"
remote+="; if [ ! -f \"\$preset\" ]; then echo \"\$(hostname): no preset \$preset in $REMOTE_DIR (run setup.sh)\" >&2; exit 1; fi"
remote+="; if [ -f \"$REMOTE_PID\" ] && kill -0 \"\$(cat \"$REMOTE_PID\")\" 2>/dev/null; then echo \"\$(hostname): e5jax train is already running (stop.sh stops it)\" >&2; exit 1; fi"
remote+="; echo \"=== \$(date -u) launch\" >> \"$REMOTE_LOG\""
remote+="; setsid nohup $(quote_cmd "${train[@]}") >> \"$REMOTE_LOG\" 2>&1 < /dev/null & echo \$! > \"$REMOTE_PID\""
remote+="; echo \"\$(hostname): started e5jax train, pid \$!, log $REMOTE_LOG\""

tpu_ssh all "$remote"
