"""Quality control for instance segmentation (``qc_kind = "instance"``, e.g. StarDist).

On held-out image/mask pairs every predicted object is matched one-to-one with a true
object (``stardist.matching.matching``: optimal assignment on the IoU, intersection over
union). A pair whose IoU reaches the threshold τ is a true positive (TP); predicted
objects left over are false positives (FP), true objects left over false negatives (FN).
At τ = 0.1, 0.2 … 0.9 the report gives, per image and for the whole set (objects of all
images counted together, as ``stardist.matching.matching_dataset`` does):

* **precision** TP/(TP+FP), **recall** TP/(TP+FN), **F1** 2TP/(2TP+FP+FN);
* **accuracy** TP/(TP+FP+FN) — what the StarDist paper calls average precision (AP);
* **mean matched score**: mean IoU of the true positives (how well found objects fit);
* **panoptic quality**: the matched IoUs summed, divided by TP + FP/2 + FN/2.

It also draws each image with the objects outlined by outcome at τ = 0.5, F1 and
accuracy against τ, the training loss curves and a comparison of the kept checkpoints
(F1, accuracy and panoptic quality at τ = 0.5).

Everything is written to the output folder: ``summary.json``, ``metrics.csv`` (one row
per image and threshold), ``figures/`` and ``report.html``. The scoring functions take
label arrays, so they are usable (and tested) without a model.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from deepscope.data.io import atomic_write_text, read_image
from deepscope.errors import DeepscopeError, OutputError
from deepscope.workflow.report import HtmlReport

if TYPE_CHECKING:
    from deepscope.workflow.model_folder import TrainedModel
    from deepscope.workflow.predict import TileSettings

__all__ = [
    "IOU_THRESHOLDS",
    "METRICS",
    "InstanceCase",
    "evaluate_instances",
    "instance_qc",
    "match_dataset",
    "match_image",
    "outcome_labels",
    "overlay_rgb",
    "recall_by_size",
    "summary_text",
]

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))
"""IoU thresholds τ at which objects are matched."""
METRICS = (
    "precision",
    "recall",
    "f1",
    "accuracy",
    "mean_matched_score",
    "panoptic_quality",
)
"""The scores reported at each threshold (besides the counts tp, fp, fn, n_true, n_pred)."""
COUNTS = ("tp", "fp", "fn", "n_true", "n_pred")
REFERENCE_THRESHOLD = 0.5
"""The threshold of the overlays, the checkpoint comparison and the headline numbers."""
#: Size bins of the QC report's "found by size" table, as multiples of the median size of
#: the true objects.
SIZE_BINS_OF_MEDIAN = (0.25, 0.5, 1.0, 2.0)
_SHOWN_IMAGES = 12
_SHOWN_SIDE = 768  # larger images are drawn subsampled
_COLORS = {  # RGB 0..1
    "tp": (0.15, 0.85, 0.25),  # green: predicted object matched to a true one
    "fp": (1.0, 0.2, 1.0),  # magenta: predicted object with no true partner
    "fn": (1.0, 0.85, 0.0),  # yellow: true object the model missed
}

Progress = Callable[[str, int, int], None]


def _key(threshold: float) -> str:
    return f"{threshold:.1f}"


def _as_labels(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind == "f":
        a = np.round(a)
    return a.astype(np.int32 if a.size == 0 or a.max() < 2**31 else np.int64)


def _stats_dict(stats: Any) -> dict[str, float | int]:
    out: dict[str, float | int] = {k: float(getattr(stats, k)) for k in METRICS}
    out.update({k: int(getattr(stats, k)) for k in COUNTS})
    return out


# ------------------------------------------------------------------------ scoring


def match_image(
    truth: np.ndarray, prediction: np.ndarray, thresholds: Sequence[float] = IOU_THRESHOLDS
) -> dict[str, dict[str, float | int]]:
    """Match the objects of one image at each IoU threshold.

    Parameters
    ----------
    truth, prediction : numpy.ndarray
        Label images of the same shape (0 = background, one integer per object).
    thresholds : sequence of float
        IoU thresholds.

    Returns
    -------
    dict
        ``"0.5"`` → {precision, recall, f1, accuracy, mean_matched_score,
        panoptic_quality, tp, fp, fn, n_true, n_pred}, one entry per threshold.
        Scores are 0 where they are undefined (e.g. precision with no predicted object).
    """
    from stardist.matching import matching

    truth, prediction = _as_labels(truth), _as_labels(prediction)
    results = matching(truth, prediction, thresh=list(thresholds))
    return {_key(t): _stats_dict(s) for t, s in zip(thresholds, results, strict=True)}


def match_dataset(
    truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict[str, dict[str, float | int]]:
    """Match the objects of a set of images, counting the objects of all images together.

    Same keys as :func:`match_image`. Precision, recall, F1 and accuracy come from the
    summed TP/FP/FN of all images (``stardist.matching.matching_dataset``), so an image
    with many objects weighs more than one with few.
    """
    from stardist.matching import matching_dataset

    results = matching_dataset(
        [_as_labels(t) for t in truths],
        [_as_labels(p) for p in predictions],
        thresh=list(thresholds),
        show_progress=False,
    )
    return {_key(t): _stats_dict(s) for t, s in zip(thresholds, results, strict=True)}


def recall_by_size(
    truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    edges: Sequence[float],
    threshold: float = REFERENCE_THRESHOLD,
) -> dict[str, list]:
    """How many true objects of each size are found, over a set of images.

    Parameters
    ----------
    truths, predictions : sequence of numpy.ndarray
        Label images, pairwise of the same shape.
    edges : sequence of float
        Increasing inner bin edges, in pixels (voxels in 3D): bin ``i`` holds sizes from
        ``edges[i - 1]`` (inclusive) to ``edges[i]``; the first starts at 0, the last has
        no upper end.
    threshold : float
        IoU from which a true object counts as found.

    Returns
    -------
    dict
        Lists with one entry per bin: ``lower`` and ``upper`` size (None = no upper end),
        ``true`` objects, ``found`` of them, ``recall`` (None for an empty bin) and
        ``predicted`` objects of that size (right or wrong).
    """
    from stardist.matching import matching

    n_bins = len(edges) + 1
    true_n = np.zeros(n_bins, np.int64)
    found_n = np.zeros(n_bins, np.int64)
    pred_n = np.zeros(n_bins, np.int64)
    for truth, pred in zip(truths, predictions, strict=True):
        truth, pred = _as_labels(truth), _as_labels(pred)
        sizes = np.bincount(truth.ravel())
        ids = np.flatnonzero(sizes[1:]) + 1
        which = np.digitize(sizes[ids], edges)
        true_n += np.bincount(which, minlength=n_bins)
        if len(ids):
            m = matching(truth, pred, thresh=threshold, report_matches=True)
            pairs = np.asarray(m.matched_pairs, dtype=np.int64).reshape(-1, 2)
            ok = pairs[np.asarray(m.matched_scores) >= threshold, 0]
            found_n += np.bincount(which[np.isin(ids, ok)], minlength=n_bins)
        p_sizes = np.bincount(pred.ravel())[1:]
        pred_n += np.bincount(np.digitize(p_sizes[p_sizes > 0], edges), minlength=n_bins)
    return {
        "lower": [0.0] + [float(e) for e in edges],
        "upper": [float(e) for e in edges] + [None],
        "true": true_n.tolist(),
        "found": found_n.tolist(),
        "recall": [float(f / t) if t else None for f, t in zip(found_n, true_n, strict=True)],
        "predicted": pred_n.tolist(),
    }


def outcome_labels(
    truth: np.ndarray, prediction: np.ndarray, threshold: float = REFERENCE_THRESHOLD
) -> dict[str, list[int]]:
    """Which objects are true positives, false positives and false negatives at ``threshold``.

    Returns
    -------
    dict
        ``tp_true`` and ``fn`` (labels of ``truth``), ``tp_pred`` and ``fp`` (labels of
        ``prediction``), each sorted.
    """
    from stardist.matching import matching

    truth, prediction = _as_labels(truth), _as_labels(prediction)
    m = matching(truth, prediction, thresh=threshold, report_matches=True)
    pairs = [m.matched_pairs[i] for i in m.matched_tps]
    tp_true = sorted(t for t, _ in pairs)
    tp_pred = sorted(p for _, p in pairs)
    all_true = [int(v) for v in np.unique(truth) if v]
    all_pred = [int(v) for v in np.unique(prediction) if v]
    return {
        "tp_true": tp_true,
        "tp_pred": tp_pred,
        "fn": sorted(set(all_true) - set(tp_true)),
        "fp": sorted(set(all_pred) - set(tp_pred)),
    }


# ------------------------------------------------------------------------ pictures


def _display_plane(image_cf: np.ndarray) -> np.ndarray:
    """(H, W, 3) in [0, 1]: RGB for three channels, else channel 0; 3D: middle plane."""
    image_cf = np.asarray(image_cf, np.float64)
    if image_cf.ndim == 4:  # C, Z, Y, X
        image_cf = image_cf[:, image_cf.shape[1] // 2]
    chans = image_cf if image_cf.shape[0] == 3 else image_cf[:1]
    out = np.empty(chans.shape, np.float64)
    for c, plane in enumerate(chans):
        lo, hi = np.percentile(plane, [1, 99.8])
        out[c] = np.clip((plane - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    rgb = np.moveaxis(out, 0, -1)
    return np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb


def _plane(labels: np.ndarray) -> np.ndarray:
    return labels[labels.shape[0] // 2] if labels.ndim == 3 else labels


def overlay_rgb(
    image_cf: np.ndarray,
    truth: np.ndarray,
    prediction: np.ndarray,
    threshold: float = REFERENCE_THRESHOLD,
    outcomes: dict[str, list[int]] | None = None,
) -> np.ndarray:
    """The image with object outlines coloured by outcome at ``threshold``.

    Green: predicted objects matched to a true object (TP); magenta: predicted objects
    without a match (FP); yellow: true objects the model missed (FN). Three-channel images
    are shown in colour, others as channel 0 in grey, each with percentile contrast
    (1–99.8 %); 3D data shows the middle plane, large images are subsampled.

    Parameters
    ----------
    image_cf : numpy.ndarray
        The image, channel first (C, *spatial).
    truth, prediction : numpy.ndarray
        Label images (*spatial).
    threshold : float
        IoU threshold of a match.
    outcomes : dict, optional
        The result of :func:`outcome_labels` if already computed.

    Returns
    -------
    numpy.ndarray
        (H, W, 3) float array in [0, 1].
    """
    from skimage.segmentation import find_boundaries

    truth, prediction = _as_labels(truth), _as_labels(prediction)
    outcomes = outcomes or outcome_labels(truth, prediction, threshold)
    rgb = _display_plane(image_cf)
    t, p = _plane(truth), _plane(prediction)
    step = max(1, math.ceil(max(t.shape) / _SHOWN_SIDE))
    rgb, t, p = rgb[::step, ::step] * 0.85, t[::step, ::step], p[::step, ::step]
    layers = (("fn", t, outcomes["fn"]), ("fp", p, outcomes["fp"]), ("tp", p, outcomes["tp_pred"]))
    for kind, lab, chosen in layers:
        if not chosen:
            continue
        edge = find_boundaries(np.where(np.isin(lab, chosen), lab, 0), mode="inner")
        rgb[edge] = _COLORS[kind]
    return rgb


def overlay_figure(rgb: np.ndarray, title: str) -> Figure:
    """Draw an overlay from :func:`overlay_rgb` at about one screen pixel per pixel."""
    h, w = rgb.shape[:2]
    scale = max(1.0, 256 / max(h, w))
    fig_w, fig_h = w * scale / 100 + 0.2, h * scale / 100 + 0.5
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96 - 0.35 / fig_h))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    return fig


def threshold_figure(by_threshold: dict[str, dict[str, float | int]]) -> Figure:
    """F1, accuracy, precision and recall of the whole set against the IoU threshold."""
    fig = Figure(figsize=(6.5, 3.8))
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.14, top=0.9)
    ax = fig.subplots()
    taus = [float(k) for k in by_threshold]
    for metric, style in (
        ("f1", "k.-"),
        ("accuracy", "o-"),
        ("precision", ".--"),
        ("recall", ".--"),
        ("panoptic_quality", ":"),
    ):
        label = metric.replace("_", " ")
        ax.plot(taus, [by_threshold[k][metric] for k in by_threshold], style, label=label)
    ax.axvline(REFERENCE_THRESHOLD, color="grey", lw=0.8, ls=":")
    ax.set(
        xlabel="IoU threshold τ (how well an object must overlap to count as found)",
        ylabel="score",
        title="Scores of all QC images against the IoU threshold",
        xlim=(0.05, 0.95),
        ylim=(0, 1.02),
    )
    ax.legend(fontsize=8)
    return fig


def checkpoint_figure(checkpoints: list[dict[str, Any]]) -> Figure:
    """F1 and accuracy at τ = 0.5 of each checkpoint, in order, the used weights starred."""
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(checkpoints))
    key = _key(REFERENCE_THRESHOLD)
    for metric, style in (("f1", "o-"), ("accuracy", "s-")):
        ax.plot(x, [c[f"{metric}@{key}"] for c in checkpoints], style, label=metric)
    used = [i for i, c in enumerate(checkpoints) if c.get("used")]
    if used:
        ax.plot(
            used, [checkpoints[i][f"f1@{key}"] for i in used], "*", ms=16, color="gold", mec="k"
        )
    ax.set_xticks(x, [str(c["checkpoint"]) for c in checkpoints], rotation=30, ha="right")
    ax.set(ylabel=f"score at IoU {key}", title="Kept checkpoints (star: the weights used)")
    ax.legend(fontsize=8)
    return fig


# ------------------------------------------------------------------------ evaluation


@dataclass
class InstanceCase:
    """One QC image with its true and predicted labels."""

    name: str
    image: np.ndarray
    """Channel-first image (C, *spatial), used for the overlay only."""
    truth: np.ndarray
    prediction: np.ndarray


def _stage(progress: Progress | None, stage: str, total: int) -> Callable[[], None]:
    if progress is None:
        return lambda: None
    state = {"done": 0}
    progress(stage, 0, total)

    def advance() -> None:
        state["done"] += 1
        progress(stage, state["done"], total)

    return advance


def _per_image_rows(name: str, scores: dict[str, dict[str, float | int]]) -> list[dict]:
    return [{"image": name, "iou_threshold": float(k), **v} for k, v in scores.items()]


def evaluate_instances(
    cases: Sequence[InstanceCase],
    out_dir: Path,
    *,
    checkpoints: list[dict[str, Any]] | None = None,
    history_csv: Path | None = None,
    title: str = "Quality control — instance segmentation",
    model_info: dict[str, Any] | None = None,
    thresholds: Sequence[float] = IOU_THRESHOLDS,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score predicted label images against true ones; write summary, table and report.

    Parameters
    ----------
    cases : sequence of InstanceCase
        The QC images with their true and predicted labels.
    out_dir : pathlib.Path
        Folder for ``summary.json``, ``metrics.csv``, ``figures/`` and ``report.html``.
    checkpoints : list of dict, optional
        Scores of the kept checkpoints (see :func:`score_checkpoints`).
    history_csv : pathlib.Path, optional
        The model's ``history.csv``; its loss curves are drawn when it can be read.
    title : str
        Report title.
    model_info : dict, optional
        Shown in the report's "Model" table and stored in the summary.
    thresholds : sequence of float
        IoU thresholds.
    progress : callable, optional
        Called as ``progress(stage, done, total)``.

    Returns
    -------
    dict
        The summary: ``by_threshold`` (``"0.5"`` → scores and counts of the whole set),
        ``per_image`` (per image: ``image``, ``n_true``, ``n_pred`` and
        ``by_threshold``), ``iou_thresholds``, ``images``, ``checkpoints`` and ``model_info``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(
            "the QC output location is a file, not a folder", out_dir, "choose a folder"
        )
    if not cases:
        raise DeepscopeError("there are no QC images to score", out_dir, "give image/mask pairs")
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    advance = _stage(progress, "scoring", len(cases))
    rows: list[dict[str, Any]] = []
    per_image: list[dict[str, Any]] = []
    overlays: list[tuple[str, np.ndarray, dict[str, list[int]]]] = []
    for i, case in enumerate(cases):
        truth, pred = _as_labels(case.truth), _as_labels(case.prediction)
        if truth.shape != pred.shape:
            raise DeepscopeError(
                f"the predicted labels are {pred.shape} but the mask is {truth.shape}",
                case.name,
                "give masks that cover the same pixels as their images",
            )
        scores = match_image(truth, pred, thresholds)
        any_key = next(iter(scores))
        per_image.append(
            {
                "image": case.name,
                "n_true": scores[any_key]["n_true"],
                "n_pred": scores[any_key]["n_pred"],
                "by_threshold": scores,
            }
        )
        rows += _per_image_rows(case.name, scores)
        if i < _SHOWN_IMAGES:
            outcomes = outcome_labels(truth, pred)
            overlays.append(
                (case.name, overlay_rgb(case.image, truth, pred, outcomes=outcomes), outcomes)
            )
        advance()
    truths = [c.truth for c in cases]
    summary: dict[str, Any] = {
        "by_threshold": match_dataset(truths, [c.prediction for c in cases], thresholds),
        "by_size": _by_size(truths, [c.prediction for c in cases]),
        "iou_thresholds": [float(t) for t in thresholds],
        "images": len(cases),
        "per_image": per_image,
        "checkpoints": checkpoints or [],
        "model_info": model_info or {},
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    _write_csv(out_dir / "metrics.csv", rows)
    _write_report(out_dir, summary, overlays, history_csv, title)
    return summary


def _by_size(truths: Sequence[np.ndarray], predictions: Sequence[np.ndarray]) -> dict[str, Any]:
    """:func:`recall_by_size` with bins relative to the median true object (the summary's)."""
    sizes = np.concatenate([np.bincount(_as_labels(t).ravel())[1:] for t in truths])
    sizes = sizes[sizes > 0]
    median = float(np.median(sizes)) if len(sizes) else 0.0
    edges = [f * median for f in SIZE_BINS_OF_MEDIAN] if median else []
    return {
        "iou_threshold": REFERENCE_THRESHOLD,
        "median_true_size": median,
        **recall_by_size(truths, predictions, edges),
    }


def summary_text(summary: dict[str, Any]) -> str:
    """A few lines for the terminal: the whole set's scores at IoU 0.5 and 0.7.

    Parameters
    ----------
    summary : dict
        As returned by :func:`evaluate_instances`.

    Returns
    -------
    str
    """
    lines = [f"Quality control ({summary['images']} image(s), objects of all images together):"]
    for tau in ("0.5", "0.7"):
        m = summary["by_threshold"].get(tau)
        if m is None:
            continue
        lines.append(
            f"  IoU {tau}: F1 {m['f1']:.3f}   accuracy {m['accuracy']:.3f}   precision "
            f"{m['precision']:.3f}   recall {m['recall']:.3f}   (TP {m['tp']}, FP {m['fp']}, "
            f"FN {m['fn']})"
        )
    key = _key(REFERENCE_THRESHOLD)
    ranked = [c for c in summary.get("checkpoints", []) if not c.get("used")]
    used = next((c for c in summary.get("checkpoints", []) if c.get("used")), None)
    if ranked and used is not None:
        best = max(ranked, key=lambda c: c[f"f1@{key}"])
        if best[f"f1@{key}"] > used[f"f1@{key}"] + 0.01:
            lines.append(
                f"  note: checkpoint {best['checkpoint']} scores higher (F1 "
                f"{best[f'f1@{key}']:.3f} at IoU {key}) than the weights used"
            )
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _headline(summary: dict[str, Any]) -> str:
    at = summary["by_threshold"]
    parts = []
    for tau in ("0.5", "0.7"):
        if tau in at:
            parts.append(
                f"F1 {at[tau]['f1']:.3f} and accuracy {at[tau]['accuracy']:.3f} at IoU {tau}"
            )
    first = at[next(iter(at))]
    return (
        "; ".join(parts)
        + f" on {summary['images']} image(s) with {first['n_true']} true and "
        + f"{first['n_pred']} predicted objects."
    )


def _write_report(
    out_dir: Path,
    summary: dict[str, Any],
    overlays: list[tuple[str, np.ndarray, dict[str, list[int]]]],
    history_csv: Path | None,
    title: str,
) -> None:
    from deepscope.workflow.qc_figures import loss_figure
    from deepscope.workflow.qc_segmentation import _loss_curves

    report = HtmlReport(title, out_dir / "figures")
    report.add_paragraph(_headline(summary), css_class="lead")
    report.add_paragraph(
        "Each predicted object is paired with at most one true object (the pairing that "
        "maximises the overlap). A pair counts as found (true positive, TP) when its IoU — "
        "the overlap divided by the area the two cover together — reaches the threshold τ; "
        "unpaired predictions are false positives (FP), missed true objects false negatives "
        "(FN). Precision = TP/(TP+FP): how many predictions are right; recall = TP/(TP+FN): "
        "how many objects are found; F1 combines both; accuracy = TP/(TP+FP+FN) is what the "
        "StarDist paper calls AP. Mean matched score is the mean IoU of the found objects; "
        "panoptic quality combines it with F1. τ = 0.5 is the usual reference; higher τ asks "
        "for more exact outlines.",
        css_class="note",
    )
    table = [
        {
            "IoU τ": float(k),
            **{m.replace("_", " "): v[m] for m in METRICS},
            "TP": v["tp"],
            "FP": v["fp"],
            "FN": v["fn"],
        }
        for k, v in summary["by_threshold"].items()
    ]
    report.add_table(table, caption="All QC images together (objects of all images counted)")
    report.add_figure(
        threshold_figure(summary["by_threshold"]),
        "Scores against the IoU threshold: a curve that drops early means the objects are "
        "found but their outlines are inexact.",
        "scores_vs_iou",
    )
    key = _key(REFERENCE_THRESHOLD)
    _add_size_table(report, summary.get("by_size"))
    report.add_heading("Per image")
    report.add_table(
        [
            {
                "image": p["image"],
                "true objects": p["n_true"],
                "predicted objects": p["n_pred"],
                **{
                    f"{m} @{key}": p["by_threshold"][key][m]
                    for m in ("precision", "recall", "f1", "accuracy")
                },
                "mean matched score": p["by_threshold"][key]["mean_matched_score"],
            }
            for p in summary["per_image"]
            if key in p["by_threshold"]
        ],
        caption=f"At IoU {key}; every threshold is in metrics.csv",
    )
    report.add_heading("Pictures")
    report.add_paragraph(
        f"Outlines at IoU {key}: green = found objects (TP, predicted outline), magenta = "
        "predictions without a true object (FP), yellow = true objects the model missed "
        "(FN, true outline). Z-stacks show the middle plane"
        + (
            f"; the first {_SHOWN_IMAGES} images are shown."
            if summary["images"] > _SHOWN_IMAGES
            else "."
        ),
        css_class="note",
    )
    for i, (name, rgb, outcomes) in enumerate(overlays):
        counts = (
            f"{len(outcomes['tp_pred'])} TP, {len(outcomes['fp'])} FP, {len(outcomes['fn'])} FN"
        )
        report.add_figure(
            overlay_figure(rgb, f"{name}: {counts}"),
            f"{name} ({counts})",
            f"{i:02d}_{name}_overlay",
        )
    if summary["checkpoints"]:
        report.add_heading("Checkpoints")
        report.add_paragraph(
            "Every kept checkpoint scored on the same QC images. If an earlier checkpoint "
            "scores clearly better than the weights used, the model overfitted: consider "
            "exporting that checkpoint or training with more data or augmentation.",
            css_class="note",
        )
        report.add_table(summary["checkpoints"], caption=f"Scores at IoU {key}")
        report.add_figure(
            checkpoint_figure(summary["checkpoints"]), "Checkpoint comparison", "checkpoints"
        )
    curves = _loss_curves(history_csv) if history_csv is not None else {}
    if curves:
        report.add_heading("Training")
        report.add_figure(
            loss_figure(curves), "Training and validation loss per epoch", "loss_curves"
        )
    if summary["model_info"]:
        report.add_key_values(summary["model_info"], caption="Model")
    report.write(out_dir / "report.html")


def _add_size_table(report: HtmlReport, by_size: dict[str, Any] | None) -> None:
    if not by_size or not by_size["median_true_size"]:
        return
    median = by_size["median_true_size"]
    rows = []
    for i, (lo, hi) in enumerate(zip(by_size["lower"], by_size["upper"], strict=True)):
        rows.append(
            {
                "size (pixels)": f"{lo:.0f}–{hi:.0f}" if hi is not None else f"≥ {lo:.0f}",
                "× median": f"{lo / median:.2g}–{hi / median:.2g}"
                if hi is not None
                else f"≥ {lo / median:.2g}",
                "true objects": by_size["true"][i],
                "found": by_size["found"][i],
                "recall": by_size["recall"][i],
                "predicted objects": by_size["predicted"][i],
            }
        )
    report.add_heading("Found by size")
    report.add_table(
        rows,
        caption=f"True objects by size (median {median:.0f} pixels) and how many were found at "
        f"IoU {by_size['iou_threshold']:.1f}; predicted objects of each size, right or wrong",
    )
    report.add_paragraph(
        "Models trained with StarDist's published loss tend to miss objects much smaller "
        "than the typical one (a large object has many more pixels in the loss). If the "
        "smallest rows have a low recall and they matter to you: scale your images so that "
        "objects have the size of the training data's, or try the experimental setting "
        "stardist.object_balance (it found more small nuclei on our benchmark but more "
        "false ones too, and lowered F1 over all nuclei in 3 of 4 runs).",
        css_class="note",
    )


# ------------------------------------------------------------------------ with a model


def _read_mask(path: Path, image: np.ndarray, spatial_dims: int, n_rays: int) -> np.ndarray:
    """Read a QC mask; raise a DeepscopeError if it is not a usable label image."""
    from deepscope.data.axes import to_channel_first
    from deepscope.tasks.stardist_checks import stardist_mask_findings

    img = read_image(path)
    mask_cf = to_channel_first(img.data, img.axes, spatial_dims, path=path)
    for finding in stardist_mask_findings(path, image, path, mask_cf, n_rays, spatial_dims):
        if finding.severity == "error":
            raise DeepscopeError(finding.problem, finding.path, finding.fix)
    return _as_labels(mask_cf[0])


def score_checkpoints(
    model: TrainedModel,
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    tiles: TileSettings | None,
    used_scores: dict[str, float | int],
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """F1, accuracy and panoptic quality at τ = 0.5 of the used weights and every checkpoint.

    Parameters
    ----------
    model : TrainedModel
        The model; its weights (``weights.pt``) are scored as ``used_scores``.
    images, truths : sequence of numpy.ndarray
        Channel-first QC images and their label images.
    tiles : TileSettings or None
        Tiling of the prediction.
    used_scores : dict
        Scores of the whole set at τ = 0.5 with the model's own weights.
    progress : callable, optional
        Called as ``progress(stage, done, total)``.

    Returns
    -------
    list of dict
        ``checkpoint``, ``used`` (True for the model's weights) and the scores; empty
        when the model folder keeps no checkpoints.
    """
    from deepscope.workflow.predict import predict_raw

    names = model.checkpoint_names()
    if not names:
        return []
    key = _key(REFERENCE_THRESHOLD)

    def row(name: str, s: dict[str, float | int], used: bool) -> dict[str, Any]:
        return {
            "checkpoint": name,
            "used": used,
            f"f1@{key}": s["f1"],
            f"accuracy@{key}": s["accuracy"],
            f"panoptic_quality@{key}": s["panoptic_quality"],
        }

    out = [row("weights used (best)", used_scores, True)]
    advance = _stage(progress, "checkpoints", len(names))
    for name in names:
        net = model.network_from_checkpoint(name)
        grid = model.task.reads_grid_output
        preds = [
            model.task.instances(predict_raw(model, im, tiles, network=net, grid=grid))
            for im in images
        ]
        out.append(row(name, match_dataset(truths, preds, [REFERENCE_THRESHOLD])[key], False))
        advance()
    return out


def instance_qc(
    model: TrainedModel,
    pairs: list[tuple[Path, Path]],
    out_dir: Path,
    *,
    tiles: TileSettings | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score an instance segmentation model (e.g. StarDist) on image/mask pairs.

    Parameters
    ----------
    model : TrainedModel
        A loaded model folder whose task has ``qc_kind = "instance"`` and an
        ``instances(raw_output)`` method returning a label image.
    pairs : list of (pathlib.Path, pathlib.Path)
        (image, mask) files, paired by name; masks are label images.
    out_dir : pathlib.Path
        Output folder (see :func:`evaluate_instances`).
    tiles : TileSettings, optional
        Tiling of the prediction.
    progress : callable, optional
        Called as ``progress(stage, done, total)``.

    Returns
    -------
    dict
        The summary written as ``summary.json`` (see :func:`evaluate_instances`).
    """
    from deepscope.workflow.predict import TUNED_SETTINGS_FILE, predict_raw
    from deepscope.workflow.training import load_images

    task = model.task
    if not hasattr(task, "instances"):
        raise DeepscopeError(
            f"instance QC needs a model that predicts objects, not '{model.config.task}'"
        )
    d = model.config.data
    n_rays = int(
        getattr(getattr(task, "settings", None), "n_rays", 0) or getattr(model.config, "n_rays", 32)
    )
    cases: list[InstanceCase] = []
    images: list[np.ndarray] = []
    advance = _stage(progress, "images", len(pairs))
    for image_path, mask_path in pairs:
        (image,), _ = load_images([image_path], d.axes, d.spatial_dims)
        truth = _read_mask(mask_path, image, d.spatial_dims, n_rays)
        pred = task.instances(predict_raw(model, image, tiles, grid=task.reads_grid_output))
        cases.append(InstanceCase(image_path.name, image, truth, pred))
        images.append(image)
        advance()
    info: dict[str, Any] = {"model folder": str(model.folder), "task": model.config.task}
    tuned = model.folder / TUNED_SETTINGS_FILE
    if tuned.is_file():
        try:
            for k, v in json.loads(tuned.read_text()).items():
                if isinstance(v, (int, float, str)):
                    info[f"tuned {k}"] = v
        except (OSError, ValueError):
            pass
    info.update(model.info.get("training", {}))
    used = match_dataset(
        [c.truth for c in cases], [c.prediction for c in cases], [REFERENCE_THRESHOLD]
    )
    checkpoints = score_checkpoints(
        model, images, [c.truth for c in cases], tiles, used[_key(REFERENCE_THRESHOLD)], progress
    )
    summary = evaluate_instances(
        cases,
        out_dir,
        checkpoints=checkpoints,
        history_csv=model.folder / "history.csv",
        title=f"Quality control — {task.title}",
        model_info=info,
        progress=progress,
    )
    return summary
