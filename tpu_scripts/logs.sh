#!/usr/bin/env bash
# Follow the training log of one worker of a TPU VM (worker 0 by default).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="Usage: $PROG --name NAME --zone ZONE [--worker N] [--lines K] [--project P] [--dry-run]

Print the last K lines of ~/e5jax-train.log on worker N and follow it
(tail -F; Ctrl-C stops following, not training). Worker 0 is the host that
prints the progress lines; the others show their own errors.

  --name NAME   TPU name
  --zone ZONE   its zone
  --worker N    which worker (default: 0)
  --lines K     lines of history to show first (default: 100)
  --project P   Google Cloud project (default: gcloud's configured one)
  --dry-run     print the gcloud command instead of running it
  -h, --help    this text"
VALUE_FLAGS=(name zone worker lines project)
REQUIRED=(name zone)
OPT[worker]=0
OPT[lines]=100
parse_flags "$@"

[[ ${OPT[worker]} =~ ^[0-9]+$ ]] || die "--worker must be a worker number (0, 1, ...), got '${OPT[worker]}'"
[[ ${OPT[lines]} =~ ^[0-9]+$ ]] || die "--lines must be a number, got '${OPT[lines]}'"

tpu_ssh "${OPT[worker]}" "tail -n ${OPT[lines]} -F \"$REMOTE_LOG\""
