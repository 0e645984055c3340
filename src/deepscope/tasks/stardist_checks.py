"""Checks of StarDist masks for ``deepscope validate stardist``.

StarDist learns each object as a star-convex polygon (2D) or polyhedron (3D): a centre
and the distances to the object's border along ``n_rays`` fixed directions. Its masks
must therefore be *label images* — one integer per object, 0 for background — and the
objects must be describable by their rays. :func:`stardist_mask_findings` checks one
image/mask pair and returns :class:`~deepscope.data.validation.Finding` s:

errors (the pair cannot be used)
    an RGB/multi-channel mask; a mask with fractional or negative values; a binary mask
    (0/1 or 0/255 with several separate objects: every object would be one label); a
    mask that does not cover the image's pixels.
warnings (worth a look)
    an empty mask (no objects: fine as a negative example, but often a wrong file);
    labels used by several separate regions (two objects sharing one label: StarDist
    would see one strange object); objects that are not star-convex, measured as in
    StarDist's data notebook: each object is rebuilt from its ``n_rays`` distances at
    its centroid (``stardist.geometry.star_dist`` + ``polygons_to_label`` /
    ``star_dist3D`` + ``polyhedron_to_label``) and compared with the original by IoU
    (intersection over union). The share of objects below
    :data:`RECONSTRUCTION_IOU_THRESHOLD` and the mean IoU are reported.

Each object is rebuilt on its own (in its bounding box), so the score of an object does
not depend on its neighbours and the cost grows with the objects' size, not the image's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.data.validation import Finding

__all__ = [
    "MIN_OBJECT_PIXELS",
    "RECONSTRUCTION_IOU_THRESHOLD",
    "WARN_SHARE",
    "MaskStats",
    "mask_statistics",
    "reconstruction_ious",
    "check_mask",
    "stardist_mask_findings",
]

RECONSTRUCTION_IOU_THRESHOLD = 0.7
"""An object rebuilt from its rays with an IoU below this is counted as not star-convex."""
WARN_SHARE = 0.05
"""Warn when more than this share of a mask's objects are not star-convex."""
MIN_OBJECT_PIXELS = 10
"""Objects smaller than this are left out of the star-convexity score (pixel noise)."""
_LABEL_EXAMPLES = 5


@dataclass
class MaskStats:
    """What :func:`mask_statistics` found in one label image.

    Attributes
    ----------
    n_objects
        Number of distinct labels other than 0.
    split_labels
        Labels whose pixels form several separate regions.
    ious
        Label → IoU of the object rebuilt from its rays (objects of at least
        :data:`MIN_OBJECT_PIXELS` pixels that form one region).
    """

    n_objects: int = 0
    split_labels: list[int] = field(default_factory=list)
    ious: dict[int, float] = field(default_factory=dict)

    @property
    def mean_iou(self) -> float | None:
        """Mean reconstruction IoU over the scored objects (None if none)."""
        return float(np.mean(list(self.ious.values()))) if self.ious else None

    def not_star_convex(self, threshold: float = RECONSTRUCTION_IOU_THRESHOLD) -> list[int]:
        """Labels whose reconstruction IoU is below ``threshold``."""
        return [lab for lab, iou in self.ious.items() if iou < threshold]


def _rays_3d(n_rays: int, anisotropy: tuple[float, float, float] | None):
    from stardist import Rays_GoldenSpiral

    return Rays_GoldenSpiral(n_rays, anisotropy=anisotropy)


def _reconstruct_one(obj: np.ndarray, n_rays: int, rays3d=None) -> float:
    """IoU between a binary object (padded crop) and its star-convex reconstruction."""
    from skimage.measure import regionprops

    lbl = obj.astype(np.uint16)
    centre = np.array(regionprops(lbl)[0].centroid).astype(int)
    if obj.ndim == 2:
        from stardist.geometry import polygons_to_label, star_dist

        dist = star_dist(lbl, n_rays)[tuple(centre)]
        rebuilt = polygons_to_label(dist[None], centre[None], shape=lbl.shape) > 0
    else:
        from stardist.geometry import polyhedron_to_label, star_dist3D

        dist = np.maximum(star_dist3D(lbl, rays3d)[tuple(centre)], 1e-3)
        rebuilt = (
            polyhedron_to_label(dist[None], centre[None], rays3d, shape=lbl.shape, verbose=False)
            > 0
        )
    union = np.count_nonzero(rebuilt | obj)
    return float(np.count_nonzero(rebuilt & obj) / union) if union else 0.0


def reconstruction_ious(
    labels: np.ndarray,
    n_rays: int = 32,
    anisotropy: tuple[float, float, float] | None = None,
    min_pixels: int = MIN_OBJECT_PIXELS,
) -> dict[int, float]:
    """IoU of each object with its star-convex reconstruction from ``n_rays`` rays.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label image (Y, X) or (Z, Y, X); 0 is background.
    n_rays : int
        Number of rays (StarDist's default: 32 in 2D, 96 in 3D).
    anisotropy : tuple of float, optional
        3D only: the (Z, Y, X) anisotropy the rays are adapted to (None: isotropic).
    min_pixels : int
        Objects with fewer pixels are skipped.

    Returns
    -------
    dict
        Label → IoU in [0, 1]. Objects made of several separate regions are included
        (they score low); see :func:`mask_statistics` to tell them apart.
    """
    return mask_statistics(labels, n_rays, anisotropy, min_pixels, keep_split=True).ious


def mask_statistics(
    labels: np.ndarray,
    n_rays: int = 32,
    anisotropy: tuple[float, float, float] | None = None,
    min_pixels: int = MIN_OBJECT_PIXELS,
    keep_split: bool = False,
) -> MaskStats:
    """Count objects, find labels split into several regions, score star-convexity.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label image (Y, X) or (Z, Y, X).
    n_rays : int
        Number of rays of the reconstruction.
    anisotropy : tuple of float, optional
        3D only: anisotropy of the rays (None: isotropic).
    min_pixels : int
        Objects with fewer pixels are not scored for star-convexity.
    keep_split : bool
        Score labels made of several regions too (default: leave them out, they are
        reported as ``split_labels``).

    Returns
    -------
    MaskStats
    """
    from skimage.measure import label as connected_components
    from skimage.measure import regionprops

    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, not {labels.ndim}D")
    lab = labels.astype(np.int64, copy=False)
    rays3d = _rays_3d(n_rays, anisotropy) if lab.ndim == 3 else None
    stats = MaskStats()
    for region in regionprops(lab):
        stats.n_objects += 1
        # the object alone in its bounding box, with one pixel of background around it
        obj = np.pad(region.image, 1)
        _, n_parts = connected_components(obj, connectivity=obj.ndim, return_num=True)
        if n_parts > 1:
            stats.split_labels.append(int(region.label))
            if not keep_split:
                continue
        if region.area < min_pixels:
            continue
        stats.ious[int(region.label)] = _reconstruct_one(obj, n_rays, rays3d)
    return stats


# ------------------------------------------------------------------------- findings


def _examples(values: list[int]) -> str:
    shown = ", ".join(str(v) for v in values[:_LABEL_EXAMPLES])
    return shown if len(values) <= _LABEL_EXAMPLES else f"{shown}, …"


def _value_findings(mask_path: Path, mask: np.ndarray) -> list[Finding]:
    """Errors for masks that are not single-channel integer label images."""
    if mask.dtype.kind == "b":
        return [
            Finding(
                "error",
                mask_path,
                "this mask holds true/false values (a binary mask), not one label per object.",
                "give each object its own number (e.g. label it in Fiji with "
                "Analyze > Analyze Particles or in Python with skimage.measure.label) and "
                "save it as a 16-bit TIFF.",
            )
        ]
    if mask.dtype.kind == "f":
        finite = mask[np.isfinite(mask)]
        if finite.size and not np.all(finite == np.round(finite)):
            return [
                Finding(
                    "error",
                    mask_path,
                    "this mask holds fractional values, so it is not a label image "
                    "(one whole number per object, 0 for background).",
                    "save the label image itself (Fiji: Image > Type > 16-bit on a label "
                    "image), not a probability map or a resized/smoothed copy.",
                )
            ]
    if mask.size and mask.min() < 0:
        return [
            Finding(
                "error",
                mask_path,
                f"this mask holds negative values (down to {mask.min():g}); labels must be "
                "0 for background and 1, 2, 3 … for the objects.",
                "save the label image as unsigned 16-bit (Fiji: Image > Type > 16-bit).",
            )
        ]
    return []


def _binary_finding(mask_path: Path, labels: np.ndarray) -> Finding | None:
    """An error when a 0/v mask holds several separate objects (a binary mask)."""
    from skimage.measure import label as connected_components

    values = np.unique(labels)
    if len(values) != 2 or values[0] != 0:
        return None
    _, n_regions = connected_components(labels > 0, connectivity=1, return_num=True)
    if n_regions < 2:
        return None
    return Finding(
        "error",
        mask_path,
        f"this looks like a binary mask: it holds only the values 0 and {values[1]:g} but "
        f"{n_regions} separate objects. StarDist needs one label per object.",
        "give one label per object (e.g. label it in Fiji with Analyze > Analyze Particles "
        "> Show: Count Masks, or in Python with skimage.measure.label) and save it as a "
        "16-bit TIFF.",
    )


def stardist_mask_findings(
    image_path: Path,
    image_cf: np.ndarray,
    mask_path: Path | None,
    mask_cf: np.ndarray | None,
    n_rays: int,
    dims: int,
    *,
    anisotropy: tuple[float, float, float] | None = None,
    in_validate: bool = False,
) -> list[Finding]:
    """Check one image and its StarDist mask; return the findings.

    Parameters
    ----------
    image_path : pathlib.Path
        The image file (named in findings about the pair).
    image_cf : numpy.ndarray
        The image, channel first (C, *spatial).
    mask_path : pathlib.Path or None
        The mask file (None: nothing to check).
    mask_cf : numpy.ndarray or None
        The mask, channel first (C, *spatial); it must have a single channel.
    n_rays : int
        Number of rays of the model to be trained.
    dims : int
        2 or 3 spatial dimensions.
    anisotropy : tuple of float, optional
        3D only: (Z, Y, X) anisotropy the rays are adapted to.
    in_validate : bool
        ``validate`` already compares the mask's pixel grid with the image's and warns
        about masks whose pixels are all equal (empty), for every task; True leaves those
        two checks out so that nothing is said twice.

    Returns
    -------
    list of Finding
        Errors (the pair cannot be used) and warnings, each naming the mask file.
    """
    if mask_path is None or mask_cf is None:
        return []
    mask_path = Path(mask_path)
    mask_cf = np.asarray(mask_cf)
    if mask_cf.ndim == dims:  # tolerate a mask given without its channel axis
        mask_cf = mask_cf[None]
    if mask_cf.ndim != dims + 1:
        return [
            Finding(
                "error",
                mask_path,
                f"this mask has {mask_cf.ndim - 1} spatial dimensions, expected {dims}.",
                "give a label image with the same axes as the images "
                "(check the 2D/3D setting data.spatial_dims).",
            )
        ]
    if mask_cf.shape[0] != 1:
        n = mask_cf.shape[0]
        kind = "an RGB picture" if n in (3, 4) else f"{n} channels"
        return [
            Finding(
                "error",
                mask_path,
                f"this mask is {kind}, not a label image with one value per pixel.",
                "save the label image itself as a single-channel 16-bit TIFF (Fiji: "
                "Image > Type > 16-bit on the label image); a coloured picture of the labels "
                "cannot be turned back into labels reliably.",
            )
        ]
    if not in_validate and tuple(mask_cf.shape[1:]) != tuple(np.asarray(image_cf).shape[1:]):
        size = " × ".join(map(str, mask_cf.shape[1:]))
        image_size = " × ".join(map(str, np.asarray(image_cf).shape[1:]))
        return [
            Finding(
                "error",
                mask_path,
                f"this mask is {size} pixels but its image {Path(image_path).name} is "
                f"{image_size}.",
                "an image and its mask must cover the same pixels: check that the mask belongs "
                "to this image and that neither was cropped, binned or rescaled.",
            )
        ]
    mask = mask_cf[0]
    findings = _value_findings(mask_path, mask)
    if findings:
        return findings
    labels = mask.astype(np.int64)
    if not labels.any():
        if in_validate:
            return []
        return [
            Finding(
                "warning",
                mask_path,
                "this mask holds no objects (every pixel is 0).",
                "nothing to do if the image really shows no objects (it then teaches the "
                "model what background looks like); otherwise check that the right mask "
                "was saved.",
            )
        ]
    binary = _binary_finding(mask_path, labels)
    if binary is not None:
        return [binary]

    stats = mask_statistics(labels, n_rays, anisotropy)
    if stats.split_labels:
        n = len(stats.split_labels)
        findings.append(
            Finding(
                "warning",
                mask_path,
                f"{n} of {stats.n_objects} labels {'is' if n == 1 else 'are each'} used by "
                f"several separate regions (label{'' if n == 1 else 's'} "
                f"{_examples(stats.split_labels)}). StarDist treats one label as one "
                "object, so it learns these as single strange objects.",
                "give every separate region its own label (Python: "
                "skimage.measure.label(mask, background=0) does this and keeps touching "
                "objects with different labels apart; Fiji: MorphoLibJ Connected Components "
                "Labeling); nothing to do if the regions really are one object.",
            )
        )
    bad = stats.not_star_convex()
    scored = len(stats.ious)
    if scored and len(bad) / scored > WARN_SHARE:
        share = 100 * len(bad) / scored
        findings.append(
            Finding(
                "warning",
                mask_path,
                f"{len(bad)} of {scored} objects ({share:.0f} %) are not star-convex: rebuilt "
                f"from {n_rays} rays they overlap the original by less than "
                f"{RECONSTRUCTION_IOU_THRESHOLD:.0%} (IoU; mean over all objects "
                f"{stats.mean_iou:.2f}, labels {_examples(bad)}). StarDist can only draw "
                "star-convex shapes, so these objects will not be segmented exactly.",
                "check these labels: often two touching objects share one label (give them "
                "separate labels) or an object is C- or U-shaped. If most objects look like "
                "this, StarDist is the wrong tool (try a semantic U-Net + watershed); a few "
                "are fine.",
            )
        )
    return findings


def check_mask(
    task: Any,
    image_path: Path,
    image_cf: np.ndarray,
    mask_path: Path | None,
    mask_cf: np.ndarray | None,
) -> list[Finding]:
    """The StarDist task's ``validate`` hook: :func:`stardist_mask_findings` with its settings.

    Parameters
    ----------
    task : deepscope.tasks.stardist.StarDistTask
        Gives ``n_rays``, ``dims`` and ``anisotropy``.
    image_path, image_cf, mask_path, mask_cf
        As for :func:`stardist_mask_findings`.

    Returns
    -------
    list of Finding
    """
    return stardist_mask_findings(
        image_path,
        image_cf,
        mask_path,
        mask_cf,
        int(task.n_rays),
        int(task.dims),
        anisotropy=task.anisotropy,
        in_validate=True,
    )
