"""Check a data set before training: every problem, each with its file and a fix.

:func:`validate_dataset` reads every file of a data set once, one file (or one image
and its target) at a time, so that a data set larger than memory can be checked, and
collects :class:`Finding` s instead of stopping at the first problem. Errors block
training; warnings are worth a look but do not.

What is checked:

- the folders: missing, empty, holding no supported images; files in them that are not
  images (a warning naming each one); for tasks that learn from pairs, the targets
  folder, images without a target and targets without an image (paired by name, see
  :mod:`deepscope.data.pairing`), files sharing a name;
- each file: unreadable, empty, damaged or unsupported; dimensionality that does not
  fit the task's 2D/3D setting; NaN or infinite values; all pixels equal; smaller than
  the training patch; for 3D, a missing Z pixel size (anisotropy unknown, a warning);
- each pair: image and target covering different pixel grids;
- the whole set: channel counts that differ between images, mixed pixel types (a
  warning), too few images (a warning).

Tasks add their own checks (for example, that masks hold labels) through the
``extra_checks`` hook of :func:`validate_dataset`.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from deepscope.config import TaskConfigBase
from deepscope.data.axes import check_axes, to_channel_first
from deepscope.data.io import AxesGuessWarning, is_image_path, list_images, read_image
from deepscope.data.pairing import PairingResult, image_stem, pair_by_name
from deepscope.errors import DeepscopeError, ImageReadError

if TYPE_CHECKING:
    from deepscope.tasks.base import Task

Severity = Literal["error", "warning"]

_PATCH_OPTION = "setting data.patch_size, option --patch-size"


@dataclass
class Finding:
    """One problem found in a data set.

    Attributes
    ----------
    severity
        ``"error"`` blocks training; ``"warning"`` is worth a look but does not.
    path
        The file or folder concerned, or None for a problem of the whole data set.
    problem
        What is wrong, in plain words.
    fix
        What to do about it.
    """

    severity: Severity
    path: Path | None
    problem: str
    fix: str

    def to_dict(self) -> dict[str, str | None]:
        """Return the finding as a JSON-able dict."""
        return {
            "severity": self.severity,
            "path": str(self.path) if self.path is not None else None,
            "problem": self.problem,
            "fix": self.fix,
        }


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_dataset`.

    Attributes
    ----------
    findings
        Every problem found, in the order found.
    items
        The usable inputs, each with its target (None for tasks without targets):
        those that no error concerns.
    summary
        Counts and what was seen: ``task``, ``paired``, ``images_folder``,
        ``targets_folder``, ``ready`` (number of usable items), ``errors``,
        ``warnings``, and for ``images`` and ``targets`` (None without targets) a dict
        of ``files``, ``read`` (files that could be read as 2D or 3D images),
        ``shapes`` (spatial size such as ``"64x64"``), ``channels``, ``dtypes`` and
        ``axes``, each mapping a value to the number of files that have it.
    """

    findings: list[Finding] = field(default_factory=list)
    items: list[tuple[Path, Path | None]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        """The findings that block training."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """The findings that do not block training."""
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """Whether training can start: no errors (warnings allowed)."""
        return not self.errors

    def verdict(self) -> str:
        """Return a one-line conclusion, e.g. ``"3 images ready for training"``."""
        n_errors, n_warnings = len(self.errors), len(self.warnings)
        if n_errors:
            return (
                f"{_plural(n_errors, 'problem')} {'blocks' if n_errors == 1 else 'block'} training"
            )
        unit = "image pair" if self.summary.get("paired") else "image"
        text = f"{_plural(len(self.items), unit)} ready for training"
        if n_warnings:
            text += f" ({_plural(n_warnings, 'warning')} to look at)"
        return text

    def format(self) -> str:
        """Return the report as text: one line per finding, errors first, then a verdict.

        Returns
        -------
        str
            Lines such as ``ERROR   images/a.tif: the file is empty → copy it again``,
            ending with the verdict (see :meth:`verdict`).
        """
        lines = []
        for finding in self.errors + self.warnings:
            where = f"{finding.path}: " if finding.path is not None else ""
            text = " ".join(f"{where}{finding.problem} → {finding.fix}".split())
            lines.append(f"{finding.severity.upper():<7} {text}")
        lines.append(self.verdict())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-able dict (``ok``, ``findings``, ``items``, ``summary``)."""
        return {
            "ok": self.ok,
            "verdict": self.verdict(),
            "findings": [f.to_dict() for f in self.findings],
            "items": [[str(a), str(b) if b is not None else None] for a, b in self.items],
            "summary": self.summary,
        }


ExtraChecks = Callable[[Path, np.ndarray, Path | None, np.ndarray | None], list[Finding]]
"""A task's own checks: ``(image_path, image_cf, target_path, target_cf) -> findings``."""


# ------------------------------------------------------------------------------ words


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _size_text(shape: tuple[int, ...] | list[int]) -> str:
    return " × ".join(str(s) for s in shape)


def _axis_names(spatial_ndim: int) -> str:
    return "Z × Y × X" if spatial_ndim == 3 else "Y × X"


def _number(value: Any) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.4g}"


def _dtype_text(dtype: str) -> str:
    kind = np.dtype(dtype)
    bits = kind.itemsize * 8
    if kind.kind == "u":
        return f"{bits}-bit"
    if kind.kind == "i":
        return f"{bits}-bit signed"
    return f"{bits}-bit float"


def _names(paths: list[Path], limit: int = 5) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown if len(paths) <= limit else f"{shown} and {len(paths) - limit} more"


# --------------------------------------------------------------------------- checking


@dataclass
class _FileInfo:
    """What is kept of a file once checked (never its pixels)."""

    path: Path
    role: str
    channels: int | None = None
    spatial: tuple[int, ...] | None = None
    dtype: str | None = None
    axes: str | None = None


class _Checker:
    """Collects findings while the files are read one by one."""

    def __init__(
        self,
        config: TaskConfigBase,
        extra_checks: ExtraChecks | None,
        progress: Callable[[int, int], None] | None,
    ):
        self.data = config.data
        self.depth = config.model.depth
        self.spatial_ndim = config.data.spatial_dims
        self.extra_checks = extra_checks
        self.progress = progress
        self.total = 0
        self.done = 0
        self.findings: list[Finding] = []
        self.bad: set[Path] = set()
        self.infos: list[_FileInfo] = []

    # ---------------------------------------------------------------- bookkeeping

    def add(self, severity: Severity, path: Path | None, problem: str, fix: str) -> None:
        self.findings.append(Finding(severity, path, problem, fix))
        if severity == "error" and path is not None:
            self.bad.add(path)

    def _tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    # ------------------------------------------------------------------- reading

    def _read(self, path: Path, role: str) -> tuple[np.ndarray, str, dict]:
        """Read a file with the configured axes; a target may lack the channel axis."""
        axes = self.data.axes
        if role == "target" and axes and "C" in axes:
            image = read_image(path)
            ndim = image.data.ndim
            if ndim == len(axes) - 1:
                axes = axes.replace("C", "")
            elif ndim != len(axes):
                raise ImageReadError(
                    f"the axes '{self.data.axes}' (setting data.axes) have {len(axes)} "
                    f"letters, but this target has {ndim} dimensions "
                    f"(shape {image.data.shape}).",
                    path=path,
                    fix="give targets the same axes as the images, with or without the "
                    "channel axis (C).",
                )
            return image.data, check_axes(axes, ndim), image.metadata
        image = read_image(path, axes=axes)
        return image.data, image.axes, image.metadata

    def _read_quietly(self, path: Path, role: str) -> tuple[np.ndarray, str, dict]:
        """Read a file, turning deepscope's reading warnings into findings."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = self._read(path, role)
        prefix = f"{path}: "
        for warning in caught:
            text = str(warning.message)
            if text.startswith(prefix):
                if isinstance(warning.message, AxesGuessWarning):
                    fix = warning.message.fix
                elif "only the first" in text:
                    fix = (
                        "if you need another image of this file, save it as its own file in "
                        "Fiji; otherwise nothing to do."
                    )
                else:
                    fix = "open the file in Fiji and check that it looks right."
                self.add("warning", path, text[len(prefix) :], fix)
            else:
                warnings.warn_explicit(
                    warning.message, warning.category, warning.filename, warning.lineno
                )
        return result

    # --------------------------------------------------------------- single files

    def check_file(self, path: Path, role: str) -> np.ndarray | None:
        """Run the checks of one file; return it channel-first, or None if unusable."""
        info = _FileInfo(path=path, role=role)
        self.infos.append(info)
        try:
            try:
                data, axes, metadata = self._read_quietly(path, role)
            except DeepscopeError as exc:
                self.add("error", exc.path or path, exc.problem, exc.fix or "")
                return None
            info.dtype, info.axes = str(data.dtype), axes
            try:
                data_cf = to_channel_first(data, axes, self.spatial_ndim, path=path)
            except DeepscopeError as exc:
                self.add("error", path, exc.problem, (exc.fix or "") + self._3d_hint(data, axes))
                return None
            info.channels, info.spatial = data_cf.shape[0], tuple(data_cf.shape[1:])
            self._check_values(path, data, role)
            if role == "image":
                self._check_size(path, info.spatial)
                self._check_z_spacing(path, metadata)
            return data_cf
        finally:
            self._tick()

    def _3d_hint(self, data: np.ndarray, axes: str) -> str:
        """Name the 2D/3D setting when the image's depth does not fit it."""
        is_stack = "Z" in axes and data.shape[axes.index("Z")] > 1
        if is_stack == (self.spatial_ndim == 3):
            return ""
        return " The 2D/3D choice is the setting data.spatial_dims (3 for Z-stacks, 2 for images)."

    def _check_values(self, path: Path, data: np.ndarray, role: str) -> None:
        if data.size == 0:
            self.add(
                "error",
                path,
                f"this {role} holds no pixels (shape {data.shape}).",
                "export the image again from the original, or remove it from the folder.",
            )
            return
        if data.dtype.kind == "f":
            n_nan = int(np.count_nonzero(np.isnan(data)))
            n_inf = int(np.count_nonzero(np.isinf(data)))
            if n_nan or n_inf:
                parts = []
                if n_nan:
                    parts.append(f"{_plural(n_nan, 'pixel')} hold NaN (not a number)")
                if n_inf:
                    parts.append(f"{_plural(n_inf, 'pixel')} hold an infinite value")
                self.add(
                    "error",
                    path,
                    f"{' and '.join(parts)}; the network cannot learn from such values.",
                    "such values usually come from a division by zero in an earlier "
                    "processing step: redo that step, or replace them (Fiji: Process > "
                    "Noise > Remove NaNs...) and save the image again.",
                )
                return
        low, high = data.min(), data.max()
        if low != high:
            return
        if role == "image":
            self.add(
                "error",
                path,
                f"every pixel has the same value ({_number(low)}), so there is nothing "
                "to learn from this image.",
                "check that the right image was exported (not an empty channel or plane), "
                "or remove it from the folder.",
            )
        else:
            self.add(
                "warning",
                path,
                f"every pixel of this target has the same value ({_number(low)}).",
                "if this target is really empty (for example a mask without objects), "
                "nothing to do; otherwise check that the right image was exported.",
            )

    def _check_size(self, path: Path, spatial: tuple[int, ...]) -> None:
        patch = list(self.data.patch_size)
        if all(s >= p for s, p in zip(spatial, patch, strict=True)):
            return
        step = 2**self.depth
        smallest = step * math.ceil(8 / step)
        fitting = [min(p, s // step * step) for s, p in zip(spatial, patch, strict=True)]
        if min(fitting) < smallest:
            fix = (
                f"leave this image out of the folder: patches are at least {smallest} "
                "pixels along each side with this network."
            )
        else:
            fix = (
                f"use a smaller patch size ({_PATCH_OPTION}), for example "
                f"{' '.join(map(str, fitting))}, or leave this image out of the folder."
            )
        self.add(
            "error",
            path,
            f"the image is {_size_text(spatial)} pixels ({_axis_names(self.spatial_ndim)}), "
            f"smaller than the training patch size {_size_text(patch)}.",
            fix,
        )

    def _check_z_spacing(self, path: Path, metadata: dict) -> None:
        if self.spatial_ndim != 3 or "Z" in (metadata.get("pixel_size") or {}):
            return
        self.add(
            "warning",
            path,
            "anisotropy unknown: the file does not say how far apart the Z planes are "
            "(Z pixel size), and planes are often further apart than pixels.",
            "set the voxel depth in Fiji (Image > Properties...) and save the stack as "
            "TIFF; nothing to do if the planes are as far apart as the pixels.",
        )

    # ----------------------------------------------------------------- items

    def check_item(self, image: Path, target: Path | None) -> None:
        """Check an image and its target (if any), then run the task's own checks."""
        image_cf = self.check_file(image, "image")
        target_cf = self.check_file(target, "target") if target is not None else None
        if image_cf is None or (target is not None and target_cf is None):
            return
        if target is not None and target_cf is not None:
            self._check_match(image, image_cf, target, target_cf)
        if self.extra_checks is not None:
            for finding in self.extra_checks(image, image_cf, target, target_cf):
                self.findings.append(finding)
                if finding.severity == "error":
                    self.bad.add(finding.path if finding.path is not None else image)

    def _check_match(
        self, image: Path, image_cf: np.ndarray, target: Path, target_cf: np.ndarray
    ) -> None:
        if image_cf.shape[1:] == target_cf.shape[1:]:
            return
        names = _axis_names(self.spatial_ndim)
        self.add(
            "error",
            image,
            f"this image is {_size_text(image_cf.shape[1:])} pixels ({names}) but its "
            f"target {target} is {_size_text(target_cf.shape[1:])} pixels.",
            "an image and its target must cover the same pixels: check that the target "
            "belongs to this image and that neither was cropped, binned or rescaled.",
        )

    # ---------------------------------------------------------- whole data set

    def check_channels(self, role: str) -> None:
        infos = [i for i in self.infos if i.role == role and i.channels is not None]
        counts = Counter(i.channels for i in infos)
        if len(counts) < 2:
            return
        reference, n_reference = counts.most_common(1)[0]
        for info in infos:
            if info.channels == reference:
                continue
            self.add(
                "error",
                info.path,
                f"this {role} has {_plural(info.channels or 0, 'channel')}, but "
                f"{n_reference} of the {len(infos)} {role}s have {reference}.",
                f"all {role}s must have the same channels: check the axes of this file "
                "(setting data.axes, option --axes), or split or merge its channels in Fiji "
                "(Image > Color > Split Channels / Merge Channels).",
            )

    def check_dtypes(self, role: str, folder: Path) -> None:
        infos = [i for i in self.infos if i.role == role and i.dtype is not None]
        by_dtype: dict[str, list[Path]] = {}
        for info in infos:
            by_dtype.setdefault(info.dtype or "", []).append(info.path)
        if len(by_dtype) < 2:
            return
        ordered = sorted(by_dtype.items(), key=lambda kv: -len(kv[1]))
        parts = [f"{_dtype_text(ordered[0][0])} ({_plural(len(ordered[0][1]), 'file')})"]
        parts += [f"{_dtype_text(d)} ({_names(paths)})" for d, paths in ordered[1:]]
        self.add(
            "warning",
            folder,
            f"the {role}s have different pixel types: {', '.join(parts)}.",
            "this usually works because every image is normalised, but it often means the "
            "images were exported differently: check that they come from the same kind of "
            "acquisition, or convert them all to one type in Fiji (Image > Type).",
        )

    def role_summary(self, role: str, n_files: int) -> dict[str, Any]:
        infos = [i for i in self.infos if i.role == role]
        read = [i for i in infos if i.spatial is not None]
        return {
            "files": n_files,
            "read": len(read),
            "shapes": dict(Counter("x".join(map(str, i.spatial or ())) for i in read)),
            "channels": dict(Counter(str(i.channels) for i in read)),
            "dtypes": dict(Counter(i.dtype for i in infos if i.dtype)),
            "axes": dict(Counter(i.axes for i in infos if i.axes)),
        }


# ------------------------------------------------------------------------- folders


def _list_folder(folder: Path, checker: _Checker) -> list[Path] | None:
    """List a folder's images, reporting folder problems and non-image files."""
    try:
        images = list_images(folder)
    except ImageReadError as exc:
        checker.add("error", exc.path or folder, exc.problem, exc.fix or "")
        return None
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or is_image_path(entry):
            continue
        if entry.is_dir():
            checker.add(
                "warning",
                entry,
                f"this subfolder is not searched: only images directly inside {folder} are used.",
                "move the images it holds into the folder itself if they belong to the data "
                "set; otherwise nothing to do.",
            )
        else:
            ending = entry.suffix or "no ending"
            checker.add(
                "warning",
                entry,
                f"this file is not an image deepscope can read ({ending}), so it is left out.",
                "nothing to do if it is not an image (notes, a table, ...); to use an image, "
                "save it as TIFF in Fiji. Move the file elsewhere to silence this warning.",
            )
    return images


def _report_pairing(pairing: PairingResult, images: Path, targets: Path, checker: _Checker) -> None:
    target_stems = {image_stem(p).lower(): p for p in pairing.unpaired_targets}
    image_stems = {image_stem(p).lower(): p for p in pairing.unpaired_images}
    if not pairing.pairs and pairing.unpaired_images and pairing.unpaired_targets:
        checker.add(
            "error",
            targets,
            f"no file name in {targets} matches a name in {images} (for example "
            f"'{image_stem(pairing.unpaired_images[0])}' and "
            f"'{image_stem(pairing.unpaired_targets[0])}'), so no image has a target.",
            "give each target exactly the same name as its image; only the ending "
            "(.tif, .png, ...) may differ.",
        )
    for path in pairing.unpaired_images:
        stem = image_stem(path)
        near = target_stems.get(stem.lower())
        hint = f" ({near.name} differs only in capital letters)" if near else ""
        checker.add(
            "error",
            path,
            f"no target has this image's name '{stem}'{hint}, so it cannot be used.",
            f"put its target, named '{stem}' with any image ending (e.g. {stem}.tif), in "
            f"{targets}, or move this image out of the folder.",
        )
    for path in pairing.unpaired_targets:
        stem = image_stem(path)
        near = image_stems.get(stem.lower())
        hint = f" ({near.name} differs only in capital letters)" if near else ""
        checker.add(
            "error",
            path,
            f"no image has this target's name '{stem}'{hint}, so it cannot be used.",
            f"put its image, named '{stem}' with any image ending, in {images}, "
            "or move this target out of the folder.",
        )
    for group in pairing.duplicates:
        stem = image_stem(group[0])
        checker.add(
            "error",
            group[0],
            f"{len(group)} files in this folder have the name '{stem}' ({_names(list(group))}),"
            " so it cannot be told which one goes with the file of that name in the other "
            "folder.",
            "rename or remove all but one of them.",
        )
        for path in group[1:]:
            checker.bad.add(path)


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _resolve_task(task: type[Task] | str) -> type[Task]:
    if isinstance(task, str):
        from deepscope.tasks import get_task

        return get_task(task)
    return task


# --------------------------------------------------------------------------- main


def validate_dataset(
    task: type[Task] | str,
    config: TaskConfigBase,
    images: str | Path,
    targets: str | Path | None = None,
    *,
    extra_checks: ExtraChecks | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ValidationReport:
    """Check a data set for training and report every problem found.

    Nothing is modified. Each file is read once, with the axes of ``config.data.axes``
    when given; only one image (and its target) is in memory at a time.

    Parameters
    ----------
    task
        The task class, or its registered name (e.g. ``"n2v"``). Tasks whose
        ``needs_targets`` is True are checked as pairs of images and targets.
    config
        The task's config; its ``data`` section (``spatial_dims``, ``axes``,
        ``patch_size``) and U-Net depth are used.
    images
        The folder of input images.
    targets
        The folder of targets (or masks), paired with the images by file name (see
        :mod:`deepscope.data.pairing`). Needed for tasks with targets; a warning is
        given if one is passed to a task without.
    extra_checks
        The task's own checks, called for each image (and its target) that could be
        read, as ``extra_checks(image_path, image_cf, target_path, target_cf)`` with
        channel-first arrays (``target_path`` and ``target_cf`` are None for tasks
        without targets); returns a list of :class:`Finding`. An error it returns
        without a path makes the image unusable.
    progress
        Called as ``progress(i, n)`` after each of the ``n`` files is read.

    Returns
    -------
    ValidationReport
        The findings, the usable items and a summary; ``report.ok`` tells whether
        training can start, ``report.format()`` gives readable text.
    """
    task_class = _resolve_task(task)
    paired = bool(task_class.needs_targets)
    images = Path(images)
    targets = Path(targets) if targets is not None else None
    checker = _Checker(config, extra_checks, progress)

    # Folders are listed before any file is read, so that progress knows the total.
    image_files = _list_folder(images, checker)
    target_files: list[Path] | None = None
    if paired and targets is None:
        checker.add(
            "error",
            None,
            f"the {task_class.name} task learns from pairs of images, but no folder of "
            "targets was given.",
            "give the folder that holds, for each input image, its target with the same file name.",
        )
    elif paired and targets is not None and _same_folder(images, targets):
        checker.add(
            "error",
            targets,
            "the images and the targets are the same folder, so each image would be "
            "paired with itself.",
            "put the targets in a folder of their own, with the same file names as their images.",
        )
    elif paired and targets is not None:
        target_files = _list_folder(targets, checker)
    elif targets is not None:
        checker.add(
            "warning",
            targets,
            f"the {task_class.name} task learns from the images alone, so this folder of "
            "targets is not used.",
            "leave out the targets folder, or choose a task that learns from image pairs.",
        )
    checker.total = len(image_files or []) + len(target_files or [])

    candidates: list[tuple[Path, Path | None]] = []
    if image_files is not None and target_files is not None and targets is not None:
        pairing = pair_by_name(image_files, target_files)
        _report_pairing(pairing, images, targets, checker)
        candidates = list(pairing.pairs)
        for image, target in pairing.pairs:
            checker.check_item(image, target)
        checked = {info.path for info in checker.infos}
        for path in image_files:
            if path not in checked:
                checker.check_file(path, "image")
        for path in target_files:
            if path not in checked:
                checker.check_file(path, "target")
    elif image_files is not None and not paired:
        candidates = [(path, None) for path in image_files]
        for image, _ in candidates:
            checker.check_item(image, None)
    elif image_files is not None:
        for image in image_files:
            checker.check_file(image, "image")

    for role, folder in (("image", images), ("target", targets)):
        checker.check_channels(role)
        if folder is not None:
            checker.check_dtypes(role, folder)
    _check_amount(checker, paired, candidates, images)

    items = [
        (image, target)
        for image, target in candidates
        if image not in checker.bad and (target is None or target not in checker.bad)
    ]
    report = ValidationReport(findings=checker.findings, items=items)
    if not items and report.ok:
        checker.add("error", images, "no usable images were found.", "add images to the folder.")
    report.summary = {
        "task": task_class.name,
        "paired": paired,
        "images_folder": str(images),
        "targets_folder": str(targets) if targets is not None else None,
        "ready": len(items),
        "errors": len(report.errors),
        "warnings": len(report.warnings),
        "images": checker.role_summary("image", len(image_files or [])),
        "targets": checker.role_summary("target", len(target_files or [])) if paired else None,
    }
    return report


def _check_amount(
    checker: _Checker, paired: bool, candidates: list[tuple[Path, Path | None]], images: Path
) -> None:
    """Warn when there are too few images to train and keep some aside."""
    if paired and len(candidates) == 1:
        checker.add(
            "warning",
            images,
            "only 1 image pair was found: the bottom part of it will be kept aside to "
            "check the training, so the network learns from the rest only.",
            "add more image pairs if you have them (more pairs give a better model and a "
            "more trustworthy check).",
        )
    if len(candidates) != 1:
        return
    path = candidates[0][0]
    info = next((i for i in checker.infos if i.path == path and i.role == "image"), None)
    if info is None or info.spatial is None or path in checker.bad:
        return
    height, needed = info.spatial[-2], 2 * checker.data.patch_size[-2]
    if height < needed:
        checker.add(
            "warning",
            path,
            f"this is the only image, and it is {height} pixels tall: too small to keep "
            f"part of it aside to check the training ({needed} pixels, twice the patch "
            "size, are needed).",
            f"add more images, or use a smaller patch size ({_PATCH_OPTION}).",
        )
