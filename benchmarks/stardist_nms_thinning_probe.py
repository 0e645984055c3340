"""Probe (issue 4, speed): NMS on every candidate vs on local maxima of the probability only.

StarDist's NMS takes every grid point above the probability threshold as a candidate
(~12 per object). Keeping only the points that are the maximum of their ``size``×``size``
neighbourhood would cut the candidates ~6× and the NMS time with them. This probe
measures what it costs in accuracy before anything is changed in deepscope:

- the 11 TEST images of ``nuclei_dsb.py`` with a model's own maps (default: the shipped
  ``nuclei`` model, tuned thresholds): F1 at IoU 0.5 / 0.7 with and without thinning;
- the speed benchmark's reference maps (``stardist_speed.py make-image`` first): NMS +
  rendering time and agreement with the full NMS.

Run from the project root::

    PYTHONPATH=src .venv/bin/python benchmarks/stardist_nms_thinning_probe.py [MODEL]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nuclei_dsb import DATA, _load, read_rgb, score  # noqa: E402
from stardist_speed import OUT as SPEED_OUT  # noqa: E402

MODES = ("all candidates", 3, 5)


def thin(prob: np.ndarray, mode) -> np.ndarray:
    """The probability map with every point that is not a local maximum set to 0."""
    if mode == "all candidates":
        return prob
    keep = prob >= ndi.maximum_filter(prob, size=mode, mode="nearest")
    return np.where(keep, prob, 0).astype(np.float32)


def main() -> None:
    """Print F1 on the test images and the time on the reference maps for each mode."""
    from stardist.matching import matching

    from deepscope.tasks.stardist import instances_from_maps
    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.predict import TileSettings, apply_tuned_settings, predict_raw
    from deepscope.workflow.pretrained import resolve_model

    torch.set_num_threads(1)
    model = load_model_folder(resolve_model(sys.argv[1] if len(sys.argv) > 1 else "nuclei"))
    apply_tuned_settings(model)
    task = model.task
    p_thr, n_thr = task.thresholds()
    print("thresholds", p_thr, n_thr)
    split, test = _load()
    truths: dict = {}
    preds: dict = {mode: {} for mode in MODES}
    seconds = dict.fromkeys(MODES, 0.0)
    for name in test:
        image = read_rgb(name).mean(axis=0, keepdims=True)
        prob, dist = task.grid_maps(predict_raw(model, image, TileSettings()))
        truths[name] = tifffile.imread(DATA / "masks" / f"{name}.tif")
        for mode in MODES:
            t0 = time.perf_counter()
            preds[mode][name] = instances_from_maps(
                thin(prob, mode), dist, image.shape[1:], (2, 2), p_thr, n_thr
            )[0]
            seconds[mode] += time.perf_counter() - t0
    for mode in MODES:
        s = score(truths, preds[mode], split["kinds"])
        by_kind = {k: v["0.5"]["f1"] for k, v in s.items()}
        print(
            f"{mode}: NMS {seconds[mode]:.3f} s for 11 images; F1@0.5 / @0.7 all "
            f"{s['all']['0.5']['f1']} / {s['all']['0.7']['f1']}; F1@0.5 by kind {by_kind}"
        )
    ref = dict(np.load(SPEED_OUT / "reference_maps.npz"))
    p, n = float(ref["prob_thresh"]), float(ref["nms_thresh"])
    full = None
    for mode in MODES:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            labels = instances_from_maps(
                thin(ref["prob"], mode), ref["dist"], (1024, 1024), (2, 2), p, n
            )[0]
            times.append(time.perf_counter() - t0)
        full = labels if full is None else full
        print(
            f"reference maps, {mode}: {int((thin(ref['prob'], mode) > p).sum())} candidates, "
            f"median {np.median(times):.4f} s, {labels.max()} objects, F1 vs all candidates "
            f"{matching(full, labels, thresh=0.5).f1:.4f}"
        )


if __name__ == "__main__":
    main()
