"""Choose the seed threshold of ``instances: outlines`` on the validation images.

For cells separated by outlines (EM membranes, cell borders) the semantic task grows
cells from the pixels where the network is sure of the cell class (see
:func:`deepscope.tasks.semantic.grow_from_outlines`). How sure is a trade-off: a low
threshold lets a cell leak through a gap in a faint membrane into its neighbour (a
merge), a high one leaves a weakly predicted cell without a seed or cuts a cell with an
uneven interior in two (splits). After training the network's output on each validation
image is computed once, the cells are grown for each threshold of ``SEED_THRESHOLDS`` and
the threshold with the lowest mean adapted Rand error is stored in the model folder's
``thresholds.json`` (unless the config fixes one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.workflow.int8_models import store_int8_calibration
from deepscope.workflow.model_folder import TrainedModel, load_model_folder
from deepscope.workflow.predict import TileSettings, predict_raw, update_tuned_settings

SEED_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def optimize_seed_threshold(
    model: TrainedModel,
    images_cf: Sequence[np.ndarray],
    class_maps: Sequence[np.ndarray],
    *,
    thresholds: Sequence[float] = SEED_THRESHOLDS,
    tiles: TileSettings | None = None,
) -> dict[str, Any]:
    """Find the seed threshold with the lowest mean adapted Rand error on these images.

    Parameters
    ----------
    model
        A loaded semantic model folder with two classes.
    images_cf
        Raw (not normalised) channel-first images (C, *spatial).
    class_maps
        Their class maps ((1, *spatial) or (*spatial); 0 = outline, 1 = cell). The true
        cells are the face-connected regions of class 1.
    thresholds
        Seed thresholds to try.
    tiles
        Tiling of the prediction.

    Returns
    -------
    dict
        ``seed_threshold``, ``adapted_rand_error`` at it, ``by_threshold`` (threshold →
        mean error) and ``images``; ``seed_threshold`` is None when no image holds a cell.
    """
    from deepscope.tasks.semantic import components, grow_from_outlines
    from deepscope.workflow.qc_segmentation import adapted_rand

    dims = model.config.data.spatial_dims
    pairs = []
    for image, cm in zip(images_cf, class_maps, strict=True):
        cm = np.asarray(cm)
        truth = components((cm[0] if cm.ndim == dims + 1 else cm).astype(np.uint8))
        if truth.any():
            pairs.append((predict_raw(model, image, tiles)[1], truth))
    if not pairs:
        return {"seed_threshold": None, "by_threshold": {}, "images": 0}
    by_threshold: dict[str, float] = {}
    for t in thresholds:
        errors = [adapted_rand(truth, grow_from_outlines(p, t)) for p, truth in pairs]
        by_threshold[str(t)] = float(np.mean([e for e in errors if e is not None]))
    best = min(by_threshold, key=lambda k: (by_threshold[k], -float(k)))
    return {
        "seed_threshold": float(best),
        "adapted_rand_error": round(by_threshold[best], 6),
        "by_threshold": {k: round(v, 6) for k, v in by_threshold.items()},
        "images": len(pairs),
    }


def tune_after_training(
    model_dir: Path,
    images_cf: Sequence[np.ndarray],
    class_maps: Sequence[np.ndarray],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Training's last step for semantic models.

    Calibrates 8-bit prediction (``predict --int8``) on the validation images, for 2D
    models. With ``instances: outlines``, chooses the seed threshold on them and stores
    it (nothing is done for other instance methods or when the config fixes it).
    """
    model = load_model_folder(model_dir)
    store_int8_calibration(model, images_cf, log)
    s = model.task.settings
    if s.instances != "outlines" or s.seed_threshold is not None:
        return {}
    log(f"choosing the seed threshold of the cells on {len(images_cf)} validation image(s)…")
    result = optimize_seed_threshold(model, images_cf, class_maps)
    if result["seed_threshold"] is None:
        log("seed threshold: the validation masks hold no cell; the default is kept.")
        return result
    path = update_tuned_settings(
        model_dir,
        {
            "seed_threshold": result["seed_threshold"],
            "seed_threshold_adapted_rand_error": result["adapted_rand_error"],
            "seed_threshold_chosen_by": "training (lowest adapted Rand error on "
            f"{result['images']} validation image(s))",
            "seed_threshold_date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    log(
        f"seed threshold: {result['seed_threshold']:.2f} (adapted Rand error "
        f"{result['adapted_rand_error']:.3f} on the validation images), stored in {path}."
    )
    return result
