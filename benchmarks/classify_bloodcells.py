"""Blood-cell classification (RBC / WBC / platelets) on BCCD crops, and fine-tuning vs scratch.

Data (``../shared/data/classify_bloodcells/crops_64px.npz``, see its PROVENANCE.txt):
RGB 64×64 crops of cells boxed in 364 stained blood-smear photos, with ``labels``,
``class_names`` and ``source`` (``BloodImage_00xxx.jpg:x0,y0,x1,y1``).

Split by slide: every crop of one photo lies on one side. A fixed 20 % of the photos
(stratified by class, seed 0) is the **test set**, used only for the scores here; the
rest trains (deepscope keeps 20 % of those photos aside for validation, also by photo).

Experiments:

* ``full`` — the ``small`` VGG-style CNN trained on all training photos; target
  accuracy ≥ 0.95 on the test photos.
* ``finetune`` — the gain of transfer learning with 10 % of the training crops
  (``subset``, whole photos, stratified). Three models are scored on the same test set:
  (a) trained from scratch on the subset; (b) the *pretrained* model, trained on the
  other training photos only (disjoint from the subset and the test set), applied as it
  is; (c) that pretrained model fine-tuned on the subset with ``--freeze 2`` (the first
  two blocks fixed for a fifth of the epochs, then trained at a tenth of the learning
  rate). (b) shows how much of the gain is the pretraining itself.
* ``fewshot`` — the same comparison (scratch vs fine-tuned from the ``finetune``
  experiment's pretrained model) with only ``--per-class`` crops per class (default 5)
  drawn from the subset's photos, 20 epochs each, repeated for 3 draws (seeds 0–2).
  Needs ``finetune`` to have run (``all`` runs everything in order).

Usage::

    .venv/bin/python benchmarks/classify_bloodcells.py [--experiment full|finetune|all]
        [--minutes 8] [--data ../shared/data/classify_bloodcells/crops_64px.npz]

Writes ``benchmarks/out/classify_bloodcells/`` (npz splits, runs, QC reports) and prints
and saves ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from deepscope.config import config_from_dict
from deepscope.workflow.model_folder import load_model_folder
from deepscope.workflow.qc import run_qc
from deepscope.workflow.training import train

HERE = Path(__file__).parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "classify_bloodcells" / "crops_64px.npz"

CONFIG: dict[str, Any] = {
    "task": "classify",
    "model": {"architecture": "small", "depth": 4, "base_channels": 16, "dropout": 0.3},
    "classify": {"image_size": [64, 64], "fit": "resize"},
    "training": {"epochs": 40, "batch_size": 32, "learning_rate": 1e-3, "checkpoint_every": 10},
}


def group_split(labels: np.ndarray, groups: np.ndarray, share: float, seed: int = 0):
    """Indices (rest, held) with about ``share`` of the groups held out, by class."""
    folds = StratifiedGroupKFold(n_splits=round(1 / share), shuffle=True, random_state=seed)
    rest, held = next(iter(folds.split(labels, labels, groups)))
    return np.sort(rest), np.sort(held)


def save_npz(path: Path, data: dict[str, np.ndarray], idx: np.ndarray) -> Path:
    """Write the items ``idx`` of ``data`` as a deepscope-readable npz."""
    np.savez(
        path,
        images=data["images"][idx],
        labels=data["labels"][idx],
        class_names=data["class_names"],
        groups=data["groups"][idx],
    )
    return path


def run(
    name: str, train_npz: Path, test_npz: Path, out: Path, minutes: float, **extra: Any
) -> dict[str, Any]:
    """Train (optionally from a model) and score on the test set."""
    cfg = json.loads(json.dumps(CONFIG))
    cfg["training"]["max_minutes"] = minutes
    for key, value in extra.items():
        section, leaf = key.split(".")
        cfg.setdefault(section, {})[leaf] = value
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.monotonic()
    result = train(config_from_dict(cfg), train_npz, run_dir, show_bar=False)
    minutes_used = (time.monotonic() - t0) / 60
    summary = score(result.model_dir, test_npz, out / f"qc_{name}")
    summary.update(
        train_minutes=round(minutes_used, 2),
        epochs=result.epochs_trained,
        stopped=result.stopped_because,
    )
    return summary


def score(model_dir: Path, test_npz: Path, qc_dir: Path) -> dict[str, Any]:
    """QC of a model on the test npz; the headline numbers."""
    s = run_qc(load_model_folder(model_dir), test_npz, None, qc_dir)
    return {
        "accuracy": round(s["accuracy"], 4),
        "macro_f1": round(s["macro_f1"], 4),
        "ece": round(s["ece"], 4),
        "per_class_f1": {k: round(v["f1"], 4) for k, v in s["per_class"].items()},
        "best_epoch": s["best_epoch"],
        "overfitting": s["overfitting"]["overfitting"],
    }


def fewshot(
    data: dict[str, np.ndarray], test_npz: Path, out: Path, per_class: int, minutes: float
) -> dict[str, Any]:
    """Scratch vs fine-tuned with ``per_class`` crops per class, three random draws."""
    pretrained = out / "pretrain" / "model"
    if not pretrained.exists():
        raise SystemExit("run the finetune experiment first (it trains the pretrained model)")
    with np.load(out / "subset.npz") as f:
        subset = {k: f[k] for k in f.files}
    res: dict[str, Any] = {"per_class": per_class, "draws": []}
    for seed in range(3):
        rng = np.random.default_rng(seed)
        idx = np.concatenate(
            [
                rng.choice(np.flatnonzero(subset["labels"] == k), per_class, replace=False)
                for k in range(len(subset["class_names"]))
            ]
        )
        npz = save_npz(out / f"fewshot_{seed}.npz", subset, idx)
        common = {"training.epochs": 20, "training.batch_size": 8}
        scratch = run(f"fewshot{seed}_scratch", npz, test_npz, out, minutes, **common)
        tuned = run(
            f"fewshot{seed}_finetuned",
            npz,
            test_npz,
            out,
            minutes,
            **common,
            **{"training.start_from": str(pretrained), "classify.freeze_blocks": 2},
        )
        res["draws"].append({"seed": seed, "scratch": scratch, "finetuned": tuned})
        print(
            json.dumps(
                {"seed": seed, "scratch": scratch["accuracy"], "finetuned": tuned["accuracy"]}
            ),
            flush=True,
        )
    for key in ("scratch", "finetuned"):
        res[f"mean_accuracy_{key}"] = round(
            float(np.mean([d[key]["accuracy"] for d in res["draws"]])), 4
        )
    return res


def main() -> None:
    """Run the experiments and print a JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--experiment", choices=["full", "finetune", "fewshot", "all"], default="all")
    ap.add_argument("--per-class", type=int, default=5, help="fewshot: crops per class")
    ap.add_argument("--minutes", type=float, default=8.0, help="time budget per training")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "classify_bloodcells")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with np.load(args.data) as f:
        data = {k: f[k] for k in f.files}
    data["groups"] = np.array([s.split(":")[0] for s in data["source"]])
    rest, test = group_split(data["labels"], data["groups"], 0.2)
    train_npz = save_npz(args.out / "train.npz", data, rest)
    test_npz = save_npz(args.out / "test.npz", data, test)
    results: dict[str, Any] = {
        "data": str(args.data),
        "images": {"train": len(rest), "test": len(test)},
        "photos": {
            "train": len(set(data["groups"][rest])),
            "test": len(set(data["groups"][test])),
        },
        "load_before": os.getloadavg(),
    }
    if args.experiment in ("full", "all"):
        results["full"] = run("full", train_npz, test_npz, args.out, args.minutes)
        print(json.dumps(results["full"]), flush=True)
    if args.experiment in ("finetune", "all"):
        # 10 % of the training crops, as whole photos: the subset; the other photos pretrain.
        sub_rest, sub = group_split(data["labels"][rest], data["groups"][rest], 0.1, seed=1)
        subset_npz = save_npz(args.out / "subset.npz", data, rest[sub])
        pre_npz = save_npz(args.out / "pretrain.npz", data, rest[sub_rest])
        ft: dict[str, Any] = {"subset_images": int(len(sub)), "pretrain_images": len(sub_rest)}
        ft["scratch"] = run("subset_scratch", subset_npz, test_npz, args.out, args.minutes / 2)
        print(json.dumps(ft["scratch"]), flush=True)
        ft["pretrained_only"] = run("pretrain", pre_npz, test_npz, args.out, args.minutes)
        print(json.dumps(ft["pretrained_only"]), flush=True)
        ft["finetuned"] = run(
            "subset_finetuned",
            subset_npz,
            test_npz,
            args.out,
            args.minutes / 2,
            **{
                "training.start_from": str(args.out / "pretrain" / "model"),
                "classify.freeze_blocks": 2,
            },
        )
        ft["gain_accuracy"] = round(ft["finetuned"]["accuracy"] - ft["scratch"]["accuracy"], 4)
        results["finetune"] = ft
    if args.experiment in ("fewshot", "all"):
        results["fewshot"] = fewshot(data, test_npz, args.out, args.per_class, args.minutes)
    results["load_after"] = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
