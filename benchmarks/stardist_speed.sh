#!/usr/bin/env bash
# StarDist prediction speed: deepscope vs the stardist package (TF). See stardist_speed.py.
# Usage (from the project root): benchmarks/stardist_speed.sh [--model FOLDER_OR_NAME] [--threads N] [--int8] [--repeats N]
# Needs the TF venv (never the project's venv):
#   python3.11 -m venv /work/stardist-tf-venv && /work/stardist-tf-venv/bin/pip install tensorflow-cpu stardist
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# --model: a trained deepscope model folder or shipped name (default: nuclei), or "random"
# (random weights: network timing only, the NMS is timed on reference maps either way)
TF_PY=${TF_PY:-/work/stardist-tf-venv/bin/python}
MODEL=nuclei
THREADS=2
INT8=()
REPEATS=3
while [[ $# -gt 0 ]]; do
  case $1 in
    --model) MODEL=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --int8) INT8=(--int8); shift ;;
    --repeats) REPEATS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
uptime
"$PY" benchmarks/stardist_speed.py make-image
"$PY" benchmarks/stardist_speed.py deepscope --model "$MODEL" --threads "$THREADS" --repeats "$REPEATS" "${INT8[@]}"
PYTHONPATH= "$TF_PY" benchmarks/stardist_speed.py tf --threads "$THREADS" --repeats "$REPEATS"
"$PY" benchmarks/stardist_speed.py report
uptime
