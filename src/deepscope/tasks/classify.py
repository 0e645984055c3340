"""Image classification: one class per image (grey, multi-channel or RGB, any size).

Data come as a folder with one sub-folder per class, a CSV of ``file,label`` or an
``.npz`` of ``images``/``labels`` (see :mod:`deepscope.data.classes`). Every image is
brought to ``classify.image_size`` (resized, or centre-cropped), normalised per channel
with percentiles of the training images, and fed to a backbone of
:mod:`deepscope.engine.models.classifiers` (``small``, ``resnet18``, ``unet_encoder``).

Against overfitting the config offers the course's remedies: a smaller network
(``model.depth``, ``model.base_channels``), dropout (``model.dropout``, default 0.3),
weight decay (``training.weight_decay``, default 1e-4), augmentation (flips, 90°
rotations, intensity changes and a small random affine transform), and transfer
learning: ``--from MODEL`` starts from a deepscope model folder (a classifier, or the
encoder of a segmentation/restoration U-Net) or a PyTorch state-dict file, and
``--freeze N`` keeps the first N blocks fixed for ``classify.freeze_epochs`` epochs,
after which they are trained at ``classify.unfreeze_lr_factor`` times the learning rate
(fine-tuning). Imbalanced classes are weighted in the loss (default) or sampled evenly.

The network's outputs are class scores; ``predict`` writes a CSV with the class and the
probability of each class per image, and ``qc`` scores the model on labelled images.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from deepscope.config import TaskConfigBase, _Section
from deepscope.data import classes as cdata
from deepscope.data.normalize import PercentileNormalizer
from deepscope.data.validation import ValidationReport
from deepscope.engine.models import build_model
from deepscope.errors import DeepscopeError
from deepscope.tasks.base import Task, TrainingData, register_task

Backbone = Literal["small", "resnet18", "unet_encoder"]


class ClassifierModelConfig(_Section):
    """The classification network (its backbone, size and dropout)."""

    architecture: Literal["auto", "small", "resnet18", "unet_encoder"] = Field(
        "auto",
        description="Backbone: 'small' (VGG-style, few weights), 'resnet18' (ResNet-18-like), "
        "'unet_encoder' (the encoder of a deepscope U-Net). 'auto': the start model's "
        "network with --from, else 'small'.",
    )
    depth: int = Field(
        4,
        ge=1,
        le=6,
        description="Blocks of the small CNN / down-sampling steps of the "
        "U-Net encoder (taken from the start model when it is a U-Net).",
    )
    base_channels: int = Field(32, ge=4, le=256, description="Channels of the first block.")
    batch_norm: bool = Field(
        True, description="Normalise activations in each layer (steadier, faster training)."
    )
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="Dropout before the last layer.")


class ClassifySettings(_Section):
    """Settings of the classification task."""

    class_names: list[str] | None = Field(
        None, description="Names of the classes, filled in from the training data."
    )
    channels: int | None = Field(
        None, ge=1, description="Channels of the images, filled in from the training data."
    )
    image_size: list[int] = Field(
        default_factory=lambda: [64, 64],
        description="Size (Y, X) every image is brought to before the network.",
    )
    fit: Literal["resize", "crop"] = Field(
        "resize",
        description="'resize': scale each image to image_size (keeps all of it); 'crop': "
        "take its centre (keeps the pixel size; small images are padded by mirroring).",
    )
    balance: Literal["weights", "sampling", "none"] = Field(
        "weights",
        description="Imbalanced classes: 'weights' weighs rare classes more in the loss, "
        "'sampling' draws every class equally often, 'none' does neither.",
    )
    freeze_blocks: int = Field(
        0, ge=0, description="With --from: keep the first N blocks of the network fixed."
    )
    freeze_epochs: int | None = Field(
        None,
        ge=1,
        description="How many epochs the frozen blocks stay fixed (default: a fifth of the "
        "epochs); afterwards they are fine-tuned at a lower learning rate.",
    )
    unfreeze_lr_factor: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="Learning rate of the unfrozen blocks relative to training.learning_rate.",
    )
    rotate_degrees: float = Field(
        15.0, ge=0.0, le=180.0, description="Augmentation: random rotation up to ± degrees."
    )
    zoom: float = Field(0.1, ge=0.0, lt=0.5, description="Augmentation: random zoom of 1 ± this.")
    shift: float = Field(
        0.05, ge=0.0, lt=0.5, description="Augmentation: random shift up to ± this of the size."
    )

    @model_validator(mode="after")
    def _check(self) -> ClassifySettings:
        if len(self.image_size) != 2 or any(s < 8 for s in self.image_size):
            raise ValueError(f"image_size {self.image_size} must be two sizes of at least 8")
        return self


#: Defaults of the shared sections that differ for classification (whole images, not
#: patches): applied to every setting the user leaves out, also when a section is given.
CLASSIFY_DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"val_fraction": 0.2, "intensity_jitter": 0.1},
    "training": {"epochs": 50, "weight_decay": 1e-4, "learning_rate": 1e-3},
}


class ClassifyConfig(TaskConfigBase):
    """Config of the classification task."""

    task: Literal["classify"] = "classify"
    model: ClassifierModelConfig = Field(default_factory=ClassifierModelConfig)  # type: ignore[assignment]
    classify: ClassifySettings = Field(default_factory=ClassifySettings)

    @model_validator(mode="before")
    @classmethod
    def _classify_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for section, defaults in CLASSIFY_DEFAULTS.items():
            given = data.get(section) or {}
            if isinstance(given, dict):
                data[section] = {**defaults, **given}
        return data

    @model_validator(mode="after")
    def _check_shapes(self) -> ClassifyConfig:  # replaces the U-Net patch-size check
        c, t = self.classify, self.training
        if self.data.spatial_dims != 2:
            raise ValueError("classification works on 2D images; leave out --3d")
        if c.freeze_blocks and not t.start_from:
            raise ValueError(
                "classify.freeze_blocks (--freeze) needs a trained model to start from "
                "(--from): new weights have learnt nothing worth keeping fixed"
            )
        if t.freeze_encoder_epochs:
            raise ValueError(
                "training.freeze_encoder_epochs (--freeze-encoder) is for U-Nets; for "
                "classification use classify.freeze_blocks (--freeze N)"
            )
        if c.class_names is not None and len(set(c.class_names)) != len(c.class_names):
            raise ValueError(f"class_names {c.class_names} repeat a name")
        return self


def backbone(config: ClassifyConfig) -> Backbone:
    """The concrete backbone of a config ('auto' means 'small' when nothing decided it)."""
    arch = config.model.architecture
    return "small" if arch == "auto" else arch  # type: ignore[return-value]


def freeze_epochs(config: ClassifyConfig) -> int:
    """Epochs during which the first ``freeze_blocks`` blocks stay fixed."""
    c = config.classify
    if not c.freeze_blocks:
        return 0
    return c.freeze_epochs or max(1, config.training.epochs // 5)


def start_model_network(source: Path) -> dict[str, Any] | None:
    """Network settings of a deepscope model folder (None for a state-dict file).

    Returns ``{"task", "architecture", "spatial_dims", "depth", "base_channels",
    "batch_norm"}`` read from its ``config.yaml``.
    """
    import yaml

    cfg_path = Path(source) / "config.yaml"
    if not Path(source).is_dir() or not cfg_path.is_file():
        return None
    try:
        raw = yaml.safe_load(cfg_path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    model, data = raw.get("model", {}) or {}, raw.get("data", {}) or {}
    return {
        "task": raw.get("task"),
        "architecture": model.get("architecture", "unet"),
        "spatial_dims": data.get("spatial_dims", 2),
        "depth": model.get("depth"),
        "base_channels": model.get("base_channels"),
        "batch_norm": model.get("batch_norm", True),
    }


@register_task
class ClassifyTask(Task):
    """Single-label image classification with a CNN."""

    name = "classify"
    title = "Image classification"
    description = (
        "Assigns each image one class (e.g. cell type, in/out of focus) with a CNN; "
        "supports transfer learning and fine-tuning from earlier models."
    )
    config_class = ClassifyConfig
    normalize_targets = False
    qc_kind = "classify"
    image_level = True
    tta_ok = True  # over the flips and turns training used (predict_classify.tta_views)
    tta_dims = (2,)

    @classmethod
    def tta_allowed(cls, config: dict[str, Any]) -> bool:
        """Only for models trained with flips or turns: ``--tta`` averages over those."""
        data = config.get("data") or {}
        return bool(data.get("flips", True) or data.get("rotations", True))

    def __init__(self, config: ClassifyConfig):
        super().__init__(config)
        self.class_weights: torch.Tensor | None = None
        self._data: cdata.ClassData | None = None
        self._notes: list[str] = []

    # ------------------------------------------------------------------ network

    @property
    def class_names(self) -> list[str]:
        """Class names (from the config; ``class 0``, ``class 1`` before training)."""
        return list(self.config.classify.class_names or ["class 0", "class 1"])

    def out_channels(self, in_channels: int) -> int:
        """One output (class score) per class."""
        return len(self.class_names)

    def build_model(self, in_channels: int) -> nn.Module:
        """Build the backbone with one output per class."""
        return build_model(backbone(self.config), **self.model_kwargs(in_channels))

    def model_kwargs(self, in_channels: int) -> dict:
        """Keyword arguments of the backbone class (recorded by the export)."""
        m = self.config.model
        return dict(
            in_channels=in_channels,
            classes=len(self.class_names),
            depth=m.depth,
            base_channels=m.base_channels,
            batch_norm=m.batch_norm,
            dropout=m.dropout,
        )

    def training_loss(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Cross-entropy of the class scores (classes weighted when ``balance: weights``)."""
        logits = model(batch["input"]).float()
        weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
        return F.cross_entropy(logits, batch["label"].long(), weight=weight)

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Class scores (N, K) → class probabilities (softmax)."""
        return torch.softmax(torch.as_tensor(output, dtype=torch.float32), dim=-1).numpy()

    def preprocess(self, images: list[np.ndarray], normalizer: PercentileNormalizer) -> np.ndarray:
        """Raw (C, Y, X) images → the normalised (N, C, Y, X) network input."""
        c = self.config.classify
        stacked = cdata.stack_images(images, c.image_size, c.fit)
        return normalizer.normalize(stacked.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3).copy()

    # ------------------------------------------------------------------ freezing

    def freezes_blocks(self) -> bool:
        """With ``--freeze N`` the first N blocks stay fixed in the first epochs."""
        return bool(self.config.classify.freeze_blocks)

    def frozen_blocks(self, model: nn.Module) -> list[nn.Module]:
        """The first ``classify.freeze_blocks`` blocks of the network."""
        n = self.config.classify.freeze_blocks
        blocks = model.feature_blocks()  # type: ignore[operator]
        return blocks[:n]

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]] | None:
        """With ``--freeze N``: the first N blocks at the lower fine-tuning learning rate."""
        if not self.config.classify.freeze_blocks:
            return None
        t, c = self.config.training, self.config.classify
        frozen = {id(p) for b in self.frozen_blocks(model) for p in b.parameters()}
        low = [p for p in model.parameters() if id(p) in frozen]
        rest = [p for p in model.parameters() if id(p) not in frozen]
        return [
            {"params": rest, "lr": t.learning_rate},
            {"params": low, "lr": t.learning_rate * c.unfreeze_lr_factor},
        ]

    def on_epoch_start(self, model: nn.Module, epoch: int) -> str | None:
        """Freeze the first N blocks in the first epochs; say when they are released."""
        n = self.config.classify.freeze_blocks
        if not n:
            return None
        until = freeze_epochs(self.config)
        frozen = epoch < until
        for block in self.frozen_blocks(model):
            block.requires_grad_(not frozen)
        if epoch == until:
            c, t = self.config.classify, self.config.training
            return (
                f"epoch {epoch + 1}: the first {n} block(s) are unfrozen and fine-tuned at "
                f"learning rate {t.learning_rate * c.unfreeze_lr_factor:.2g} "
                f"({c.unfreeze_lr_factor:g} × the rest)"
            )
        return None

    # ------------------------------------------------------------------ data

    def check_training_data(
        self, images: Path, targets: Path | None = None, progress: Callable | None = None
    ) -> ValidationReport:
        """Read the labelled images and report every problem; completes the config.

        The class names, the channel count and (with ``--from``) the backbone of the
        start model are written into ``self.config``.
        """
        report = ValidationReport()
        if targets is not None:
            report.findings.append(
                cdata.Finding(
                    "warning",
                    Path(targets),
                    "classification reads the classes from the images' folders or CSV; this "
                    "targets folder is not used.",
                    "leave out --targets",
                )
            )
        try:
            data = cdata.load_labelled(images, self.config.data.axes, progress)
        except DeepscopeError as err:
            report.findings.append(
                cdata.Finding("error", err.path or Path(images), err.problem, err.fix or "")
            )
            report.summary = {"task": self.name, "ready": 0}
            return report
        c = self.config.classify
        report.findings += data.findings
        report.findings += cdata.check_class_data(data, c.image_size, c.fit)
        report.items = [(Path(n), None) for n in data.names]
        counts = data.counts()
        report.summary = {
            "task": self.name,
            "paired": False,
            "images_folder": str(images),
            "ready": len(data.names),
            "errors": len(report.errors),
            "warnings": len(report.warnings),
            "classes": counts,
            "sizes": cdata.size_summary(data),
            "channels": sorted({im.shape[0] for im in data.images}),
            "groups": len(set(data.groups)) if data.has_groups else None,
        }
        self._data = data
        self._notes = [
            "images per class: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
            "image sizes: "
            + ", ".join(f"{k} ({v})" for k, v in list(cdata.size_summary(data).items())[:5])
            + f"; each is brought to {c.image_size[0]}x{c.image_size[1]} ({c.fit})",
        ]
        if data.has_groups:
            self._notes.append(
                f"{len(set(data.groups))} groups: images of one group stay on one side of "
                "the training/validation split"
            )
        if report.ok and data.images:
            self.config = self._completed_config(data)
        return report

    def labelled_images(self) -> tuple[list[str], list[np.ndarray]]:
        """Names and (C, Y, X) arrays of the images read by the last data check."""
        data = getattr(self, "_data", None)
        if data is None:
            return [], []
        return list(data.names), list(data.images)

    def _completed_config(self, data: cdata.ClassData) -> ClassifyConfig:
        cfg = self.config.model_copy(deep=True)
        given = cfg.classify.class_names
        if given is not None and list(given) != list(data.class_names):
            raise DeepscopeError(
                f"the classes of these images ({', '.join(data.class_names)}) differ from the "
                f"classes in the settings ({', '.join(given)})",
                data.source,
                "train with images of the same classes, or start a new run (new --out)",
            )
        cfg.classify.class_names = list(data.class_names)
        cfg.classify.channels = int(data.images[0].shape[0])
        src = (
            start_model_network(Path(cfg.training.start_from)) if cfg.training.start_from else None
        )
        if src is not None and cfg.model.architecture in ("auto", "unet_encoder"):
            if src["architecture"] == "unet":
                cfg.model.architecture = "unet_encoder"
                cfg.model.depth = int(src["depth"])
                cfg.model.base_channels = int(src["base_channels"])
                cfg.model.batch_norm = bool(src["batch_norm"])
                self._notes.append(
                    f"backbone: the encoder of the {src['task']} U-Net model to start from "
                    f"(depth {src['depth']}, {src['base_channels']} base channels)"
                )
            elif src["task"] == "classify" and cfg.model.architecture == "auto":
                cfg.model.architecture = src["architecture"]
                cfg.model.depth = int(src["depth"])
                cfg.model.base_channels = int(src["base_channels"])
                cfg.model.batch_norm = bool(src["batch_norm"])
                self._notes.append(f"backbone: {src['architecture']}, as the model to start from")
        if cfg.model.architecture == "auto":
            cfg.model.architecture = "small"
        return cfg

    def data_summary(self) -> list[str]:
        """Lines for ``validate``: images per class, sizes, groups."""
        return list(self._notes)

    def make_datasets(
        self,
        report: ValidationReport,
        run_dir: Path,
        resume: bool,
        log: Callable[[str], None],
    ) -> TrainingData:
        """Split (by group when given, stratified), normalise and wrap the images."""
        data = self._data
        if data is None:
            raise RuntimeError("check_training_data must run before make_datasets")
        cfg = self.config
        c, d, t = cfg.classify, cfg.data, cfg.training
        if c.class_names is not None and list(c.class_names) != list(data.class_names):
            raise DeepscopeError(
                f"the classes of these images ({', '.join(data.class_names)}) differ from those "
                f"of the training being resumed ({', '.join(c.class_names)})",
                data.source,
                "resume with the same images, or start a new run (new --out)",
            )
        groups = data.groups if data.has_groups else None
        train_idx, val_idx, how = cdata.split_indices(data.labels, groups, d.val_fraction, t.seed)
        log(f"{len(data.names)} images in {len(data.class_names)} classes; {how}.")
        missing = [
            n for i, n in enumerate(data.class_names) if not np.any(data.labels[val_idx] == i)
        ]
        if missing:
            log(f"warning: no validation image of class(es) {', '.join(missing)} (too few images)")
        stacked = cdata.stack_images(data.images, c.image_size, c.fit)
        norm_path = run_dir / "normalization.json"
        if resume and norm_path.exists():
            normalizer = PercentileNormalizer.from_dict(json.loads(norm_path.read_text())["input"])
        else:
            normalizer = PercentileNormalizer.fit(
                [stacked[i] for i in train_idx], d.normalize_low, d.normalize_high
            )
        x = normalizer.normalize(stacked.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
        y = data.labels
        k = len(data.class_names)
        if c.balance == "weights":
            self.class_weights = torch.from_numpy(cdata.class_weights(y[train_idx], k))
            log(
                "class weights in the loss (rarer classes count more): "
                + ", ".join(
                    f"{n} {w:.2f}"
                    for n, w in zip(data.class_names, self.class_weights.tolist(), strict=True)
                )
            )
        aug = cdata.Augmentation(
            flips=d.flips,
            rot90=d.rotations,
            intensity=d.intensity_jitter,
            rotate_degrees=c.rotate_degrees,
            scale=c.zoom,
            shift=c.shift,
        )
        train_ds = cdata.ClassImages(x[train_idx], y[train_idx], aug, seed=t.seed)
        val_ds = cdata.ClassImages(x[val_idx], y[val_idx], None)
        sampler = None
        if c.balance == "sampling":
            w = cdata.class_weights(y[train_idx], k)[y[train_idx]]
            sampler = torch.utils.data.WeightedRandomSampler(
                torch.from_numpy(w).double(),
                num_samples=len(train_idx),
                replacement=True,
                generator=torch.Generator().manual_seed(t.seed),
            )
            log("balanced sampling: every class is drawn about equally often")
        n = freeze_epochs(cfg)
        if n:
            log(
                f"the first {c.freeze_blocks} block(s) of the network are kept fixed for "
                f"{n} epoch(s), then fine-tuned at {c.unfreeze_lr_factor:g} × the learning rate"
            )
        return TrainingData(
            train=train_ds,
            val=val_ds,
            normalizer=normalizer,
            in_channels=int(x.shape[1]),
            axes=data.axes,
            n_images=len(data.names),
            sampler=sampler,
            shuffle=True,
            split={
                "how": how,
                "train": [data.names[i] for i in train_idx],
                "val": [data.names[i] for i in val_idx],
            },
        )
