"""The options of one prediction, checked against the model they are for.

The command line, the Python API and the cluster workers all go through
:func:`configure_model`, so an option means the same wherever it is given and is refused
the same way when the model cannot use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from deepscope.errors import DeepscopeError
from deepscope.workflow.model_folder import TrainedModel

ENGINES = ("pytorch", "onnx")


@dataclass(frozen=True)
class PredictOptions:
    """Settings of one prediction that change the model's result, beyond tiling.

    ``None`` / ``False`` keep what the model folder says.
    """

    #: StarDist: object probability threshold (default: the one tuned after training).
    prob_threshold: float | None = None
    #: StarDist: overlap above which the less likely of two objects is dropped.
    nms_threshold: float | None = None
    #: Semantic: also write instance labels made from the class map.
    instances: bool = False
    #: Semantic: also write the class probabilities.
    probabilities: bool = False
    #: "pytorch", or "onnx" to run the network exported to ONNX with onnxruntime.
    engine: str = "pytorch"

    def as_dict(self) -> dict[str, Any]:
        """Plain values (sent to cluster workers, which rebuild the options)."""
        return asdict(self)


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def configure_model(model: TrainedModel, options: PredictOptions) -> TrainedModel:
    """Apply ``options`` to a loaded model, in place; return it.

    Raises
    ------
    DeepscopeError
        When an option is not one of the model's task or its value is out of range.
    """
    task = model.config.task
    for name in ("prob_threshold", "nms_threshold"):
        value = getattr(options, name)
        if value is None:
            continue
        if task != "stardist":
            raise DeepscopeError(
                f"{_option(name)} is for stardist models, not {task}",
                fix=f"leave out {_option(name)}",
            )
        if not 0 < value < 1:
            raise DeepscopeError(
                f"{_option(name)} {value} must be between 0 and 1", fix="give e.g. 0.5"
            )
        setattr(model.config.stardist, name, value)
        setattr(model.task, name, value)
    for name, key in (("instances", "predict_instances"), ("probabilities", "save_probabilities")):
        if getattr(options, name):
            if task != "semantic":
                raise DeepscopeError(
                    f"{_option(name)} is for semantic segmentation models, not {task}",
                    fix=f"leave out {_option(name)}",
                )
            setattr(model.config.semantic, key, True)
    if options.engine not in ENGINES:
        raise DeepscopeError(
            f"unknown engine '{options.engine}'", fix="use " + " or ".join(ENGINES)
        )
    if options.engine == "onnx":
        from deepscope.export.onnx_engine import use_onnx_engine

        use_onnx_engine(model)
    model.prediction_options = options.as_dict()
    return model


def check_tta(model: TrainedModel, wanted: bool) -> bool:
    """``wanted``, once the model's task is known to allow test-time augmentation.

    Raises
    ------
    DeepscopeError
        When ``wanted`` and the model's results do not turn with the image.
    """
    if wanted and not model.task.tta_ok:
        raise DeepscopeError(
            f"--tta is not available for {model.config.task} models (their result does not "
            "simply turn with the image)",
            fix="leave out --tta",
        )
    dims = model.config.data.spatial_dims
    if wanted and dims not in model.task.tta_dims:
        raise DeepscopeError(
            f"--tta is not available for {dims}D {model.config.task} models",
            fix="leave out --tta",
        )
    return wanted


def check_int8(model: TrainedModel, wanted: bool, log: Callable[[str], None] = print) -> bool:
    """``wanted``, once the model's network is known to run in 8-bit integers here.

    Says (through ``log``) where the calibration comes from when the model folder has none.

    Raises
    ------
    DeepscopeError
        When the task, this CPU or the ONNX engine cannot run the network in 8 bits.
    """
    if not wanted:
        return False
    from deepscope.workflow.int8_models import int8_calibration_of, require_int8

    if model.task.int8_ok and not list(model.network.parameters()):
        raise DeepscopeError("--int8 cannot be combined with --engine onnx", fix="leave out one")
    require_int8(model, "--int8: ")
    if int8_calibration_of(model) is None:
        log(
            "note: this model folder has no 8-bit calibration for its weights (trained "
            "before 2026-11-30, or another checkpoint chosen since); it is made from the "
            "first image predicted."
        )
    return True
