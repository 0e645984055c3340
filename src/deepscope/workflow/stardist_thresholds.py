"""Choose StarDist's probability and NMS thresholds on the validation images.

After training, the network's output on each validation image is computed once; then
for each NMS threshold (0.3, 0.4, 0.5) the probability threshold is searched on a coarse
grid (0.1 … 0.9) and refined around the best value. The score is the F1 of the matched
objects averaged over the IoU thresholds 0.3 … 0.7 (``stardist.matching.matching_dataset``),
so that the choice favours objects that are both found and well outlined. The best pair
is written to the model folder's ``thresholds.json`` and used by every later prediction
(unless the config fixes a threshold).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.tasks.base import image_shape_of
from deepscope.workflow.int8_models import store_int8_calibration
from deepscope.workflow.model_folder import TrainedModel, load_model_folder
from deepscope.workflow.predict import TileSettings, predict_raw, update_tuned_settings

NMS_THRESHOLDS = (0.3, 0.4, 0.5)
IOU_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
_COARSE = tuple(float(p) for p in np.round(np.arange(0.1, 0.91, 0.1), 3))
_FINE_STEP = 0.025


def _score(
    task: Any,
    maps: Sequence[tuple[np.ndarray, np.ndarray, tuple[int, ...]]],
    masks: Sequence[np.ndarray],
    prob: float,
    nms: float,
) -> float:
    """Mean F1 over ``IOU_THRESHOLDS`` of the objects found with these thresholds."""
    from stardist.matching import matching_dataset

    from deepscope.tasks.stardist import instances_from_maps

    preds = [
        instances_from_maps(p, d, shape, task.grid, prob, nms, task.rays)[0] for p, d, shape in maps
    ]
    stats = matching_dataset(
        list(masks), preds, thresh=list(IOU_THRESHOLDS), show_progress=False, parallel=False
    )
    return float(np.mean([s.f1 for s in stats]))


def optimize_thresholds(
    model: TrainedModel,
    images_cf: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    nms_thresholds: Sequence[float] = NMS_THRESHOLDS,
    tiles: TileSettings | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Find the probability and NMS thresholds with the best mean F1 on these images.

    Parameters
    ----------
    model
        A loaded StarDist model folder.
    images_cf
        Raw (not normalised) channel-first images (C, *spatial).
    masks
        Their instance label images (*spatial) or (1, *spatial).
    nms_thresholds
        NMS thresholds to try.
    tiles
        Tiling of the prediction.
    log
        Receives one line per NMS threshold tried.

    Returns
    -------
    dict
        ``prob_threshold``, ``nms_threshold``, ``score`` (mean F1 over IoU 0.3 … 0.7),
        ``score_by_nms`` and what it was measured on.
    """
    task = model.task
    dims = model.config.data.spatial_dims
    truth = [np.asarray(m[0] if m.ndim == dims + 1 else m).astype(np.int64) for m in masks]
    maps = []
    for image in images_cf:
        raw = predict_raw(model, image, tiles, grid=True)
        p, d = task.grid_maps(raw)
        maps.append((p, d, image_shape_of(raw)))
    best: tuple[float, float, float] = (-1.0, 0.5, 0.4)
    by_nms: dict[str, dict[str, float]] = {}
    for nms in nms_thresholds:
        scores = {p: _score(task, maps, truth, p, nms) for p in _COARSE}
        top = max(scores, key=scores.get)
        fine = np.round(np.arange(top - 0.075, top + 0.076, _FINE_STEP), 3)
        for p in fine:
            if 0 < p < 1 and p not in scores:
                scores[float(p)] = _score(task, maps, truth, float(p), nms)
        top = max(scores, key=scores.get)
        by_nms[str(nms)] = {"prob_threshold": round(float(top), 3), "score": scores[top]}
        if log:
            log(f"  NMS {nms}: best probability threshold {top:.2f}, mean F1 {scores[top]:.3f}")
        if scores[top] > best[0]:
            best = (scores[top], float(top), float(nms))
    return {
        "prob_threshold": round(best[1], 3),
        "nms_threshold": best[2],
        "score": round(best[0], 4),
        "score_name": "mean F1 over IoU thresholds " + ", ".join(map(str, IOU_THRESHOLDS)),
        "score_by_nms": by_nms,
        "images": len(maps),
        "objects": int(sum(len(np.unique(t)) - 1 for t in truth)),
    }


def tune_after_training(
    model_dir: Path,
    images_cf: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Training's last step for StarDist: tune the thresholds on the validation images.

    The same images also calibrate 8-bit prediction (``predict --int8``), where the
    network allows it (see :func:`store_int8_calibration`).
    """
    model = load_model_folder(model_dir)
    store_int8_calibration(model, images_cf, log)
    n = sum(len(np.unique(m)) - 1 for m in masks)
    if n == 0:
        log("thresholds: the validation masks hold no object; the defaults 0.5 / 0.4 are kept.")
        return {}
    log(f"choosing the thresholds on {len(images_cf)} validation image(s) ({n} objects)…")
    result = optimize_thresholds(model, images_cf, masks, log=log)
    if result["score"] <= 0:
        log(
            "thresholds: no threshold finds any object of the validation masks (the model has "
            "not learnt enough yet: train longer); the defaults 0.5 / 0.4 are kept."
        )
        return result
    path = update_tuned_settings(model_dir, result)
    log(
        f"thresholds: probability {result['prob_threshold']:.2f}, NMS "
        f"{result['nms_threshold']:.1f} (mean F1 {result['score']:.3f} over IoU 0.3-0.7 on "
        f"the validation images), stored in {path}."
    )
    return result
