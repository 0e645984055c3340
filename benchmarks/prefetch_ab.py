"""A/B: training with batches prepared in a background thread (engine.prefetch) or not.

Runs deepscope's real training (``workflow.training.train``) for a fixed number of epochs,
once with the background thread (the default) and once with the batches prepared in the
training loop as before (``PrefetchLoader`` replaced by the bare DataLoader), and prints
seconds per epoch from each run's ``metrics.csv`` (first epoch left out: start-up).

Tasks (``--task``):

``stardist``
    The ``nuclei_dsb.py`` recipe (``--base-channels`` 32 as shipped, or 16) on its 32
    TRAIN images (written by ``nuclei_dsb.py``/``nuclei_model.py`` into ``--data``).
``n2v``
    The ``deepscope demo`` recipe on the demo images.

Run from the project root, one arm after the other, nothing else running::

    PYTHONPATH=src .venv/bin/python benchmarks/prefetch_ab.py --task stardist --epochs 8
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def seconds_per_epoch(run: Path) -> float:
    """Median wall time per epoch from the run's metrics.csv, first epoch left out."""
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    times = [float(r["seconds"]) for r in rows[1:] if r.get("seconds")]
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    """Run both arms and print the comparison as JSON."""
    import deepscope.workflow.training as training
    from deepscope.config import config_from_dict

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=("stardist", "n2v"), default="stardist")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--data", type=Path, default=ROOT / "benchmarks/out/nuclei_dsb/work/train")
    p.add_argument("--work", type=Path, default=Path("/tmp/deepscope_prefetch_ab"))
    a = p.parse_args()
    if a.task == "stardist":
        from nuclei_dsb import CONFIG

        cfg = json.loads(json.dumps(CONFIG))
        cfg["model"]["base_channels"] = a.base_channels
        images, masks = a.data / "images", a.data / "masks"
    else:
        from deepscope.demo import demo_config, demo_data_dir

        cfg = demo_config(60.0)
        images, masks = demo_data_dir() / "noisy", None
    cfg["training"].update({"epochs": a.epochs, "max_minutes": 60.0, "checkpoint_every": 1000})
    prefetch = training.PrefetchLoader
    out = {}
    for arm in ("in the training loop", "background thread"):
        training.PrefetchLoader = prefetch if arm == "background thread" else (lambda lo, _p: lo)
        run = a.work / arm.replace(" ", "_")
        if run.exists():
            shutil.rmtree(run)
        training.train(config_from_dict(cfg), images, run, masks, show_bar=False)
        out[arm] = round(seconds_per_epoch(run), 3)
        print(arm, out[arm], "s/epoch", flush=True)
    training.PrefetchLoader = prefetch
    out["speed-up"] = round(out["in the training loop"] / out["background thread"], 3)
    print(json.dumps({"task": a.task, "base_channels": a.base_channels, **out}))


if __name__ == "__main__":
    main()
