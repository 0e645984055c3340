"""The trained-model folder: everything predict, QC and export need, and nothing else.

Layout (format version 1)::

    model/
      deepscope_model.json   format version, task, channels, axes, training summary
      config.yaml            the full validated config
      normalization.json     statistics used to normalise inputs (and targets)
      weights.pt             state dict of the chosen (best) network
      checkpoints/*.pt       state dicts of the periodically kept epochs and the last one
      history.csv            training and validation loss per epoch
      MODEL_CARD.md          a human-readable description
      network.pt|.onnx       instead of weights.pt, for models imported with TorchScript or
                             ONNX weights only (``deepscope import``; info["network"])
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepscope import __version__
from deepscope.config import TaskConfigBase, load_config
from deepscope.data.normalize import PercentileNormalizer
from deepscope.errors import ConfigError, ModelFolderError, OutputError
from deepscope.tasks import get_task
from deepscope.tasks.base import Task

MODEL_FORMAT_VERSION = 1
INFO_FILE = "deepscope_model.json"


@dataclass
class TrainedModel:
    """A loaded model folder."""

    folder: Path
    config: TaskConfigBase
    task: Task
    network: nn.Module
    normalizer: PercentileNormalizer
    target_normalizer: PercentileNormalizer | None
    info: dict[str, Any] = field(default_factory=dict)
    #: The prediction options applied to it (``predict_options.configure_model``), so
    #: that cluster workers loading the same folder configure it the same way.
    prediction_options: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        """One line: the task, the folder and the network's size (not every layer)."""
        params = sum(p.numel() for p in self.network.parameters())
        return (
            f"TrainedModel({self.config.task!r}, {str(self.folder)!r}, "
            f"{int(self.info.get('spatial_dims', self.config.data.spatial_dims))}D, "
            f"{self.in_channels} input channel(s), {params:,} weights)"
        )

    @property
    def in_channels(self) -> int:
        """Number of input channels the network expects."""
        return int(self.info["in_channels"])

    def checkpoint_names(self) -> list[str]:
        """Names of the kept checkpoints, oldest first (e.g. ``epoch_0010``)."""
        return sorted(p.stem for p in (self.folder / "checkpoints").glob("*.pt"))

    def network_from_checkpoint(self, name: str) -> nn.Module:
        """A copy of the network with the weights of checkpoint ``name``."""
        net = self.task.build_model(self.in_channels)
        net.load_state_dict(_load_state(self.folder / "checkpoints" / f"{name}.pt"))
        return net.eval()


def _load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFolderError(
            "the weights file is missing", path, "copy the whole model folder again"
        ) from None
    except Exception as err:  # noqa: BLE001  (torch raises many types on damaged files)
        raise ModelFolderError(
            f"the weights file cannot be read ({type(err).__name__})",
            path,
            "the file is damaged; copy the model folder again or retrain",
        ) from None


def save_model_folder(
    folder: Path,
    *,
    config: TaskConfigBase,
    weights: dict[str, torch.Tensor],
    in_channels: int,
    input_axes: str,
    normalizer: PercentileNormalizer,
    target_normalizer: PercentileNormalizer | None = None,
    checkpoints: dict[str, dict[str, torch.Tensor]] | None = None,
    history_csv: Path | None = None,
    training: dict[str, Any] | None = None,
    network_file: tuple[str, Path] | None = None,
) -> Path:
    """Write a complete model folder atomically (built aside, then renamed into place).

    An existing folder at ``folder`` is replaced only once the new one is complete.
    ``network_file`` = (format, path) stores a TorchScript or ONNX network instead of a
    state dict (models imported with such weights only; ``weights`` is then empty).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent)
        )
    except OSError as err:
        raise OutputError(
            f"cannot write here ({err.strerror})",
            folder.parent,
            "choose a folder you can write to, with free space",
        ) from None
    try:
        task = get_task(config.task)(config)
        info = {
            "format_version": MODEL_FORMAT_VERSION,
            "task": config.task,
            "deepscope_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "in_channels": in_channels,
            "out_channels": task.out_channels(in_channels),
            "spatial_dims": config.data.spatial_dims,
            "input_axes": input_axes,
            "divisibility": task.divisibility(),
            "config_digest": config.digest(),
            "training": training or {},
        }
        if network_file is not None:
            fmt, src = network_file
            name = f"network{Path(src).suffix}"
            shutil.copyfile(src, tmp / name)
            info["network"] = {"format": fmt, "file": name}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
        (tmp / "config.yaml").write_text(config.to_yaml())
        norm = {"input": normalizer.to_dict()}
        if target_normalizer is not None:
            norm["target"] = target_normalizer.to_dict()
        (tmp / "normalization.json").write_text(json.dumps(norm, indent=2))
        if network_file is None:
            torch.save(weights, tmp / "weights.pt")
        (tmp / "checkpoints").mkdir()
        for name, state in (checkpoints or {}).items():
            torch.save(state, tmp / "checkpoints" / f"{name}.pt")
        if history_csv is not None and history_csv.exists():
            shutil.copyfile(history_csv, tmp / "history.csv")
        (tmp / "MODEL_CARD.md").write_text(model_card(config, info))
        _swap_into_place(tmp, folder)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(
            f"the model folder could not be written ({err.strerror})",
            folder,
            "free disk space or choose a writable output folder, then run with --resume",
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _swap_into_place(tmp: Path, folder: Path) -> None:
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


_ARCH_NAMES = {
    "unet": "U-Net",
    "small": "small VGG-style CNN",
    "resnet18": "ResNet-18-like CNN",
    "unet_encoder": "U-Net encoder + classifier",
}


def model_card(config: TaskConfigBase, info: dict[str, Any]) -> str:
    """A short Markdown description of the model for people."""
    task = get_task(config.task)
    t = info.get("training", {})
    lines = [
        f"# {task.title} model",
        "",
        task.description,
        "",
        "## Training",
        f"- created: {info['created']} with deepscope {info['deepscope_version']}",
        f"- input: {info['in_channels']} channel(s), {info['spatial_dims']}D, "
        f"axes {info['input_axes']}",
    ]
    for key in (
        "images",
        "epochs_trained",
        "best_epoch",
        "best_val_loss",
        "minutes",
        "stopped_because",
        "skipped_steps",  # steps with non-finite gradients (see TaskModule)
    ):
        if key in t:
            lines.append(f"- {key.replace('_', ' ')}: {t[key]}")
    lines += [
        "",
        "## Network",
        f"- {_ARCH_NAMES.get(config.model.architecture, config.model.architecture)}, depth "
        f"{config.model.depth}, {config.model.base_channels} base channels",
        "",
        "## How to use",
        "`deepscope predict <this folder> --input <images> --out <results>`",
        "",
        "Quality control results are added below by `deepscope qc` when it is run.",
        "",
    ]
    return "\n".join(lines)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFolderError(
            f"{path.name} is missing", path.parent, "copy the whole model folder again"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFolderError(
            f"{path.name} is damaged (not valid JSON)", path, "copy the model folder again"
        ) from None


def load_model_folder(folder: str | Path) -> TrainedModel:
    """Load a model folder written by :func:`save_model_folder`.

    Raises
    ------
    ModelFolderError
        When the folder is missing, incomplete, or of a newer format version.
    """
    folder = Path(folder)
    info_path = folder / INFO_FILE
    if not folder.is_dir():
        from deepscope.workflow.pretrained import available_pretrained

        shipped = ", ".join(available_pretrained())
        raise ModelFolderError(
            "model folder not found",
            folder,
            "give the 'model' folder inside a training run, e.g. runs/n2v1/model"
            + (f", or the name of a model shipped with deepscope: {shipped}" if shipped else ""),
        )
    if not info_path.exists():
        hint = (
            " (this looks like a run folder: use its 'model' sub-folder)"
            if (folder / "model" / INFO_FILE).exists()
            else ""
        )
        raise ModelFolderError(
            f"this is not a deepscope model folder: {INFO_FILE} is missing{hint}",
            folder,
            "give the 'model' folder written by 'deepscope train'",
        )
    info = _read_json(info_path)
    version = int(info.get("format_version", 0))
    if version > MODEL_FORMAT_VERSION:
        raise ModelFolderError(
            f"the model folder has format version {version}, newer than this deepscope "
            f"understands ({MODEL_FORMAT_VERSION})",
            folder,
            "update deepscope (pip install -U deepscope)",
        )
    try:
        config = load_config(folder / "config.yaml")
    except ConfigError as err:
        raise ModelFolderError(
            f"its config is invalid: {err.problem}", folder / "config.yaml"
        ) from None
    norm = _read_json(folder / "normalization.json")
    task = get_task(config.task)(config)
    if "network" in info:  # imported with TorchScript or ONNX weights only
        from deepscope.export.onnx_engine import load_network_file

        network = load_network_file(folder / info["network"]["file"], info["network"]["format"])
    else:
        network = task.build_model(int(info["in_channels"]))
        network.load_state_dict(_load_state(folder / "weights.pt"))
        network.eval()
    return TrainedModel(
        folder=folder,
        config=config,
        task=task,
        network=network,
        normalizer=PercentileNormalizer.from_dict(norm["input"]),
        target_normalizer=PercentileNormalizer.from_dict(norm["target"])
        if "target" in norm
        else None,
        info=info,
    )


def use_checkpoint(folder: str | Path, name: str) -> dict[str, Any]:
    """Make the kept checkpoint ``name`` (e.g. ``epoch_0010``) the model's weights.

    The weights chosen at training (the best validation loss) are kept first as
    ``checkpoints/best.pt``, so ``use_checkpoint(folder, "best")`` goes back to them.
    ``deepscope_model.json`` records the choice under ``weights_from``. Quality-control
    results in the folder describe the previous weights until QC is run again.

    Returns
    -------
    dict
        The updated model information.

    Raises
    ------
    ModelFolderError
        When the folder or the checkpoint does not exist.
    """
    folder = Path(folder)
    info = _read_json(folder / INFO_FILE)
    ckpt_dir = folder / "checkpoints"
    available = sorted(p.stem for p in ckpt_dir.glob("*.pt"))
    best = ckpt_dir / "best.pt"
    if name not in available and not (name == "best" and not best.exists()):
        raise ModelFolderError(
            f"there is no checkpoint called {name!r}",
            ckpt_dir,
            f"choose one of: {', '.join(['best', *available]) or 'none kept'}",
        )
    if not best.exists():
        shutil.copyfile(folder / "weights.pt", best)
    source = ckpt_dir / f"{name}.pt"
    _load_state(source)  # refuse a damaged file before replacing anything
    tmp = folder / ".weights.pt.partial"
    shutil.copyfile(source, tmp)
    os.replace(tmp, folder / "weights.pt")
    info["weights_from"] = name
    (folder / f".{INFO_FILE}.partial").write_text(json.dumps(info, indent=2))
    os.replace(folder / f".{INFO_FILE}.partial", folder / INFO_FILE)
    return info
