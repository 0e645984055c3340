"""The StarDist network: the shared U-Net with an object-probability and a distance head.

As in StarDist (Schmidt et al. 2018, Weigert et al. 2020), the image is first reduced by
the ``grid`` factor (convolutions, then max pooling), so the U-Net and both heads work at
``1/grid`` of the image size: the output is smaller than the input by ``grid`` per axis.
This is StarDist's main speed lever; the distances are still in full-size pixels.

Output channels: 0 = object-probability logit (a sigmoid gives the probability that the
pixel lies inside an object, weighted towards its centre), 1..n_rays = distance from the
pixel to the object's boundary along each ray, in pixels (linear, as published).

The module is pure: no file access, no normalisation, no tiling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from deepscope.engine.models.unet import _CONV, ConvBlock, UNet


class StarDistNet(nn.Module):
    """U-Net backbone with StarDist's probability and distance heads (2D or 3D).

    Parameters
    ----------
    dims
        2 for images, 3 for volumes.
    in_channels
        Number of input channels.
    n_rays
        Number of rays (distance channels).
    grid
        Subsampling factor per spatial axis, each a power of 2 (e.g. ``(2, 2)`` or
        ``(1, 2, 2)``).
    depth, base_channels, batch_norm, dropout
        Settings of the U-Net (see :class:`~deepscope.engine.models.unet.UNet`).
    feature_channels
        Channels of the feature layer between the U-Net and the heads.
    channel_last_output
        Give the output as (N, *spatial / grid, 1 + n_rays) instead of channel first:
        the layout that BioImage.IO's ``stardist_postprocessing`` reads (set only in
        exported packages; deepscope itself uses channel first).
    """

    def __init__(
        self,
        dims: int = 2,
        in_channels: int = 1,
        n_rays: int = 32,
        grid: Sequence[int] = (2, 2),
        depth: int = 3,
        base_channels: int = 32,
        batch_norm: bool = True,
        dropout: float = 0.0,
        feature_channels: int = 128,
        channel_last_output: bool = False,
    ):
        super().__init__()
        grid = tuple(int(g) for g in grid)
        if len(grid) != dims or any(g < 1 or g & (g - 1) for g in grid):
            raise ValueError(f"grid {grid} must have {dims} powers of 2")
        self.dims, self.depth, self.grid, self.n_rays = dims, depth, grid, n_rays
        self.channel_last_output = channel_last_output
        # Reduce to the grid step by step (factor 2 per step on the axes still to reduce).
        stem: list[nn.Module] = []
        done = [1] * dims
        c_in = in_channels
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        while tuple(done) != grid:
            factor = tuple(2 if d < g else 1 for d, g in zip(done, grid, strict=True))
            done = [d * f for d, f in zip(done, factor, strict=True)]
            stem += [ConvBlock(dims, c_in, base_channels, batch_norm, 0.0), pool(factor)]
            c_in = base_channels
        self.stem = nn.Sequential(*stem)
        self.unet = UNet(
            dims=dims,
            in_channels=c_in,
            out_channels=feature_channels,
            depth=depth,
            base_channels=base_channels,
            batch_norm=batch_norm,
            dropout=dropout,
        )
        self.prob_head = _CONV[dims](feature_channels, 1, 1)
        self.dist_head = _CONV[dims](feature_channels, n_rays, 1)
        # Set only in copies prepared for prediction (see prepare_for_prediction).
        self.heads: nn.Module | None = None
        self.relu_features = True

    @property
    def encoders(self) -> nn.ModuleList:
        """The U-Net's down-sampling blocks (frozen by ``--freeze-encoder``)."""
        return self.unet.encoders

    @property
    def bottleneck(self) -> nn.Module:
        """The U-Net's bottleneck block."""
        return self.unet.bottleneck

    def divisibility(self) -> int:
        """Spatial input sizes must be multiples of this number (U-Net times grid)."""
        return 2**self.depth * max(self.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, C, *spatial) to (N, 1 + n_rays, *spatial / grid) (see channel_last_output)."""
        features = self.unet(self.stem(x))
        if self.relu_features:
            features = torch.relu(features)
        if self.heads is not None:
            out = self.heads(features)
        else:
            out = torch.cat([self.prob_head(features), self.dist_head(features)], dim=1)
        return out.movedim(1, -1) if self.channel_last_output else out

    def merged_heads(self) -> nn.Module:
        """The probability and distance heads as one 1x1 convolution (a new, frozen module).

        Its output channels are the network's: probability logit, then the distances.
        The weights keep the heads' memory layout.
        """
        heads = _CONV[self.dims](self.prob_head.in_channels, 1 + self.n_rays, 1)
        with torch.no_grad():
            weight = torch.cat([self.prob_head.weight, self.dist_head.weight])
            layout = _layout_of(self.prob_head.weight)
            heads.weight = nn.Parameter(weight.contiguous(memory_format=layout), False)
            bias = torch.cat([self.prob_head.bias, self.dist_head.bias])
            heads.bias = nn.Parameter(bias, False)
        return heads

    def prepare_for_prediction(self, fused_relu: Callable[[nn.Module], nn.Module] | None) -> None:
        """Merge steps for prediction, in place (only on a copy that is not trained further).

        The two 1x1 heads become one convolution giving the same channels (one pass over
        the features instead of two and no concatenation), and, with ``fused_relu`` (a
        factory of a convolution with its ReLU in one call), the U-Net's last convolution
        absorbs the ReLU on the features. Together ~5 ms of 150 on a 1024x1024 image
        (benchmarks/RESULTS.md).
        """
        self.heads = self.merged_heads()
        head = self.unet.head
        conv = isinstance(head, nn.Conv2d | nn.Conv3d)
        if fused_relu is not None and self.relu_features and conv:
            self.unet.head = fused_relu(head)
            self.relu_features = False


def _layout_of(tensor: torch.Tensor) -> torch.memory_format:
    """The memory format a 4D/5D weight is stored in (channels-last or contiguous)."""
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if tensor.dim() == 5 and tensor.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format
