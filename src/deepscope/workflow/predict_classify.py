"""Apply a classifier: one row per image in a CSV (class and probability of each class).

``deepscope predict runs/cls1/model --input new/ --out predictions.csv`` reads one image,
a folder (sub-folders included) or an ``.npz`` of ``images``, brings each image to the
model's input size exactly as in training, and writes ``predictions.csv`` with the
columns ``file``, ``class``, ``confidence`` (the probability of that class) and
``p_<class name>`` for every class, plus ``predictions_provenance.json`` beside it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from deepscope import __version__
from deepscope.data.classes import load_unlabelled
from deepscope.data.io import atomic_write_text
from deepscope.errors import DeepscopeError, OutputError
from deepscope.workflow.model_folder import TrainedModel

BATCH = 64


View = tuple[int, bool, bool]  # quarter turns in YX, flip in X, flip in Y


def tta_views(model: TrainedModel) -> list[View]:
    """The flips and quarter turns of the model's input that training showed it.

    Training augments with 90-degree turns (``data.rotations``, square inputs only) and
    flips (``data.flips``); test-time augmentation averages over the same views, never
    over ones the model did not learn (a turned digit is another digit).

    Raises
    ------
    DeepscopeError
        When the model was trained with neither, so there is nothing to average.
    """
    d = model.config.data
    size = model.config.classify.image_size  # type: ignore[attr-defined]
    turns = range(4) if d.rotations and size[0] == size[1] else range(1)
    if d.flips and len(turns) == 4:  # the 8 symmetries of the square
        views = [(k, fx, False) for k in turns for fx in (False, True)]
    elif d.flips:
        views = [(0, fx, fy) for fx in (False, True) for fy in (False, True)]
    else:
        views = [(k, False, False) for k in turns]
    if len(views) == 1:
        raise DeepscopeError(
            "--tta averages over the flips and turns the model was trained with, and this "
            "model was trained without any (data.flips and data.rotations are off, or its "
            "input is not square)",
            model.folder,
            "leave out --tta",
        )
    return views


def _view(x: torch.Tensor, view: View) -> torch.Tensor:
    k, flip_x, flip_y = view
    if k:
        x = torch.rot90(x, k, dims=(-2, -1))
    if flip_x:
        x = torch.flip(x, dims=(-1,))
    if flip_y:
        x = torch.flip(x, dims=(-2,))
    return x.contiguous()


def classify_arrays(
    model: TrainedModel,
    images: Sequence[np.ndarray],
    progress: Callable[[int, int], None] | None = None,
    network: torch.nn.Module | None = None,
    tta: bool = False,
) -> np.ndarray:
    """Class probabilities (N, K) of raw channel-first images (C, Y, X).

    Parameters
    ----------
    model
        The loaded classification model.
    images
        Raw images, any size; resized/cropped and normalised as in training.
    progress
        Called as ``progress(done, total)`` after each batch.
    network
        Overrides the model's network (e.g. an earlier checkpoint).
    tta
        Average the class probabilities over the flips and turns of each image that
        training used (:func:`tta_views`; up to 8 times the work).
    """
    if not images:
        return np.zeros((0, len(model.task.class_names)), np.float32)  # type: ignore[attr-defined]
    bad = [im.shape[0] for im in images if im.shape[0] != model.in_channels]
    if bad:
        raise DeepscopeError(
            f"{len(bad)} image(s) have {bad[0]} channel(s) but the model was trained on "
            f"{model.in_channels}",
            fix="give images with the same channels as the training images (or --axes)",
        )
    views = tta_views(model) if tta else [(0, False, False)]
    net = (network or model.network).eval()
    out = []
    for start in range(0, len(images), BATCH):
        chunk = list(images[start : start + BATCH])
        x = torch.from_numpy(model.task.preprocess(chunk, model.normalizer))  # type: ignore[attr-defined]
        probs = []
        for view in views:
            with torch.no_grad():
                logits = net(_view(x, view)).float().numpy()
            probs.append(model.task.postprocess(logits))
        out.append(np.mean(probs, axis=0))
        if progress:
            progress(min(start + BATCH, len(images)), len(images))
    return np.concatenate(out).astype(np.float32)


def csv_path(out: Path) -> Path:
    """``out`` itself when it names a ``.csv`` file, else ``out/predictions.csv``."""
    out = Path(out)
    return out if out.suffix.lower() == ".csv" else out / "predictions.csv"


def predict_table(
    model: TrainedModel,
    source: Path,
    out: Path,
    *,
    axes: str | None = None,
    overwrite: bool = False,
    tta: bool = False,
    progress: Callable[[str, float, int], None] | None = None,
) -> Path:
    """Classify every image of ``source`` and write the CSV; return its path.

    With ``tta`` each image's probabilities are averaged over the flips and turns that
    training used (see :func:`classify_arrays`).

    Raises
    ------
    OutputError
        When the CSV exists (without ``overwrite``) or cannot be written.
    """
    target = csv_path(out)
    src = Path(source).resolve()
    if src.is_dir() and (target.parent.resolve() == src or src in target.parent.resolve().parents):
        raise OutputError(
            "the predictions would be written into the folder of the input images",
            target,
            "write them elsewhere, e.g. --out results/predictions.csv",
        )
    if target.exists() and not overwrite:
        raise OutputError(
            "the predictions file already exists",
            target,
            "choose another --out, or add --overwrite to replace it",
        )
    if tta:
        tta_views(model)  # refused before any image is read
    names, images, findings = load_unlabelled(source, axes or model.config.data.axes)
    for f in findings:
        print(f"warning: {f.path}: {f.problem} (skipped)")
    if not images:
        raise DeepscopeError(
            "no image could be read", source, "give readable images (TIFF, PNG, JPEG, OME-Zarr)"
        )
    cb = (lambda d, t: progress("classifying", d, t)) if progress else None
    probs = classify_arrays(model, images, cb, tta=tta)
    class_names = list(model.task.class_names)  # type: ignore[attr-defined]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "class", "confidence"] + [f"p_{n}" for n in class_names])
    for name, p in zip(names, probs, strict=True):
        k = int(np.argmax(p))
        writer.writerow([name, class_names[k], f"{p[k]:.4f}"] + [f"{v:.4f}" for v in p])
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(
            f"cannot create the folder ({err.strerror})", target.parent, "choose a writable --out"
        ) from None
    atomic_write_text(target, buf.getvalue())
    record = {
        "deepscope_version": __version__,
        "model": str(model.folder.resolve()),
        "task": model.config.task,
        "config_digest": model.config.digest(),
        "input": str(Path(source).resolve()),
        "images": len(names),
        "test_time_augmentation": tta,
        "skipped": [str(f.path) for f in findings],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(
        target.with_name(f"{target.stem}_provenance.json"), json.dumps(record, indent=2)
    )
    return target
