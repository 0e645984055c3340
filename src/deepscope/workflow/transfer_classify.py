"""Start a classifier from earlier weights: a deepscope model folder or a state-dict file.

Sources that work:

* a deepscope **classification** model (any classes): every block is copied, the last
  layer (``head``) starts new when the number of classes differs;
* a deepscope **U-Net** model (semantic, n2v, care, …, 2D; the U-Net of a StarDist
  model too): its encoder (``encoders`` and ``bottleneck``) starts a ``unet_encoder``
  backbone of the same depth, width and batch-norm setting (the task takes these from
  the start model by itself);
* a **PyTorch state-dict file** (``torch.save(model.state_dict(), path)``, or a
  Lightning checkpoint) whose tensor names match the chosen backbone.

A tensor is copied when the new network has one with the same name and shape. The start
is refused, with what matched and what did not, when fewer than half of the backbone's
tensors (all but the head) fit: such weights come from another network.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from deepscope.config import TaskConfigBase
from deepscope.errors import DeepscopeError
from deepscope.workflow.model_folder import load_model_folder
from deepscope.workflow.transfer import TransferReport, _is_weight, _unet_prefix

MIN_SHARE = 0.5
"""Share of the backbone's tensors that must fit for a start to be accepted."""


def _read_state(source: Path) -> tuple[dict[str, torch.Tensor], str, str]:
    """The weights of ``source`` (folder or file), its task and its config digest."""
    if source.is_dir():
        model = load_model_folder(source)  # explanatory errors for non-model folders
        state = model.network.state_dict()
        if getattr(model.config.model, "architecture", "") == "unet":
            if model.config.data.spatial_dims != 2:
                raise DeepscopeError(
                    "the model to start from is a 3D U-Net; a classifier works on 2D images",
                    source,
                    "start from a 2D model, or train from scratch (leave out --from)",
                )
            # the U-Net's encoder, under its own names (StarDist's sits under "unet.")
            prefix = _unet_prefix(model.network) or ""
            state = {
                k[len(prefix) :]: v
                for k, v in state.items()
                if k.startswith((f"{prefix}encoders.", f"{prefix}bottleneck."))
            }
        return state, model.config.task, str(model.info.get("config_digest", ""))
    if not source.is_file():
        raise DeepscopeError(
            "the model to start from does not exist",
            source,
            "give a deepscope model folder (e.g. runs/cls1/model) or a PyTorch weights file",
        )
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  torch raises many types on foreign files
        raise DeepscopeError(
            f"this file cannot be read as PyTorch weights ({type(err).__name__})",
            source,
            "give a file written with torch.save(model.state_dict(), path), or a deepscope "
            "model folder",
        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = {k.removeprefix("model."): v for k, v in loaded["state_dict"].items()}
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise DeepscopeError(
            "this file holds no state dict (a mapping of layer names to weight tensors)",
            source,
            "save the weights with torch.save(model.state_dict(), path)",
        )
    return loaded, "state-dict file", ""


def _network_for(config: TaskConfigBase) -> nn.Module:
    from deepscope.tasks import get_task

    task = get_task(config.task)(config)
    return task.build_model(int(config.classify.channels or 1))  # type: ignore[attr-defined]


def check_start_model(source: str | Path, config: TaskConfigBase) -> None:
    """Check before any training work that ``source`` can start this classifier.

    Raises
    ------
    DeepscopeError
        When the source cannot be read or too few of its weights fit (what matched and
        what did not is named).
    """
    load_start_weights(_network_for(config), source, config)


def load_start_weights(
    network: nn.Module, source: str | Path, config: TaskConfigBase
) -> TransferReport:
    """Copy every fitting tensor of ``source`` into ``network`` (in place); report what.

    Raises
    ------
    DeepscopeError
        When the source cannot be read or fewer than ``MIN_SHARE`` of the backbone's
        tensors fit.
    """
    source = Path(source)
    theirs, task, digest = _read_state(source)
    report = TransferReport(source=source.resolve(), source_task=task, source_digest=digest)
    ours = network.state_dict()
    merged: dict[str, torch.Tensor] = {}
    for name, tensor in ours.items():
        other = theirs.get(name)
        if other is not None and other.shape == tensor.shape:
            merged[name] = other.to(dtype=tensor.dtype)
            if _is_weight(name):
                report.loaded.append(name)
            continue
        merged[name] = tensor
        if _is_weight(name):
            report.not_loaded[name] = (
                "not in the start model"
                if other is None
                else f"size {tuple(other.shape)} there, {tuple(tensor.shape)} here"
            )
    report.unused = [n for n in theirs if n not in ours and _is_weight(n)]
    backbone = [n for n in ours if _is_weight(n) and not n.startswith("head.")]
    fitting = [n for n in backbone if n in report.loaded]
    if len(fitting) < MIN_SHARE * len(backbone):
        arch = getattr(config.model, "architecture", "?")
        missing = [n for n in backbone if n not in report.loaded][:4]
        wrong_size = {k: v for k, v in report.not_loaded.items() if v.startswith("size")}
        detail = (
            f"only {len(fitting)} of the {len(backbone)} weight tensors of the '{arch}' "
            f"backbone fit (matched: {', '.join(fitting[:3]) or 'none'}; not matched: "
            f"{', '.join(missing)}"
        )
        if wrong_size:
            first = next(iter(wrong_size.items()))
            detail += f"; e.g. {first[0]} has {first[1]}"
        if report.unused:
            detail += f"; the file's own tensors are named e.g. {', '.join(report.unused[:3])}"
        raise DeepscopeError(
            f"these weights do not fit this classifier: {detail})",
            source,
            "start from a deepscope classification model, a 2D deepscope U-Net model "
            "(backbone unet_encoder, chosen by itself), or a state dict saved from the same "
            "backbone (--backbone small|resnet18|unet_encoder) with the same model.depth and "
            "model.base_channels; or train from scratch (leave out --from)",
        )
    network.load_state_dict(merged, strict=True)
    return report
