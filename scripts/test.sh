#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: lint, then pytest.
# Tests on the real data in ../shared/data are marked 'slow': run them with
#   .venv/bin/python -m pytest -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q -m "not slow" "$@"
