"""deepscope from Python: the command line's steps as functions, with the same checks.

Every function here does what the command of the same name does, through the same
workflow code, so a script, the command line and the web app never disagree::

    import deepscope

    deepscope.validate("n2v", "noisy/")
    run = deepscope.train("n2v", "noisy/", "runs/n2v1", settings={"training.max_minutes": 10})
    deepscope.predict(run.model_dir, "new/", "denoised/")
    summary = deepscope.evaluate(run.model_dir, "noisy_qc/", "qc/", targets="clean_qc/")
    labels = deepscope.predict_image("nuclei", image)          # numpy in, numpy out

Settings are the keys of a run's ``config.yaml``, given as dotted names
(``{"training.epochs": 50, "data.patch_size": [64, 64]}``) or nested dictionaries;
``config=`` starts from a YAML file (or dict) written earlier. Errors are
:class:`deepscope.errors.DeepscopeError`, whose message names the file and what to do.
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from deepscope.errors import DeepscopeError

if TYPE_CHECKING:
    from deepscope.config import TaskConfigBase
    from deepscope.data.validation import ValidationReport
    from deepscope.tracking.run import TrackResult
    from deepscope.workflow.model_folder import TrainedModel
    from deepscope.workflow.predict import TileSettings
    from deepscope.workflow.training import TrainResult

    ModelLike = str | Path | TrainedModel

PathLike = str | Path


_F = TypeVar("_F", bound=Callable[..., Any])

#: Command-line options whose Python parameter has another name.
_PARAMETER_OF_OPTION = {
    "from": "start_from",
    "masks": "targets",
    "memory-limit": "memory_limit_gib",
}
#: Command-line options that are settings (``settings={"training.epochs": 50}``) in Python.
_SETTING_OF_OPTION = {
    "axes": "data.axes",
    "epochs": "training.epochs",
    "max-minutes": "training.max_minutes",
    "batch-size": "training.batch_size",
    "patch-size": "data.patch_size",
    "patches-per-epoch": "training.patches_per_epoch",
    "learning-rate": "training.learning_rate",
    "precision": "training.precision",
    "loss": "care.loss",
    "probabilistic": "care.probabilistic",
    "freeze-encoder": "training.freeze_encoder_epochs",
    "rays": "stardist.n_rays",
    "grid": "stardist.grid",
    "classes": "semantic.n_classes",
}
#: ``--option`` and the value written after it (``--axes ZYX``, ``--tile 512``), if any.
_OPTION = re.compile(r"--([a-z][a-z0-9-]*)(?: ([A-Z0-9][\w-]*(?:\.\d+)?|[\w.-]+/[\w./-]*)(?!\w))?")


#: True while a ``deepscope`` command runs these functions: its errors keep the options.
COMMAND_LINE: ContextVar[bool] = ContextVar("deepscope_command_line", default=False)


def _literal(value: str) -> str:
    """A number as written, anything else as a Python string."""
    return value if re.fullmatch(r"\d+(\.\d+)?", value) else f'"{value}"'


def _in_python_words(function: _F) -> _F:
    """Errors of ``function`` name its parameters where they name command-line options.

    The workflow's messages are written for the command line ("add --overwrite"); from
    Python, ``deepscope.predict(...)`` says "add overwrite=True" instead ("a new out
    folder" for ``--out``), and an option that is a setting says
    ``settings={"training.epochs": …}``. Options with neither stay as they are.
    """
    parameters = inspect.signature(function).parameters

    def python(match: re.Match[str]) -> str:
        option, value = match.group(1), match.group(2)
        name = _PARAMETER_OF_OPTION.get(option, option.replace("-", "_"))
        if name in parameters:
            default = parameters[name].default
            if value is not None:
                return f"{name}={_literal(value)}"
            return f"{name}=True" if default is False else name
        if option in _SETTING_OF_OPTION and "settings" in parameters:
            shown = "…" if value is None else _literal(value)
            return f'settings={{"{_SETTING_OF_OPTION[option]}": {shown}}}'
        return match.group(0)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except DeepscopeError as err:
            if COMMAND_LINE.get():
                raise
            err.problem = _OPTION.sub(python, err.problem)
            if err.fix:
                err.fix = _OPTION.sub(python, err.fix)
            err.args = (str(err),)
            raise

    return wrapper  # type: ignore[return-value]


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of nested settings (``{"training": {"epochs": 5}}`` → ``training.epochs``)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


@_in_python_words
def make_config(
    task: str,
    config: PathLike | Mapping[str, Any] | TaskConfigBase | None = None,
    settings: Mapping[str, Any] | None = None,
) -> TaskConfigBase:
    """The full, checked settings of ``task``: ``config`` (if any) with ``settings`` on top.

    Parameters
    ----------
    task
        Task name: ``n2v``, ``n2n``, ``care``, ``labelfree``, ``semantic``, ``stardist``
        or ``classify``.
    config
        A YAML file (e.g. a run's ``config.yaml``), a dictionary of settings or a config
        object to start from.
    settings
        Settings to change, as dotted names or nested dictionaries.

    Returns
    -------
    TaskConfigBase
        The task's config; settings left out have their defaults.

    Raises
    ------
    ConfigError
        When a setting is unknown or invalid (every one is listed), or ``config`` is of
        another task.
    """
    from deepscope.config import TaskConfigBase, config_from_dict, load_config, merge_overrides

    if config is None:
        base: dict[str, Any] = {"task": task}
    elif isinstance(config, TaskConfigBase):
        base = config.model_dump(mode="json", exclude_unset=True)
    elif isinstance(config, Mapping):
        base = {"task": task, **copy.deepcopy(dict(config))}
    else:
        base = load_config(config).model_dump(mode="json", exclude_unset=True)
    if base.get("task") != task:
        from deepscope.errors import ConfigError

        raise ConfigError(
            f"the config is for task '{base.get('task')}', not '{task}'",
            config if isinstance(config, str | Path) else None,
            "use a config of the same task",
        )
    return config_from_dict(merge_overrides(base, _flatten(settings or {})))


@_in_python_words
def validate(
    task: str,
    images: PathLike,
    targets: PathLike | None = None,
    *,
    config: PathLike | Mapping[str, Any] | TaskConfigBase | None = None,
    settings: Mapping[str, Any] | None = None,
) -> ValidationReport:
    """Check training data as ``deepscope validate`` does; nothing is written.

    Parameters
    ----------
    task
        The task the data is for.
    images
        Folder (or file) of images; for ``classify`` also a CSV or ``.npz``.
    targets
        Folder of targets or masks, for the paired tasks.
    config, settings
        As in :func:`make_config` (e.g. ``{"data.patch_size": [64, 64]}``).

    Returns
    -------
    ValidationReport
        ``.ok`` is False when something blocks training; ``.format()`` gives every
        finding with its file and fix.
    """
    from deepscope.tasks import get_task

    cfg = make_config(task, config, settings)
    return get_task(task)(cfg).check_training_data(
        Path(images), Path(targets) if targets is not None else None
    )


@_in_python_words
def train(
    task: str,
    images: PathLike,
    out: PathLike,
    targets: PathLike | None = None,
    *,
    config: PathLike | Mapping[str, Any] | TaskConfigBase | None = None,
    settings: Mapping[str, Any] | None = None,
    start_from: ModelLike | None = None,
    resume: bool = False,
    progress: bool = True,
    devices: int | None = None,
    nodes: int | None = None,
) -> TrainResult:
    """Train a model into the run folder ``out``, as ``deepscope train`` does.

    The data is checked first; training stops at ``training.epochs`` or
    ``training.max_minutes`` and keeps the best model in ``out/model``.

    Parameters
    ----------
    task
        The task to train.
    images, targets
        Training images, and targets or masks for the paired tasks.
    out
        New run folder (or the run to continue, with ``resume``).
    config, settings
        As in :func:`make_config`, e.g. ``settings={"training.max_minutes": 10}``.
    start_from
        A model folder, shipped model name (``"nuclei"``) or loaded model whose weights
        start the training (transfer learning, ``--from``).
    resume
        Continue the interrupted or finished run in ``out`` (only ``training.epochs``
        and ``training.max_minutes`` may change).
    progress
        Show a progress bar with the time left.
    devices, nodes
        Train on ``devices`` GPUs of this computer together (Lightning's DDP), as
        ``--devices``; see :mod:`deepscope.engine.distributed`. Lightning starts the
        other processes by running this script again, so call it under
        ``if __name__ == "__main__":`` (not from a notebook).

    Returns
    -------
    TrainResult
        ``.model_dir`` is the trained model folder (None in the processes other than the
        main one of a multi-process training); also epochs, minutes, why it stopped.

    Raises
    ------
    ValidationFailed
        When the data check finds problems that block training (nothing is written).
    """
    from deepscope.workflow.training import train as train_run

    extra: dict[str, Any] = {}
    if start_from is not None:
        extra["training.start_from"] = str(_model_folder(start_from).resolve())
    cfg = make_config(task, config, {**_flatten(settings or {}), **extra})
    return train_run(
        cfg,
        Path(images),
        Path(out),
        Path(targets) if targets is not None else None,
        resume=resume,
        show_bar=progress,
        devices=devices,
        nodes=nodes,
    )


def _model_folder(model: ModelLike) -> Path:
    from deepscope.workflow.model_folder import TrainedModel
    from deepscope.workflow.pretrained import resolve_model

    if isinstance(model, TrainedModel):
        return model.folder
    return resolve_model(model)


@_in_python_words
def load_model(model: ModelLike) -> TrainedModel:
    """Load a model folder, or a model shipped with deepscope by name (``"nuclei"``).

    A loaded model may be given to every function here instead of its folder, which
    spares loading it again.

    Raises
    ------
    ModelFolderError
        When the folder is missing, incomplete or of a newer format version.
    """
    from deepscope.workflow.model_folder import TrainedModel, load_model_folder
    from deepscope.workflow.pretrained import resolve_model

    if isinstance(model, TrainedModel):
        return model
    return load_model_folder(resolve_model(model))


def _configured(model: ModelLike, options: Mapping[str, Any]) -> TrainedModel:
    """The model with the prediction ``options`` applied, on a copy if it was given loaded."""
    from deepscope.workflow.model_folder import TrainedModel
    from deepscope.workflow.predict_options import PredictOptions, configure_model

    wanted = PredictOptions(**options)
    if wanted == PredictOptions() and isinstance(model, TrainedModel):
        return model
    loaded = load_model(model)
    if isinstance(model, TrainedModel):
        loaded = copy.deepcopy(model)  # the caller's model keeps its own settings
    return configure_model(loaded, wanted)


def _tiles(
    model: TrainedModel,
    tile: int | None,
    tta: bool,
    int8: bool,
    memory_gib: float | None = None,
) -> TileSettings:
    """Tiling and precision settings, with ``tta`` and ``int8`` checked against the model."""
    from deepscope.workflow.predict import TileSettings
    from deepscope.workflow.predict_options import check_int8, check_tta

    return TileSettings(
        tile=tile,
        memory_limit=int(memory_gib * 2**30) if memory_gib else None,
        tta=check_tta(model, tta),
        int8=check_int8(model, int8),
    )


@_in_python_words
def predict(
    model: ModelLike,
    input: PathLike,
    out: PathLike,
    *,
    axes: str | None = None,
    tta: bool = False,
    int8: bool = False,
    tile: int | None = None,
    memory_limit_gib: float | None = None,
    overwrite: bool = False,
    prob_threshold: float | None = None,
    nms_threshold: float | None = None,
    instances: bool = False,
    probabilities: bool = False,
    engine: str = "pytorch",
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    resume: bool = False,
) -> list[Path]:
    """Apply a model to an image file or a folder, as ``deepscope predict`` does.

    Every input is checked before any is predicted; results keep the inputs' names and
    axes, beside a ``provenance.json``; inputs are never written to.

    Parameters
    ----------
    model
        Model folder, shipped model name or loaded model.
    input
        An image file or a folder of images.
    out
        Output folder (for classifiers: the CSV file or its folder).
    axes
        Axes of the input files when their own are guessed wrong (e.g. ``"ZYX"``).
    tta, int8, tile, memory_limit_gib
        Test-time augmentation, 8-bit network, tile size, memory limit per image:
        as the options of the same names of ``deepscope predict``.
    overwrite
        Replace results of an earlier prediction.
    prob_threshold, nms_threshold
        StarDist thresholds (default: those tuned after training).
    instances, probabilities
        Semantic models: also write instance labels / class probabilities.
    engine
        ``"pytorch"`` or ``"onnx"``.
    workers, scheduler
        Share the files out among ``workers`` local processes, or the workers of the
        Dask scheduler at this address (see :mod:`deepscope.workflow.predict_cluster`).
    progress
        Show a progress bar.
    resume
        Go on with an interrupted prediction into ``out``: inputs whose results its
        ``provenance.json`` lists (same model, options and content) are skipped.

    Returns
    -------
    list of Path
        The result files (for classifiers, the one CSV table).
    """
    from deepscope.interfaces.progress import progress_bar
    from deepscope.workflow.predict import predict_files
    from deepscope.workflow.predict_cluster import ClusterSettings

    loaded = _configured(
        model,
        {
            "prob_threshold": prob_threshold,
            "nms_threshold": nms_threshold,
            "instances": instances,
            "probabilities": probabilities,
            "engine": engine,
        },
    )
    cluster = (
        ClusterSettings(workers=workers, scheduler=scheduler)
        if workers is not None or scheduler is not None
        else None
    )
    return predict_files(
        loaded,
        Path(input),
        Path(out),
        axes=axes,
        tiles=_tiles(loaded, tile, tta, int8, memory_limit_gib),
        overwrite=overwrite,
        progress=progress_bar("predicting") if progress else None,
        cluster=cluster,
        resume=resume,
    )


@_in_python_words
def predict_image(
    model: ModelLike,
    image: np.ndarray,
    axes: str | None = None,
    *,
    tta: bool = False,
    int8: bool = False,
    tile: int | None = None,
    prob_threshold: float | None = None,
    nms_threshold: float | None = None,
) -> np.ndarray:
    """Apply a model to one image in memory; return the result as an array.

    The image is normalised, tiled and post-processed exactly as ``deepscope predict``
    does for a file: a restoration model gives the restored image, a semantic model its
    class map, a StarDist model its instance labels. The result has the image's axes
    (its channel axis dropped for a one-channel result of a multi-channel image; added,
    first, for a several-channel result of a one-channel image).

    Parameters
    ----------
    model
        Model folder, shipped model name or loaded model.
    image
        The image, e.g. ``tifffile.imread(...)``.
    axes
        The image's axes (``"YX"``, ``"ZYX"``, ``"CYX"``, ``"YXC"`` …); guessed from its
        shape when left out (``(Y, X, 3)`` is read as a colour picture).
    tta, int8, tile
        As for :func:`predict`.
    prob_threshold, nms_threshold
        StarDist thresholds (default: those tuned after training).

    Returns
    -------
    numpy.ndarray
        For classifiers: the class probabilities, one per class
        (``model.task.class_names`` names them).
    """
    loaded = _configured(model, {"prob_threshold": prob_threshold, "nms_threshold": nms_threshold})
    return _predict_in_memory(loaded, image, axes, tta, int8, tile, extras=False)["result"]


@_in_python_words
def predict_image_outputs(
    model: ModelLike,
    image: np.ndarray,
    axes: str | None = None,
    *,
    instances: bool = False,
    probabilities: bool = False,
    tta: bool = False,
    int8: bool = False,
    tile: int | None = None,
    prob_threshold: float | None = None,
    nms_threshold: float | None = None,
) -> dict[str, Any]:
    """Apply a model to one image in memory; return everything ``predict`` would write.

    Like :func:`predict_image`, which returns only ``"result"``, from one pass of the
    network. The arrays have the image's axes (as :func:`predict_image`'s result).

    Parameters
    ----------
    model
        Model folder, shipped model name or loaded model.
    image
        The image, e.g. ``tifffile.imread(...)``.
    axes
        The image's axes; guessed from its shape when left out.
    instances, probabilities
        Semantic models: also return the instance labels made from the class map
        (``"instances"``) and the class probabilities (``"probabilities"``, one channel
        per class), as ``predict --instances --probabilities`` writes them.
    tta, int8, tile
        As for :func:`predict`.
    prob_threshold, nms_threshold
        StarDist thresholds (default: those tuned after training).

    Returns
    -------
    dict
        ``"result"``: what :func:`predict_image` returns. Besides, where the model makes
        them: ``"uncertainty"`` (CARE trained with ``--probabilistic``), ``"instances"``
        and ``"probabilities"`` (semantic, when asked), and for StarDist ``"objects"``:
        the columns of ``NAME_measurements.csv`` (``label``, centroid, ``area`` or
        ``volume``, mean intensity, ``probability``) as a dict of equally long arrays,
        e.g. ``pandas.DataFrame(outputs["objects"])``.

    Raises
    ------
    DeepscopeError
        For ``instances`` or ``probabilities`` with a model that is not semantic, as for
        thresholds given to a model that is not StarDist.
    """
    options = {
        "prob_threshold": prob_threshold,
        "nms_threshold": nms_threshold,
        "instances": instances,
        "probabilities": probabilities,
    }
    loaded = _configured(model, options)
    return _predict_in_memory(loaded, image, axes, tta, int8, tile, extras=True)


def _predict_in_memory(
    loaded: TrainedModel,
    image: np.ndarray,
    axes: str | None,
    tta: bool,
    int8: bool,
    tile: int | None,
    extras: bool,
) -> dict[str, Any]:
    """The result (and, with ``extras``, the side outputs) of one image in memory."""
    from deepscope.data.axes import check_axes, from_channel_first, guess_axes, to_channel_first
    from deepscope.workflow.predict import predict_raw

    if isinstance(image, str | Path):
        raise DeepscopeError(
            "predict_image takes the pixels (a numpy array), not a file name",
            image,
            "read the file first (tifffile.imread, imageio.v3.imread), or use "
            "deepscope.predict for files and folders",
        )
    data = np.asarray(image)
    if not np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_:
        raise DeepscopeError(
            f"the image is an array of {data.dtype}, not of numbers",
            fix="give the pixel values, e.g. tifffile.imread(path)",
        )
    axes = check_axes(axes, data.ndim) if axes else guess_axes(data.shape, rgb_last=True)
    dims = loaded.config.data.spatial_dims
    cf = to_channel_first(data, axes, dims)
    if loaded.task.image_level:
        from deepscope.workflow.predict_classify import classify_arrays

        probs = classify_arrays(loaded, [cf], tta=_tiles(loaded, None, tta, False).tta)[0]
        return {"result": probs}
    tiles = _tiles(loaded, tile, tta, int8)
    raw = predict_raw(loaded, cf, tiles, grid=loaded.task.reads_grid_output)
    n_in = data.shape[axes.index("C")] if "C" in axes else None

    def in_image_axes(result_cf: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(from_channel_first(result_cf, axes, dims, n_in))

    outputs: dict[str, Any] = {"result": in_image_axes(loaded.task.postprocess(raw))}
    if not extras:
        return outputs
    for name, side in loaded.task.side_outputs(raw).items():
        outputs[name] = in_image_axes(side)
    measure = getattr(loaded.task, "object_measurements", None)
    if measure is not None:
        outputs["objects"] = measure(raw, cf)
    return outputs


@_in_python_words
def evaluate(
    model: ModelLike,
    images: PathLike,
    out: PathLike,
    targets: PathLike | None = None,
    *,
    tta: bool = False,
    int8: bool = False,
    tile: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Quality control, as ``deepscope qc`` does: scores, figures and ``out/report.html``.

    Parameters
    ----------
    model
        Model folder, shipped model name or loaded model.
    images
        QC images (for classifiers: labelled as for training).
    out
        New folder for ``report.html``, ``summary.json`` and ``metrics.csv``.
    targets
        Clean targets (restoration) or masks (segmentation) paired by name.
    tta, int8, tile
        As for :func:`predict`.
    progress
        Show progress.
    overwrite
        Replace an earlier report in ``out`` (otherwise refused).

    Returns
    -------
    dict
        The content of ``summary.json``.
    """
    from deepscope.interfaces.progress import stage_bars
    from deepscope.workflow.qc import run_qc

    loaded = load_model(model)
    return run_qc(
        loaded,
        Path(images),
        Path(targets) if targets is not None else None,
        Path(out),
        tiles=_tiles(loaded, tile, tta, int8),
        progress=stage_bars() if progress else None,
        overwrite=overwrite,
    )


@_in_python_words
def export_model(
    model: ModelLike,
    out: PathLike,
    *,
    format: str = "bioimageio",
    authors: list[str] | str | None = None,
    license: str | None = None,
    name: str | None = None,
    sample: PathLike | None = None,
    check: bool = True,
) -> Path:
    """Export a model as a BioImage.IO package, ONNX or TorchScript file (``deepscope export``).

    (Not ``deepscope.export``: that name is the package of the exporters.)

    Parameters
    ----------
    model
        Model folder, shipped model name or loaded model.
    out
        The file to write (``.zip`` for BioImage.IO).
    format
        ``"bioimageio"``, ``"onnx"`` or ``"torchscript"``.
    authors, license, name, sample, check
        BioImage.IO only: authors (required), SPDX licence id (required), model name,
        test image, whether to run ``bioimageio.core``'s checks.

    Returns
    -------
    Path
        The written file.
    """
    from deepscope.export import export_model as export_package

    if isinstance(authors, str):
        authors = [authors]
    return export_package(
        _model_folder(model),
        format,
        Path(out),
        authors=authors,
        license=license,
        name=name,
        sample=Path(sample) if sample is not None else None,
        check=check,
    )


@_in_python_words
def import_model(package: PathLike, out: PathLike, *, weights: str | None = None) -> Path:
    """Turn a BioImage.IO package into a deepscope model folder (``deepscope import``).

    Returns
    -------
    Path
        The new model folder, ready for :func:`predict` and :func:`evaluate`.
    """
    from deepscope.export import import_model as import_package

    return import_package(Path(package), Path(out), weights_format=weights)


def track(out: PathLike, **options: Any) -> TrackResult:
    """Track objects through a time-lapse, as ``deepscope track`` does.

    Takes the keyword arguments of :func:`deepscope.tracking.run.track` (``labels=``,
    or ``movie=`` with ``model=``; ``max_distance``, ``gap_frames``, ``divisions`` …);
    ``model`` may also be a shipped model's name or a loaded model.
    """
    from deepscope.tracking.run import track as track_movie

    if options.get("model") is not None:
        options["model"] = _model_folder(options["model"])
    return track_movie(out, **options)
