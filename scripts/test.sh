#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: lint, then pytest.
# Tests on the real data in ../shared/data are marked 'slow': run them with
#   .venv/bin/python -m pytest -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The web app's end-to-end tests drive Debian's chromium (headless) with Playwright.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
    echo "Installing chromium for the web-app browser tests ..."
    SUDO=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
fi
export DEEPSCOPE_REQUIRE_BROWSER=1  # fail, not skip, when the browser is missing
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q -m "not slow" "$@"
