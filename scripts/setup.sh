#!/usr/bin/env bash
# Set up deepscope in ./.venv (idempotent; a second run only checks).
# The CPU build of PyTorch is installed first, so that pip does not fetch a multi-GB
# CUDA build. On a machine with an NVIDIA GPU, install the CUDA build of torch into
# .venv yourself first; this script keeps whatever torch>=2.4 is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "Creating the virtual environment .venv ..."
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "Installing PyTorch (CPU build) ..."
    .venv/bin/pip install -q "torch==2.13.0" \
        || .venv/bin/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
if ! .venv/bin/python -c "import deepscope, lightning, tifffile, skimage, ome_zarr" 2>/dev/null \
    || [ pyproject.toml -nt .venv/.deepscope-installed ]; then
    echo "Installing deepscope and its dependencies ..."
    .venv/bin/pip install -q -e ".[dev]"
    touch .venv/.deepscope-installed
fi
echo "deepscope is installed in .venv ($(.venv/bin/deepscope --version))."
