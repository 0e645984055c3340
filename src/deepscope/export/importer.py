"""Import a BioImage.IO model package as a deepscope model folder.

Supported: packages written by ``deepscope export --format bioimageio`` (they carry the
full deepscope config and normalisation under ``config.deepscope``), with any of their
weight formats:

- ``pytorch_state_dict`` whose architecture is one of deepscope's (the default): the
  model folder is identical to the original (the weights file byte for byte, the tuned
  settings ``thresholds.json`` and the 8-bit calibration ``int8_calibration.json``, which
  the export attaches) and can be fine-tuned with ``--from``;
- ``torchscript`` or ``onnx`` only: the network file is kept as it is; ``predict`` and
  ``qc`` work, fine-tuning works for TorchScript (same parameter names), not for ONNX.

Packages from other tools (no ``config.deepscope``) are imported when their processing is
one deepscope reproduces (see :mod:`deepscope.export.foreign`: restoration and softmax
segmentation models with percentile or fixed normalisation, TorchScript or ONNX weights);
the others are refused with the reason, and bioimageio.core's ``bioimageio predict``,
deepImageJ or ilastik run them.

Nothing is downloaded: only local ``.zip`` files or folders with a ``rdf.yaml`` /
``bioimageio.yaml`` are read.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from deepscope.config import config_from_dict
from deepscope.data.normalize import PercentileNormalizer
from deepscope.errors import ConfigError, DeepscopeError, ModelFolderError, OutputError
from deepscope.export.onnx_engine import NETWORK_FORMATS
from deepscope.workflow.model_folder import (
    INFO_FILE,
    MODEL_FORMAT_VERSION,
    load_model_folder,
    save_model_folder,
)

#: Weight formats tried, best first.
WEIGHT_PRIORITY = ("pytorch_state_dict", "torchscript", "onnx")


def import_bioimageio(
    source: str | Path,
    out: str | Path,
    *,
    weights_format: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Turn the BioImage.IO package ``source`` into the deepscope model folder ``out``.

    Parameters
    ----------
    source
        A local package: ``.zip`` file, or a folder holding ``rdf.yaml`` / ``bioimageio.yaml``.
    out
        The new model folder (must not exist).
    weights_format
        Use this weight format of the package (default: the best available, in the
        order of :data:`WEIGHT_PRIORITY`).
    log
        Receives progress messages.

    Returns
    -------
    Path
        ``out``, a folder that ``deepscope predict`` and ``qc`` use.

    Raises
    ------
    DeepscopeError
        Unreadable or foreign package, unsupported weights, an existing ``out``.
    """
    source, out = Path(source), Path(out)
    if out.exists():
        raise OutputError(
            "the output folder already exists", out, "choose a new folder for the model"
        )
    descr = _load(source)
    record = _deepscope_record(descr, source)
    made_by_deepscope = record is not None
    if record is None:  # made by another tool: settings derived from its description
        from deepscope.export.foreign import foreign_record

        fmt = _choose_weights(descr, source, weights_format, prefer_files=True)
        record = foreign_record(descr, source, fmt)
        log(f"'{descr.name}' was made by another tool; its processing maps to deepscope's")
    else:
        fmt = _choose_weights(descr, source, weights_format)
    try:
        config = config_from_dict(record["config"], source)
    except ConfigError as err:
        raise ModelFolderError(
            f"the deepscope settings in the package are not valid for this deepscope: "
            f"{err.problem}",
            source,
            "update deepscope to the version that exported it "
            f"({record.get('deepscope_version', 'unknown')})",
        ) from None
    info = record["info"]
    version = int(info.get("format_version", 0))
    if version > MODEL_FORMAT_VERSION:
        raise ModelFolderError(
            f"the package holds a model of format version {version}, newer than this "
            f"deepscope understands ({MODEL_FORMAT_VERSION})",
            source,
            "update deepscope",
        )
    norm = record["normalization"]
    common: dict[str, Any] = dict(
        config=config,
        in_channels=int(info["in_channels"]),
        input_axes=str(info["input_axes"]),
        normalizer=PercentileNormalizer.from_dict(norm["input"]),
        target_normalizer=PercentileNormalizer.from_dict(norm["target"])
        if "target" in norm
        else None,
        training={**record.get("training", {}), "imported_from": str(source.resolve())},
    )
    _check_network_file_layout(config, fmt, source)
    entry = getattr(descr.weights, fmt)
    data = _read_bytes(entry, source)
    log(f"importing the {fmt} weights of {source.name} ...")
    work = Path(tempfile.mkdtemp(prefix=".deepscope-import-"))
    try:
        history = _attachment(descr, "history.csv", source, work)
        try:
            _save(out, fmt, entry, data, source, common, history, work)
            if made_by_deepscope:
                _restore_tuned_settings(out, fmt, descr, source, log)
            load_model_folder(out)  # the new folder must load, or it is not kept
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"model folder written: {out} ({INFO_FILE} says where it came from)")
    return out


def _check_network_file_layout(config: Any, fmt: str, source: Path) -> None:
    """TorchScript/ONNX files of tasks exported with extra network arguments cannot be used.

    Their output layout is the package's (e.g. StarDist's channels last), not deepscope's.
    """
    from deepscope.export.descriptions import get_export

    export = get_export(config.task)
    if fmt != "pytorch_state_dict" and export is not None and export.network_kwargs:
        raise DeepscopeError(
            f"the {fmt} weights of a {config.task} package give the network output in the "
            "BioImage.IO layout, which deepscope's prediction does not read",
            source,
            "import the package's PyTorch state dict (the default: leave out --weights)",
        )


def _attachment(descr: Any, name: str, source: Path, work: Path) -> Path | None:
    """Copy the attached file ``name`` of the package into ``work``; None if absent."""
    for att in descr.attachments:
        if str(att.source).replace("\\", "/").rsplit("/", 1)[-1] == name:
            path = work / name
            path.write_bytes(_read_bytes(att, source))
            return path
    return None


def _restore_tuned_settings(
    out: Path, fmt: str, descr: Any, source: Path, log: Callable[[str], None]
) -> None:
    """Write the tuned-settings files the export attached back into the model folder ``out``.

    ``thresholds.json`` always (prediction applies it whatever the weights' format); the
    8-bit calibration only beside the state dict it was made for (it records the digest
    of ``weights.pt``, which the import keeps byte for byte), never beside a TorchScript
    or ONNX network file, whose layers it does not describe.
    """
    from deepscope.engine.int8 import CALIBRATION_FILE
    from deepscope.workflow.int8_models import int8_calibration_of
    from deepscope.workflow.predict import TUNED_SETTINGS_FILE

    if _attachment(descr, TUNED_SETTINGS_FILE, source, out) is not None:
        log(f"restored the tuned settings ({TUNED_SETTINGS_FILE})")
    if fmt != "pytorch_state_dict":
        return
    if _attachment(descr, CALIBRATION_FILE, source, out) is None:
        return
    if int8_calibration_of(load_model_folder(out)) is None:  # other weights or version
        (out / CALIBRATION_FILE).unlink()
        log(f"left out {CALIBRATION_FILE}: it does not apply to the package's weights")
    else:
        log(f"restored the 8-bit calibration ({CALIBRATION_FILE})")


def _save(
    out: Path,
    fmt: str,
    entry: Any,
    data: bytes,
    source: Path,
    common: dict[str, Any],
    history: Path | None,
    work: Path,
) -> None:
    if fmt == "pytorch_state_dict":
        _check_architecture(entry, source, common["config"], common["in_channels"])
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise ModelFolderError(
                f"the state dict in the package cannot be read ({type(err).__name__})",
                source,
                "export the model again",
            ) from None
        save_model_folder(out, weights=state, history_csv=history, **common)
        _keep_weight_bytes(out / "weights.pt", data)
    else:
        path = work / f"network{'.pt' if fmt == 'torchscript' else '.onnx'}"
        path.write_bytes(data)
        save_model_folder(out, weights={}, network_file=(fmt, path), history_csv=history, **common)


def _keep_weight_bytes(path: Path, data: bytes) -> None:
    """Make ``path`` hold the package's state dict byte for byte (``data``).

    ``torch.save`` of the loaded state usually gives the same bytes, but not across
    PyTorch versions; the 8-bit calibration is tied to the file's digest, and the model
    folder is to be the original's.
    """
    if path.read_bytes() == data:
        return
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError as err:
        raise OutputError(
            f"the model folder could not be written ({err.strerror})",
            path.parent,
            "free disk space or choose a writable output folder",
        ) from None


def _load(source: Path):  # noqa: ANN202
    from bioimageio.spec import InvalidDescr, load_model_description

    if not source.exists():
        raise DeepscopeError(
            "the model package was not found", source, "give a .zip file or package folder"
        )
    if source.is_dir() and not any((source / n).exists() for n in ("rdf.yaml", "bioimageio.yaml")):
        raise DeepscopeError(
            "this folder is not a BioImage.IO package (no rdf.yaml or bioimageio.yaml)",
            source,
            "give the package's .zip file or the folder holding its bioimageio.yaml",
        )
    try:
        descr = load_model_description(source, format_version="latest", perform_io_checks=False)
    except Exception as err:  # noqa: BLE001  (bioimageio raises many types on bad packages)
        raise DeepscopeError(
            f"this is not a readable BioImage.IO model ({type(err).__name__}: {str(err)[:300]})",
            source,
            "give a BioImage.IO model package (.zip)",
        ) from None
    if isinstance(descr, InvalidDescr):
        raise DeepscopeError(
            "this BioImage.IO model description is invalid",
            source,
            "check it with 'bioimageio validate' or export it again",
        )
    return descr


def _deepscope_record(descr: Any, source: Path) -> dict[str, Any] | None:
    """The deepscope settings stored by deepscope's export; None for other tools' packages."""
    extra = descr.config.model_extra or {}
    record = extra.get("deepscope")
    if record is None:
        return None
    if not isinstance(record, dict) or not {"config", "normalization", "info"} <= set(record):
        raise DeepscopeError(
            "the package's deepscope settings (config.deepscope) are incomplete",
            source,
            "export the model again with deepscope",
        )
    return record


def _choose_weights(
    descr: Any, source: Path, wanted: str | None, *, prefer_files: bool = False
) -> str:
    """The weight format to import: ``wanted``, else the best available.

    ``prefer_files``: network files (TorchScript, ONNX) before a state dict, for packages
    whose architecture code is not deepscope's.
    """
    order = (*NETWORK_FORMATS, "pytorch_state_dict") if prefer_files else WEIGHT_PRIORITY
    available = [f for f in order if getattr(descr.weights, f, None) is not None]
    if wanted is not None:
        if wanted not in WEIGHT_PRIORITY:
            raise DeepscopeError(
                f"deepscope cannot use {wanted} weights",
                source,
                f"choose one of {', '.join(WEIGHT_PRIORITY)}",
            )
        if wanted not in available:
            raise DeepscopeError(
                f"the package has no {wanted} weights (it has: {', '.join(available) or 'none'})",
                source,
                "choose one of those",
            )
        return wanted
    if not available:
        raise DeepscopeError(
            "the package has no weights deepscope can use (PyTorch state dict, TorchScript "
            "or ONNX)",
            source,
            "export the model with one of these weight formats",
        )
    assert set(available) <= set(WEIGHT_PRIORITY[:1] + NETWORK_FORMATS)
    return available[0]


def _check_architecture(entry: Any, source: Path, config: Any, in_channels: int) -> None:
    """The state dict's architecture must be the deepscope network its config builds.

    The package may build it with the export's extra arguments (``network_kwargs`` of
    the task's export entry, e.g. StarDist's channel-last output); the weights are the
    same, and deepscope builds the network without them.
    """
    from deepscope.export.descriptions import get_export
    from deepscope.tasks import get_task

    task = get_task(config.task)(config)
    cls = type(task.build_model(in_channels))
    name = str(entry.architecture.callable)
    export = get_export(config.task)
    extra = export.network_kwargs if export is not None else {}
    expected = {**task.model_kwargs(in_channels), **extra}
    if name != cls.__name__ or dict(entry.architecture.kwargs) != expected:
        raise DeepscopeError(
            f"the package's network ({name} with {dict(entry.architecture.kwargs)}) is not the "
            f"deepscope {cls.__name__} its settings describe ({expected})",
            source,
            "import its TorchScript or ONNX weights instead (--weights torchscript)",
        )


def _read_bytes(entry: Any, source: Path) -> bytes:
    from bioimageio.spec.utils import get_reader

    try:
        return get_reader(entry.source).read()
    except Exception as err:  # noqa: BLE001
        raise ModelFolderError(
            f"the weights file {entry.source} cannot be read from the package "
            f"({type(err).__name__})",
            source,
            "the package is damaged; export or download it again",
        ) from None
