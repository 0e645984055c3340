"""Quality control of a classifier (``qc_kind = "classify"``) on labelled held-out images.

The labels come from the test data itself (class sub-folders, CSV or ``.npz``, as for
training). The report holds:

* **accuracy**, per-class **precision / recall / F1** and **macro F1** (the mean F1 of
  the classes in the test data: unlike accuracy, it is not flattered by a big class);
* the **confusion matrix** (counts, coloured by the share of each true class);
* the **training curves** (training and validation loss per epoch) with the epoch of the
  lowest validation loss marked, and the **overfitting point** when the validation loss
  rose afterwards while the training loss kept falling;
* a **gallery of the most confident mistakes** (often label errors or ambiguous images);
* a **reliability diagram** and the **expected calibration error** (ECE): whether a
  stated confidence of 90 % is right 90 % of the time;
* the accuracy of each kept checkpoint, to choose another epoch if it is better.

Outputs in the QC folder: ``summary.json``, ``predictions.csv``, ``figures/``,
``report.html``. scikit-learn computes the scores.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deepscope.data.classes import fit_to_size, load_labelled
from deepscope.data.io import atomic_write_text
from deepscope.engine.callbacks import read_history
from deepscope.errors import DeepscopeError, OutputError
from deepscope.workflow.held_out import caution, seen_arrays_in_training
from deepscope.workflow.model_folder import TrainedModel
from deepscope.workflow.predict_classify import classify_arrays
from deepscope.workflow.report import HtmlReport, insert_caution

BINS = 10
"""Confidence bins of the reliability diagram and the ECE."""
GALLERY = 16
"""Most confident mistakes shown."""
_RISE = 0.05  # validation loss this much above its minimum at the end = overfitting
_AFTER = 2  # ... at least this many epochs after the minimum (one noisy epoch is not a trend)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = BINS
) -> tuple[float, list[dict[str, float]]]:
    """ECE: the mean |accuracy − confidence| over equal-width confidence bins, weighted by size.

    Returns
    -------
    ece, table
        The ECE (0 = perfectly calibrated) and per bin ``low``, ``high``, ``n``,
        ``confidence`` (mean) and ``accuracy``.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        conf = float(confidence[sel].mean()) if n else math.nan
        acc = float(correct[sel].mean()) if n else math.nan
        if n:
            ece += n / len(confidence) * abs(acc - conf)
        table.append(
            {"low": edges[b], "high": edges[b + 1], "n": n, "confidence": conf, "accuracy": acc}
        )
    return float(ece), table


def overfitting_point(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Find the epoch of the lowest validation loss and whether overfitting followed.

    Overfitting is reported when, at least 2 epochs after that epoch, the validation
    loss ended at least 5 % above its minimum while the training loss kept falling.

    Returns
    -------
    dict
        ``best_epoch`` (1-based), ``overfitting`` (bool), ``from_epoch`` (1-based or
        None) and a ``message`` in plain words.
    """
    rows = [
        (int(r["epoch"]) + 1, float(r["train_loss"]), float(r["val_loss"]))
        for r in history
        if r.get("val_loss") not in ("", None, "nan") and r.get("train_loss") not in ("", None)
    ]
    rows = [r for r in rows if math.isfinite(r[1]) and math.isfinite(r[2])]
    if not rows:
        return {
            "best_epoch": None,
            "overfitting": False,
            "from_epoch": None,
            "message": "no training history in the model folder",
        }
    epochs, train, val = (np.array(x) for x in zip(*rows, strict=True))
    i = int(np.argmin(val))
    best = int(epochs[i])
    last_val, last_train = float(val[-1]), float(train[-1])
    over = len(val) - 1 - i >= _AFTER and last_val > val[i] * (1 + _RISE) and last_train < train[i]
    if over:
        msg = (
            f"overfitting: the validation loss was lowest at epoch {best} and rose "
            f"{(last_val / val[i] - 1) * 100:.0f} % by epoch {int(epochs[-1])} while the "
            "training loss kept falling. The saved model is the one of epoch "
            f"{best}; more data, augmentation, dropout, weight decay or a smaller or "
            "pretrained network help."
        )
    elif i == len(val) - 1:
        msg = (
            f"no overfitting seen: the validation loss was still falling at the last epoch "
            f"({best}); longer training may help."
        )
    else:
        msg = (
            f"the validation loss was lowest at epoch {best} and stayed near it afterwards "
            "(no clear overfitting)."
        )
    return {
        "best_epoch": best,
        "overfitting": bool(over),
        "from_epoch": best + 1 if over else None,
        "message": msg,
    }


# ----------------------------------------------------------------------------- figures


def confusion_figure(cm: np.ndarray, names: list[str]) -> Figure:
    """Confusion matrix: counts in the cells, colour = share of the true class."""
    k = len(names)
    fig = Figure(figsize=(1.2 + 0.7 * k, 1.0 + 0.6 * k))
    ax = fig.add_subplot(1, 1, 1)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
                fontsize=9,
            )
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.tight_layout()
    return fig


def curves_figure(history: list[dict[str, Any]], point: dict[str, Any]) -> Figure:
    """Training and validation loss per epoch, the best epoch and overfitting marked."""
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    ep = [int(r["epoch"]) + 1 for r in history]
    for key, label in (("train_loss", "training loss"), ("val_loss", "validation loss")):
        ax.plot(ep, [float(r[key]) for r in history], marker=".", label=label)
    if point.get("best_epoch"):
        ax.axvline(point["best_epoch"], color="green", ls="--", label="lowest validation loss")
    if point.get("overfitting"):
        ax.axvspan(
            point["from_epoch"] - 0.5, max(ep) + 0.5, color="red", alpha=0.08, label="overfitting"
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def reliability_figure(table: list[dict[str, float]], ece: float) -> Figure:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    centres = [(b["low"] + b["high"]) / 2 for b in table]
    acc = [b["accuracy"] if b["n"] else 0.0 for b in table]
    ax.bar(centres, acc, width=1 / len(table), edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (probability of the predicted class)")
    ax.set_ylabel("share correct")
    ax.set_title(f"ECE {ece:.3f}")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """A (C, Y, X) image as something imshow can draw, scaled per image."""
    img = image[:3] if image.shape[0] >= 3 else image[:1]
    lo, hi = np.percentile(img, [1, 99.8])
    img = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    if img.shape[0] == 3:
        return np.moveaxis(img, 0, -1), None
    return img[0], "gray"


def mistakes_figure(
    images: list[np.ndarray], captions: list[str], size: list[int], fit: str
) -> Figure:
    """A grid of images with a caption each."""
    n = len(images)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.3 * cols, 2.5 * rows))
    for i, (im, cap) in enumerate(zip(images, captions, strict=True)):
        ax = fig.add_subplot(rows, cols, i + 1)
        shown, cmap = _display(fit_to_size(im, size, fit))
        ax.imshow(shown, cmap=cmap)
        ax.set_title(cap, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------- main


def classify_qc(
    model: TrainedModel,
    images: Path,
    out_dir: Path,
    *,
    tiles: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Score a classifier on labelled images; write the report; return ``summary.json``'s dict.

    Raises
    ------
    DeepscopeError
        When the test data hold a class the model does not know, or no readable image.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    names = list(model.task.class_names)  # type: ignore[attr-defined]
    data = load_labelled(images, model.config.data.axes)
    unknown = [n for n in data.class_names if n not in names and data.counts()[n] > 0]
    if unknown:
        raise DeepscopeError(
            f"the test data hold class(es) the model does not know: {', '.join(unknown)} "
            f"(the model's classes: {', '.join(names)})",
            images,
            "name the class folders (or labels) as in training",
        )
    if not data.images:
        raise DeepscopeError("no test image could be read", images, "give readable images")
    y_true = np.array([names.index(data.class_names[i]) for i in data.labels])
    cb = (lambda d, t: progress("classifying", d, t)) if progress else None
    tta = bool(tiles is not None and tiles.tta)
    probs = classify_arrays(model, data.images, cb, tta=tta)
    y_pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    correct = y_pred == y_true
    k = len(names)
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(k)), zero_division=0
    )
    present = [i for i in range(k) if support[i] > 0]
    cm = confusion_matrix(y_true, y_pred, labels=list(range(k)))
    ece, bins = expected_calibration_error(conf, correct)
    history = read_history(model.folder / "history.csv")
    point = overfitting_point(history)
    per_class = {
        names[i]: {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i in range(k)
    }
    checkpoints = {}
    for ck in model.checkpoint_names():
        net = model.network_from_checkpoint(ck)
        p = classify_arrays(model, data.images, network=net, tta=tta)
        checkpoints[ck] = float((p.argmax(axis=1) == y_true).mean())
    summary: dict[str, Any] = {
        "accuracy": float(correct.mean()),
        "macro_f1": float(np.mean(f1[present])),
        "per_class": per_class,
        "images": len(y_true),
        "test_time_augmentation": tta,
        "ece": ece,
        "confusion_matrix": cm.tolist(),
        "class_names": names,
        "best_epoch": point["best_epoch"],
        "overfitting": point,
        "checkpoint_accuracy": checkpoints,
        "skipped_files": [str(f.path) for f in data.findings],
    }
    seen = seen_arrays_in_training(model.folder, data.names, data.images)
    if seen:  # said in the summary, on the command line and at the top of the report
        summary["seen_in_training"] = seen
        summary["caution"] = caution(seen, len(y_true))
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(
            f"cannot create the QC folder ({err.strerror})", out_dir, "choose a writable --out"
        ) from None
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file", "true_class", "predicted_class", "confidence", "correct"])
    for name, t, p, c in zip(data.names, y_true, y_pred, conf, strict=True):
        w.writerow([name, names[t], names[p], f"{c:.4f}", int(t == p)])
    atomic_write_text(out_dir / "predictions.csv", buf.getvalue())
    _write_report(model, data, summary, point, history, bins, y_true, y_pred, conf, out_dir)
    if seen:
        insert_caution(out_dir / "report.html", summary["caution"])
    return summary


def _write_report(
    model: TrainedModel,
    data: Any,
    summary: dict[str, Any],
    point: dict[str, Any],
    history: list[dict[str, Any]],
    bins: list[dict[str, float]],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    conf: np.ndarray,
    out_dir: Path,
) -> None:
    names = summary["class_names"]
    c = model.config.classify  # type: ignore[attr-defined]
    report = HtmlReport(f"Quality control — {model.task.title}", out_dir / "figures")
    acc, mf1 = summary["accuracy"], summary["macro_f1"]
    report.add_paragraph(
        f"On {summary['images']} labelled test images the model is right for "
        f"{acc * 100:.1f} % (accuracy {acc:.3f}); macro F1 {mf1:.3f}, the mean over the "
        "classes, which a big class cannot flatter.",
        css_class="lead",
    )
    if point["overfitting"]:
        report.add_paragraph(point["message"], css_class="warning")
    report.add_table(
        [{"class": n, **{k: v for k, v in m.items()}} for n, m in summary["per_class"].items()],
        caption="Per class: precision = share of the images called this class that are; "
        "recall = share of this class's images found; F1 = their harmonic mean; support = "
        "test images of the class",
    )
    report.add_figure(
        confusion_figure(np.array(summary["confusion_matrix"]), names),
        "Confusion matrix: rows are the true classes, columns the predicted ones; the "
        "diagonal holds the right answers.",
        "confusion_matrix",
    )
    report.add_heading("Training and overfitting")
    report.add_paragraph(point["message"])
    if history:
        report.add_figure(
            curves_figure(history, point),
            "Loss per epoch. The training loss is measured on augmented images with dropout "
            "on, so it can lie above the validation loss; what matters is whether the "
            "validation loss turns up while the training loss keeps falling.",
            "training_curves",
        )
    if summary["checkpoint_accuracy"]:
        report.add_table(
            [{"checkpoint": k, "accuracy": v} for k, v in summary["checkpoint_accuracy"].items()],
            caption="Accuracy of the kept checkpoints on these images (the model folder's "
            "weights are those of the lowest validation loss)",
        )
    wrong = np.flatnonzero(y_true != y_pred)
    report.add_heading("Most confident mistakes")
    if len(wrong):
        order = wrong[np.argsort(-conf[wrong])][:GALLERY]
        report.add_figure(
            mistakes_figure(
                [data.images[i] for i in order],
                [
                    f"{Path(data.names[i]).name[-22:]}\ntrue {names[y_true[i]]}, said "
                    f"{names[y_pred[i]]} ({conf[i]:.2f})"
                    for i in order
                ],
                c.image_size,
                c.fit,
            ),
            "The wrong answers the model was surest of (as the network sees them). Sure "
            "mistakes are often mislabelled or ambiguous images worth a look.",
            "confident_mistakes",
        )
    else:
        report.add_paragraph("The model made no mistake on these images.")
    report.add_heading("Calibration")
    report.add_figure(
        reliability_figure(bins, summary["ece"]),
        f"Reliability diagram: of the images predicted with a given confidence, the share "
        f"that is right. Expected calibration error (ECE) {summary['ece']:.3f}: 0 means a "
        "confidence of 0.9 is right 90 % of the time.",
        "reliability",
    )
    report.add_key_values(
        {
            "model folder": str(model.folder),
            "backbone": model.config.model.architecture,
            "image size": f"{c.image_size[0]}x{c.image_size[1]} ({c.fit})",
            "test data": str(data.source),
            **{k: v for k, v in model.info.get("training", {}).items() if not isinstance(v, dict)},
        },
        caption="Model",
    )
    report.write(out_dir / "report.html")
