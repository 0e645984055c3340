"""CARE vs Noise2Void vs Gaussian on the W2S widefield pairs, with a fixed split by field.

Data (``../shared/data/denoise_w2s``, see its PROVENANCE.txt): ``noisy/<FOV>_<ch>.tif``
(single widefield frames) and ``clean/<FOV>_<ch>.tif`` (400-frame averages), uint8
512×512, fields of view (FOV) 101–112 × channels 0–2 = 36 pairs. (PROVENANCE.txt speaks
of FOVs 101–120 in folders noisy_avg1/gt_avg400; the folder holds the 36 files above.)

Split, fixed here so every run is comparable: the FOVs in ``TEST_FOVS`` (all three
channels of each) are only used for evaluation; CARE trains on the noisy/clean pairs of
the other FOVs, N2V on the noisy images of the same FOVs (self-supervised, as N2V is
used), with the same network, patches, batch size and time budget. The best Gaussian
filter is tuned on the test pairs themselves (the strongest possible blur).

Scores are PSNR/SSIM against the clean image after matching brightness and contrast
(``*_matched``, as in the CARE paper) and as they are (raw), plus Pearson r; see
``deepscope.workflow.qc_restoration``. Targets (issue 3): CARE ≥ N2V + 2 dB and
≥ best Gaussian + 5 dB (matched PSNR), within 15 minutes of CPU training.

Usage::

    .venv/bin/python benchmarks/care_w2s.py [--minutes 15] [--data ../shared/data/denoise_w2s]

``--minutes`` is the training budget of each model (CARE, then N2V); ``--probabilistic``
trains CARE with the Laplace likelihood and adds the calibration of its uncertainty;
``--per-image`` normalises CARE's inputs and targets each by their own percentiles
(``data.normalize_per_image``, as CARE's own data pipeline does); ``--skip-n2v`` trains and
scores CARE only; ``--loss l2`` trains CARE with the squared error instead of L1;
``--depth`` and ``--patch`` set the U-Net depth and training patch size of both. Gains
are reported matched and raw, with and without ``--tta``. Writes
``benchmarks/out/care_w2s/`` (runs, QC reports) and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from restoration_tta import tta_scores

from deepscope.config import config_from_dict
from deepscope.engine import performance
from deepscope.workflow.model_folder import load_model_folder
from deepscope.workflow.qc import run_qc
from deepscope.workflow.training import train

HERE = Path(__file__).parent
TEST_FOVS = (110, 111, 112)
"""Fields of view kept for evaluation only (3 of 12: 9 test pairs, 27 training pairs)."""
KEYS = ("psnr_matched", "ssim_matched", "psnr", "ssim", "pearson_r")


def split_by_fov(data: Path, out: Path) -> dict[str, Path]:
    """Link the W2S files into train/test folders by field of view (nothing is copied)."""
    folders = {k: out / k for k in ("train_noisy", "train_clean", "test_noisy", "test_clean")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for noisy in sorted((data / "noisy").glob("*.tif")):
        fov = int(noisy.stem.split("_")[0])
        part = "test" if fov in TEST_FOVS else "train"
        (folders[f"{part}_noisy"] / noisy.name).symlink_to(noisy.resolve())
        (folders[f"{part}_clean"] / noisy.name).symlink_to((data / "clean" / noisy.name).resolve())
    return folders


def config(
    task: str,
    minutes: float,
    patches: int,
    probabilistic: bool = False,
    per_image: bool = False,
    loss: str = "l1",
    depth: int = 2,
    patch: int = 64,
) -> Any:
    """The same network and training settings for both methods."""
    extra = {"care": {"probabilistic": True}} if probabilistic and task == "care" else {}
    if task == "care" and loss != "l1":  # with --probabilistic, the config check refuses it
        extra.setdefault("care", {})["loss"] = loss
    data: dict[str, Any] = {"patch_size": [patch, patch]}
    if per_image and task == "care":
        data["normalize_per_image"] = True
    return config_from_dict(
        {
            "task": task,
            **extra,
            "data": data,
            "model": {"depth": depth, "base_channels": 32},
            "training": {
                "epochs": 10_000,
                "max_minutes": minutes,
                "patches_per_epoch": patches,
                "batch_size": 32,
                "val_patches": 128,
                "checkpoint_every": 20,
            },
        }
    )


def pick(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline metrics, rounded."""
    return {k: round(metrics[k], 4) for k in KEYS if metrics.get(k) is not None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/denoise_w2s")
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per model")
    p.add_argument("--patches-per-epoch", type=int, default=512)
    p.add_argument("--out", type=Path, default=HERE / "out/care_w2s")
    p.add_argument(
        "--probabilistic",
        action="store_true",
        help="train probabilistic CARE (Laplace) and report the calibration of its uncertainty",
    )
    p.add_argument(
        "--per-image",
        action="store_true",
        help="CARE normalises each input and target image by its own percentiles "
        "(data.normalize_per_image, as CARE's own pipeline does); N2V is unchanged",
    )
    p.add_argument("--skip-n2v", action="store_true", help="train and score CARE only")
    p.add_argument(
        "--loss", choices=("l1", "l2"), default="l1", help="CARE's loss (care.loss; default l1)"
    )
    p.add_argument("--depth", type=int, default=2, help="U-Net depth of both models")
    p.add_argument("--patch", type=int, default=64, help="training patch size of both models")
    a = p.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    folders = split_by_fov(a.data, a.out / "data")

    runs: dict[str, Any] = {}
    for task in ("care",) if a.skip_n2v else ("care", "n2v"):
        t0 = time.monotonic()
        targets = folders["train_clean"] if task == "care" else None
        result = train(
            config(
                task,
                a.minutes,
                a.patches_per_epoch,
                a.probabilistic,
                a.per_image,
                a.loss,
                a.depth,
                a.patch,
            ),
            folders["train_noisy"],
            a.out / f"{task}_run",
            targets,
            show_bar=False,
        )
        train_min = (time.monotonic() - t0) / 60
        model = load_model_folder(result.model_dir)
        summary = run_qc(model, folders["test_noisy"], folders["test_clean"], a.out / f"{task}_qc")
        summary["model_tta"] = tta_scores(model, folders["test_noisy"], folders["test_clean"])
        runs[task] = {
            "train_minutes": round(train_min, 2),
            "epochs": result.epochs_trained,
            "stopped_because": result.stopped_because,
            "summary": summary,
        }

    care = runs["care"]["summary"]
    n2v = runs["n2v"]["summary"] if "n2v" in runs else None
    gains: dict[str, float] = {}
    for metric in ("psnr_matched", "psnr"):
        for suffix, key in (("", "model"), ("_tta", "model_tta")):
            c = care[key][metric]
            gains[f"care{suffix}_minus_gaussian_{metric}"] = round(c - care["gaussian"][metric], 2)
            if n2v is not None:
                gains[f"care{suffix}_minus_n2v{suffix}_{metric}"] = round(c - n2v[key][metric], 2)
    out = {
        "benchmark": "care_w2s",
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{performance.available_cores()} cores, torch {torch.__version__}",
        "split": {
            "test_fovs": list(TEST_FOVS),
            "train_pairs": len(list(folders["train_noisy"].iterdir())),
            "test_pairs": len(list(folders["test_noisy"].iterdir())),
        },
        "minutes_per_model": a.minutes,
        "care_per_image_normalization": a.per_image,
        "care_loss": a.loss,
        "depth": a.depth,
        "patch": a.patch,
        "care": {
            **pick(care["model"]),
            **{k: runs["care"][k] for k in ("train_minutes", "epochs")},
        },
        "care_tta": pick(care["model_tta"]),
        "gaussian": {**pick(care["gaussian"]), "sigma": care["gaussian"]["sigma"]},
        "input": pick(care["input"]),
        "gains_db": gains,
        "targets (matched PSNR)": {
            "care >= n2v + 2 dB": None
            if n2v is None
            else gains["care_minus_n2v_psnr_matched"] >= 2.0,
            "care >= gaussian + 5 dB": gains["care_minus_gaussian_psnr_matched"] >= 5.0,
        },
        "care_uncertainty": {k: v for k, v in care.get("uncertainty", {}).items() if k != "bins"}
        or None,
        "reports": [str(a.out / f"{t}_qc" / "report.html") for t in runs],
    }
    if n2v is not None:
        out["n2v"] = {
            **pick(n2v["model"]),
            **{k: runs["n2v"][k] for k in ("train_minutes", "epochs")},
        }
        out["n2v_tta"] = pick(n2v["model_tta"])
    text = json.dumps(out, indent=2)
    (a.out / "benchmark.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
