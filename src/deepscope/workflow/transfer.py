"""Transfer learning: start a training from the weights of an earlier deepscope model.

Any deepscope model folder whose network has the same shape (architecture, 2D/3D, depth,
base channels, batch normalisation) can start a training of any task: every layer whose
name and size match is copied, the others (typically the last layer when the number of
output channels differs, or the first when the input channels differ) start new, and the
report says which. Networks of a different shape are refused with both settings named.

The U-Net is matched as a part: StarDist's network holds the shared U-Net as ``unet``
(behind a stem that reduces the image to StarDist's grid, and before its two heads), so
its ``unet.encoders.0.0.weight`` is the ``encoders.0.0.weight`` of the plain U-Net of
Noise2Void, CARE or semantic segmentation. A StarDist model can thus start those
trainings from its U-Net, and they a StarDist training; the stem and heads, and U-Net
layers whose sizes differ (the first convolution behind a stem, the last one), start new.

The encoder (the down-sampling half of the U-Net and its bottleneck) can then be kept
fixed for the first epochs (``training.freeze_encoder_epochs``), so that a new decoder
adapts to the transferred features before everything is fine-tuned; the freezing itself
is done by :class:`deepscope.engine.module.TaskModule`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepscope.config import TaskConfigBase, load_config
from deepscope.errors import ConfigError, DeepscopeError, ModelFolderError
from deepscope.workflow.model_folder import INFO_FILE, load_model_folder

#: Network settings that must be equal for weights to be transferable.
SHAPE_FIELDS = ("architecture", "spatial_dims", "depth", "base_channels", "batch_norm")


@dataclass
class TransferReport:
    """What was copied from the start model into the new network.

    Attributes
    ----------
    source
        The start model folder (absolute path).
    source_task
        Task of the start model (e.g. ``"n2v"``).
    source_digest
        Config digest of the start model (as in its ``deepscope_model.json``).
    loaded
        Names of the copied weight tensors.
    not_loaded
        Name → reason for every weight tensor of the new network left as new.
    unused
        Names of the start model's tensors that the new network does not have.
    """

    source: Path
    source_task: str
    source_digest: str
    loaded: list[str] = field(default_factory=list)
    not_loaded: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Return a short text for the training log."""
        total = len(self.loaded) + len(self.not_loaded)
        text = (
            f"started from {self.source} ({self.source_task} model): copied {len(self.loaded)} "
            f"of {total} weight tensors"
        )
        if self.not_loaded:
            listed = "; ".join(f"{k} ({v})" for k, v in list(self.not_loaded.items())[:6])
            more = len(self.not_loaded) - 6
            text += f"; left new: {listed}" + (f" and {more} more" if more > 0 else "")
        return text + "."

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready record (stored in the new model's ``deepscope_model.json``)."""
        return {
            "folder": str(self.source),
            "task": self.source_task,
            "config_digest": self.source_digest,
            "loaded": len(self.loaded),
            "not_loaded": dict(self.not_loaded),
            "unused": list(self.unused),
        }


def _network_settings(config: TaskConfigBase) -> dict[str, Any]:
    m = config.model
    return {
        "architecture": m.architecture,
        "spatial_dims": config.data.spatial_dims,
        "depth": m.depth,
        "base_channels": m.base_channels,
        "batch_norm": m.batch_norm,
    }


def describe_network(settings: dict[str, Any]) -> str:
    """Describe network settings in words, e.g. ``"2D U-Net, depth 2, 32 base channels"``."""
    bn = "with" if settings["batch_norm"] else "without"
    return (
        f"{settings['spatial_dims']}D {settings['architecture'].replace('unet', 'U-Net')}, "
        f"depth {settings['depth']}, {settings['base_channels']} base channels, {bn} batch "
        "normalisation"
    )


def adopt_start_network(
    config: TaskConfigBase, source: str | Path
) -> tuple[TaskConfigBase, dict[str, Any]]:
    """Take the network settings the user did not set from the model to start from.

    ``train stardist --from nuclei`` should fine-tune the shipped model as it is, not
    fail because the default network of a new training is smaller. Every shape setting
    left unset (not in the config file, not given as an option) is taken from the start
    model: ``model.architecture / depth / base_channels / batch_norm``, 2D or 3D with
    its patch size, and, for a model of the same task, the task's own
    ``network_fields`` (StarDist: rays, grid, feature channels). Settings the user did
    set are kept; when they do not fit, :func:`check_start_model` says so.

    Returns
    -------
    config, adopted
        The completed config and the settings taken (dotted key → value); the config
        is returned unchanged when nothing was taken or the start model is unreadable
        (:func:`check_start_model` then reports it).
    """
    from deepscope.config import config_from_dict
    from deepscope.tasks import get_task

    if config.task == "classify":  # classifiers choose their backbone themselves
        return config, {}
    try:
        theirs = load_config(Path(source) / "config.yaml")
    except (ConfigError, OSError):
        return config, {}
    adopted: dict[str, Any] = {}

    def take(section: str, name: str) -> None:
        ours_section, their_section = getattr(config, section), getattr(theirs, section)
        value = getattr(their_section, name)
        if name not in ours_section.model_fields_set and getattr(ours_section, name) != value:
            adopted[f"{section}.{name}"] = value

    for name in SHAPE_FIELDS:
        take("data" if name == "spatial_dims" else "model", name)
    if "data.spatial_dims" in adopted:
        take("data", "patch_size")
    if theirs.task == config.task:
        for name in get_task(config.task).network_fields:
            take(config.task, name)
    if not adopted:
        return config, {}
    # exclude_unset: settings the user left unset stay unset (task defaults that depend
    # on the data, such as StarDist's patch size, are then still fitted to it)
    data = config.model_dump(mode="json", exclude_unset=True)
    for key, value in adopted.items():
        section, name = key.split(".")
        data.setdefault(section, {})[name] = value
    return config_from_dict(data), adopted


def check_start_model(source: str | Path, config: TaskConfigBase) -> TaskConfigBase:
    """Check, before any training work, that ``source`` can start a training of ``config``.

    Parameters
    ----------
    source
        A deepscope model folder (the ``model`` folder of a training run).
    config
        The new training's config.

    Returns
    -------
    TaskConfigBase
        The start model's config.

    Raises
    ------
    ModelFolderError
        When ``source`` is not a readable deepscope model folder.
    DeepscopeError
        When its network has a different shape (both settings are named).
    """
    if config.task == "classify":  # classifiers have their own rules (backbones, files)
        from deepscope.workflow import transfer_classify

        transfer_classify.check_start_model(source, config)
        return config
    source = Path(source)
    if not (source / INFO_FILE).exists():
        load_model_folder(source)  # raises the explanatory "not a model folder" error
    _refuse_onnx_only(source)
    try:
        source_config = load_config(source / "config.yaml")
    except ConfigError as err:
        raise ModelFolderError(
            f"the model to start from has an invalid config: {err.problem}",
            source / "config.yaml",
            "start from another model folder, or retrain that model",
        ) from None
    ours, theirs = _network_settings(config), _network_settings(source_config)
    differing = [k for k in SHAPE_FIELDS if ours[k] != theirs[k]]
    if differing:
        raise DeepscopeError(
            f"cannot start from this model: its network is a {describe_network(theirs)} "
            f"(see {source / 'config.yaml'}), but this training's network is a "
            f"{describe_network(ours)} (your settings); they differ in "
            f"{', '.join(differing)}, so no weights fit.",
            source,
            "start from a model trained with the same network settings, or change this "
            "training's settings to match that config.yaml (model.depth, model.base_channels, "
            "model.batch_norm, --3d).",
        )
    return source_config


def load_start_weights(
    network: nn.Module, source: str | Path, config: TaskConfigBase
) -> TransferReport:
    """Copy every matching weight tensor of the model in ``source`` into ``network``.

    A tensor is copied when the new network has one of the same name and shape (the
    U-Net's tensors matched by their name inside the U-Net, so that StarDist and the
    U-Net tasks start each other); all others keep their fresh initialisation and are
    listed in the report.

    Parameters
    ----------
    network
        The new, freshly built network (modified in place).
    source
        The start model folder.
    config
        The new training's config (checked with :func:`check_start_model`).

    Returns
    -------
    TransferReport
        What was copied and what was not.

    Raises
    ------
    DeepscopeError
        When the networks differ in shape, or when not a single weight tensor fits.
    """
    if config.task == "classify":
        from deepscope.workflow import transfer_classify

        return transfer_classify.load_start_weights(network, source, config)
    source = Path(source)
    check_start_model(source, config)
    start = load_model_folder(source)
    theirs = start.network.state_dict()
    ours = network.state_dict()
    report = TransferReport(
        source=source.resolve(),
        source_task=start.config.task,
        source_digest=str(start.info.get("config_digest", "")),
    )
    ours_unet, theirs_unet = _unet_prefix(network), _unet_prefix(start.network)
    merged: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name, tensor in ours.items():
        their_name = _counterpart(name, ours_unet, theirs_unet)
        other = theirs.get(their_name)
        if other is None:
            reason = "not in the start model"
        elif other.shape != tensor.shape:
            reason = f"size {tuple(other.shape)} there, {tuple(tensor.shape)} here"
            if their_name != name:
                reason += f" (the start model's {their_name})"
            used.add(their_name)
        else:
            merged[name] = other.to(dtype=tensor.dtype)
            used.add(their_name)
            if _is_weight(name):
                report.loaded.append(name)
            continue
        merged[name] = tensor
        if _is_weight(name):
            report.not_loaded[name] = reason
    report.unused = [n for n in theirs if n not in used and _is_weight(n)]
    if not report.loaded:
        raise DeepscopeError(
            f"no layer of the model in {source} fits this training's network: "
            f"{_describe_model(start.config)} there, {_describe_model(config)} here; its "
            f"weights are named e.g. {_examples(theirs)}, this network's e.g. "
            f"{_examples(ours)}",
            source,
            "start from a model trained with the same network settings, or train from scratch "
            "(leave out --from).",
        )
    network.load_state_dict(merged, strict=True)
    return report


def _unet_prefix(network: nn.Module) -> str | None:
    """The name prefix of the network's U-Net: ``""`` for a U-Net, ``"unet."`` for StarDist.

    None when the network holds no deepscope U-Net (e.g. a TorchScript import).
    """
    from deepscope.engine.models.unet import UNet

    for name, module in network.named_modules():
        if isinstance(module, UNet):
            return f"{name}." if name else ""
    return None


def _counterpart(name: str, ours_unet: str | None, theirs_unet: str | None) -> str:
    """The start model's name for the tensor ``name`` of the new network.

    A tensor of the new network's U-Net is looked up in the start model's U-Net (so that
    StarDist's ``unet.encoders.0.0.weight`` and a plain U-Net's ``encoders.0.0.weight``
    are one layer); every other tensor under its own name.
    """
    if ours_unet is None or theirs_unet is None or not name.startswith(ours_unet):
        return name
    return theirs_unet + name[len(ours_unet) :]


def _describe_model(config: TaskConfigBase) -> str:
    """The network of a task's config in words, e.g. ``"the n2v network (2D U-Net, ...)"``."""
    words = describe_network(_network_settings(config))
    if config.task == "stardist":
        from deepscope.tasks.stardist import grid_of

        grid = "x".join(str(g) for g in grid_of(config))
        return (
            f"the StarDist network (a stem to grid {grid}, a {words}, probability and "
            "distance heads)"
        )
    return f"the {config.task} network ({words})"


def _examples(state: dict[str, torch.Tensor], n: int = 3) -> str:
    names = [k for k in state if _is_weight(k)][:n]
    return ", ".join(names) if names else "(no weights)"


def _refuse_onnx_only(source: Path) -> None:
    """Refuse a model imported with ONNX weights only (checked before any training work)."""
    try:
        info = json.loads((source / INFO_FILE).read_text())
    except (OSError, ValueError):
        return  # load_model_folder explains an unreadable folder
    network = info.get("network") if isinstance(info, dict) else None
    if isinstance(network, dict) and network.get("format") == "onnx":
        raise DeepscopeError(
            "this model was imported with ONNX weights only, which cannot be trained further",
            source,
            "import the BioImage.IO package again with its state dict (the default of "
            "'deepscope import') and start from that folder",
        )


def _is_weight(name: str) -> bool:
    """Learnt tensors (not batch-norm counters or fixed filters such as blur kernels)."""
    return name.endswith(("weight", "bias", "running_mean", "running_var"))


def save_report(report: TransferReport, run_dir: Path) -> Path:
    """Write the report as ``run_dir/transfer.json`` (read again when the model is saved)."""
    from deepscope.data.io import atomic_write_text

    path = Path(run_dir) / "transfer.json"
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2))
    return path


def read_report(run_dir: Path) -> dict[str, Any] | None:
    """Return the ``transfer.json`` record of a run, or None if it started from scratch."""
    path = Path(run_dir) / "transfer.json"
    return json.loads(path.read_text()) if path.exists() else None
