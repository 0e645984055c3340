"""Noise2Void (Krull et al. 2019) and N2V2 (Höck et al. 2022): denoising without clean targets.

A random, stratified subset of pixels is masked: each is replaced by a value from its
neighbourhood (a random neighbour for N2V, the neighbourhood median for N2V2), and the
network is trained to predict the original value at exactly those pixels. Because the
network never sees a masked pixel's own value, it cannot learn the identity and learns
to predict the signal, which noise independent from pixel to pixel does not let it guess.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from deepscope.config import TaskConfigBase, _Section
from deepscope.tasks.base import Task, register_task


class N2VSettings(_Section):
    """Blind-spot masking settings."""

    masked_pixel_percentage: float = Field(
        1.0, gt=0.0, le=10.0, description="Percentage of pixels masked in each training patch."
    )
    roi_size: int = Field(
        5, ge=3, le=21, description="Side of the neighbourhood a masked pixel's value comes from."
    )
    variant: Literal["n2v", "n2v2"] = Field(
        "n2v",
        description="'n2v2' uses median replacement, blur pooling and no top skip connection, "
        "which avoids checkerboard artefacts.",
    )


class N2VConfig(TaskConfigBase):
    """Config of the Noise2Void task."""

    task: Literal["n2v"] = "n2v"
    n2v: N2VSettings = Field(default_factory=N2VSettings)

    @model_validator(mode="after")
    def _check(self) -> N2VConfig:
        if self.data.zoom > 0:
            raise ValueError(
                "data.zoom cannot be used with Noise2Void: interpolating an image correlates "
                "the noise of neighbouring pixels, which Noise2Void relies on being "
                "independent (leave data.zoom at 0)"
            )
        return self


def _neighbour_offsets(dims: int, radius: int) -> torch.Tensor:
    offsets = [o for o in itertools.product(range(-radius, radius + 1), repeat=dims) if any(o)]
    return torch.tensor(offsets, dtype=torch.long)


def stratified_coordinates(
    shape: tuple[int, ...], percentage: float, batch: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick about ``percentage`` % of the pixels of each sample, one per grid cell.

    Returns
    -------
    torch.Tensor
        Long tensor (M, 1 + len(shape)) of (sample index, *spatial coordinate).
    """
    dims = len(shape)
    spacing = max(1, round((100.0 / percentage) ** (1.0 / dims)))
    grids = [torch.arange(0, s, spacing) for s in shape]
    cells = torch.cartesian_prod(*grids).reshape(-1, dims)
    n_cells = cells.shape[0]
    jitter = torch.randint(0, spacing, (batch, n_cells, dims), generator=generator)
    coords = cells.unsqueeze(0) + jitter
    inside = (coords < torch.tensor(shape)).all(-1)
    sample = torch.arange(batch).unsqueeze(1).expand(batch, n_cells)
    return torch.cat([sample[inside].unsqueeze(1), coords[inside]], dim=1)


def blind_spot_mask(
    x: torch.Tensor,
    percentage: float,
    roi_size: int,
    variant: str = "n2v",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a stratified subset of pixels by neighbourhood values.

    Parameters
    ----------
    x
        Batch (N, C, *spatial).
    percentage
        Percentage of pixels to mask.
    roi_size
        Side of the (square or cubic) neighbourhood.
    variant
        "n2v" (random neighbour, centre excluded) or "n2v2" (median of the neighbourhood
        without the centre).

    Returns
    -------
    masked, mask
        The masked batch and a boolean mask (N, 1, *spatial) of the masked pixels.
    """
    spatial = tuple(x.shape[2:])
    dims = len(spatial)
    coords = stratified_coordinates(spatial, percentage, x.shape[0], generator)
    offsets = _neighbour_offsets(dims, roi_size // 2)
    limits = torch.tensor(spatial) - 1
    pick = torch.randint(0, offsets.shape[0], (coords.shape[0],), generator=generator)
    coords, offsets, limits, pick = (t.to(x.device) for t in (coords, offsets, limits, pick))
    masked = x.clone()
    idx = [coords[:, 0], slice(None)]
    if variant == "n2v2":
        nbr = _neighbours(coords[:, None, 1:], offsets[None], limits)  # (M, K, dims)
        values = x[(coords[:, 0, None],) + (slice(None),) + tuple(nbr[..., d] for d in range(dims))]
        # values: (M, K, C) -> median over K
        replacement = values.median(dim=1).values
    else:
        nbr = _neighbours(coords[:, 1:], offsets[pick], limits)
        replacement = x[(coords[:, 0], slice(None)) + tuple(nbr[:, d] for d in range(dims))]
    target_index = tuple(idx) + tuple(coords[:, 1 + d] for d in range(dims))
    masked[target_index] = replacement
    mask = torch.zeros((x.shape[0], 1) + spatial, dtype=torch.bool, device=x.device)
    mask[(coords[:, 0], 0) + tuple(coords[:, 1 + d] for d in range(dims))] = True
    return masked, mask


def _neighbours(centres: torch.Tensor, offsets: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    # Along an axis where centre + offset leaves the image, use centre - offset instead.
    # Reflecting the coordinate about the border can land on the centre itself (e.g.
    # 1 - 2 -> -1 -> 1), which would show the network the value it must predict.
    nbr = centres + offsets
    outside = (nbr < 0) | (nbr > limits)
    nbr = torch.where(outside, centres - offsets, nbr)
    return torch.minimum(nbr.clamp(min=0), limits)


@register_task
class N2VTask(Task):
    """Noise2Void: self-supervised denoising from noisy images alone."""

    name = "n2v"
    title = "Noise2Void denoising"
    description = (
        "Removes pixel noise from fluorescence images using only the noisy images themselves "
        "(no clean images needed). Works when the noise of neighbouring pixels is independent "
        "(camera shot and read noise); it cannot remove stripes or structured artefacts."
    )
    config_class = N2VConfig
    needs_targets = False
    tta_ok = True

    def blockwise_ok(self) -> bool:
        """Denoised pixels depend only on their neighbourhood: large images go in blocks."""
        return True

    def extra_model_kwargs(self) -> dict:
        """Return the N2V2 architecture switch (blur pool, no top skip)."""
        return {"n2v2": self.config.n2v.variant == "n2v2"}

    def training_loss(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean squared error at the masked pixels only."""
        s = self.config.n2v
        x = batch["input"]
        masked, mask = blind_spot_mask(
            x, s.masked_pixel_percentage, s.roi_size, s.variant, generator=generator
        )
        out = model(masked).float()
        err = (out - x) ** 2 * mask
        return err.sum() / (mask.sum() * x.shape[1]).clamp(min=1)


def expected_masked_fraction(percentage: float, dims: int) -> float:
    """Fraction of pixels actually masked by the stratified grid (for documentation/tests)."""
    spacing = max(1, round((100.0 / percentage) ** (1.0 / dims)))
    return 1.0 / math.pow(spacing, dims)
