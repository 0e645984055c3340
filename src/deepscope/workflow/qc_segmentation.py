"""Quality control for semantic segmentation (``qc_kind = "segmentation"``).

On held-out image/mask pairs the model's class map is compared with the masks:

* per class and mean **IoU** (Jaccard, intersection over union) and **Dice** (F1), from
  the pixels of all images together; these are the numbers to judge by;
* **pixel accuracy**, shown beside them with a note when the classes are imbalanced
  (a model that marks every pixel as the commonest class already scores high);
* the **adapted Rand error** (:func:`skimage.metrics.adapted_rand_error`, as in the ISBI
  2012 membrane challenge) between the objects of the masks and of the prediction: 0
  when every object is found whole and apart, worse when objects are merged or split;
* a **confusion matrix**, an **error map** per image (false-positive and false-negative
  pixels coloured), the training loss curves and a comparison of the kept checkpoints;
* for two classes, the **threshold curve**: mean IoU against the probability threshold
  of class 1. The best threshold is stored in the model folder (``thresholds.json``)
  and used by ``deepscope predict`` from then on.

Everything is written to the output folder: ``summary.json``, ``metrics.csv``,
``figures/`` and ``report.html``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from deepscope.data.io import atomic_write_text
from deepscope.errors import DeepscopeError, OutputError
from deepscope.workflow.report import HtmlReport

if TYPE_CHECKING:
    from deepscope.workflow.model_folder import TrainedModel
    from deepscope.workflow.predict import TileSettings

__all__ = [
    "THRESHOLDS",
    "adapted_rand",
    "confusion_matrix",
    "scores_from_confusion",
    "segmentation_qc",
    "threshold_curve",
]

THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)
"""Probability thresholds of the threshold curve."""
_BINS = 200  # resolution of the probability histograms behind the threshold curve
_IMBALANCE_SHARE = 0.2
_SHOWN = 512  # largest side of an error map drawn at full resolution

Progress = Callable[[str, int, int], None]


# ------------------------------------------------------------------------ metrics


def confusion_matrix(truth: np.ndarray, prediction: np.ndarray, n_classes: int) -> np.ndarray:
    """Pixel counts (n_classes, n_classes): row = true class, column = predicted class."""
    t = np.asarray(truth, np.int64).ravel()
    p = np.asarray(prediction, np.int64).ravel()
    return np.bincount(t * n_classes + p, minlength=n_classes**2).reshape(n_classes, n_classes)


def scores_from_confusion(cm: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """IoU, Dice, pixel accuracy and class shares from a confusion matrix.

    Parameters
    ----------
    cm
        Confusion matrix (row = true class, column = predicted class).
    names
        Class names, the keys of the per-class results.

    Returns
    -------
    dict
        ``iou`` and ``dice`` (name → value; None for a class absent from both truth and
        prediction), ``mean_iou`` and ``mean_dice`` (over the classes that have a
        value), ``pixel_accuracy`` and ``class_shares`` (name → share of true pixels).
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    iou, dice = {}, {}
    for c, name in enumerate(names):
        union = tp[c] + fp[c] + fn[c]
        iou[name] = float(tp[c] / union) if union else None
        dice[name] = float(2 * tp[c] / (2 * tp[c] + fp[c] + fn[c])) if union else None
    total = cm.sum()
    valid_iou = [v for v in iou.values() if v is not None]
    valid_dice = [v for v in dice.values() if v is not None]
    return {
        "iou": iou,
        "dice": dice,
        "mean_iou": float(np.mean(valid_iou)) if valid_iou else None,
        "mean_dice": float(np.mean(valid_dice)) if valid_dice else None,
        "pixel_accuracy": float(tp.sum() / total) if total else None,
        "class_shares": {
            n: float(s) for n, s in zip(names, cm.sum(axis=1) / max(total, 1), strict=True)
        },
    }


def adapted_rand(truth_instances: np.ndarray, predicted_instances: np.ndarray) -> float | None:
    """Adapted Rand error (0 = perfect) between two instance label images.

    Pixels that are background (0) in the truth are ignored, as in the ISBI 2012
    challenge; None when the truth has no objects.
    """
    from skimage.metrics import adapted_rand_error

    truth = np.asarray(truth_instances, np.int64)
    if not truth.any():
        return None
    error, _, _ = adapted_rand_error(truth, np.asarray(predicted_instances, np.int64))
    return float(error)


def _histograms(fg_prob: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    edges = np.linspace(0.0, 1.0, _BINS + 1)
    t = np.asarray(truth).ravel() > 0
    p = np.asarray(fg_prob, np.float64).ravel()
    return np.histogram(p[t], edges)[0], np.histogram(p[~t], edges)[0]


def threshold_curve(
    positives: np.ndarray, negatives: np.ndarray, thresholds: Sequence[float] = THRESHOLDS
) -> list[dict[str, float]]:
    """Mean IoU (and the IoU of each class) against the threshold on class 1's probability.

    Parameters
    ----------
    positives, negatives
        Histograms (``_BINS`` bins over [0, 1]) of class 1's probability at the pixels
        whose true class is 1, resp. 0.
    thresholds
        Thresholds to evaluate (a pixel is class 1 when its probability exceeds one).

    Returns
    -------
    list of dict
        ``threshold``, ``iou_0``, ``iou_1`` and ``mean_iou`` per threshold.
    """
    edges = np.linspace(0.0, 1.0, len(positives) + 1)
    rows = []
    for t in thresholds:
        above = edges[:-1] >= t - 1e-9  # bins counted as class 1
        tp = positives[above].sum()
        fn = positives[~above].sum()
        fp = negatives[above].sum()
        tn = negatives[~above].sum()
        iou1 = tp / (tp + fp + fn) if tp + fp + fn else math.nan
        iou0 = tn / (tn + fn + fp) if tn + fn + fp else math.nan
        rows.append(
            {
                "threshold": float(t),
                "iou_0": float(iou0),
                "iou_1": float(iou1),
                "mean_iou": float(np.nanmean([iou0, iou1])),
            }
        )
    return rows


# ------------------------------------------------------------------------ figures


def confusion_figure(cm: np.ndarray, names: Sequence[str]) -> Figure:
    """Confusion matrix, each row as shares of its true class, with the pixel counts."""
    n = len(names)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    size = 2.2 + 0.9 * n
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.subplots()
    im = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{100 * share[i, j]:.1f} %\n({int(cm[i, j])})",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (share of row)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def _plane(a: np.ndarray) -> np.ndarray:
    return a[a.shape[0] // 2] if a.ndim == 3 else a


def error_map(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Colour codes of the errors: 0 right, 1 false positive, 2 false negative, 3 wrong class.

    Positive means any class other than 0: a false positive is predicted non-0 where the
    truth is 0, a false negative the reverse, and a wrong class non-0 but different.
    """
    out = np.zeros(truth.shape, np.uint8)
    out[(truth == 0) & (prediction != 0)] = 1
    out[(truth != 0) & (prediction == 0)] = 2
    out[(truth != 0) & (prediction != 0) & (truth != prediction)] = 3
    return out


_ERROR_COLORS = np.array([[0, 0, 0], [230, 40, 40], [40, 110, 240], [250, 200, 0]], float) / 255


def error_figure(image: np.ndarray, errors: np.ndarray, title: str) -> Figure:
    """Draw the image in grey with the wrong pixels coloured.

    False positives are red, false negatives blue, wrong classes yellow (see
    :func:`error_map`); 3D data shows the middle plane.
    """
    img, err = _plane(image).astype(np.float64), _plane(errors)
    step = max(1, math.ceil(max(img.shape) / _SHOWN))
    img, err = img[::step, ::step], err[::step, ::step]
    lo, hi = np.percentile(img, [1, 99.8])
    grey = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1) * 0.8
    wrong = err > 0
    rgb[wrong] = _ERROR_COLORS[err[wrong]]
    h, w = img.shape
    scale = max(1.0, 256 / max(h, w))
    fig = Figure(figsize=(w * scale / 100 + 0.2, h * scale / 100 + 0.5))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96 - 0.35 / (h * scale / 100 + 0.5)))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    return fig


def threshold_figure(
    curve: list[dict[str, float]], best: float, used: float, names: Sequence[str]
) -> Figure:
    """IoU of each class and mean IoU against the probability threshold."""
    fig = Figure(figsize=(6.5, 3.6))
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.14, top=0.9)
    ax = fig.subplots()
    t = [r["threshold"] for r in curve]
    ax.plot(t, [r["mean_iou"] for r in curve], "k.-", label="mean IoU")
    ax.plot(t, [r["iou_0"] for r in curve], ".--", label=f"IoU {names[0]}")
    ax.plot(t, [r["iou_1"] for r in curve], ".--", label=f"IoU {names[1]}")
    ax.axvline(best, color="green", lw=1, label=f"best {best:.2f}")
    if abs(used - best) > 1e-9:
        ax.axvline(used, color="grey", lw=1, ls=":", label=f"used here {used:.2f}")
    ax.set(
        xlabel=f"threshold on the probability of '{names[1]}'",
        ylabel="IoU",
        title="IoU against the probability threshold",
        xlim=(0, 1),
    )
    ax.legend(fontsize=8)
    return fig


def _loss_curves(history: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-epoch mean train/val loss from a metrics.csv (empty when unreadable)."""
    columns = {"train_loss": ("train_loss_epoch", "train_loss"), "val_loss": ("val_loss",)}
    try:
        records = list(csv.DictReader(io.StringIO(history.read_text())))
    except OSError:
        return {}
    curves = {}
    for label, names in columns.items():
        per: dict[float, list[float]] = {}
        for r in records:
            col = next((c for c in names if r.get(c) not in (None, "")), None)
            if col is None or r.get("epoch") in (None, ""):
                continue
            per.setdefault(float(r["epoch"]), []).append(float(r[col]))
        if per:
            epochs = np.array(sorted(per))
            curves[label] = (epochs + 1, np.array([np.mean(per[e]) for e in sorted(per)]))
    return curves


# ------------------------------------------------------------------------ the run


def _stage(progress: Progress | None, stage: str, total: int) -> Callable[[], None]:
    if progress is None:
        return lambda: None
    state = {"done": 0}
    progress(stage, 0, total)

    def advance() -> None:
        state["done"] += 1
        progress(stage, state["done"], total)

    return advance


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def segmentation_qc(
    model: TrainedModel,
    pairs: list[tuple[Path, Path]],
    out_dir: Path,
    *,
    tiles: TileSettings | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score a semantic segmentation model on image/mask pairs; write the report.

    Parameters
    ----------
    model
        A loaded ``semantic`` model folder.
    pairs
        (image, mask) files, paired by name.
    out_dir
        Folder for ``summary.json``, ``metrics.csv``, ``figures/`` and ``report.html``.
    tiles
        Tiling of the prediction.
    progress
        Called as ``progress(stage, done, total)``.

    Returns
    -------
    dict
        The summary: ``iou`` and ``dice`` (class name → value), ``mean_iou``,
        ``mean_dice``, ``pixel_accuracy``, ``adapted_rand_error`` (mean over images),
        ``class_shares``, ``confusion_matrix``, ``threshold`` (two classes),
        ``checkpoints`` and ``images``.
    """
    from deepscope.tasks.semantic import (
        MaskError,
        SemanticTask,
        class_names,
        reference_instances,
    )
    from deepscope.workflow.predict import (
        TUNED_SETTINGS_FILE,
        predict_raw,
        update_tuned_settings,
    )
    from deepscope.workflow.training import load_images

    try:  # the threshold an earlier QC stored, and the images it was chosen on
        earlier = json.loads((model.folder / TUNED_SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        earlier = {}
    task = model.task
    if not isinstance(task, SemanticTask):
        raise DeepscopeError(f"segmentation QC needs a semantic model, not '{model.config.task}'")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(
            "the QC output location is a file, not a folder", out_dir, "choose a folder"
        )
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    s = task.settings
    n = task.n_classes
    names = class_names(s)
    d = model.config.data
    binary = n == 2 and s.mode == "classes"

    cm_total = np.zeros((n, n), np.int64)
    pos = np.zeros(_BINS, np.int64)
    neg = np.zeros(_BINS, np.int64)
    rows: list[dict[str, Any]] = []
    kept: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    truths: list[np.ndarray] = []
    advance = _stage(progress, "images", len(pairs))
    for image_path, mask_path in pairs:
        (image,), _ = load_images([image_path], d.axes, d.spatial_dims)
        (mask,), _ = load_images([mask_path], d.axes, d.spatial_dims)
        if mask.shape[1:] != image.shape[1:]:
            raise DeepscopeError(
                f"the mask is {mask.shape[1:]} pixels but its image {image_path.name} is "
                f"{image.shape[1:]}",
                mask_path,
                "give masks that cover the same pixels as their images",
            )
        try:
            from deepscope.tasks.semantic import mask_to_classes

            truth, _ = mask_to_classes(mask, s)
        except MaskError as err:
            raise DeepscopeError(err.problem, mask_path, err.fix) from None
        probs = predict_raw(model, image, tiles)
        pred = task.class_map(probs)
        cm = confusion_matrix(truth, pred, n)
        cm_total += cm
        if binary:
            p, q = _histograms(probs[1], truth)
            pos += p
            neg += q
        are = adapted_rand(reference_instances(mask, s), task.instances(probs))
        sc = scores_from_confusion(cm, names)
        row: dict[str, Any] = {
            "image": image_path.name,
            "mean_iou": sc["mean_iou"],
            "mean_dice": sc["mean_dice"],
        }
        row.update({f"iou {k}": v for k, v in sc["iou"].items()})
        row.update({"pixel_accuracy": sc["pixel_accuracy"], "adapted_rand_error": are})
        rows.append(row)
        kept.append((image_path.name, image[0], truth, pred))
        truths.append(truth)
        advance()

    summary = scores_from_confusion(cm_total, names)
    ares = [r["adapted_rand_error"] for r in rows if r["adapted_rand_error"] is not None]
    summary["adapted_rand_error"] = float(np.mean(ares)) if ares else None
    summary["confusion_matrix"] = cm_total.tolist()
    summary["class_names"] = names
    summary["images"] = len(pairs)
    summary["task"] = model.config.task
    summary["model"] = str(model.folder)

    used = task.threshold if task.threshold is not None else 0.5
    curve: list[dict[str, float]] = []
    tuned: dict[str, Any] = {}
    if binary:
        curve = threshold_curve(pos, neg)
        best_row = max(curve, key=lambda r: (r["mean_iou"], -abs(r["threshold"] - 0.5)))
        best = best_row["threshold"]
        summary["threshold"] = {
            "used": used,
            "best": best,
            "mean_iou_at_best": best_row["mean_iou"],
            "curve": curve,
        }
        fitted_on = sorted(set(earlier.get("qc_images", [])) & {p.name for p, _ in pairs})
        if s.threshold is None and fitted_on and earlier.get("foreground_threshold") == used:
            summary["threshold"]["chosen_on_these_images"] = fitted_on
            summary["threshold"]["note"] = (
                f"the threshold used, {used:.2f}, was chosen by an earlier 'deepscope qc' on "
                f"{len(fitted_on)} of these images, so these scores are optimistic: score "
                "the model on images it was neither trained nor tuned on for an unbiased "
                "estimate"
            )
        tuned = {
            "foreground_threshold": best,
            "mean_iou_at_threshold": round(best_row["mean_iou"], 6),
            "chosen_by": "deepscope qc (threshold with the highest mean IoU)",
            "qc_images": sorted(p.name for p, _ in pairs),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    # Checkpoints are scored with the threshold used above, before the new one is stored.
    summary["checkpoints"] = _score_checkpoints(model, pairs, truths, tiles, progress)
    if binary and s.threshold is None:
        update_tuned_settings(model.folder, tuned)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    _write_csv(out_dir / "metrics.csv", rows)
    _write_report(model, out_dir, summary, rows, kept, curve, used, names)
    return summary


def _score_checkpoints(
    model: TrainedModel,
    pairs: list[tuple[Path, Path]],
    truths: list[np.ndarray],
    tiles: TileSettings | None,
    progress: Progress | None,
) -> list[dict[str, Any]]:
    """Mean IoU of every kept checkpoint on the QC pairs."""
    from deepscope.tasks.semantic import class_names
    from deepscope.workflow.predict import predict_raw
    from deepscope.workflow.training import load_images

    names = model.checkpoint_names()
    if not names:
        return []
    d = model.config.data
    images, _ = load_images([p for p, _ in pairs], d.axes, d.spatial_dims)
    n = model.task.n_classes
    advance = _stage(progress, "checkpoints", len(names))
    out = []
    for name in names:
        net = model.network_from_checkpoint(name)
        cm = np.zeros((n, n), np.int64)
        for image, truth in zip(images, truths, strict=True):
            probs = predict_raw(model, image, tiles, network=net)
            cm += confusion_matrix(truth, model.task.class_map(probs), n)
        sc = scores_from_confusion(cm, class_names(model.task.settings))
        out.append({"checkpoint": name, "mean_iou": sc["mean_iou"], "mean_dice": sc["mean_dice"]})
        advance()
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _imbalance_note(summary: dict[str, Any]) -> str | None:
    shares = summary["class_shares"]
    rare = min(shares, key=shares.get)
    common = max(shares, key=shares.get)
    if shares[rare] >= _IMBALANCE_SHARE or summary["pixel_accuracy"] is None:
        return None
    return (
        f"The classes are imbalanced: '{rare}' covers only {100 * shares[rare]:.1f} % of the "
        f"pixels. A model that marks every pixel as '{common}' would already reach "
        f"{100 * shares[common]:.1f} % pixel accuracy, so pixel accuracy says little here: "
        "judge the model by IoU and Dice."
    )


def _write_report(
    model: TrainedModel,
    out_dir: Path,
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    kept: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    curve: list[dict[str, float]],
    used: float,
    names: list[str],
) -> None:
    from deepscope.workflow.qc_figures import loss_figure

    report = HtmlReport(f"Quality control — {model.task.title}", out_dir / "figures")
    lead = (
        f"Mean IoU {_fmt(summary['mean_iou'])}, mean Dice {_fmt(summary['mean_dice'])} on "
        f"{summary['images']} image(s)"
    )
    if summary["adapted_rand_error"] is not None:
        lead += f"; adapted Rand error {_fmt(summary['adapted_rand_error'])} (0 is perfect)"
    report.add_paragraph(lead + ".", css_class="lead")
    report.add_paragraph(
        "IoU (intersection over union, Jaccard) and Dice (F1) compare the pixels the model "
        "gives a class with the pixels the mask gives it: 1 is a perfect match, 0 no overlap. "
        "They are computed over the pixels of all images together. The adapted Rand error "
        "compares objects (connected regions, or the instances the model would write with "
        "--instances): it grows when objects are merged or split.",
        css_class="note",
    )
    table = [
        {
            "class": name,
            "IoU": summary["iou"][name],
            "Dice": summary["dice"][name],
            "share of pixels": summary["class_shares"][name],
        }
        for name in names
    ]
    table.append({"class": "mean", "IoU": summary["mean_iou"], "Dice": summary["mean_dice"]})
    report.add_table(table, caption="Per class (all QC pixels)")
    report.add_key_values(
        {
            "pixel accuracy": summary["pixel_accuracy"],
            "adapted Rand error": summary["adapted_rand_error"],
        },
        caption="Other measures",
    )
    note = _imbalance_note(summary)
    if note:
        report.add_paragraph(note, css_class="warning")
    report.add_heading("Confusion matrix")
    report.add_figure(
        confusion_figure(np.asarray(summary["confusion_matrix"]), names),
        "Rows: the class in the mask; columns: the class predicted. The diagonal holds "
        "the pixels classified right.",
        "confusion_matrix",
    )
    if curve:
        th = summary["threshold"]
        report.add_heading("Probability threshold")
        report.add_figure(
            threshold_figure(curve, th["best"], used, names),
            f"A pixel is '{names[1]}' when the model's probability for it exceeds the "
            f"threshold. Best here: {th['best']:.2f} (mean IoU {th['mean_iou_at_best']:.3f}); "
            f"the results above use {used:.2f}.",
            "threshold_curve",
        )
        if th.get("note"):
            report.add_paragraph("Caution: " + th["note"] + ".", css_class="note")
        if model.task.settings.threshold is None:
            report.add_paragraph(
                f"The best threshold {th['best']:.2f} is stored in the model folder "
                "(thresholds.json) and used by 'deepscope predict' from now on. Choose it on "
                "QC images that are not your final test images, or the final scores will be "
                "slightly optimistic.",
                css_class="note",
            )
    report.add_heading("Per image")
    report.add_table(rows)
    report.add_heading("Error maps")
    report.add_paragraph(
        f"Red: marked as another class than '{names[0]}' where the mask has '{names[0]}' "
        f"(false positive); blue: '{names[0]}' predicted where the mask has another class "
        "(false negative); yellow: another wrong class. Z-stacks show the middle plane.",
        css_class="note",
    )
    for i, (name, image, truth, pred) in enumerate(kept[:8]):
        report.add_figure(
            error_figure(image, error_map(truth, pred), name),
            f"Errors on {name}",
            f"{i:02d}_{name}_errors",
        )
    checkpoints = summary.get("checkpoints") or []
    if checkpoints:
        report.add_heading("Checkpoints")
        report.add_table(checkpoints, caption="Mean IoU and Dice of each kept checkpoint")
    curves = _loss_curves(model.folder / "history.csv")
    if curves:
        report.add_heading("Training")
        report.add_figure(
            loss_figure(curves), "Training and validation loss per epoch", "loss_curves"
        )
    report.add_key_values(
        {"model folder": str(model.folder), **model.info.get("training", {})},
        caption="Model",
    )
    report.write(out_dir / "report.html")
