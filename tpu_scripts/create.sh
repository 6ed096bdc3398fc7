#!/usr/bin/env bash
# Create a Cloud TPU VM or pod slice (a v4-32 is 4 hosts x 4 chips).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="Usage: $PROG --name NAME --zone ZONE --type TYPE --runtime VERSION [--project P] [--spot] [--dry-run]

Create a Cloud TPU VM or pod slice with gcloud.

  --name NAME        TPU name (lowercase letters, digits, '-')
  --zone ZONE        e.g. us-central2-b (where v4 lives)
  --type TYPE        accelerator type, e.g. v4-8 (one host) or v4-32 (4 hosts)
  --runtime VERSION  TPU software version, e.g. tpu-ubuntu2204-base for v4
  --project P        Google Cloud project (default: gcloud's configured one)
  --spot             a Spot TPU: much cheaper, may be preempted at any time
  --dry-run          print the gcloud command instead of running it
  -h, --help         this text"
VALUE_FLAGS=(name zone type runtime project)
BOOL_FLAGS=(spot)
REQUIRED=(name zone type runtime)
parse_flags "$@"

location_args
cmd=(gcloud compute tpus tpu-vm create "${OPT[name]}" "${LOCATION[@]}"
  --accelerator-type "${OPT[type]}" --version "${OPT[runtime]}")
if [[ -n ${OPT[spot]:-} ]]; then
  cmd+=(--spot)
fi
run "${cmd[@]}"
