#!/usr/bin/env bash
# Train avat3r-jax on a Cloud TPU VM slice (single- or multi-host).
#
#   launch/tpu_pod.sh --name=avatar-pod --zone=us-east5-a --accelerator-type=v5p-32 \
#       --version=v2-alpha-tpuv5 --project=my-project --config=configs/paper.py \
#       --workdir=gs://my-bucket/avat3r/paper --extra-args="--config.data.dir=gs://my-bucket/data" --spot
#
# Actions (positional, run in order; default: up setup train):
#   up      create the slice, or start it when it exists and is stopped
#   setup   copy this checkout to every worker, install Python 3.12, a venv, the package and jax[tpu]
#   train   run `python3.12 -m launch.train --config=... --workdir=... --distributed_auto` on all
#           workers at once (--worker=all); each process finds its peers through
#           jax.distributed.initialize() auto-detection on TPU
#   logs    follow worker 0's log of a --detach run
#   stop    stop the slice (keeps its disks)
#   delete  delete the slice
# --dry-run prints every command instead of running it (no gcloud needed).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh [flags] [up|setup|train|logs|stop|delete ...]   (default actions: up setup train)

  --name=NAME               TPU VM name (required)
  --zone=ZONE               zone, e.g. us-central2-b (required)
  --project=PROJECT         GCP project (default: gcloud's configured project)
  --accelerator-type=TYPE   slice type for `up`, e.g. v4-32, v5p-32, v6e-16 (default: v4-8)
  --version=RUNTIME         TPU VM runtime for `up` (default: from --accelerator-type: v2/v3/v4: tpu-ubuntu2204-base,
                            v5e (v5litepod-N): v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e)
  --spot                    create a Spot (preemptible) slice
  --config=PATH             config file, relative to the repository root (default: configs/synthetic.py)
  --workdir=DIR             run directory; use gs://... on multi-host slices (required for train)
  --extra-args="ARGS"       more arguments for launch.train, split on whitespace (e.g. --config.train.num_steps=10)
  --source=DIR              checkout to copy to the workers (default: this repository)
  --python=EXE              Python on the workers (default: python3.12; installed from deadsnakes if missing)
  --detach                  train in the background (nohup, log in ~/avat3r-train.log on each worker)
  --dry-run                 print the commands instead of running them
  -h, --help                this help
EOF
}

die() {
  echo "tpu_pod.sh: error: $*" >&2
  exit 2
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="" ZONE="" PROJECT="" ACCELERATOR="v4-8" VERSION="" SPOT=0
CONFIG="configs/synthetic.py" WORKDIR="" EXTRA_ARGS="" SOURCE="$REPO_ROOT" PYTHON="python3.12"
DETACH=0 DRY_RUN=0
ACTIONS=()

while (($#)); do
  arg="$1"
  shift
  case "$arg" in
    -h | --help) usage; exit 0 ;;
    --spot) SPOT=1; continue ;;
    --detach) DETACH=1; continue ;;
    --dry-run) DRY_RUN=1; continue ;;
    --*=*) key="${arg%%=*}" value="${arg#*=}" ;;
    --*)
      (($#)) || die "flag $arg needs a value"
      key="$arg" value="$1"
      shift
      ;;
    up | setup | train | logs | stop | delete) ACTIONS+=("$arg"); continue ;;
    *) die "unknown action '$arg' (choose from up, setup, train, logs, stop, delete; see --help)" ;;
  esac
  case "$key" in
    --name) NAME="$value" ;;
    --zone) ZONE="$value" ;;
    --project) PROJECT="$value" ;;
    --accelerator-type) ACCELERATOR="$value" ;;
    --version) VERSION="$value" ;;
    --config) CONFIG="$value" ;;
    --workdir) WORKDIR="$value" ;;
    --extra-args) EXTRA_ARGS="$value" ;;
    --source) SOURCE="$value" ;;
    --python) PYTHON="$value" ;;
    *) die "unknown flag $key (see --help)" ;;
  esac
done
((${#ACTIONS[@]})) || ACTIONS=(up setup train)

# The TPU VM runtime image for an accelerator type (https://cloud.google.com/tpu/docs/runtimes, PyTorch and JAX).
runtime_for() {
  case "$1" in
    v2-* | v3-* | v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) return 1 ;;
  esac
}
if [[ -z "$VERSION" && " ${ACTIONS[*]} " == *" up "* ]]; then
  VERSION="$(runtime_for "$ACCELERATOR")" || die "no default runtime for --accelerator-type=$ACCELERATOR: pass --version"
fi

[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"
if [[ " ${ACTIONS[*]} " == *" train "* ]]; then
  [[ -n "$WORKDIR" ]] || die "--workdir is required for train (gs://bucket/path on multi-host slices)"
  [[ -f "$SOURCE/$CONFIG" ]] || die "config $CONFIG not found under $SOURCE (give it relative to the repository root)"
  [[ "$WORKDIR" == gs://* ]] || echo "tpu_pod.sh: warning: --workdir=$WORKDIR is not on gs://; every worker writes its own local copy" >&2
fi
if ((!DRY_RUN)); then
  command -v gcloud >/dev/null || die "gcloud not found: install the Google Cloud CLI (or use --dry-run)"
fi

LOCATION=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || LOCATION+=(--project="$PROJECT")
TPU=(gcloud compute tpus tpu-vm)

# Prints a command with shell quoting (dry run) or runs it.
run() {
  if ((DRY_RUN)); then
    local out=() word
    for word in "$@"; do
      if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=("$word"); else out+=("${word@Q}"); fi
    done
    echo "${out[*]}"
  else
    "$@"
  fi
}

# Runs a bash command on every worker of the slice.
on_all_workers() {
  run "${TPU[@]}" ssh "$NAME" "${LOCATION[@]}" --worker=all --command="$1"
}

action_up() {
  local create=("${TPU[@]}" create "$NAME" "${LOCATION[@]}" --accelerator-type="$ACCELERATOR" --version="$VERSION")
  if ((SPOT)); then create+=(--spot); fi
  if ((DRY_RUN)); then
    echo "# up: create $NAME (if it exists and is STOPPED: ${TPU[*]} start $NAME ...)"
    run "${create[@]}"
    return
  fi
  local state
  state="$("${TPU[@]}" describe "$NAME" "${LOCATION[@]}" --format='value(state)' 2>/dev/null || true)"
  case "$state" in
    "") run "${create[@]}" ;;
    STOPPED) run "${TPU[@]}" start "$NAME" "${LOCATION[@]}" ;;
    READY) echo "tpu_pod.sh: $NAME is already READY" ;;
    *) die "$NAME is in state $state; wait for it or delete it" ;;
  esac
}

action_setup() {
  local archive="/tmp/avat3r-jax-$NAME.tar.gz" pip_extra=""
  [[ "$WORKDIR" != gs://* ]] || pip_extra=" gcsfs"  # Orbax/etils read and write gs:// through gcsfs.
  echo "# setup: copy $SOURCE to every worker and install it"
  run tar -czf "$archive" --exclude=.git --exclude='.venv*' --exclude=__pycache__ --exclude=runs -C "$SOURCE" .
  run "${TPU[@]}" scp "$archive" "$NAME:~/avat3r-jax.tar.gz" "${LOCATION[@]}" --worker=all
  on_all_workers "set -euo pipefail
if ! command -v $PYTHON >/dev/null; then
  sudo add-apt-repository -y ppa:deadsnakes/ppa && sudo apt-get update -q && sudo apt-get install -y -q $PYTHON $PYTHON-venv
fi
rm -rf ~/avat3r-jax && mkdir -p ~/avat3r-jax && tar -xzf ~/avat3r-jax.tar.gz -C ~/avat3r-jax
[ -d ~/avat3r-venv ] || $PYTHON -m venv ~/avat3r-venv
~/avat3r-venv/bin/pip install -q -U pip
~/avat3r-venv/bin/pip install -q -e ~/avat3r-jax 'jax[tpu]>=0.11'$pip_extra"
}

action_train() {
  local extra=() words
  read -r -a extra <<<"$EXTRA_ARGS"
  words="$(printf '%q ' "$PYTHON" -m launch.train --config="$CONFIG" --workdir="$WORKDIR" --distributed_auto "${extra[@]}")"
  words="${words% }"
  echo "# train: $words  (on all workers)"
  if ((DETACH)); then
    on_all_workers "cd ~/avat3r-jax && source ~/avat3r-venv/bin/activate && nohup $words > ~/avat3r-train.log 2>&1 < /dev/null &"
  else
    on_all_workers "cd ~/avat3r-jax && source ~/avat3r-venv/bin/activate && $words"
  fi
}

action_logs() { run "${TPU[@]}" ssh "$NAME" "${LOCATION[@]}" --worker=0 --command="tail -n 200 -f ~/avat3r-train.log"; }
action_stop() { run "${TPU[@]}" stop "$NAME" "${LOCATION[@]}"; }
action_delete() { run "${TPU[@]}" delete "$NAME" "${LOCATION[@]}" --quiet; }

for action in "${ACTIONS[@]}"; do
  "action_$action"
done
