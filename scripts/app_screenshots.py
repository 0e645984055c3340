"""Write the README's screenshots of the web app: docs/screenshots/*.png.

Runs the end-to-end browser test (tests/test_app_e2e.py) with a somewhat larger network
than the test's tiny one, so the pictures show a model that has learnt something, and
saves a screenshot of each step. Needs Debian's chromium (scripts/test.sh installs it).

    .venv/bin/python scripts/app_screenshots.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
SETTINGS = {  # ids of the form's inputs -> values
    "data-patch_size": "64 64",
    "model-depth": "2",
    "model-base_channels": "16",
    "training-epochs": "12",
    "training-patches_per_epoch": "256",
    "training-batch_size": "32",
    "training-val_patches": "64",
    "training-checkpoint_every": "4",
}


def main() -> int:
    """Run the walk and report where the pictures are."""
    OUT.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["DEEPSCOPE_SCREENSHOTS"] = str(OUT)
    env["DEEPSCOPE_E2E_SETTINGS"] = json.dumps(SETTINGS)
    env["DEEPSCOPE_E2E_TIMEOUT_S"] = "900"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    test = "tests/test_app_e2e.py"
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-s", test], cwd=ROOT, env=env)
    if code == 0:
        print(f"Screenshots written to {OUT}:")
        for p in sorted(OUT.glob("*.png")):
            print(f"  {p.relative_to(ROOT)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
