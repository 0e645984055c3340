"""Whether quality-control images are really held out: the training images' fingerprints.

Training writes ``training_images.json`` into the model folder: the name and SHA-256 of
every image file the model was trained on (validation images included, as they chose
the best checkpoint; OME-Zarr folders are not fingerprinted). Quality control compares
its images with it, so that scores on images the model has seen are never reported as
if they were held out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

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


def seen_in_training(model_dir: Path, paths: Sequence[Path]) -> list[str]:
    """Names of the files in ``paths`` whose content the model was trained on.

    Empty when the model folder has no record (models trained before it existed,
    imported models).
    """
    from deepscope.workflow.predict import file_sha256

    try:
        record = json.loads((Path(model_dir) / TRAINING_IMAGES_FILE).read_text())
        known = {entry["sha256"] for entry in record["images"]}
    except (OSError, ValueError, KeyError, TypeError):
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
