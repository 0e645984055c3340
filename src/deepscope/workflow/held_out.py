"""Whether quality-control images are really held out: the training images' fingerprints.

Training writes ``training_images.json`` into the model folder: the name and SHA-256 of
every image file the model was trained on (validation images included, as they chose
the best checkpoint; OME-Zarr folders are not fingerprinted). Classifiers, whose images
may come from a CSV or an ``.npz`` of arrays, record the SHA-256 of each image's pixels
instead (:func:`pixel_fingerprint`), so a copy in another file format is recognised too.
Quality control compares its images with it, so that scores on images the model has
seen are never reported as if they were held out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepscope.data.io import atomic_write_text, list_images

TRAINING_IMAGES_FILE = "training_images.json"


def record_training_images(model_dir: Path, images: Path) -> Path | None:
    """Write the fingerprints of the training images (a folder or one file) beside the model.

    Returns the file written, or None when ``images`` is neither an image folder nor an
    image file (e.g. a CSV of classification data).
    """
    from deepscope.errors import DeepscopeError
    from deepscope.workflow.predict import file_sha256

    images = Path(images)
    try:
        files = list_images(images) if images.is_dir() else [images]
    except DeepscopeError:
        return None
    # OME-Zarr folders are left out: file_sha256 reads only their metadata, which two
    # different images of one shape share
    record = {"images": [{"name": p.name, "sha256": file_sha256(p)} for p in files if p.is_file()]}
    path = Path(model_dir) / TRAINING_IMAGES_FILE
    atomic_write_text(path, json.dumps(record, indent=1))
    return path


def pixel_fingerprint(image: np.ndarray) -> str:
    """Return the SHA-256 of an image's pixels, shape and type.

    The same picture read into the same array from any file format gives the same one.
    """
    data = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
    digest.update(data.tobytes())
    return digest.hexdigest()


def record_training_arrays(
    model_dir: Path, names: Sequence[str], images: Sequence[np.ndarray]
) -> Path:
    """Write the pixel fingerprints of training images held as arrays (classification)."""
    record = {
        "images": [
            {"name": Path(str(n)).name, "pixels_sha256": pixel_fingerprint(im)}
            for n, im in zip(names, images, strict=True)
        ]
    }
    path = Path(model_dir) / TRAINING_IMAGES_FILE
    atomic_write_text(path, json.dumps(record, indent=1))
    return path


def seen_arrays_in_training(
    model_dir: Path, names: Sequence[str], images: Sequence[np.ndarray]
) -> list[str]:
    """Names of the ``images`` (as read for classification) the model was trained on.

    Empty when the model folder has no pixel record (models trained before 2026-12-07,
    imported models).
    """
    known = _recorded(model_dir, "pixels_sha256")
    if not known:
        return []
    return [
        Path(str(n)).name
        for n, im in zip(names, images, strict=True)
        if pixel_fingerprint(im) in known
    ]


def _recorded(model_dir: Path, key: str) -> set[str]:
    try:
        record = json.loads((Path(model_dir) / TRAINING_IMAGES_FILE).read_text())
        return {entry[key] for entry in record["images"] if key in entry}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def seen_in_training(model_dir: Path, paths: Sequence[Path]) -> list[str]:
    """Names of the files in ``paths`` whose content the model was trained on.

    Empty when the model folder has no record (models trained before it existed,
    imported models).
    """
    from deepscope.workflow.predict import file_sha256

    known = _recorded(model_dir, "sha256")
    if not known:
        return []
    return [p.name for p in paths if p.is_file() and file_sha256(p) in known]


def caution(seen: Sequence[str], total: int) -> str:
    """The warning for QC reports when ``seen`` of the ``total`` images were training images."""
    listed = ", ".join(seen[:5]) + (", ..." if len(seen) > 5 else "")
    return (
        f"{len(seen)} of these {total} QC images are images the model was trained on "
        f"({listed}): scores on them are optimistic and say little about new images. "
        "Score the model on images it has not seen during training."
    )
