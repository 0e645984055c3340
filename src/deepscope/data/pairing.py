"""Pair input images with their targets (or masks) by file name.

Tasks that learn from pairs (CARE, Noise2Noise, label-free prediction, segmentation)
take two folders, e.g. ``images/`` and ``targets/``, in which an image and its target
have the same name. Only the file ending may differ:

- ``cell01.tif`` pairs with ``cell01.tiff``, ``cell01.ome.tif``, ``cell01.png`` or
  ``cell01.ome.zarr``;
- the rest of the name must match exactly, capital letters included: ``Cell01.tif``
  does not pair with ``cell01.tif``, and ``cell01_raw.tif`` does not pair with
  ``cell01_gt.tif``.

Double endings (``.ome.tif``, ``.ome.tiff``, ``.ome.zarr``) are removed whole, so
``cell01.ome.tif`` is named ``cell01``, not ``cell01.ome``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deepscope.data.io import SUPPORTED_SUFFIXES

_SUFFIXES_LONGEST_FIRST = sorted(SUPPORTED_SUFFIXES, key=len, reverse=True)


def image_stem(path: str | Path) -> str:
    """Return an image's file name without its image ending.

    Parameters
    ----------
    path
        An image file (or ``.zarr`` folder), e.g. ``images/cell01.ome.tif``.

    Returns
    -------
    str
        The name used for pairing, e.g. ``"cell01"``. The ending is matched without
        regard to capital letters (``.TIF`` is removed too); the rest keeps its case.
        A name with an ending deepscope does not read loses only its last ending.
    """
    name = Path(path).name
    lower = name.lower()
    for suffix in _SUFFIXES_LONGEST_FIRST:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


@dataclass
class PairingResult:
    """Images matched with their targets by name.

    Attributes
    ----------
    pairs
        ``(image, target)`` for every name found once in each folder, in the order of
        the images given.
    unpaired_images
        Images whose name no target has.
    unpaired_targets
        Targets whose name no image has.
    duplicates
        Groups of files from the same folder that share a name (``a.tif`` and
        ``a.png``), so that it cannot be told which one to pair. They are in neither
        ``pairs`` nor the unpaired lists, nor is the file of that name in the other
        folder.
    """

    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    unpaired_images: list[Path] = field(default_factory=list)
    unpaired_targets: list[Path] = field(default_factory=list)
    duplicates: list[tuple[Path, ...]] = field(default_factory=list)


def _by_stem(paths: Sequence[Path]) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(image_stem(path), []).append(Path(path))
    return groups


def pair_by_name(images: Sequence[Path], targets: Sequence[Path]) -> PairingResult:
    """Pair images with targets that have the same name, ignoring the file ending.

    See the module documentation for the exact rule: the names without their image
    ending (:func:`image_stem`) must be equal, capital letters included.

    Parameters
    ----------
    images
        Input image files, e.g. from :func:`~deepscope.data.io.list_images`.
    targets
        Target (or mask) files.

    Returns
    -------
    PairingResult
        The pairs, the files left without a partner on either side, and any groups of
        files in one folder that share a name.
    """
    image_groups = _by_stem(images)
    target_groups = _by_stem(targets)
    result = PairingResult()
    for groups in (image_groups, target_groups):
        result.duplicates.extend(tuple(g) for g in groups.values() if len(g) > 1)
    ambiguous = {
        stem
        for groups in (image_groups, target_groups)
        for stem, group in groups.items()
        if len(group) > 1
    }
    for stem, group in image_groups.items():
        if stem in ambiguous:
            continue
        if stem in target_groups:
            result.pairs.append((group[0], target_groups[stem][0]))
        else:
            result.unpaired_images.append(group[0])
    result.unpaired_targets = [
        group[0]
        for stem, group in target_groups.items()
        if stem not in ambiguous and stem not in image_groups
    ]
    return result
