"""Apply a trained model to images: normalise → tile → network → blend → post-process → write."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepscope import __version__
from deepscope.data.axes import from_channel_first, output_axes, to_channel_first
from deepscope.data.io import (
    atomic_write_text,
    channel_first_shape,
    is_image_path,
    list_images,
    open_image,
    read_image,
    write_image,
)
from deepscope.engine import performance
from deepscope.errors import DeepscopeError, ImageReadError, OutputError
from deepscope.tasks.base import GridOutput
from deepscope.workflow import large_images
from deepscope.workflow.model_folder import TrainedModel
from deepscope.workflow.tiling import predict_tiled

if TYPE_CHECKING:
    from deepscope.workflow.predict_cluster import ClusterSettings


@dataclass
class TileSettings:
    """How large images are cut for prediction."""

    #: Tile size in Y and X; None: 1024 for 2D images, 512 for 3D (a whole 1024x1024
    #: image in one tile is 8 % faster than nine overlapping smaller tiles).
    tile: int | None = None
    tile_z: int = 32
    overlap: int = 32
    #: Tiles per network pass; None: as many as hold four 512x512 tiles' pixels in 2D,
    #: or one 32x512x512 tile's voxels in 3D, so memory does not grow with ``tile``.
    batch_size: int | None = None
    #: Bytes one image's prediction may use before it is done block by block from disk
    #: (None: a quarter of this computer's memory). See :mod:`deepscope.workflow.large_images`.
    memory_limit: int | None = None
    #: Block size in Y and X for images over the memory limit.
    block: int = 2048
    #: Test-time augmentation: average the network's raw output (class scores before the
    #: softmax, for class maps) over the 8 flips and 90-degree rotations of the image in
    #: YX (8 times the work; smoother, often better results). Only for tasks with ``tta_ok``.
    tta: bool = False
    #: Run the network in 8-bit integers (StarDist and semantic models on CPUs; the
    #: 2D StarDist network ~1.6x faster, output rounded to 8 bits; see
    #: :mod:`deepscope.engine.int8`).
    int8: bool = False

    def __post_init__(self) -> None:
        for name in ("tile", "tile_z"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DeepscopeError(
                    f"the tile size {value} must be a positive number of pixels",
                    fix="leave out --tile (1024 in 2D, 512 in 3D), or give e.g. --tile 512",
                )
        if self.tile is not None and self.tile < 2 * self.overlap:
            warnings.warn(
                f"tiles of {self.tile} pixels are smaller than twice their {self.overlap}-pixel "
                "overlap: the network sees little around each pixel and results can differ "
                "from a prediction with larger tiles (use --tile 128 or more)",
                stacklevel=1,  # the caller is the dataclass's generated __init__
            )

    def tile_shape(self, dims: int) -> tuple[int, ...]:
        """The wanted tile size per spatial axis of a ``dims``-D image."""
        tile = self.tile or (DEFAULT_TILE_2D if dims == 2 else DEFAULT_TILE_3D)
        return (tile,) * 2 if dims == 2 else (self.tile_z, tile, tile)

    def tiles_per_pass(self, dims: int) -> int:
        """Tiles given to the network at once (see ``batch_size``)."""
        if self.batch_size is not None:
            return self.batch_size
        budget = PIXELS_PER_PASS_2D if dims == 2 else VOXELS_PER_PASS_3D
        return max(1, budget // math.prod(self.tile_shape(dims)))


DEFAULT_TILE_2D = 1024
DEFAULT_TILE_3D = 512
PIXELS_PER_PASS_2D = 4 * 512 * 512
"""Pixels per network pass in 2D when no batch size is given (bounds memory)."""
VOXELS_PER_PASS_3D = 32 * 512 * 512
"""Voxels per network pass in 3D when no batch size is given: one default tile. Four
such tiles per pass (the default until 2026-11-29) took 10.8 GB and 93 s for a
64x1024x1024 volume with a 3D N2V U-Net, one tile 3.5 GB and 68 s (benchmarks/RESULTS.md)."""


def predict_array(
    model: TrainedModel,
    image_cf: np.ndarray,
    tiles: TileSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
    network=None,
) -> np.ndarray:
    """Predict on one channel-first raw image (C, *spatial); returns the task's result.

    ``network`` overrides the model's network (used to score checkpoints).
    """
    raw = predict_raw(model, image_cf, tiles, progress, network, model.task.reads_grid_output)
    return model.task.postprocess(raw)


def predict_raw(
    model: TrainedModel,
    image_cf: np.ndarray,
    tiles: TileSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
    network=None,
    grid: bool = False,
) -> np.ndarray:
    """Return the de-normalised network output of a channel-first image, before postprocess.

    It holds every output channel (e.g. CARE's uncertainty besides its mean); the task's
    ``postprocess`` turns it into the result and ``side_outputs`` gives the extra images.
    Tasks may adapt the image's channels first (``task.adapt_channels(image_cf,
    in_channels)``, e.g. StarDist reads an RGB picture as grey for a one-channel model).
    The output of a network that predicts at a reduced size (``task.output_stride()``)
    is stitched at that size, then each value is repeated to cover its block of pixels,
    so the result always has the image's size (value ``[..., i]`` comes from block
    ``i // stride``, and ``[..., ::stride]`` gives back the network's own grid).

    With ``grid=True`` such an output is returned at the network's own grid instead, as
    a :class:`GridOutput` that knows the image's shape: for callers that read only the
    grid (StarDist's objects, see ``Task.reads_grid_output``), which spares repeating
    every channel to every pixel (19 of 126 ms for a 1024x1024 StarDist image,
    benchmarks/RESULTS.md).
    """
    tiles = tiles or TileSettings()
    apply_tuned_settings(model)
    adapt = getattr(model.task, "adapt_channels", None)
    if adapt is not None:
        image_cf = adapt(image_cf, model.in_channels)
    if image_cf.shape[0] != model.in_channels:
        raise DeepscopeError(
            f"the image has {image_cf.shape[0]} channel(s) but the model was trained on "
            f"{model.in_channels}",
            fix="give images with the same channels as the training images (or --axes)",
        )
    x = model.normalizer.normalize(image_cf)
    dims = model.config.data.spatial_dims
    tile_shape = tiles.tile_shape(dims)
    net = network if network is not None else model.network
    if tiles.int8 and network is None:
        from deepscope.workflow.int8_models import int8_network

        net = int8_network(model, x)
    performance.tune_allocator()  # page faults otherwise cost a third of the time
    bf16 = performance.choose_precision(model.config.training.precision, "cpu") == "bf16-mixed"
    stride = model.task.output_stride()

    def run(image: np.ndarray, report: Callable[[int, int], None] | None) -> np.ndarray:
        return predict_tiled(
            net,
            image,
            out_channels=int(model.info["out_channels"]),
            tile_shape=tile_shape,
            overlap=tiles.overlap,
            divisibility=int(model.info["divisibility"]),
            batch_size=tiles.tiles_per_pass(dims),
            autocast_bf16=bf16,
            progress=report,
            output_stride=stride,
        )

    if tiles.tta:
        if not model.task.tta_ok:
            raise DeepscopeError(
                f"test-time augmentation is not available for {model.config.task} models "
                "(their output does not simply turn with the image)",
                fix="leave out --tta",
            )
        y = dihedral_average(
            run, x, progress, stride=stride, channel_order=model.task.dihedral_channels
        )
    else:
        y = run(x, progress)
    # De-normalise (elementwise) before upsampling a strided output: 1/stride² the work.
    y = model.task.denormalize_output(y, model.target_normalizer or model.normalizer)
    if stride is None or all(g == 1 for g in stride):
        return y
    if grid:
        return GridOutput(y, image_cf.shape[1:])
    y = repeat_blocks(y, stride)
    return y[(slice(None),) + tuple(slice(0, n) for n in image_cf.shape[1:])]


def repeat_blocks(output: np.ndarray, stride: Sequence[int]) -> np.ndarray:
    """Repeat each value of (C, *spatial) ``stride`` times along each spatial axis.

    The same as ``np.repeat`` axis by axis, in one multi-threaded pass (PyTorch's
    nearest-neighbour up-sampling, exact for the integer factors used here): 5.7 instead
    of 16.6 ms for StarDist's 33 x 512 x 512 output on 2 cores (benchmarks/RESULTS.md).
    """
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(output, dtype=np.float32))[None]
    scale = tuple(float(g) for g in stride)
    return F.interpolate(x, scale_factor=scale, mode="nearest")[0].numpy()


DIHEDRAL = tuple((k, flip) for k in range(4) for flip in (False, True))
"""The 8 turns (90-degree rotations ``k``) and mirror images of the YX plane."""


def dihedral_average(
    run: Callable[[np.ndarray, Callable[[int, int], None] | None], np.ndarray],
    x: np.ndarray,
    progress: Callable[[int, int], None] | None = None,
    stride: Sequence[int] | None = None,
    channel_order: Callable[[int, bool], np.ndarray | None] | None = None,
) -> np.ndarray:
    """Average ``run`` over the 8 flips and rotations of ``x`` in its last two axes.

    Each version of the (C, *spatial) image is predicted by ``run(image, progress)``,
    turned back and added up, so memory grows by one output only. ``progress`` receives
    the tiles done over all 8 passes.

    Parameters
    ----------
    run
        Prediction of one (C, *spatial) image.
    x
        The channel-first image.
    progress
        Called with (tiles done, tiles in all) over the 8 passes.
    stride
        Per-axis factor by which ``run``'s output is coarser than ``x`` (StarDist's grid):
        value ``i`` speaks for pixel ``i * stride``. The image is then padded at the end
        of Y and X so that turning it maps those pixels onto the turned image's own
        ``stride``-th pixels, and each turned output is read back at exactly the
        original's pixels. Y and X must share one factor (a turn swaps them).
    channel_order
        ``channel_order(k, flip)`` gives, for the version turned ``k`` times by 90 degrees
        and then mirrored left-right if ``flip``, the output channel that speaks for each
        channel of the original (e.g. StarDist's ray directions turn with the image), or
        None when the channels do not depend on the orientation.

    Returns
    -------
    numpy.ndarray
        The mean of the 8 turned-back outputs, float32, shaped like ``run(x)``.
    """
    g = 1
    if stride is not None:
        g = int(stride[-1])
        if int(stride[-2]) != g:
            raise DeepscopeError(
                f"test-time augmentation needs the same grid in Y and X (this model's: "
                f"{tuple(stride)})",
                fix="leave out --tta",
            )
    spatial = x.shape[-2:]
    if g > 1:
        # Reversing an axis of size n maps pixel i to n-1-i: a multiple of g for every i
        # that is one exactly when (n - 1) is; pad the end of the axis to such a size.
        pad = [(0, 0)] * (x.ndim - 2) + [(0, -(n - 1) % g) for n in spatial]
        x = np.pad(x, pad, mode="reflect" if min(spatial) > 1 else "edge")
    # Asked before any work, so that a model that cannot be turned fails at once.
    orders = [channel_order(k, flip) if channel_order else None for k, flip in DIHEDRAL]
    total: np.ndarray | None = None
    n = len(DIHEDRAL)
    for i, (k, flip) in enumerate(DIHEDRAL):
        report = None
        if progress is not None:
            report = lambda done, all_, i=i: progress(i * all_ + done, n * all_)  # noqa: E731
        y = run(np.ascontiguousarray(_turn(x, k, flip)), report)
        if g == 1:
            y = _turn_back(y, k, flip)
        else:
            # Where each original grid pixel went: turn a map of the turned image's grid
            # indices back, and read the output there.
            turned = _turn(x[(0,) * (x.ndim - 2)], k, flip).shape
            rows, cols = (_turn_back(a // g, k, flip) for a in np.indices(turned))
            at = (slice(0, spatial[0], g), slice(0, spatial[1], g))
            y = y[..., rows[at], cols[at]]
        if orders[i] is not None:
            y = y[orders[i]]
        if total is None:
            total = y.astype(np.float32, copy=True)
        else:
            total += y
    assert total is not None
    return total / n


def _turn(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """``a`` turned ``k`` times by 90 degrees in its last two axes, then mirrored if ``flip``."""
    view = np.rot90(a, k, axes=(-2, -1))
    return view[..., ::-1] if flip else view


def _turn_back(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Undo :func:`_turn`."""
    if flip:
        a = a[..., ::-1]
    return np.rot90(a, -k, axes=(-2, -1))


TUNED_SETTINGS_FILE = "thresholds.json"
"""Settings tuned after training (e.g. a probability threshold chosen by QC), kept in the
model folder and applied to the task before every prediction."""


def update_tuned_settings(model_dir: Path, values: dict[str, Any]) -> Path:
    """Add ``values`` to the model folder's ``thresholds.json``, keeping its other entries.

    Different steps tune different settings (training the seed threshold, QC the
    probability threshold), so none may drop what another stored. An unreadable file is
    replaced.
    """
    path = Path(model_dir) / TUNED_SETTINGS_FILE
    current: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text())
            current = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            current = {}
    current.update(values)
    atomic_write_text(path, json.dumps(current, indent=2))
    return path


def apply_tuned_settings(model: TrainedModel) -> None:
    """Give the task the settings in the model folder's ``thresholds.json``, if both exist.

    Tasks that have such settings define ``use_tuned_settings(settings: dict)``; the
    file is written by quality control (e.g. the best probability threshold).
    """
    hook = getattr(model.task, "use_tuned_settings", None)
    path = model.folder / TUNED_SETTINGS_FILE
    if hook is None or not path.is_file():
        return
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DeepscopeError(
            f"the tuned settings cannot be read ({err})",
            path,
            "delete the file (the defaults are then used) or run 'deepscope qc' again",
        ) from None
    hook(settings)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (of an OME-Zarr folder: of its metadata files only)."""
    h = hashlib.sha256()
    if path.is_dir():  # zarr folder: hash the metadata only
        for p in sorted(path.rglob("zarr.json")) + sorted(path.rglob(".zattrs")):
            h.update(p.read_bytes())
        return h.hexdigest()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def output_name(input_path: Path) -> str:
    """Result file name: the input's name with a TIFF ending (OME-Zarr stays OME-Zarr)."""
    name = input_path.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] + ".ome.zarr"
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".jpeg", ".jpg"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] + ".tif"
    return name + ".tif"


def check_output_names(inputs: Sequence[Path]) -> None:
    """Refuse inputs whose results would have the same name (``a.tif`` and ``a.png``).

    Raises
    ------
    OutputError
        Naming every clash, before anything is predicted.
    """
    by_name: dict[str, list[Path]] = {}
    for path in inputs:
        by_name.setdefault(output_name(path).lower(), []).append(path)
    clashes = [paths for paths in by_name.values() if len(paths) > 1]
    if clashes:
        listed = "; ".join(" and ".join(p.name for p in paths) for paths in clashes)
        raise OutputError(
            f"these inputs would give results of the same name, so one would replace the "
            f"other: {listed}",
            clashes[0][0].parent,
            "rename one file of each pair (or predict them into different folders)",
        )


def side_output_name(result_name: str, suffix: str) -> str:
    """Return the file name of an extra result: ``cell.tif`` → ``cell_uncertainty.tif``."""
    for ending in (".ome.zarr", ".tif"):
        if result_name.endswith(ending):
            return f"{result_name[: -len(ending)]}_{suffix}{ending}"
    return f"{result_name}_{suffix}"


def side_output_suffixes(model: TrainedModel) -> list[str]:
    """Return the suffixes of the extra results the model writes (e.g. ``["uncertainty"]``).

    They depend only on the task and its config, so an empty output is probed.
    """
    dims = model.config.data.spatial_dims
    probe = np.zeros((int(model.info["out_channels"]),) + (1,) * dims, dtype=np.float32)
    return list(model.task.side_outputs(probe))


def extra_file_names(model: TrainedModel, result_name: str) -> list[str]:
    """Names of the non-image files a task writes beside a result (e.g. ROIs, a CSV).

    Tasks that write such files define ``extra_file_suffixes`` (e.g. ``["rois.zip"]``)
    and ``write_extra_files(raw, result, image_cf, result_path, overwrite) -> dict``;
    ``cell.tif`` then gets ``cell_rois.zip`` beside it.
    """
    from deepscope.tasks.base import extra_file_name

    suffixes = getattr(model.task, "extra_file_suffixes", [])
    return [extra_file_name(result_name, suffix) for suffix in suffixes]


def resolve_inputs(source: Path) -> list[Path]:
    """A single image file, or every image in a folder."""
    source = Path(source)
    if source.is_file() or (source.is_dir() and is_image_path(source)):
        return [source]
    return list_images(source)


def check_output_folder(out_dir: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder that holds (or is) an input, so no input can be overwritten."""
    out = out_dir.resolve()
    for p in inputs:
        if p.resolve().parent == out or p.resolve() == out:
            raise OutputError(
                "the output folder is the folder of the input images; results could "
                "overwrite or mix with your originals",
                out_dir,
                "choose a new, separate output folder (e.g. --out denoised/)",
            )


def check_inputs(
    inputs: Sequence[Path],
    axes: str | None,
    spatial_dims: int,
    model: TrainedModel | None = None,
) -> None:
    """Open every input (its header, not its pixels) and refuse the batch if any is unusable.

    Run before anything is predicted, so that a batch with a bad file fails in seconds,
    naming every bad file at once, instead of stopping hours later at the first one:
    unreadable files, axes that do not fit ``spatial_dims``, and (given ``model``) a
    channel count the model cannot take, after the task's own channel adaptation (e.g.
    StarDist reads colour pictures as grey for a one-channel model). Damage inside the
    pixel data of a file whose header reads is only found when that file is read; the
    results written until then are kept.

    Raises
    ------
    ImageReadError
        One file: its own message. Several: one line per file, each with what to do.
    """
    problems: list[tuple[Path, DeepscopeError]] = []
    for path in inputs:
        try:
            shape = channel_first_shape(path, axes, spatial_dims)
            if model is not None:
                _check_channels(model, shape, path)
        except DeepscopeError as err:
            problems.append((path, err))
    if len(problems) == 1:
        raise problems[0][1]
    if problems:
        lines = [
            f"{path.name}: {err.problem}" + (f" → {err.fix}" if err.fix else "")
            for path, err in problems
        ]
        raise ImageReadError(
            f"{len(problems)} of {len(inputs)} input images cannot be used, so nothing was "
            "predicted:\n  " + "\n  ".join(" ".join(line.split()) for line in lines),
            path=problems[0][0].parent,
            fix="fix or remove these files (see each line), then run the same command again",
        )


def prediction_precision(model: TrainedModel, tiles: TileSettings | None = None) -> str:
    """The arithmetic the network runs in here, as recorded in ``provenance.json``.

    ``"int8"`` (``--int8``), ``"float32 (ONNX Runtime)"`` (``--engine onnx``),
    ``"bfloat16"`` (PyTorch on CPUs with bfloat16, unless the model's config asks for
    ``training.precision: "32"``) or ``"float32"``. Results of one model differ slightly
    between these (bfloat16 keeps 8 bits of each value's mantissa).
    """
    if tiles is not None and tiles.int8:
        return "int8"
    if not list(model.network.parameters()):  # an ONNX Runtime network holds no tensors
        return "float32 (ONNX Runtime)"
    chosen = performance.choose_precision(model.config.training.precision, "cpu")
    return "bfloat16" if chosen == "bf16-mixed" else "float32"


def _check_channels(model: TrainedModel, shape: tuple[int, ...], path: Path) -> None:
    """Refuse an image whose channels (``shape[0]``) the model cannot take."""
    channels = shape[0]
    adapt = getattr(model.task, "adapt_channels", None)
    if adapt is not None:  # on a one-pixel stand-in: only the channel count matters
        stand_in = np.zeros((channels,) + (1,) * (len(shape) - 1), np.float32)
        channels = adapt(stand_in, model.in_channels).shape[0]
    if channels != model.in_channels:
        raise ImageReadError(
            f"this image has {shape[0]} channel(s) but the model was trained on images "
            f"with {model.in_channels}",
            path=path,
            fix="give images with the same channels as the training images, or --axes "
            "if this file's axes are read wrongly",
        )


def predict_files(
    model: TrainedModel,
    source: Path,
    out_dir: Path,
    *,
    axes: str | None = None,
    tiles: TileSettings | None = None,
    overwrite: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    cluster: ClusterSettings | None = None,
    resume: bool = False,
) -> list[Path]:
    """Predict every image of ``source`` (file or folder) into ``out_dir``.

    Writes one result per input (same name, TIFF or OME-Zarr, the input's axes) and a
    ``provenance.json`` listing model, config hash, input files with checksums and dates.
    Tasks with extra outputs add them beside each result, named by
    :func:`side_output_name`: probabilistic CARE writes ``<name>_uncertainty.tif``, the
    predicted Laplace scale per pixel (the expected absolute error, in the target's
    intensity units); provenance.json names it under the output's entry.
    Existing results are not overwritten unless ``overwrite`` is set.

    Tasks with one result per image (``Task.image_level``, e.g. classification) write a
    table instead (see :mod:`deepscope.workflow.predict_classify`); the list then holds
    that one CSV file.

    With ``resume``, an interrupted prediction into ``out_dir`` goes on: the inputs
    whose results its ``provenance.json`` lists (same input content, same model and
    options, result file present) are not predicted again, and the new record keeps
    their entries.

    With ``cluster``, the files are shared out among Dask workers (a local cluster of
    worker processes, or the workers of a ``dask.distributed`` scheduler), each
    loading the model once; see :mod:`deepscope.workflow.predict_cluster`.
    """
    if model.task.image_level:
        if resume:
            raise DeepscopeError(
                "classification models write one table; there is nothing to resume",
                fix="leave out --resume (the table is quick to make again, with --overwrite)",
            )
        if cluster is not None:
            raise DeepscopeError(
                "classification models predict on one computer only (their table is small work)",
                fix="leave out --workers / --scheduler",
            )
        from deepscope.workflow.predict_classify import predict_table

        return [
            predict_table(
                model,
                source,
                out_dir,
                axes=axes,
                overwrite=overwrite,
                tta=bool(tiles is not None and tiles.tta),
                progress=progress,
            )
        ]
    inputs = resolve_inputs(source)
    out_dir = Path(out_dir)
    check_output_folder(out_dir, inputs)
    check_inputs(inputs, axes or model.config.data.axes, model.config.data.spatial_dims, model)
    check_output_names(inputs)
    targets = [out_dir / output_name(p) for p in inputs]
    suffixes = side_output_suffixes(model)
    record = {
        "deepscope_version": __version__,
        "model": str(model.folder.resolve()),
        "task": model.config.task,
        "config_digest": model.config.digest(),
        "test_time_augmentation": bool(tiles is not None and tiles.tta),
        "int8": bool(tiles is not None and tiles.int8),
        "precision": prediction_precision(model, tiles),
        "started": _now(),
        "files": [],
    }
    done = _finished_earlier(out_dir, record, inputs) if resume else {}
    if done:
        record["files_from_earlier_run"] = len(done)
    if not overwrite:
        todo = [t for i, t in enumerate(targets) if i not in done]
        extra = [t.with_name(side_output_name(t.name, x)) for t in todo for x in suffixes]
        extra += [t.with_name(n) for t in todo for n in extra_file_names(model, t.name)]
        existing = [t for t in todo + extra if t.exists()]
        if existing:
            raise OutputError(
                f"{len(existing)} result file(s) already exist, e.g. {existing[0].name}",
                out_dir,
                "choose another output folder, add --overwrite to replace earlier results, "
                "or --resume to go on with an interrupted prediction",
            )
    client = None
    if cluster is not None:  # reached before anything is written
        from deepscope.workflow import predict_cluster

        client = predict_cluster.connect(cluster)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if client is not None:
            predict_cluster.close(client)
        raise OutputError(
            f"cannot create the output folder ({err.strerror})",
            out_dir,
            "choose a folder you can write to",
        ) from None
    entries: list[dict[str, Any] | None] = [done.get(i) for i in range(len(inputs))]
    record["files"] = [e for e in entries if e is not None]
    if client is not None:
        return predict_cluster.predict_on_cluster(
            client,
            cluster,
            model,
            inputs,
            targets,
            axes,
            tiles,
            overwrite,
            record,
            out_dir,
            progress,
            entries,
        )
    for i, (src, dst) in enumerate(zip(inputs, targets, strict=True)):
        if entries[i] is not None:
            continue
        tile_cb = (
            (lambda d, t, i=i, name=src.name: progress(name, i + d / t, len(inputs)))
            if progress
            else None
        )
        entries[i] = predict_file(model, src, dst, axes, tiles, overwrite, tile_cb)
        record["files"] = [e for e in entries if e is not None]
        atomic_write_text(out_dir / "provenance.json", json.dumps(record, indent=2))
    return targets


#: What must be the same for results of an earlier prediction to be kept by ``resume``.
_SAME_FOR_RESUME = ("model", "config_digest", "test_time_augmentation", "int8", "precision")


def _finished_earlier(
    out_dir: Path, record: dict[str, Any], inputs: Sequence[Path]
) -> dict[int, dict[str, Any]]:
    """Entries of ``out_dir/provenance.json`` for ``inputs`` already predicted the same way.

    Keyed by the input's index. An input counts as done when the earlier record lists
    it with the same content (SHA-256) and its result file is there.

    Raises
    ------
    OutputError
        When the earlier results were made by another model or with other options.
    """
    path = out_dir / "provenance.json"
    if not path.is_file():
        return {}
    try:
        earlier = json.loads(path.read_text())
        entries = list(earlier["files"])
    except (ValueError, KeyError, TypeError):
        raise OutputError(
            "the record of the earlier prediction cannot be read", path, "predict into a new folder"
        ) from None
    differ = [key for key in _SAME_FOR_RESUME if earlier.get(key) != record[key]]
    if differ:
        raise OutputError(
            "the results there were made with another "
            + ", ".join(key.replace("_", " ") for key in differ),
            out_dir,
            "resume with the same model and options, or predict into a new folder",
        )
    by_input = {str(e.get("input")): e for e in entries if isinstance(e, dict)}
    done: dict[int, dict[str, Any]] = {}
    for i, src in enumerate(inputs):
        entry = by_input.get(str(src.resolve()))
        if (
            entry is not None
            and (out_dir / str(entry.get("output"))).exists()
            and entry.get("input_sha256") == file_sha256(src)
        ):
            done[i] = entry
    return done


def predict_file(
    model: TrainedModel,
    src: Path,
    dst: Path,
    axes: str | None = None,
    tiles: TileSettings | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Predict one image file ``src`` into ``dst`` (and its side files); return its record.

    The record (input, checksum, output name, the axes the input was read with and those
    of the result, date, side files) is the file's entry in ``provenance.json``. Images
    too large for memory are done block by block.
    """
    blockwise = _predict_if_too_large(
        model, src, dst, axes or model.config.data.axes, tiles, overwrite, progress
    )
    if blockwise is not None:
        return blockwise
    dims = model.config.data.spatial_dims
    img = read_image(src, axes=axes or model.config.data.axes)
    cf = to_channel_first(img.data, img.axes, dims, path=src)
    raw = predict_raw(model, cf, tiles, progress=progress, grid=model.task.reads_grid_output)
    result = model.task.postprocess(raw)
    n_in = img.data.shape[img.axes.index("C")] if "C" in img.axes else None
    out_axes = output_axes(img.axes, dims, result.shape[0], n_in)
    write_image(
        dst,
        from_channel_first(result, img.axes, dims, n_in),
        out_axes,
        overwrite=overwrite,
        metadata={**(img.metadata or {}), "display_range": model.task.display_range()},
    )
    entry: dict[str, Any] = {
        "input": str(src.resolve()),
        "input_sha256": file_sha256(src),
        "output": dst.name,
        "input_axes": img.axes,
        "axes": out_axes,
        "date": _now(),
    }
    for suffix, extra in model.task.side_outputs(raw).items():
        side = dst.with_name(side_output_name(dst.name, suffix))
        write_image(
            side,
            from_channel_first(extra, img.axes, dims, n_in),
            output_axes(img.axes, dims, extra.shape[0], n_in),
            overwrite=overwrite,
            metadata=img.metadata,
        )
        entry[suffix] = side.name
    write_extra = getattr(model.task, "write_extra_files", None)
    if write_extra is not None:
        entry.update(write_extra(raw, result, cf, dst, overwrite))
    return entry


def _predict_if_too_large(
    model: TrainedModel,
    src: Path,
    dst: Path,
    axes: str | None,
    tiles: TileSettings | None,
    overwrite: bool,
    progress: Callable[[int, int], None] | None,
) -> dict | None:
    """Predict ``src`` block by block if it is too large for memory; else return None.

    Returns the provenance entry of the written result(s).
    """
    tiles = tiles or TileSettings()
    dims = model.config.data.spatial_dims
    image = open_image(src, axes=axes)
    try:
        spatial, channels = large_images.image_sizes(image, dims)
    except ValueError:  # axes do not fit the model: the in-memory path explains why
        return None
    out_channels = int(model.info["out_channels"])
    needed = large_images.memory_needed(spatial, channels, out_channels)
    limit = tiles.memory_limit or large_images.default_memory_limit()
    if needed <= limit:
        return None
    reason = f"needs about {needed / 2**30:.1f} GiB, limit {limit / 2**30:.1f} GiB"
    objects = model.task.objects_in_blocks_ok()
    if not objects and not model.task.blockwise_ok():
        warnings.warn(
            f"{src.name}: predicting this image needs about {needed / 2**30:.1f} GiB, more "
            f"than the {limit / 2**30:.1f} GiB limit, but the {model.config.task} task needs "
            "the whole image at once; trying in memory. If it fails, crop the image.",
            stacklevel=2,
        )
        return None
    block = large_images.block_shape(dims, tiles.block, tiles.tile_z)
    if model.normalizer.per_image:
        # Every block must be mapped by the whole image's percentiles, not its own.
        adapt = getattr(model.task, "adapt_channels", None)
        fixed = large_images.whole_image_normalizer(
            image,
            dims,
            model.normalizer,
            block,
            adapt=(lambda cf: adapt(cf, model.in_channels)) if adapt is not None else None,
        )
        # Outputs are still mapped back with the stored statistics, as in memory.
        model = dataclasses.replace(
            model,
            normalizer=fixed,
            target_normalizer=model.target_normalizer or model.normalizer,
        )
        reason += "; every block mapped by the whole image's percentiles"
    if objects:
        return _objects_in_blocks(model, image, src, dst, tiles, overwrite, progress, reason)
    margin = 2 * tiles.overlap
    paths = large_images.predict_in_blocks(
        image,
        dst,
        dims,
        lambda cf: predict_raw(model, cf, tiles, grid=model.task.reads_grid_output),
        model.task.side_outputs,
        model.task.postprocess,
        lambda suffix: dst.with_name(side_output_name(dst.name, suffix)),
        block=block,
        margin=(margin,) * dims,
        overwrite=overwrite,
        progress=progress,
        display_range=model.task.display_range(),
    )
    result_axes = tifffile_axes(paths[""])
    entry = {
        "input": str(src.resolve()),
        "input_sha256": file_sha256(src),
        "output": dst.name,
        "input_axes": image.axes,
        "axes": result_axes,
        "date": _now(),
        "predicted_in_blocks": {"reason": reason, "block": list(block), "margin": margin},
    }
    for suffix, path in paths.items():
        if suffix:
            entry[suffix] = path.name
    return entry


def _objects_in_blocks(
    model: TrainedModel,
    image: Any,
    src: Path,
    dst: Path,
    tiles: TileSettings,
    overwrite: bool,
    progress: Callable[[int, int], None] | None,
    reason: str,
) -> dict:
    """Instance labels of a 2D image too large for memory (see :mod:`instances_in_blocks`)."""
    from deepscope.workflow import instances_in_blocks

    grid = model.task.output_stride() or (1, 1)
    block = tuple(-(-tiles.block // g) * g for g in grid)
    margin = instances_in_blocks.context_margin(tiles.overlap, grid)
    info = instances_in_blocks.predict_instances_in_blocks(
        image,
        dst,
        model.task,
        lambda cf: predict_raw(model, cf, tiles, grid=model.task.reads_grid_output),
        block=block,
        margin=margin,
        overwrite=overwrite,
        progress=progress,
        log=lambda message: warnings.warn(message, stacklevel=2),
    )
    return {
        "input": str(src.resolve()),
        "input_sha256": file_sha256(src),
        "output": dst.name,
        "input_axes": image.axes,
        "axes": tifffile_axes(dst),
        "date": _now(),
        "predicted_in_blocks": {
            "reason": reason,
            "block": list(block),
            "margin": margin[0],
            "objects": info["objects"],
            "objects_reaching_the_context_edge": info["cut_objects"],
        },
        "rois": info["rois"],
        "measurements": info["measurements"],
    }


def tifffile_axes(path: Path) -> str:
    """Axes of a written result, as deepscope reads them back."""
    return open_image(path).axes


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
