"""Labelled images for classification: reading, checking, sizing, splitting, augmenting.

Three ways to give images with their classes (``--images``):

* **a folder with one sub-folder per class** — ``cells/RBC/*.png``, ``cells/WBC/*.png``;
  the sub-folder names are the class names;
* **a CSV file** with a header and the columns ``file`` and ``label`` (``filename``,
  ``image`` and ``class`` are accepted too), file paths relative to the CSV file, and an
  optional ``group`` column (e.g. the slide each crop comes from);
* **a numpy ``.npz`` file** with ``images`` (N, Y, X), (N, Y, X, C) or (N, C, Y, X),
  ``labels`` (N integers or strings), optionally ``class_names`` and ``groups`` (or
  ``source``; a source such as ``slide1.jpg:10,20,74,84`` is grouped by the part before
  the colon).

Groups keep related images (crops of one slide, frames of one movie) on the same side of
the training/validation split, so that the validation score is not flattered by
near-duplicates.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from deepscope.data.axes import to_channel_first
from deepscope.data.io import is_image_path, list_images, read_image
from deepscope.data.validation import Finding
from deepscope.errors import DeepscopeError, ImageReadError

_FILE_COLUMNS = ("file", "filename", "image", "path")
_LABEL_COLUMNS = ("label", "class")
MIN_PER_CLASS = 10
"""Fewer images than this in a class gives a warning (2 are needed at the very least)."""
IMBALANCE_RATIO = 3.0
"""A class this many times larger than another gives an imbalance warning."""

Progress = Callable[[int, int], None]


@dataclass
class ClassData:
    """Images with their classes, as read (channel-first float32, original sizes).

    Attributes
    ----------
    images
        One (C, Y, X) array per image.
    labels
        Class number of each image (index into ``class_names``).
    class_names
        Name of each class.
    names
        A name per image for reports: the file path, or ``data.npz[12]``.
    groups
        The group of each image (kept together when splitting); the name itself when no
        groups were given.
    source
        The folder, CSV or npz file the data came from.
    findings
        Problems met while reading (unreadable files are left out and listed here).
    axes
        Axes of the first image as read.
    """

    images: list[np.ndarray]
    labels: np.ndarray
    class_names: list[str]
    names: list[str]
    groups: list[str]
    source: Path
    findings: list[Finding] = field(default_factory=list)
    axes: str = "YX"
    has_groups: bool = False

    def counts(self) -> dict[str, int]:
        """Number of images per class name."""
        c = Counter(int(x) for x in self.labels)
        return {name: c.get(i, 0) for i, name in enumerate(self.class_names)}


# ------------------------------------------------------------------------------ reading


def _read_cf(path: Path, axes: str | None) -> tuple[np.ndarray, str]:
    img = read_image(path, axes=axes)
    return to_channel_first(img.data, img.axes, 2, path=path).astype(np.float32), img.axes


def _read_files(
    entries: Sequence[tuple[Path, int, str]],
    axes: str | None,
    progress: Progress | None,
) -> tuple[list[np.ndarray], list[int], list[str], list[str], list[Finding], str]:
    images, labels, names, groups, findings, first_axes = [], [], [], [], [], ""
    for i, (path, label, group) in enumerate(entries):
        try:
            arr, ax = _read_cf(path, axes)
        except DeepscopeError as err:
            findings.append(Finding("error", path, err.problem, err.fix or "remove the file"))
        else:
            images.append(arr)
            labels.append(label)
            names.append(str(path))
            groups.append(group or str(path))
            first_axes = first_axes or ax
        if progress:
            progress(i + 1, len(entries))
    return images, labels, names, groups, findings, first_axes


def _from_folders(root: Path, axes: str | None, progress: Progress | None) -> ClassData:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    subdirs = [p for p in subdirs if not is_image_path(p)]  # a .zarr folder is an image
    if not subdirs:
        raise DeepscopeError(
            "this folder has no sub-folders, so the classes of its images are unknown",
            root,
            "put the images of each class in a sub-folder named after the class "
            "(e.g. cells/healthy/, cells/infected/), or give a CSV file of file,label",
        )
    findings: list[Finding] = []
    loose = [p for p in root.iterdir() if is_image_path(p) and not p.is_dir()]
    if loose:
        findings.append(
            Finding(
                "warning",
                root,
                f"{len(loose)} image(s) lie directly in this folder, outside the class "
                f"sub-folders (e.g. {loose[0].name}); they are not used.",
                "move each into the sub-folder of its class",
            )
        )
    entries: list[tuple[Path, int, str]] = []
    names = [d.name for d in subdirs]
    for label, d in enumerate(subdirs):
        try:
            files = list_images(d)
        except ImageReadError as err:
            findings.append(
                Finding(
                    "error",
                    d,
                    f"class '{d.name}' has no usable images: {err.problem}",
                    err.fix or "add images of this class, or remove the folder",
                )
            )
            continue
        entries += [(p, label, "") for p in files]
    images, labels, inames, groups, more, first_axes = _read_files(entries, axes, progress)
    return ClassData(
        images,
        np.asarray(labels, np.int64),
        names,
        inames,
        groups,
        root,
        findings + more,
        first_axes or "YX",
    )


def _from_csv(path: Path, axes: str | None, progress: Progress | None) -> ClassData:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DeepscopeError(
            f"the CSV file cannot be read ({err})", path, "save it as a plain-text CSV (UTF-8)"
        ) from None
    header = {k.strip().lower(): k for k in (rows[0].keys() if rows else []) if k}
    file_col = next((header[c] for c in _FILE_COLUMNS if c in header), None)
    label_col = next((header[c] for c in _LABEL_COLUMNS if c in header), None)
    if not rows or file_col is None or label_col is None:
        raise DeepscopeError(
            "the CSV file needs a header line with the columns 'file' and 'label' and one "
            "row per image" + (f" (found columns: {', '.join(header)})" if header else ""),
            path,
            "write it as:  file,label  then e.g.  images/cell_001.tif,healthy  (paths relative "
            "to the CSV file; an optional 'group' column keeps images of one slide together)",
        )
    group_col = header.get("group")
    label_texts = [str(r[label_col]).strip() for r in rows]
    names = sorted(set(label_texts), key=_natural_key)
    index = {n: i for i, n in enumerate(names)}
    entries, findings = [], []
    for line, (row, label) in enumerate(zip(rows, label_texts, strict=True), start=2):
        rel = str(row[file_col] or "").strip()
        file = (path.parent / rel) if rel else path.parent
        if not rel or not file.exists():
            findings.append(
                Finding(
                    "error",
                    path,
                    f"line {line}: the image '{rel}' does not exist (looked for {file}).",
                    "correct the path (relative to the CSV file) or remove the line",
                )
            )
            continue
        group = str(row[group_col]).strip() if group_col else ""
        entries.append((file, index[label], group))
    images, labels, inames, groups, more, first_axes = _read_files(entries, axes, progress)
    data = ClassData(
        images,
        np.asarray(labels, np.int64),
        names,
        inames,
        groups,
        path,
        findings + more,
        first_axes or "YX",
    )
    data.has_groups = group_col is not None
    return data


def _natural_key(text: str) -> tuple:
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _npz_images(arr: np.ndarray, path: Path) -> tuple[np.ndarray, str]:
    """(N, C, Y, X) float32 from the array layouts an npz may hold."""
    if arr.ndim == 3:
        return arr[:, None].astype(np.float32), "YX"
    if arr.ndim == 4 and arr.shape[-1] <= 4 < arr.shape[1]:
        return np.moveaxis(arr, -1, 1).astype(np.float32), "YXC"
    if arr.ndim == 4 and arr.shape[1] <= 4:
        return arr.astype(np.float32), "CYX"
    raise DeepscopeError(
        f"'images' has shape {arr.shape}; expected (N, Y, X), (N, Y, X, C) or (N, C, Y, X) "
        "with at most 4 channels",
        path,
        "save the images as one array of 2D images (grey) or colour images",
    )


def _from_npz(path: Path) -> ClassData:
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DeepscopeError(
            f"the .npz file cannot be read ({err})",
            path,
            "save it with numpy.savez(path, images=..., labels=...) (no Python objects)",
        ) from None
    with npz:
        missing = [k for k in ("images", "labels") if k not in npz.files]
        if missing:
            raise DeepscopeError(
                f"the .npz file has no {' or '.join(repr(m) for m in missing)} array "
                f"(it holds: {', '.join(npz.files) or 'nothing'})",
                path,
                "save it with numpy.savez(path, images=..., labels=..., class_names=...)",
            )
        images, axes = _npz_images(npz["images"], path)
        raw_labels = np.asarray(npz["labels"]).ravel()
        given = [str(n) for n in npz["class_names"]] if "class_names" in npz.files else None
        groups_arr = None
        for key in ("groups", "source"):
            if key in npz.files:
                groups_arr = [str(g).split(":")[0] for g in npz[key]]
                break
    if len(raw_labels) != len(images):
        raise DeepscopeError(
            f"there are {len(images)} images but {len(raw_labels)} labels",
            path,
            "give exactly one label per image",
        )
    if raw_labels.dtype.kind in "iu":
        n = int(raw_labels.max()) + 1 if raw_labels.size else 0
        if raw_labels.size and raw_labels.min() < 0:
            raise DeepscopeError(
                "the labels hold negative numbers", path, "number the classes 0, 1, 2, …"
            )
        names = given or [str(i) for i in range(n)]
        if len(names) < n:
            raise DeepscopeError(
                f"the labels go up to {n - 1} but only {len(names)} class_names are given",
                path,
                "give one name per class number in class_names",
            )
        labels = raw_labels.astype(np.int64)
    else:
        texts = [str(x) for x in raw_labels]
        names = given or sorted(set(texts), key=_natural_key)
        unknown = sorted(set(texts) - set(names))
        if unknown:
            raise DeepscopeError(
                f"labels {unknown[:5]} are not in class_names", path, "list every class name"
            )
        labels = np.asarray([names.index(t) for t in texts], np.int64)
    item_names = [f"{path.name}[{i}]" for i in range(len(images))]
    data = ClassData(
        list(images), labels, names, item_names, groups_arr or item_names, path, [], axes
    )
    data.has_groups = groups_arr is not None
    return data


def load_labelled(
    source: str | Path, axes: str | None = None, progress: Progress | None = None
) -> ClassData:
    """Read labelled images from a class-per-folder folder, a CSV file or an ``.npz`` file.

    Unreadable files are left out and listed in ``findings``.

    Raises
    ------
    DeepscopeError
        When ``source`` does not exist or is none of the three formats.
    """
    source = Path(source)
    if not source.exists():
        raise DeepscopeError(
            "not found", source, "give a folder with one sub-folder per class, a CSV or an .npz"
        )
    if source.is_dir() and not is_image_path(source):
        return _from_folders(source, axes, progress)
    suffix = source.suffix.lower()
    if suffix == ".csv":
        return _from_csv(source, axes, progress)
    if suffix == ".npz":
        return _from_npz(source)
    raise DeepscopeError(
        "a single file was given, but classification needs many labelled images",
        source,
        "give a folder with one sub-folder per class, a CSV file (file,label) or an .npz",
    )


def load_unlabelled(
    source: str | Path, axes: str | None = None
) -> tuple[list[str], list[np.ndarray], list[Finding]]:
    """Read images to classify: one file, a folder (sub-folders included) or an ``.npz``.

    Returns
    -------
    names, images, findings
        A name per image (its path, or ``data.npz[i]``), the (C, Y, X) float32 images and
        the files that could not be read.
    """
    source = Path(source)
    if source.suffix.lower() == ".npz" and source.is_file():
        try:
            with np.load(source, allow_pickle=False) as npz:
                arr = npz["images"]
        except (OSError, ValueError, KeyError) as err:
            raise DeepscopeError(
                f"no 'images' array can be read from this .npz file ({err})",
                source,
                "save it with numpy.savez(path, images=...)",
            ) from None
        images, _ = _npz_images(arr, source)
        return [f"{source.name}[{i}]" for i in range(len(images))], list(images), []
    if source.is_dir() and not is_image_path(source):
        paths = sorted(p for p in source.rglob("*") if is_image_path(p) and not _hidden(p, source))
        if not paths:
            list_images(source)  # raises the explanatory "no images" error
    else:
        paths = [source]
    if not source.exists():
        raise DeepscopeError("not found", source, "check the path of the images to classify")
    images, _, names, _, findings, _ = _read_files([(p, 0, "") for p in paths], axes, None)
    return names, images, findings


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


# ----------------------------------------------------------------------------- checks


def check_class_data(data: ClassData, image_size: Sequence[int], fit: str) -> list[Finding]:
    """Findings about a labelled data set as a whole (besides the reading problems).

    Errors: fewer than 2 classes; a class with fewer than 2 images; images with different
    numbers of channels; NaN or infinite values. Warnings: a class with fewer than
    ``MIN_PER_CLASS`` images; a class ``IMBALANCE_RATIO`` times larger than another;
    blank images; images smaller than ``image_size`` with ``fit="crop"``.
    """
    out: list[Finding] = []
    counts = data.counts()
    if len(counts) < 2:
        out.append(
            Finding(
                "error",
                data.source,
                f"only {len(counts)} class found ({', '.join(counts) or 'none'}); a classifier "
                "needs at least 2.",
                "add the images of the other class(es)",
            )
        )
    for name, n in counts.items():
        if n < 2:
            out.append(
                Finding(
                    "error",
                    data.source,
                    f"class '{name}' has {n} usable image(s); at least 2 are needed (one to "
                    "learn from, one to check the training).",
                    f"add images of '{name}', or remove the class",
                )
            )
        elif n < MIN_PER_CLASS:
            out.append(
                Finding(
                    "warning",
                    data.source,
                    f"class '{name}' has only {n} images; with fewer than {MIN_PER_CLASS} per "
                    "class the model learns little and its scores are unreliable.",
                    f"add images of '{name}' (dozens per class at least), or start from a "
                    "trained model (--from) and freeze its first blocks (--freeze)",
                )
            )
    present = [n for n in counts.values() if n > 0]
    if len(present) >= 2 and max(present) >= IMBALANCE_RATIO * min(present):
        big = max(counts, key=counts.get)  # type: ignore[arg-type]
        small = min((k for k in counts if counts[k] > 0), key=counts.get)  # type: ignore[arg-type]
        out.append(
            Finding(
                "warning",
                data.source,
                f"the classes are strongly imbalanced: '{big}' has {counts[big]} images, "
                f"'{small}' only {counts[small]}. A model can score a high accuracy by "
                "favouring the big class.",
                "training weighs the classes by their rarity (classify.balance: weights, the "
                "default) or samples them evenly (classify.balance: sampling); judge the "
                "model by macro F1 and per-class recall in 'deepscope qc', and add images of "
                "the rare classes if you can",
            )
        )
    channels = Counter(im.shape[0] for im in data.images)
    if len(channels) > 1:
        common = channels.most_common(1)[0][0]
        odd = [n for n, im in zip(data.names, data.images, strict=True) if im.shape[0] != common]
        out.append(
            Finding(
                "error",
                Path(odd[0]) if not data.source.suffix == ".npz" else data.source,
                f"{len(odd)} image(s) have a different number of channels than the others "
                f"({dict(channels)} images per channel count), e.g. {odd[0]}.",
                "give all images the same channels (e.g. convert all to grey or all to RGB), "
                "or set --axes",
            )
        )
    for name, im in zip(data.names, data.images, strict=True):
        where = data.source if data.source.suffix == ".npz" else Path(name)
        if not np.all(np.isfinite(im)):
            out.append(
                Finding(
                    "error",
                    where,
                    f"{name} holds NaN or infinite values.",
                    "remove the image or fix the values",
                )
            )
        elif im.size and float(im.max()) == float(im.min()):
            out.append(
                Finding(
                    "warning",
                    where,
                    f"{name} is blank (all pixels equal {float(im.min()):g}).",
                    "check the image; remove it if it is empty",
                )
            )
    if fit == "crop":
        small = [
            n
            for n, im in zip(data.names, data.images, strict=True)
            if im.shape[1] < image_size[0] or im.shape[2] < image_size[1]
        ]
        if small:
            out.append(
                Finding(
                    "warning",
                    data.source,
                    f"{len(small)} image(s) are smaller than the network input "
                    f"{image_size[0]}x{image_size[1]} (e.g. {small[0]}); with fit 'crop' they "
                    "are padded by mirroring.",
                    "use classify.fit: resize, or a smaller classify.image_size",
                )
            )
    return out


def size_summary(data: ClassData) -> dict[str, int]:
    """Number of images per size (``"64x64"``)."""
    return dict(Counter(f"{im.shape[1]}x{im.shape[2]}" for im in data.images))


# ------------------------------------------------------------------------------ sizing


def fit_to_size(image: np.ndarray, size: Sequence[int], how: str) -> np.ndarray:
    """Bring a (C, Y, X) image to ``size`` (Y, X): ``"resize"`` (bilinear) or ``"crop"``.

    ``crop`` takes the centre; an image smaller than ``size`` is first padded by mirroring.
    """
    h, w = int(size[0]), int(size[1])
    if image.shape[1:] == (h, w):
        return image.astype(np.float32, copy=False)
    if how == "resize":
        from skimage.transform import resize

        down = image.shape[1] > h or image.shape[2] > w
        return resize(
            image, (image.shape[0], h, w), order=1, preserve_range=True, anti_aliasing=down
        ).astype(np.float32)
    pad_y, pad_x = max(0, h - image.shape[1]), max(0, w - image.shape[2])
    if pad_y or pad_x:
        mode = "reflect" if min(image.shape[1:]) > 1 else "edge"
        image = np.pad(
            image,
            ((0, 0), (pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2)),
            mode=mode,
        )
    y0, x0 = (image.shape[1] - h) // 2, (image.shape[2] - w) // 2
    return image[:, y0 : y0 + h, x0 : x0 + w].astype(np.float32)


def stack_images(images: Sequence[np.ndarray], size: Sequence[int], how: str) -> np.ndarray:
    """One (N, C, Y, X) float32 array of all images brought to ``size``."""
    return np.stack([fit_to_size(im, size, how) for im in images]).astype(np.float32)


# ----------------------------------------------------------------------------- splitting


def split_indices(
    labels: np.ndarray, groups: Sequence[str] | None, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """Stratified split into training and validation indices (by group when given).

    With groups, every group lies wholly on one side (scikit-learn's
    ``StratifiedGroupKFold``, first fold as validation); otherwise a stratified random
    split keeps each class's share on both sides.

    Returns
    -------
    train, val, how
        Index arrays and a sentence for the log.
    """
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    idx = np.arange(len(labels))
    if groups is not None and len(set(groups)) >= 2:
        n_splits = max(2, round(1 / val_fraction))
        n_splits = min(n_splits, len(set(groups)))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class" notes
            folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            train, val = next(iter(folds.split(idx, labels, groups)))
        how = (
            f"{len(train)} images for training, {len(val)} for validation; the "
            f"{len(set(groups))} groups are kept whole on one side"
        )
        return np.sort(train), np.sort(val), how
    n_val = max(len(set(labels.tolist())), round(val_fraction * len(labels)))
    train, val = train_test_split(
        idx, test_size=n_val, stratify=labels, random_state=seed, shuffle=True
    )
    how = f"{len(train)} images for training, {len(val)} for validation (stratified by class)"
    return np.sort(train), np.sort(val), how


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency class weights with mean 1 (absent classes get weight 0)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0)
    present = w > 0
    w[present] /= w[present].mean()
    return w.astype(np.float32)


# ------------------------------------------------------------------------------ datasets


@dataclass(frozen=True)
class Augmentation:
    """Random changes applied to training images.

    Attributes
    ----------
    flips
        Mirror left-right and up-down at random.
    rot90
        Rotate by a random multiple of 90 degrees (square images only).
    intensity
        Scale the intensities by 1 ± this fraction, and shift them by ± this fraction.
    rotate_degrees, scale, shift
        Small random affine transform: rotation by up to ± ``rotate_degrees``, zoom by
        1 ± ``scale``, translation by up to ± ``shift`` of the image size (0 disables).
    """

    flips: bool = True
    rot90: bool = True
    intensity: float = 0.1
    rotate_degrees: float = 15.0
    scale: float = 0.1
    shift: float = 0.05

    @property
    def affine(self) -> bool:
        """Whether an affine transform is drawn."""
        return bool(self.rotate_degrees or self.scale or self.shift)


class ClassImages(Dataset):
    """Images (N, C, Y, X) with labels; optionally augmented on the fly.

    Items are dicts ``{"input": (C, Y, X) float tensor, "label": long tensor}``.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        augmentation: Augmentation | None = None,
        seed: int = 0,
    ):
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.aug = augmentation
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x = self.images[index]
        if self.aug is not None:
            x = augment(x, self.aug, self.gen)
        return {"input": x, "label": self.labels[index]}


def augment(x: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    """Apply random flips, 90° rotations, a small affine transform and intensity changes.

    ``x`` is one normalised (C, Y, X) image; returns a new tensor.
    """
    from torch.nn import functional as F

    def rand() -> float:
        return float(torch.rand((), generator=gen))

    if aug.rot90 and x.shape[-1] == x.shape[-2]:
        x = torch.rot90(x, int(rand() * 4) % 4, dims=(-2, -1))
    if aug.flips:
        if rand() < 0.5:
            x = torch.flip(x, dims=(-1,))
        if rand() < 0.5:
            x = torch.flip(x, dims=(-2,))
    if aug.affine:
        angle = np.deg2rad((2 * rand() - 1) * aug.rotate_degrees)
        zoom = 1.0 + (2 * rand() - 1) * aug.scale
        tx, ty = ((2 * rand() - 1) * aug.shift * 2 for _ in range(2))
        cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
        theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=x.dtype)[None]
        grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
        x = F.grid_sample(
            x[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )[0]
    if aug.intensity > 0:
        scale = 1.0 + (2 * rand() - 1) * aug.intensity
        offset = (2 * rand() - 1) * aug.intensity
        x = x * scale + offset
    return x.contiguous()
