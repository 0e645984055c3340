"""Training data: train/validation split, random patches and augmentation.

Images arrive normalised and channel-first (C, *spatial). Inputs and optional targets
are cut and augmented identically, so paired tasks stay aligned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from deepscope.config import DataConfig


@dataclass
class Split:
    """Training and validation arrays (lists of channel-first float32 images)."""

    train_inputs: list[np.ndarray]
    val_inputs: list[np.ndarray]
    train_targets: list[np.ndarray] | None
    val_targets: list[np.ndarray] | None
    how: str


def split_train_val(
    inputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray] | None,
    fraction: float,
    patch_size: Sequence[int],
    seed: int = 0,
) -> Split:
    """Keep ``fraction`` of the data aside for validation.

    With enough images, whole images are held out. With few images, each image is cut
    along Y and the bottom part of each is used for validation, so that training and
    validation never see the same pixels.
    """
    n = len(inputs)
    n_val = int(round(n * fraction))
    if n >= 4 and n_val >= 1:
        order = np.random.default_rng(seed).permutation(n)
        val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
        pick = lambda seq, idx: [seq[i] for i in idx]  # noqa: E731
        return Split(
            pick(inputs, train_idx),
            pick(inputs, val_idx),
            pick(targets, train_idx) if targets is not None else None,
            pick(targets, val_idx) if targets is not None else None,
            f"{len(val_idx)} of {n} images held out for validation",
        )
    py = patch_size[-2]
    tr_in, va_in, tr_t, va_t = [], [], [], []
    shared = 0
    for i, im in enumerate(inputs):
        ny = im.shape[-2]
        cut = ny - max(py, int(round(ny * fraction)))
        if cut < py:  # too small to split: use the image for both (said in `how`)
            cut = ny
            shared += 1
        tr_in.append(im[..., :cut, :])
        va_in.append(im[..., cut:, :] if cut < ny else im)
        if targets is not None:
            t = targets[i]
            tr_t.append(t[..., :cut, :])
            va_t.append(t[..., cut:, :] if cut < ny else t)
    return Split(
        tr_in,
        va_in,
        tr_t if targets is not None else None,
        va_t if targets is not None else None,
        "the bottom part of each image held out for validation"
        + (
            f"; {shared} image(s) too small to split are used for both training and "
            "validation, so the validation loss is optimistic"
            if shared
            else ""
        ),
    )


def _random_patch_slices(
    shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator
) -> tuple[slice, ...]:
    starts = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, patch, strict=True)]
    return tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))


def _patch_slices_around(
    pixel: Sequence[int], shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator
) -> tuple[slice, ...]:
    """A random patch inside ``shape`` that holds ``pixel``."""
    starts = [
        int(rng.integers(max(0, c - p + 1), min(c, s - p) + 1))
        for c, s, p in zip(pixel, shape, patch, strict=True)
    ]
    return tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))


_MAX_FOREGROUND_PIXELS = 100_000


def _foreground_pixels(target: np.ndarray, seed: int) -> np.ndarray:
    """Flat indices of (at most 100,000 random) object pixels of a (C, *spatial) mask."""
    flat = np.flatnonzero(np.asarray(target[0]) > 0)
    if len(flat) > _MAX_FOREGROUND_PIXELS:
        flat = np.random.default_rng(seed).choice(flat, _MAX_FOREGROUND_PIXELS, replace=False)
    return flat


def _pad_to(image: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    spatial = image.shape[1:]
    pads = [(0, 0)] + [(0, max(0, p - s)) for s, p in zip(spatial, patch, strict=True)]
    if any(after for _, after in pads):
        return np.pad(image, pads, mode="reflect" if min(spatial) > 1 else "edge")
    return image


class RandomPatches(Dataset):
    """``length`` random patches per epoch, sampled in proportion to image size.

    Parameters
    ----------
    inputs, targets
        Channel-first float32 images; ``targets`` may be None (self-supervised tasks).
    patch_size
        Spatial patch size.
    length
        Patches per epoch.
    data_config
        Augmentation settings (flips, rotations, zoom, elastic, intensity jitter, inversion).
    seed
        Seed of the sampler; a fixed seed with ``augment=False`` gives a fixed set.
    augment
        Whether to augment.
    scale_targets
        Whether intensity augmentations (jitter, inversion) also apply to the targets:
        yes for images (restoration), no for masks and labels.
    foreground_fraction
        Share of the patches placed so that they hold a pixel of an object (target > 0)
        of their image; the others are placed anywhere. For targets that are masks.
    """

    def __init__(
        self,
        inputs: Sequence[np.ndarray],
        targets: Sequence[np.ndarray] | None,
        patch_size: Sequence[int],
        length: int,
        data_config: DataConfig,
        seed: int = 0,
        augment: bool = True,
        scale_targets: bool = True,
        foreground_fraction: float = 0.0,
    ):
        self.patch = tuple(patch_size)
        self.inputs = [_pad_to(im, self.patch) for im in inputs]
        self.targets = [_pad_to(t, self.patch) for t in targets] if targets is not None else None
        self.foreground_fraction = foreground_fraction if self.targets is not None else 0.0
        self.foreground = (
            [_foreground_pixels(t, seed) for t in self.targets]
            if self.targets is not None and self.foreground_fraction > 0
            else None
        )
        sizes = np.array([im[0].size for im in self.inputs], dtype=float)
        self.weights = sizes / sizes.sum()
        self.length = length
        self.cfg = data_config
        self.augment = augment
        self.scale_targets = scale_targets
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.rng if self.augment else np.random.default_rng((self.seed, index))
        i = int(rng.choice(len(self.inputs), p=self.weights))
        shape = self.inputs[i].shape[1:]
        # With zoom, cut a region 1 / factor the patch's size in Y and X, resized below.
        source = self.patch
        if self.augment and self.cfg.zoom > 0:
            factor = float(np.exp(rng.uniform(-1, 1) * np.log1p(self.cfg.zoom)))
            source = self.patch[:-2] + tuple(
                int(min(s, max(1, round(p / factor))))
                for s, p in zip(shape[-2:], self.patch[-2:], strict=True)
            )
        if (
            self.foreground is not None
            and len(self.foreground[i])
            and rng.random() < self.foreground_fraction
        ):
            pixel = np.unravel_index(int(rng.choice(self.foreground[i])), shape)
            sl = (slice(None),) + _patch_slices_around(pixel, shape, source, rng)
        else:
            sl = (slice(None),) + _random_patch_slices(shape, source, rng)
        arrays = [self.inputs[i][sl]]
        if self.targets is not None:
            arrays.append(self.targets[i][sl])
        if source != self.patch:
            n = len(arrays) if self.scale_targets else 1  # arrays that are images, not labels
            arrays = [_resize_yx(a, self.patch[-2:], nearest=k >= n) for k, a in enumerate(arrays)]
        if self.augment:
            arrays = self._augment(arrays, rng)
        out = {"input": torch.from_numpy(np.ascontiguousarray(arrays[0], dtype=np.float32))}
        if self.targets is not None:
            out["target"] = torch.from_numpy(np.ascontiguousarray(arrays[1], dtype=np.float32))
        return out

    def _augment(self, arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        ndim = arrays[0].ndim
        if self.cfg.rotations and self.patch[-1] == self.patch[-2]:
            k = int(rng.integers(4))
            arrays = [np.rot90(a, k, axes=(ndim - 2, ndim - 1)) for a in arrays]
        if self.cfg.flips:
            for axis in range(1, ndim):
                if rng.random() < 0.5:
                    arrays = [np.flip(a, axis) for a in arrays]
        n = len(arrays) if self.scale_targets else 1  # arrays that are images, not labels
        if self.cfg.elastic > 0:
            arrays = _elastic(arrays, self.cfg.elastic, rng, labels_from=n)
        if self.cfg.intensity_jitter > 0:
            scale = 1.0 + rng.uniform(-self.cfg.intensity_jitter, self.cfg.intensity_jitter)
            arrays = [a * scale for a in arrays[:n]] + arrays[n:]
        if self.cfg.invert and rng.random() < 0.5:
            # Normalised images span about 0..1: 1 - x swaps dark and bright.
            arrays = [1.0 - a for a in arrays[:n]] + arrays[n:]
        return arrays


def _resize_yx(array: np.ndarray, size: Sequence[int], nearest: bool) -> np.ndarray:
    """``array`` (C, *spatial) resized to ``size`` in its last two axes (Y, X).

    Linear interpolation for images; the nearest pixel for masks and labels (``nearest``),
    so their values stay whole numbers.
    """
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    lead = t.shape[:-2]
    t = t.reshape(1, -1, *t.shape[-2:])
    if nearest:
        t = F.interpolate(t, size=tuple(size), mode="nearest-exact")
    else:
        t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
    return t.reshape(*lead, *size).numpy().astype(array.dtype, copy=False)


def _elastic(
    arrays: list[np.ndarray], strength: float, rng: np.random.Generator, labels_from: int
) -> list[np.ndarray]:
    """The same smooth random deformation of the last two (Y, X) axes of every array.

    Displacements drawn on a 3x3 grid of control points (standard deviation ``strength``
    pixels) and interpolated cubically to every pixel, as in the U-Net paper. Arrays from
    index ``labels_from`` on are masks or labels: sampled at the nearest pixel, so their
    values stay integers; the others linearly.
    """
    from scipy import ndimage

    shape = arrays[0].shape[-2:]
    grid = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    factors = (shape[0] / 3, shape[1] / 3)
    coords = []
    for axis in range(2):
        coarse = rng.normal(0.0, strength, (3, 3))
        fine = ndimage.zoom(coarse, factors, order=3, mode="nearest")[: shape[0], : shape[1]]
        coords.append(grid[axis] + fine)
    out = []
    for i, a in enumerate(arrays):
        flat = a.reshape((-1,) + shape)
        order = 0 if i >= labels_from else 1
        warped = np.stack(
            [ndimage.map_coordinates(p, coords, order=order, mode="reflect") for p in flat]
        )
        out.append(warped.reshape(a.shape).astype(a.dtype, copy=False))
    return out
