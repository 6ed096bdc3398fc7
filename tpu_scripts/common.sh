# shellcheck shell=bash
# The constants below are read by the scripts that source this file.
# shellcheck disable=SC2034
# Shared by tpu_scripts/*.sh (sourced, never run): flag parsing, shell quoting
# and the `run` helper that either runs a command or, under --dry-run, prints
# it as one copy-pasteable line.
#
# A script declares, before calling `parse_flags "$@"`:
#   USAGE         its --help text
#   VALUE_FLAGS   flags that take a value (--flag VALUE or --flag=VALUE)
#   BOOL_FLAGS    flags that take none (--dry-run and --help are always known)
#   REQUIRED      value flags that must be given
# and afterwards reads the values from OPT[flag] (defaults set beforehand).
# `--set` (if a script accepts it) may repeat; its values collect in SETS.

# Where the checkout lives on every worker, and the files of the training job.
# Single-quoted on purpose: $HOME is expanded by the shell on the worker.
# shellcheck disable=SC2016
REMOTE_DIR='$HOME/e5jax'
# shellcheck disable=SC2016
REMOTE_LOG='$HOME/e5jax-train.log'
# shellcheck disable=SC2016
REMOTE_PID='$HOME/e5jax-train.pid'
# TPU wheels of libtpu (the JAX installation guide's find-links page).
LIBTPU_INDEX='https://storage.googleapis.com/jax-releases/libtpu_releases.html'

DRY_RUN=0
declare -A OPT=()
SETS=()
USAGE=""
VALUE_FLAGS=()
BOOL_FLAGS=()
REQUIRED=()
PROG=$(basename "$0")

# die MESSAGE: one line on stderr, exit status 2.
die() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  exit 2
}

# quote WORD: print WORD quoted for a POSIX shell, like Python's shlex.quote:
# as is when it holds only safe characters, else in single quotes.
quote() {
  local s=$1 q="'\\''"
  if [[ -n $s && $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/$q}"
  fi
}

# quote_cmd WORD...: print the words as one shell command line.
quote_cmd() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "$word")"
  done
  printf '%s\n' "$out"
}

# run CMD...: print CMD (dry run) or echo it to stderr and run it.
run() {
  if ((DRY_RUN)); then
    quote_cmd "$@"
  else
    printf '+ %s\n' "$(quote_cmd "$@")" >&2
    "$@"
  fi
}

_in_list() {
  local needle=$1 item
  shift
  for item in "$@"; do
    [[ $item == "$needle" ]] && return 0
  done
  return 1
}

# parse_flags "$@": fill OPT and SETS, set DRY_RUN, handle --help.
parse_flags() {
  local arg key val has_val
  while (($#)); do
    arg=$1
    shift
    case $arg in
      -h | --help)
        printf '%s\n' "$USAGE"
        exit 0
        ;;
      --dry-run)
        DRY_RUN=1
        continue
        ;;
      --dry-run=* | --help=*) die "${arg%%=*} takes no value" ;;
      --*=*) key=${arg%%=*} val=${arg#*=} has_val=1 ;;
      --?*) key=$arg val="" has_val=0 ;;
      *) die "unexpected argument '$arg' (see --help)" ;;
    esac
    key=${key#--}
    if _in_list "$key" "${BOOL_FLAGS[@]}"; then
      ((has_val)) && die "--$key takes no value"
      OPT[$key]=1
    elif _in_list "$key" "${VALUE_FLAGS[@]}"; then
      if ((!has_val)); then
        if (($# == 0)) || [[ $1 == --* ]]; then
          die "--$key needs a value (see --help)"
        fi
        val=$1
        shift
      fi
      [[ -n $val ]] || die "--$key needs a non-empty value"
      if [[ $key == set ]]; then
        [[ $val == ?*=* ]] || die "--set expects key=value, got '$val'"
        SETS+=("$val")
      else
        OPT[$key]=$val
      fi
    else
      die "unknown flag '${arg%%=*}' (see --help)"
    fi
  done
  for key in "${REQUIRED[@]}"; do
    [[ -n ${OPT[$key]:-} ]] || die "missing required flag --$key (see --help)"
  done
  if [[ -n ${OPT[name]:-} && ! ${OPT[name]} =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]]; then
    die "--name '${OPT[name]}' is not a valid TPU name (lowercase letters, digits and '-', starting with a letter)"
  fi
  if ((!DRY_RUN)) && ! command -v gcloud >/dev/null 2>&1; then
    die "gcloud not found on PATH (install the Google Cloud CLI, or use --dry-run)"
  fi
}

# The `--zone Z [--project P]` words every gcloud call takes.
location_args() {
  LOCATION=(--zone "${OPT[zone]}")
  if [[ -n ${OPT[project]:-} ]]; then
    LOCATION+=(--project "${OPT[project]}")
  fi
}

# tpu_ssh WORKER REMOTE_COMMAND: run REMOTE_COMMAND (a POSIX sh command line)
# on one worker ("0", "1", ...) or on all of them at once ("all").
tpu_ssh() {
  location_args
  run gcloud compute tpus tpu-vm ssh "${OPT[name]}" "${LOCATION[@]}" \
    "--worker=$1" --command "$2"
}
