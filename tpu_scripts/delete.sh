#!/usr/bin/env bash
# Delete a Cloud TPU VM or pod slice (all its workers and their disks).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="Usage: $PROG --name NAME --zone ZONE [--project P] [--dry-run]

Delete the TPU VM NAME without asking (--quiet). Checkpoints and data on
gs:// stay; anything written on the workers' disks is lost.

  --name NAME   TPU name
  --zone ZONE   its zone
  --project P   Google Cloud project (default: gcloud's configured one)
  --dry-run     print the gcloud command instead of running it
  -h, --help    this text"
VALUE_FLAGS=(name zone project)
REQUIRED=(name zone)
parse_flags "$@"

location_args
run gcloud compute tpus tpu-vm delete "${OPT[name]}" "${LOCATION[@]}" --quiet
