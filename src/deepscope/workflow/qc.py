"""Quality control of a trained model on held-out image/target pairs.

Dispatches on the task's kind of output; restoration tasks (n2v, and later care, n2n,
labelfree) are scored by :mod:`deepscope.workflow.qc_restoration`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.data.io import atomic_write_text, list_images
from deepscope.data.pairing import pair_by_name
from deepscope.errors import DeepscopeError
from deepscope.workflow.model_folder import TrainedModel
from deepscope.workflow.predict import TileSettings, predict_array
from deepscope.workflow.qc_restoration import evaluate_restoration
from deepscope.workflow.training import load_images


def _pairs(images: Path, targets: Path) -> list[tuple[Path, Path]]:
    result = pair_by_name(list_images(images), list_images(targets))
    if result.unpaired_images or result.unpaired_targets:
        names = [p.name for p in result.unpaired_images + result.unpaired_targets][:5]
        raise DeepscopeError(
            f"some images have no partner of the same name: {', '.join(names)}",
            images,
            "give each QC image a target with the same file name (run 'deepscope validate')",
        )
    if not result.pairs:
        raise DeepscopeError("no image/target pairs found", images,
                             "give folders whose files have the same names")
    return result.pairs


def run_qc(
    model: TrainedModel,
    images: Path,
    targets: Path,
    out_dir: Path,
    *,
    tiles: TileSettings | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Score ``model`` on the pairs in ``images``/``targets``; write a report into ``out_dir``.

    Also stores the summary as ``qc_summary.json`` in the model folder.
    """
    pairs = _pairs(Path(images), Path(targets))
    d = model.config.data
    inputs, _ = load_images([p for p, _ in pairs], d.axes, d.spatial_dims)
    tgts, _ = load_images([t for _, t in pairs], d.axes, d.spatial_dims)
    single = model.in_channels == 1
    squeeze = (lambda a: a[0]) if single else (lambda a: a)
    data = [(p.name, squeeze(i), squeeze(t)) for (p, _), i, t in zip(pairs, inputs, tgts, strict=True)]

    def predictor(network=None) -> Callable[[np.ndarray], np.ndarray]:
        def predict(arr: np.ndarray) -> np.ndarray:
            cf = arr[None] if single else arr
            return squeeze(predict_array(model, cf, tiles, network=network))

        return predict

    checkpoint_predicts = {
        name: predictor(model.network_from_checkpoint(name)) for name in model.checkpoint_names()
    }
    info = {
        "model folder": str(model.folder),
        "task": model.config.task,
        **{k: v for k, v in model.info.get("training", {}).items()},
    }
    summary = evaluate_restoration(
        data,
        predictor(),
        out_dir,
        channel_axis=None if single else 0,
        checkpoint_predicts=checkpoint_predicts,
        history_csv=model.folder / "history.csv",
        title=f"Quality control — {model.task.title}",
        model_info=info,
        progress=progress,
    )
    atomic_write_text(model.folder / "qc_summary.json", json.dumps(summary, indent=2))
    return summary
