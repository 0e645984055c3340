"""Supervised restoration from image pairs: CARE, Noise2Noise and label-free prediction.

The three tasks share one plugin base (:class:`PairedRestorationTask`): a U-Net maps the
input image to the target image, both normalised with their own percentiles, and the
loss compares the prediction with the target pixel by pixel. They differ in what the
target is and in the loss:

``care``
    Content-aware restoration (Weigert et al. 2018): low-SNR input → high-SNR target of
    the same field. L1 (default) or L2 loss. With ``probabilistic: true`` the network
    predicts, for every pixel and channel, the mean ``mu`` and the scale ``b`` of a
    Laplace distribution and is trained by its negative log-likelihood
    ``|y - mu| / b + log(2 b)``, as in the CARE paper; the prediction is the mean and
    ``b`` (the expected absolute error, in the target's intensity units) is written as an
    uncertainty map beside it (``<name>_uncertainty.tif``).
``n2n``
    Noise2Noise (Lehtinen et al. 2018): two independent noisy acquisitions of the same
    field; the network learns to predict one from the other with an L2 loss, whose
    minimiser is the clean signal when the noise has zero mean.
``labelfree``
    Label-free prediction ("in-silico labelling", fnet; Ounkomol et al. 2018):
    transmitted-light input → fluorescence target, regression with an L2 (default) or
    L1 loss, 2D or 3D.

For all three, :meth:`PairedRestorationTask.extra_checks` adds a registration check to
``deepscope validate`` (and to the data check before training): the translation between
input and target is estimated by normalised cross-correlation and a warning names the
shift and its direction when the peak is more than :data:`MAX_SHIFT_PIXELS` off-centre.
Pairs that correlate too little to tell (typically transmitted light vs fluorescence)
are not judged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from deepscope.config import TaskConfigBase, _Section
from deepscope.tasks.base import Task, register_task

if TYPE_CHECKING:
    from deepscope.data.normalize import PercentileNormalizer
    from deepscope.data.validation import Finding

Loss = Literal["l1", "l2"]

MAX_SHIFT_PIXELS = 2.0
"""A pair whose estimated misalignment exceeds this many pixels (along any axis) is flagged."""
MIN_PEAK_CORRELATION = 0.5
"""Pairs whose best cross-correlation is below this are not checked: they share too
little structure (e.g. transmitted light and fluorescence) for a shift to be measured."""
UNRELATED_CORRELATION = 0.2
"""For tasks whose input and target show the same stain (CARE, Noise2Noise), a pair whose
best cross-correlation is below this is flagged as possibly not of the same field: true
W2S pairs score 0.82-0.93 (noisy frame vs 400-frame average), other fields of view down
to 0.4 and below; a lower bar would miss swapped files, a higher one would flag very
noisy pairs."""
_CHECK_SIZE = 384  # side of the central crop compared (keeps the check under a second)
_SEARCH_RADIUS = 16  # largest shift measured, in pixels
_SCALE_FLOOR = 1e-3  # smallest Laplace scale, in normalised units, keeps the loss finite
INITIAL_SCALE = 0.1
"""Laplace scale a new probabilistic network starts from, in normalised target units (the
target's 1–99.8 % range is 0–1), a typical error of a restoration. Starting from the
softplus default (0.69) instead, Adam needs thousands of steps just to shrink the scale,
and a short training ends with a uselessly cautious uncertainty."""


# ----------------------------------------------------------------------------- configs


class CareSettings(_Section):
    """CARE loss settings."""

    loss: Loss = Field(
        "l1",
        description="'l1' (mean absolute error, robust, the CARE default) or 'l2' (mean "
        "squared error).",
    )
    probabilistic: bool = Field(
        False,
        description="Also predict a per-pixel uncertainty (Laplace scale), trained by the "
        "Laplace likelihood as in the CARE paper; written as <name>_uncertainty.tif.",
    )

    @model_validator(mode="after")
    def _check_loss(self) -> CareSettings:
        if self.probabilistic and self.loss != "l1":
            raise ValueError(
                "probabilistic CARE is trained with the Laplace likelihood, the probabilistic "
                "form of the L1 loss, so care.loss must be 'l1' (or set care.probabilistic "
                "to false to train with 'l2')"
            )
        return self


class N2NSettings(_Section):
    """Noise2Noise loss settings."""

    loss: Loss = Field(
        "l2",
        description="'l2' (mean squared error, learns the mean: right for zero-mean noise) "
        "or 'l1' (learns the median: more robust to rare very bright or dark pixels).",
    )


class LabelFreeSettings(_Section):
    """Label-free prediction loss settings."""

    loss: Loss = Field(
        "l2",
        description="'l2' (mean squared error, as in fnet) or 'l1' (mean absolute error).",
    )


class CareConfig(TaskConfigBase):
    """Config of the CARE task."""

    task: Literal["care"] = "care"
    care: CareSettings = Field(default_factory=CareSettings)

    @model_validator(mode="after")
    def _check_residual(self) -> CareConfig:
        if self.care.probabilistic and self.model.residual:
            raise ValueError(
                "model.residual cannot be combined with care.probabilistic (the network then "
                "has twice as many outputs as inputs); turn one of them off"
            )
        return self


class N2NConfig(TaskConfigBase):
    """Config of the Noise2Noise task."""

    task: Literal["n2n"] = "n2n"
    n2n: N2NSettings = Field(default_factory=N2NSettings)


class LabelFreeConfig(TaskConfigBase):
    """Config of the label-free prediction task."""

    task: Literal["labelfree"] = "labelfree"
    labelfree: LabelFreeSettings = Field(default_factory=LabelFreeSettings)


# ------------------------------------------------------------------------------ losses


def pixel_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean absolute (``"l1"``) or squared (``"l2"``) error over every pixel and channel."""
    if kind == "l1":
        return F.l1_loss(prediction, target)
    if kind == "l2":
        return F.mse_loss(prediction, target)
    raise ValueError(f"unknown loss {kind!r}; use 'l1' or 'l2'")


def laplace_scale(raw: torch.Tensor) -> torch.Tensor:
    """Map raw network outputs to positive Laplace scales (softplus plus a small floor)."""
    return F.softplus(raw) + _SCALE_FLOOR


def laplace_nll(mean: torch.Tensor, raw_scale: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``target`` under Laplace(``mean``, scale).

    Parameters
    ----------
    mean
        Predicted means (N, C, *spatial).
    raw_scale
        Raw network outputs for the scales, same shape; see :func:`laplace_scale`.
    target
        Targets, same shape.

    Returns
    -------
    torch.Tensor
        Scalar ``mean(|target - mean| / b + log(2 b))``.
    """
    scale = laplace_scale(raw_scale)
    return (torch.abs(target - mean) / scale + torch.log(2.0 * scale)).mean()


# ------------------------------------------------------------------ registration check


def _plane(image_cf: np.ndarray) -> np.ndarray:
    """Standardise each channel and sum them: one float64 image (2D or 3D)."""
    image = np.asarray(image_cf, dtype=np.float64)
    axes = tuple(range(1, image.ndim))
    image = (image - image.mean(axis=axes, keepdims=True)) / (
        image.std(axis=axes, keepdims=True) + 1e-12
    )
    return image.sum(axis=0)


def _central_crop(image: np.ndarray, size: int) -> np.ndarray:
    slices = []
    for n in image.shape:
        start = max(0, (n - size) // 2)
        slices.append(slice(start, start + min(n, size)))
    return image[tuple(slices)]


def _shift_2d(a: np.ndarray, b: np.ndarray) -> tuple[tuple[int, int], float]:
    """Displacement of ``b``'s content relative to ``a`` by normalised cross-correlation.

    The centre of ``b`` (cut by the search radius on each side) is slid over ``a``;
    returns the (row, column) displacement of the correlation peak and its height (the
    Pearson correlation at the best offset).
    """
    from scipy import ndimage
    from skimage.feature import match_template

    a, b = _central_crop(a, _CHECK_SIZE), _central_crop(b, _CHECK_SIZE)
    a, b = ndimage.gaussian_filter(a, 1.0), ndimage.gaussian_filter(b, 1.0)
    radii = [max(1, min(_SEARCH_RADIUS, n // 8)) for n in b.shape]
    template = b[tuple(slice(r, n - r) for r, n in zip(radii, b.shape, strict=True))]
    if min(template.shape) < 3 or np.ptp(template) == 0 or np.ptp(a) == 0:
        return (0, 0), 0.0
    scores = match_template(a, template)
    peak = np.unravel_index(int(np.argmax(scores)), scores.shape)
    shift = tuple(int(r - p) for r, p in zip(radii, peak, strict=True))
    return (shift[0], shift[1]), float(scores.max())


def estimate_shift(image_cf: np.ndarray, target_cf: np.ndarray) -> tuple[np.ndarray, float]:
    """Estimate how far the target's content is displaced from the input's.

    The lightly smoothed images are compared by normalised cross-correlation (the
    Pearson correlation of input and target at each relative offset, up to
    :data:`_SEARCH_RADIUS` pixels, on a central crop of at most :data:`_CHECK_SIZE`
    pixels). Channels are standardised and summed. For stacks, Y and X are measured on
    the sum over Z and Z on the sum over X.

    Parameters
    ----------
    image_cf, target_cf
        Channel-first input and target (C, Y, X) or (C, Z, Y, X) of the same spatial
        shape (channel counts may differ).

    Returns
    -------
    shift, correlation
        ``shift``: integer displacement of the target relative to the input per spatial
        axis, (Y, X) or (Z, Y, X); positive means further down (Y), right (X) or towards
        the last plane (Z). ``correlation``: the correlation at the best offset (the
        peak); below :data:`MIN_PEAK_CORRELATION` the two images share too little
        structure for the shift to mean anything.
    """
    a, b = _plane(image_cf), _plane(target_cf)
    if a.ndim == 2:
        shift, peak = _shift_2d(a, b)
        return np.array(shift), peak
    (dy, dx), peak = _shift_2d(a.sum(axis=0), b.sum(axis=0))
    dz = 0
    if a.shape[0] >= 8:  # too few planes to measure a Z shift otherwise
        (dz, _), _ = _shift_2d(a.sum(axis=2), b.sum(axis=2))
    return np.array([dz, dy, dx]), peak


def describe_shift(shift: np.ndarray) -> str:
    """Say in words where the target lies relative to the input, e.g. "3 px down, 5 px left"."""
    names = (("up", "down"), ("left", "right"))
    if len(shift) == 3:
        names = (("towards the first plane", "towards the last plane"), *names)
    parts = [
        f"{abs(int(s))} px {neg if s < 0 else pos}"
        for s, (neg, pos) in zip(shift, names, strict=True)
        if s
    ]
    return ", ".join(parts) or "0 px"


# ------------------------------------------------------------------------------- tasks


class PairedRestorationTask(Task):
    """Shared base of the image-to-image tasks learnt from (input, target) pairs.

    Subclasses set ``name``, ``title``, ``description``, ``config_class`` and
    ``settings_field`` (the config section holding ``loss``).
    """

    needs_targets = True
    normalize_targets = True
    qc_kind = "restoration"
    tta_ok = True
    settings_field: ClassVar[str]
    #: Whether input and target are the same kind of image (False for label-free, where
    #: a shift found by cross-correlation is less certain).
    same_modality: ClassVar[bool] = True

    def blockwise_ok(self) -> bool:
        """Restored pixels depend only on their neighbourhood: large images go in blocks."""
        return True

    @property
    def loss_kind(self) -> str:
        """The pixel loss chosen in the task's settings (``"l1"`` or ``"l2"``)."""
        return getattr(self.config, self.settings_field).loss

    def training_loss(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Pixel loss between the prediction for ``batch["input"]`` and ``batch["target"]``."""
        out = model(batch["input"]).float()
        return pixel_loss(out, batch["target"].float(), self.loss_kind)

    def extra_checks(
        self,
        image_path: Path,
        image_cf: np.ndarray,
        target_path: Path | None,
        target_cf: np.ndarray | None,
    ) -> list[Finding]:
        """Check that the target has the input's channels and is aligned with it."""
        from deepscope.data.validation import Finding

        if target_path is None or target_cf is None:
            return []
        if target_cf.shape[0] != image_cf.shape[0]:
            return [
                Finding(
                    "error",
                    target_path,
                    f"this target has {target_cf.shape[0]} channel(s) but its image "
                    f"{image_path.name} has {image_cf.shape[0]}; the {self.name} task predicts "
                    "as many channels as the input has.",
                    "give targets with the same channels as their images (split or merge "
                    "channels in Fiji: Image > Color), or check the axes (option --axes).",
                )
            ]
        if image_cf.shape[1:] != target_cf.shape[1:]:
            return []  # reported by the shared size check
        shift, correlation = estimate_shift(image_cf, target_cf)
        if self.same_modality and correlation < UNRELATED_CORRELATION:
            return [
                Finding(
                    "warning",
                    image_path,
                    f"this image and its target {target_path.name} share little structure "
                    f"(best cross-correlation {correlation:.2f}, where pairs of one field "
                    "usually score above 0.5): the target may belong to another image, or "
                    "be empty or out of focus.",
                    "open the pair side by side in Fiji and check that the target shows the "
                    "same field as its image (file names are paired exactly).",
                )
            ]
        if correlation < MIN_PEAK_CORRELATION:
            return []
        biggest = float(np.max(np.abs(shift))) if shift.size else 0.0
        if biggest <= MAX_SHIFT_PIXELS:
            return []
        at_limit = " or more" if biggest >= _SEARCH_RADIUS else ""
        note = (
            " (transmitted light and fluorescence look different, so this estimate can be "
            "off; check by overlaying the two in Fiji)"
            if not self.same_modality
            else ""
        )
        return [
            Finding(
                "warning",
                image_path,
                f"this image and its target {target_path.name} look misaligned: the target's "
                f"content lies {describe_shift(shift)}{at_limit} from the input's "
                f"(cross-correlation peak off-centre){note}. Training on shifted pairs "
                "gives blurred, shifted results.",
                "register the pair before training (Fiji: Plugins > Registration > "
                "StackReg or 'Correct 3D Drift'), or check that the target belongs to this "
                "image.",
            )
        ]


@register_task
class CareTask(PairedRestorationTask):
    """CARE: content-aware restoration from low-/high-SNR pairs."""

    name = "care"
    title = "CARE restoration"
    description = (
        "Restores low-quality images (low light, short exposure) by learning from pairs of "
        "low- and high-quality images of the same fields. With 'probabilistic' it also "
        "predicts, per pixel, how uncertain the restoration is."
    )
    config_class = CareConfig
    settings_field = "care"

    @property
    def probabilistic(self) -> bool:
        """Whether the network predicts a Laplace scale besides the mean."""
        return bool(self.config.care.probabilistic)

    def out_channels(self, in_channels: int) -> int:
        """One output per input channel; two (mean, scale) when probabilistic."""
        return 2 * in_channels if self.probabilistic else in_channels

    def build_model(self, in_channels: int) -> nn.Module:
        """Build the U-Net; a probabilistic one starts with scales of :data:`INITIAL_SCALE`."""
        model = super().build_model(in_channels)
        head = getattr(model, "head", None)
        if self.probabilistic and isinstance(getattr(head, "bias", None), torch.Tensor):
            with torch.no_grad():
                head.bias[in_channels:] = math.log(math.expm1(INITIAL_SCALE - _SCALE_FLOOR))
        return model

    def training_loss(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """L1/L2 loss, or the Laplace negative log-likelihood when probabilistic."""
        if not self.probabilistic:
            return super().training_loss(model, batch, generator)
        out = model(batch["input"]).float()
        n = batch["target"].shape[1]
        return laplace_nll(out[:, :n], out[:, n:], batch["target"].float())

    def denormalize_output(
        self, output: np.ndarray, normalizer: PercentileNormalizer
    ) -> np.ndarray:
        """De-normalise means like targets and scales by the target's intensity range."""
        if not self.probabilistic:
            return normalizer.denormalize(output)
        n = output.shape[0] // 2
        mean = normalizer.denormalize(output[:n])
        raw = torch.from_numpy(np.ascontiguousarray(output[n:], dtype=np.float32))
        scale = laplace_scale(raw).numpy()
        span = np.asarray(normalizer.high, np.float32) - np.asarray(normalizer.low, np.float32)
        scale = scale * span.reshape((-1,) + (1,) * (scale.ndim - 1))
        return np.concatenate([mean, scale.astype(np.float32)])

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Return the restored image: the predicted mean (without the scale channels)."""
        return output[: output.shape[0] // 2] if self.probabilistic else output

    def side_outputs(self, output: np.ndarray) -> dict[str, np.ndarray]:
        """``{"uncertainty": Laplace scale per pixel}`` when probabilistic, else nothing.

        The scale ``b`` is the expected absolute error of the restored pixel, in the
        target's intensity units (for a Laplace distribution, ``E|y - mu| = b``).
        """
        if not self.probabilistic:
            return {}
        return {"uncertainty": output[output.shape[0] // 2 :]}


@register_task
class N2NTask(PairedRestorationTask):
    """Noise2Noise: denoising from pairs of independent noisy images."""

    name = "n2n"
    title = "Noise2Noise denoising"
    description = (
        "Removes noise by learning from pairs of noisy images of the same field, taken one "
        "after the other (no clean images needed). The noise must differ between the two "
        "images of a pair, while the sample stays still."
    )
    config_class = N2NConfig
    settings_field = "n2n"


@register_task
class LabelFreeTask(PairedRestorationTask):
    """Label-free prediction: fluorescence predicted from transmitted light (fnet-style)."""

    name = "labelfree"
    title = "Label-free prediction"
    description = (
        "Predicts a fluorescence image (e.g. nuclei, membranes) from a transmitted-light "
        "image (bright field, phase contrast, DIC), after learning from pairs of both taken "
        "of the same cells. Works in 2D and 3D."
    )
    config_class = LabelFreeConfig
    settings_field = "labelfree"
    same_modality = False
