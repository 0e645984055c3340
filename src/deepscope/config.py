"""Validated configuration shared by the CLI, the Python API and the web app.

Every task has one pydantic config class (discriminated by its ``task`` field) built from
the shared sections below. Configs are saved as YAML in run and model folders.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deepscope.errors import ConfigError

CONFIG_VERSION = 1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """How images are read, normalised and cut into training patches."""

    axes: str | None = Field(
        None,
        description="Axes of the input files, e.g. 'YX', 'ZYX', 'CYX'. Guessed from the files "
        "when not given.",
    )
    spatial_dims: Literal[2, 3] = Field(2, description="2 for images, 3 for Z-stacks.")
    patch_size: list[int] = Field(
        default_factory=lambda: [64, 64],
        description="Size of the training patches (Y, X) or (Z, Y, X), in pixels.",
    )
    val_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="Share of the data kept aside to check training."
    )
    normalize_low: float = Field(1.0, ge=0.0, lt=50.0, description="Lower percentile mapped to 0.")
    normalize_high: float = Field(
        99.8, gt=50.0, le=100.0, description="Upper percentile mapped to 1."
    )
    normalize_per_image: bool | None = Field(
        None,
        description="Map each image by its own percentiles instead of those of the training "
        "set (for images of varying brightness); for CARE, Noise2Noise and label-free "
        "prediction the target images too. Default: the task's choice (StarDist: yes).",
    )
    flips: bool = Field(True, description="Augment with random flips.")
    rotations: bool = Field(True, description="Augment with random 90-degree rotations in YX.")
    intensity_jitter: float = Field(
        0.0, ge=0.0, le=0.5, description="Random intensity scaling of ± this fraction (0 = off)."
    )
    elastic: float = Field(
        0.0,
        ge=0.0,
        le=50.0,
        description="Augment with smooth random elastic deformations in Y and X: the "
        "typical displacement in pixels of a 3x3 grid of control points (the U-Net "
        "paper used 10 on EM; 0 = off).",
    )
    zoom: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Augment with a random zoom in Y and X by a factor between 1/(1 + zoom) "
        "and 1 + zoom (drawn evenly on a log scale; 0 = off), so the model also sees objects "
        "larger and smaller than in the training images: for segmentation when new images "
        "may come from another magnification. Images are interpolated linearly, masks and "
        "labels at the nearest pixel. Not for Noise2Void (interpolation correlates the noise "
        "it learns from).",
    )
    foreground_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of the training patches placed so that they hold part of an "
        "object of the masks (the rest are anywhere), so that sparse objects in large "
        "images are seen often enough (the stardist package uses 0.9; on deepscope's DSB "
        "nuclei benchmark 0.9 scored lower than 0 = anywhere).",
    )
    invert: bool = Field(
        False,
        description="Augment with inverted intensities (half the patches), so that one "
        "model learns bright objects on a dark background and dark ones on a bright "
        "background (e.g. fluorescence and brightfield/H&E nuclei).",
    )

    @model_validator(mode="after")
    def _check_patch(self) -> DataConfig:
        if len(self.patch_size) != self.spatial_dims:
            raise ValueError(
                f"patch_size {self.patch_size} must have {self.spatial_dims} numbers "
                f"for spatial_dims={self.spatial_dims}"
            )
        if any(p < 8 for p in self.patch_size):
            raise ValueError(f"patch_size {self.patch_size}: every side must be at least 8")
        return self

    @field_validator("axes")
    @classmethod
    def _upper_axes(cls, v: str | None) -> str | None:
        return v.upper() if v else v


class ModelConfig(_Section):
    """The network: a U-Net whose size the user can choose."""

    architecture: Literal["unet"] = "unet"
    depth: int = Field(2, ge=1, le=5, description="Number of down-sampling steps.")
    base_channels: int = Field(32, ge=4, le=256, description="Feature channels at full size.")
    batch_norm: bool = Field(
        True, description="Normalise activations in each layer (steadier, faster training)."
    )
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of features randomly switched off while training (0 = off); "
        "can reduce over-fitting on few images.",
    )
    residual: bool = Field(
        False,
        description="The network predicts the difference to its input instead of the "
        "whole image (needs as many outputs as inputs).",
    )


class TrainingConfig(_Section):
    """How long and how the network is trained."""

    epochs: int = Field(100, ge=1, description="Passes over the training patches.")
    patches_per_epoch: int = Field(
        2048, ge=8, description="Random patches drawn from the training images each epoch."
    )
    batch_size: int = Field(
        64, ge=1, description="Patches per training step; lower it if memory runs out."
    )
    learning_rate: float = Field(
        4e-4,
        gt=0.0,
        lt=1.0,
        description="Step size of the optimiser (AdamW); halved when the validation loss stalls.",
    )
    lr_patience: int = Field(
        10,
        ge=1,
        description="Epochs without a better validation loss before the learning rate is "
        "halved (larger: the rate stays high longer on noisy validation losses).",
    )
    weight_decay: float = Field(
        0.0, ge=0.0, description="Pull of the weights towards zero (0 = off), against over-fitting."
    )
    max_minutes: float | None = Field(
        None, gt=0.0, description="Stop gracefully after this many minutes, keeping the best model."
    )
    checkpoint_every: int = Field(
        5, ge=1, description="Keep a checkpoint every this many epochs for later model choice."
    )
    precision: Literal["auto", "32", "bf16"] = Field(
        "auto", description="'auto' uses bfloat16 where the processor supports it."
    )
    seed: int = Field(42, description="Random seed: the same seed gives a repeatable training.")
    val_patches: int = Field(256, ge=1, description="Patches used to compute the validation loss.")
    start_from: str | None = Field(
        None,
        description="A trained deepscope model folder whose weights start this training "
        "(transfer learning); layers that do not fit are left as new.",
    )
    freeze_encoder_epochs: int = Field(
        0,
        ge=0,
        description="Keep the encoder (first half of the U-Net) of the start_from model "
        "fixed for this many epochs, training only the decoder, then train everything.",
    )

    @model_validator(mode="after")
    def _check_freeze(self) -> TrainingConfig:
        if self.freeze_encoder_epochs and not self.start_from:
            raise ValueError(
                "freeze_encoder_epochs needs a trained model to start from (training."
                "start_from, option --from): a new encoder has learnt nothing worth keeping"
            )
        return self


class TaskConfigBase(_Section):
    """Fields every task config has."""

    version: int = CONFIG_VERSION
    task: str
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="after")
    def _check_shapes(self) -> TaskConfigBase:
        div = 2**self.model.depth
        bad = [p for p in self.data.patch_size if p % div]
        if bad:
            raise ValueError(
                f"patch_size {self.data.patch_size} must be divisible by {div} "
                f"(2 to the power of the U-Net depth {self.model.depth})"
            )
        return self

    @field_validator("version")
    @classmethod
    def _check_version(cls, v: int) -> int:
        if v > CONFIG_VERSION:
            raise ValueError(
                f"config version {v} is newer than this deepscope understands "
                f"({CONFIG_VERSION}); update deepscope"
            )
        return v

    def to_yaml(self) -> str:
        """Return the full config (defaults included) as YAML text."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def digest(self) -> str:
        """Short hash of the config, recorded in provenance files."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_from_dict(data: dict[str, Any], source: str | Path | None = None) -> TaskConfigBase:
    """Build the task's config class from a plain dict (e.g. parsed YAML).

    Raises
    ------
    ConfigError
        With every invalid field listed in plain words.
    """
    from deepscope.tasks import get_task

    task_name = data.get("task")
    if not task_name:
        raise ConfigError("the config has no 'task' field", source, "add e.g. 'task: n2v'")
    try:
        cls = get_task(task_name).config_class
    except KeyError as err:
        raise ConfigError(str(err.args[0]), source, "use one of the listed task names") from None
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        lines = [
            f"  - {'.'.join(str(p) for p in e['loc']) or '(config)'}: {e['msg']}"
            for e in err.errors()
        ]
        raise ConfigError(
            "invalid settings:\n" + "\n".join(lines), source, "correct the listed settings"
        ) from None


def load_config(path: str | Path) -> TaskConfigBase:
    """Read a YAML config file written by deepscope or by hand."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError("config file not found", path, "check the path") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML: {err}", path, "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of settings", path)
    return config_from_dict(data, path)


def merge_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return ``data`` with dotted-key ``overrides`` (e.g. ``training.epochs``) applied."""
    out = json.loads(json.dumps(data))
    for key, value in overrides.items():
        if value is None:
            continue
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out
