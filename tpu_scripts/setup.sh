#!/usr/bin/env bash
# Set up every worker of a TPU VM: clone e5jax, make a Python venv, install
# jax[tpu] (with libtpu) and e5jax into it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="Usage: $PROG --name NAME --zone ZONE [--repo URL] [--ref REF] [--python VERSION] [--weights URLS]
                [--project P] [--dry-run]

On every worker at once (--worker=all), over gcloud ssh:
  1. clone --repo into ~/e5jax (or reuse the clone) and check out --ref;
  2. make the venv ~/e5jax/.venv with Python --python. e5jax needs 3.11 and
     the TPU images ship another, so uv (pip-installed for the user)
     provides it;
  3. pip install e5jax with its tpu extra (jax[tpu] and libtpu at the
     versions e5jax pins) in one resolve, plus gcsfs (TFDS and orbax list
     and read gs:// paths through it when TensorFlow is absent);
  4. with --weights: copy each listed model folder from Cloud Storage into
     ~/e5jax/ckpt/ (e5jax fetch-model: a re-run copies only missing files),
     where the presets' model.init expects it
     (e.g. gs://B/bert-base-uncased -> ckpt/bert-base-uncased).
Running it again updates the checkout to --ref and reinstalls.

  --name NAME        TPU name
  --zone ZONE        its zone
  --repo URL         git URL to clone (default: this checkout's 'origin' remote)
  --ref REF          branch, tag or full commit hash to check out (default: main)
  --python VERSION   Python version of the venv (default: 3.11)
  --weights URLS     comma-separated gs:// model folders to copy into ~/e5jax/ckpt/
  --project P        Google Cloud project (default: gcloud's configured one)
  --dry-run          print the gcloud command instead of running it
  -h, --help         this text"
VALUE_FLAGS=(name zone repo ref python weights project)
REQUIRED=(name zone)
OPT[ref]=main
OPT[python]=3.11
parse_flags "$@"

if [[ -z ${OPT[repo]:-} ]]; then
  repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  OPT[repo]=$(git -C "$repo_root" remote get-url origin 2>/dev/null) ||
    die "no --repo given and this checkout has no 'origin' remote; pass --repo URL"
fi

repo=$(quote "${OPT[repo]}")
ref=$(quote "${OPT[ref]}")
python=$(quote "${OPT[python]}")
index=$(quote "$LIBTPU_INDEX")
remote="set -e"
remote+="; python3 -m pip install --user --quiet --upgrade uv"
remote+="; if [ ! -d \"$REMOTE_DIR/.git\" ]; then git clone --quiet $repo \"$REMOTE_DIR\"; fi"
remote+="; cd \"$REMOTE_DIR\""
remote+="; git fetch --quiet origin $ref"
remote+="; git checkout --quiet --detach FETCH_HEAD"
remote+="; python3 -m uv venv --quiet --allow-existing --seed --python $python .venv"
remote+="; .venv/bin/pip install --quiet --upgrade pip"
remote+="; .venv/bin/pip install --quiet --upgrade -e \".[tpu]\" gcsfs -f $index"
remote+="; .venv/bin/e5jax --help > /dev/null"
if [[ -n ${OPT[weights]:-} ]]; then
  IFS=, read -ra urls <<< "${OPT[weights]}"
  for url in "${urls[@]}"; do
    url=${url%/}
    [[ $url =~ ^gs://[^/]+/.+ ]] || die "--weights: '$url' is not a gs://BUCKET/FOLDER model folder"
    folder=${url##*/}
    remote+="; mkdir -p ckpt/$(quote "$folder")"
    remote+="; .venv/bin/e5jax fetch-model $(quote "$url") ckpt/$(quote "$folder")"
  done
fi
remote+="; echo \"\$(hostname): e5jax \$(git rev-parse --short HEAD) ready, jax \$(.venv/bin/python -c \"import jax; print(jax.__version__)\")\""

tpu_ssh all "$remote"
