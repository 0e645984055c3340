"""3D CARE and 3D Noise2Void on the FMD float32 'volume', and a seam check of tiled prediction.

Data (``../shared/data/denoise_misc/fmd``, see ../PROVENANCE.txt):
``3D_volume_raw_stack1_32bit.tif`` (noisy) and ``3D_volume_gt_stack1_32bit.tif`` (average
of 50 frames), float32 (3, 512, 512). Caveat, from the provenance and the ImageJ labels
(R_1.png, G_1.png, B_1.png): the 3 planes are the three colour channels of one confocal
BPAE field stacked as Z, not a Z-stack; this is the only float32 pair at hand, so it is
used as a thin volume, as the issue asks.

deepscope's 3D patches are at least 8 planes deep, so both volumes are padded in Z from 3
to 8 planes with constant planes (the median of the volume). Mirroring would be wrong for
N2V: a mirrored plane holds a copy of the masked pixel's noise, which the network would
learn to copy. Only the 3 real planes are scored.

Split: the network trains on the top ``TRAIN_ROWS`` rows of the field and is scored on the
rest (rows 384–511, 3 × 128 × 512 voxels), against the 50-frame average.

Seam check: the CARE model predicts the whole padded volume twice, in tiles of 8 × 128 × 128
(overlap 32) and in one piece; the difference image of the middle real plane is saved as
``seams.png`` with the tile borders marked, and the mean |difference| on tile-border lines
is compared with elsewhere (``border_to_interior`` ≈ 1 means no seams).

Usage::

    .venv/bin/python benchmarks/care_3d_fmd.py [--minutes 10]

``--minutes`` is the training budget of each model. Writes ``benchmarks/out/care_3d_fmd/``
and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from matplotlib.figure import Figure

from deepscope.config import config_from_dict
from deepscope.data.io import write_image
from deepscope.workflow.model_folder import load_model_folder
from deepscope.workflow.predict import TileSettings, predict_array
from deepscope.workflow.qc_restoration import gaussian_baseline, restoration_metrics
from deepscope.workflow.tiling import tile_starts
from deepscope.workflow.training import train

HERE = Path(__file__).parent
RAW, GT = "3D_volume_raw_stack1_32bit.tif", "3D_volume_gt_stack1_32bit.tif"
TRAIN_ROWS = 384
DEPTH = 8  # planes after padding (the smallest 3D patch depth)
SEAM_TILE, SEAM_OVERLAP = 128, 32
KEYS = ("psnr_matched", "ssim_matched", "psnr", "ssim", "pearson_r")


def pad_z(volume: np.ndarray, depth: int = DEPTH) -> np.ndarray:
    """Append constant planes (the volume's median) until the volume has ``depth`` planes."""
    extra = np.full((depth - volume.shape[0],) + volume.shape[1:], np.median(volume), np.float32)
    return np.concatenate([volume.astype(np.float32), extra])


def config(task: str, minutes: float, patches: int) -> Any:
    """The same 3D network and training settings for both methods."""
    return config_from_dict(
        {
            "task": task,
            "data": {"spatial_dims": 3, "axes": "ZYX", "patch_size": [DEPTH, 64, 64]},
            "model": {"depth": 2, "base_channels": 16},
            "training": {
                "epochs": 10_000,
                "max_minutes": minutes,
                "patches_per_epoch": patches,
                "batch_size": 8,
                "val_patches": 32,
                "checkpoint_every": 20,
            },
        }
    )


def score(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Headline metrics of the 3 real planes."""
    m = restoration_metrics(prediction, target)
    return {k: round(m[k], 4) for k in KEYS}


def seam_check(model: Any, volume: np.ndarray, out: Path) -> dict[str, Any]:
    """Compare tiled and one-piece prediction; save the difference image as PNG."""
    tiled = predict_array(
        model, volume[None], TileSettings(tile=SEAM_TILE, tile_z=DEPTH, overlap=SEAM_OVERLAP)
    )[0]
    whole = predict_array(
        model, volume[None], TileSettings(tile=volume.shape[-1], tile_z=DEPTH, overlap=0)
    )[0]
    z = 1  # middle real plane
    diff = tiled[z] - whole[z]
    starts = tile_starts(volume.shape[-1], SEAM_TILE, SEAM_OVERLAP)
    # Where one tile's weight ends and the next one's takes over: the overlap bands.
    lines = sorted({s for s in starts[1:]} | {s + SEAM_TILE - 1 for s in starts[:-1]})
    border = np.zeros(diff.shape, bool)
    for pos in lines:
        border[pos, :] = True
        border[:, pos] = True
    ad = np.abs(diff)
    signal = float(np.percentile(whole[z], 99.5) - np.percentile(whole[z], 0.5))
    result = {
        "tile": [DEPTH, SEAM_TILE, SEAM_TILE],
        "overlap": SEAM_OVERLAP,
        "max_abs_diff": round(float(ad.max()), 5),
        "mean_abs_diff": round(float(ad.mean()), 5),
        "max_abs_diff_percent_of_range": round(100 * float(ad.max()) / signal, 3),
        "border_to_interior": round(float(ad[border].mean() / max(ad[~border].mean(), 1e-12)), 3),
        "png": str(out),
    }
    fig = Figure(figsize=(13, 4.6))
    fig.subplots_adjust(left=0.02, right=0.95, bottom=0.04, top=0.88, wspace=0.25)
    axes = fig.subplots(1, 3)
    lo, hi = np.percentile(whole[z], (0.5, 99.5))
    for ax, img, title in (
        (axes[0], tiled[z], "tiled prediction"),
        (axes[1], whole[z], "one-piece prediction"),
    ):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    lim = max(float(ad.max()), 1e-9)
    im = axes[2].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for pos in lines:
        axes[2].axhline(pos, color="k", lw=0.3, alpha=0.4)
        axes[2].axvline(pos, color="k", lw=0.3, alpha=0.4)
    axes[2].set_title(
        f"tiled − one piece (max |Δ| = {ad.max():.3g}, "
        f"{result['max_abs_diff_percent_of_range']}% of range)\n"
        "grey lines: tile borders",
        fontsize=9,
    )
    axes[2].set_axis_off()
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    fig.suptitle(f"Seam check, plane z = {z}: tiles {SEAM_TILE} px, overlap {SEAM_OVERLAP} px")
    fig.savefig(out, dpi=100)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/denoise_misc/fmd")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per model")
    p.add_argument("--patches-per-epoch", type=int, default=128)
    p.add_argument("--out", type=Path, default=HERE / "out/care_3d_fmd")
    a = p.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    raw = tifffile.imread(a.data / RAW).astype(np.float32)
    gt = tifffile.imread(a.data / GT).astype(np.float32)
    assert raw.shape == gt.shape == (3, 512, 512), raw.shape
    folders = {k: a.out / "data" / k for k in ("train_noisy", "train_clean")}
    write_image(folders["train_noisy"] / "bpae.tif", pad_z(raw[:, :TRAIN_ROWS]), "ZYX")
    write_image(folders["train_clean"] / "bpae.tif", pad_z(gt[:, :TRAIN_ROWS]), "ZYX")
    test_in, test_gt = raw[:, TRAIN_ROWS:], gt[:, TRAIN_ROWS:]
    tiles = TileSettings(tile=512, tile_z=DEPTH)

    results: dict[str, Any] = {}
    models = {}
    for task in ("care", "n2v"):
        t0 = time.monotonic()
        result = train(
            config(task, a.minutes, a.patches_per_epoch),
            folders["train_noisy"],
            a.out / f"{task}_run",
            folders["train_clean"] if task == "care" else None,
            show_bar=False,
        )
        model = models[task] = load_model_folder(result.model_dir)
        pred = predict_array(model, pad_z(test_in)[None], tiles)[0, :3]
        results[task] = {
            **score(pred, test_gt),
            "epochs": result.epochs_trained,
            "train_minutes": round((time.monotonic() - t0) / 60, 2),
        }
    sigmas = (0.5, 0.75, 1.0, 1.5, 2.0)
    gauss = {
        s: score(np.stack([gaussian_baseline(p, s) for p in test_in]), test_gt) for s in sigmas
    }
    best_sigma = max(gauss, key=lambda s: gauss[s]["psnr_matched"])
    out = {
        "benchmark": "care_3d_fmd",
        "note": "the 3 'planes' are the R, G, B channels of one field (see PROVENANCE); "
        "padded in Z to 8 with constant planes, only the 3 real planes scored",
        "split": f"train rows 0-{TRAIN_ROWS - 1}, test rows {TRAIN_ROWS}-511",
        "minutes_per_model": a.minutes,
        "input": score(test_in, test_gt),
        "gaussian_2d_per_plane": {**gauss[best_sigma], "sigma": best_sigma},
        **results,
        "improves_over_input_db": {
            t: round(results[t]["psnr_matched"] - score(test_in, test_gt)["psnr_matched"], 2)
            for t in results
        },
        "seams": seam_check(models["care"], pad_z(raw), a.out / "seams.png"),
    }
    text = json.dumps(out, indent=2)
    (a.out / "benchmark.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
