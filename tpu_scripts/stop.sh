#!/usr/bin/env bash
# Stop the training job on every worker of a TPU VM.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="Usage: $PROG --name NAME --zone ZONE [--project P] [--dry-run]

On every worker at once, send SIGTERM to the process group of the job that
launch.sh started (its pid is in ~/e5jax-train.pid), wait up to 30 s, then
SIGKILL what is left, so that the TPU chips are free for the next launch.
Checkpoints already written stay; launching again resumes from the latest.

  --name NAME   TPU name
  --zone ZONE   its zone
  --project P   Google Cloud project (default: gcloud's configured one)
  --dry-run     print the gcloud command instead of running it
  -h, --help    this text"
VALUE_FLAGS=(name zone project)
REQUIRED=(name zone)
parse_flags "$@"

remote="if [ ! -f \"$REMOTE_PID\" ]; then echo \"\$(hostname): no e5jax train job\"; exit 0; fi"
remote+="; pid=\$(cat \"$REMOTE_PID\")"
remote+="; kill -s TERM -- \"-\$pid\" 2>/dev/null || true"
remote+="; i=0; while kill -0 -- \"-\$pid\" 2>/dev/null && [ \$i -lt 30 ]; do sleep 1; i=\$((i + 1)); done"
remote+="; kill -s KILL -- \"-\$pid\" 2>/dev/null || true"
remote+="; rm -f \"$REMOTE_PID\""
remote+="; echo \"\$(hostname): stopped e5jax train (pid \$pid)\""

tpu_ssh all "$remote"
