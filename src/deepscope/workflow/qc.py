"""Quality control of a trained model on held-out image/target pairs.

Dispatches on the task's kind of output; restoration tasks (n2v, and later care, n2n,
labelfree) are scored by :mod:`deepscope.workflow.qc_restoration`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.data.io import atomic_write_text, list_images
from deepscope.data.pairing import pair_by_name
from deepscope.errors import DeepscopeError
from deepscope.workflow.held_out import caution, seen_in_training
from deepscope.workflow.model_folder import TrainedModel
from deepscope.workflow.predict import (
    TileSettings,
    predict_array,
    predict_raw,
    side_output_suffixes,
)
from deepscope.workflow.qc_classify import classify_qc
from deepscope.workflow.qc_instance import instance_qc
from deepscope.workflow.qc_restoration import evaluate_restoration
from deepscope.workflow.qc_segmentation import segmentation_qc
from deepscope.workflow.report import check_report_folder, insert_caution
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
        raise DeepscopeError(
            "no image/target pairs found", images, "give folders whose files have the same names"
        )
    return result.pairs


QcRunner = Callable[..., dict[str, Any]]


def run_qc(
    model: TrainedModel,
    images: Path,
    targets: Path | None,
    out_dir: Path,
    *,
    tiles: TileSettings | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on the pairs in ``images``/``targets``; write a report into ``out_dir``.

    The task's ``qc_kind`` picks the scoring (see ``QC_RUNNERS``). QC images the model
    was trained on (``held_out.seen_in_training``) are named in the summary
    (``seen_in_training``, ``caution``) and at the top of the report. The summary is also
    stored as ``qc_summary.json`` in the model folder (not for shipped models, which
    are never modified). Tasks with one result per image
    (``Task.image_level``, e.g. classification) read labelled images from ``images``
    alone and need no ``targets``. An ``out_dir`` with an earlier report is refused unless
    ``overwrite`` is set, and one that is the images' or targets' folder always is
    (:func:`~deepscope.workflow.report.check_report_folder`).
    """
    runner = QC_RUNNERS.get(model.task.qc_kind)
    if runner is None:
        raise DeepscopeError(
            f"quality control for '{model.config.task}' models is not available yet"
        )
    sources = [Path(images)] + ([Path(targets)] if targets is not None else [])
    check_report_folder(out_dir, sources, overwrite=overwrite)
    if model.task.image_level:
        if targets is not None:
            raise DeepscopeError(
                f"{model.config.task} models read the answers from the images' class "
                "folders, CSV or .npz; a targets folder is not used",
                targets,
                "leave out --targets",
            )
        summary = runner(model, Path(images), Path(out_dir), tiles=tiles, progress=progress)
    else:
        if targets is None:
            raise DeepscopeError(
                "quality control needs the known answers for the images",
                images,
                "give the folder of targets or masks with --targets (same file names)",
            )
        pairs = _pairs(Path(images), Path(targets))
        summary = runner(model, pairs, Path(out_dir), tiles=tiles, progress=progress)
        seen = seen_in_training(model.folder, [p for p, _ in pairs])
        if seen:  # said in the summary and at the top of the report
            summary["seen_in_training"] = seen
            summary["caution"] = caution(seen, len(pairs))
            atomic_write_text(Path(out_dir) / "summary.json", json.dumps(summary, indent=2))
            if (Path(out_dir) / "report.html").is_file():
                insert_caution(Path(out_dir) / "report.html", summary["caution"])
    _remember_in_model_folder(model, summary)
    return summary


def _remember_in_model_folder(model: TrainedModel, summary: dict[str, Any]) -> None:
    """Keep the summary beside the model (for its card and export), where that is allowed.

    Shipped models (``deepscope/pretrained/``) are never written to, and a read-only model
    folder only costs this copy: the report in ``out_dir`` is complete either way.
    """
    from deepscope.workflow.pretrained import PRETRAINED_DIR

    folder = Path(model.folder).resolve()
    if folder.is_relative_to(PRETRAINED_DIR):
        return
    try:
        atomic_write_text(folder / "qc_summary.json", json.dumps(summary, indent=2))
    except OSError as err:
        warnings.warn(
            f"could not store qc_summary.json in the model folder {folder} ({err}); "
            "the report and summary.json in the output folder are complete",
            stacklevel=2,
        )


def restoration_qc(
    model: TrainedModel,
    pairs: list[tuple[Path, Path]],
    out_dir: Path,
    *,
    tiles: TileSettings | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Restoration metrics (PSNR, SSIM, ...) of model, input and Gaussian filter."""
    d = model.config.data
    inputs, _ = load_images([p for p, _ in pairs], d.axes, d.spatial_dims)
    tgts, _ = load_images([t for _, t in pairs], d.axes, d.spatial_dims)
    single = model.in_channels == 1
    squeeze = (lambda a: a[0]) if single else (lambda a: a)
    data = [
        (p.name, squeeze(i), squeeze(t)) for (p, _), i, t in zip(pairs, inputs, tgts, strict=True)
    ]

    def predictor(network=None) -> Callable[[np.ndarray], np.ndarray]:
        def predict(arr: np.ndarray) -> np.ndarray:
            cf = arr[None] if single else arr
            return squeeze(predict_array(model, cf, tiles, network=network))

        return predict

    checkpoint_predicts = {
        name: predictor(model.network_from_checkpoint(name)) for name in model.checkpoint_names()
    }
    predict, uncertainty = _predict_with_uncertainty(model, tiles, single)
    info = {
        "model folder": str(model.folder),
        "task": model.config.task,
        **{k: v for k, v in model.info.get("training", {}).items()},
    }
    return evaluate_restoration(
        data,
        predict,
        out_dir,
        channel_axis=None if single else 0,
        checkpoint_predicts=checkpoint_predicts,
        history_csv=model.folder / "history.csv",
        title=f"Quality control — {model.task.title}",
        model_info=info,
        progress=progress,
        uncertainty=uncertainty,
    )


def _predict_with_uncertainty(
    model: TrainedModel, tiles: TileSettings | None, single: bool
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray] | None]:
    """The model's predict callable and, for models that predict one, its uncertainty.

    Both come from one network pass: the uncertainty of the image last predicted is kept
    until asked for (QC asks right after predicting the same image).
    """
    squeeze = (lambda a: a[0]) if single else (lambda a: a)
    kept: dict[int, np.ndarray] = {}

    def run(arr: np.ndarray) -> np.ndarray:
        raw = predict_raw(model, arr[None] if single else arr, tiles)
        kept.clear()
        side = model.task.side_outputs(raw)
        if "uncertainty" in side:
            kept[id(arr)] = squeeze(side["uncertainty"])
        return squeeze(model.task.postprocess(raw))

    def uncertainty(arr: np.ndarray) -> np.ndarray:
        if id(arr) not in kept:
            run(arr)
        return kept.pop(id(arr))

    return run, (uncertainty if "uncertainty" in side_output_suffixes(model) else None)


#: QC implementation per ``Task.qc_kind``; tasks with other outputs add theirs here.
QC_RUNNERS: dict[str, QcRunner] = {"restoration": restoration_qc}
QC_RUNNERS["segmentation"] = segmentation_qc
QC_RUNNERS["classify"] = classify_qc
QC_RUNNERS["instance"] = instance_qc
