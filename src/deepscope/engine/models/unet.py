"""A configurable 2D/3D U-Net (Ronneberger et al. 2015), as used by CARE and Noise2Void.

The module is pure: no file access, no normalisation, no tiling. It declares its shape
constraint (:meth:`UNet.divisibility`) so that configs and the tiler can read it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from deepscope.engine.models.registry import register_model

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


class ConvBlock(nn.Sequential):
    """Two (conv → batch norm → ReLU) layers with 'same' padding."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, batch_norm: bool, dropout: float):
        layers: list[nn.Module] = []
        for i in range(2):
            layers.append(_CONV[dims](in_ch if i == 0 else out_ch, out_ch, 3, padding=1))
            if batch_norm:
                layers.append(_NORM[dims](out_ch))
            layers.append(nn.ReLU(inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class _GradientLayout(torch.autograd.Function):
    """Identity whose backward hands the gradient on in the layout of the forward tensor.

    The gradient that reaches an up-sampling layer comes out of ``torch.cat``'s backward
    as a channel slice, which is neither contiguous nor channels-last; PyTorch's CPU
    kernel for the backward of bilinear/trilinear up-sampling then copies it to the
    default layout and takes a slow path (measured: 15 % of a 2D N2V training step with
    channels-last bf16). Giving it the gradient in the forward tensor's layout keeps it
    on the fast path. The forward pass is unchanged (a view, no copy).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:  # noqa: D102
        ctx.layout = layout
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return grad.contiguous(memory_format=ctx.layout), None


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """Bilinear (2D) or trilinear (3D) up-sampling by 2, fast in training on CPUs too."""
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    y = F.interpolate(x, scale_factor=2, mode=mode, align_corners=False)
    if y.requires_grad:  # only while training: prediction needs no backward
        layout = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
        if y.is_contiguous(memory_format=layout):
            y = _GradientLayout.apply(y, layout)
    return y


class BlurPool(nn.Module):
    """Max-blur pooling (Zhang 2019), used by N2V2 against checkerboard artefacts."""

    def __init__(self, dims: int, channels: int):
        super().__init__()
        self.dims = dims
        k1 = torch.tensor([1.0, 2.0, 1.0])
        kernel = (
            k1[:, None] * k1[None, :] if dims == 2 else k1[:, None, None] * k1[None, :, None] * k1
        )
        kernel = kernel / kernel.sum()
        self.register_buffer("kernel", kernel.expand(channels, 1, *kernel.shape).contiguous())
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Max-pool with stride 1, blur, then subsample by 2."""
        pool = F.max_pool2d if self.dims == 2 else F.max_pool3d
        conv = F.conv2d if self.dims == 2 else F.conv3d
        x = pool(x, kernel_size=2, stride=1)
        pad = (1, 1) * self.dims
        x = F.pad(x, pad, mode="replicate")
        return conv(x, self.kernel.to(x.dtype), stride=2, groups=self.channels)


@register_model("unet")
class UNet(nn.Module):
    """U-Net for 2D (``dims=2``) or 3D (``dims=3``) images.

    Parameters
    ----------
    dims
        2 for images (N, C, Y, X), 3 for volumes (N, C, Z, Y, X).
    in_channels, out_channels
        Number of input and output channels.
    depth
        Number of down-sampling steps; spatial sizes must be divisible by ``2**depth``.
    base_channels
        Channels of the first level; doubled at each level.
    batch_norm
        Use batch normalisation after each convolution.
    dropout
        Dropout probability at the end of each block (0 disables it).
    n2v2
        N2V2 variant (Höck et al. 2022): blur pooling and no skip connection at the top
        level, which removes checkerboard artefacts of blind-spot training.
    residual
        Add the input to the output (only when in and out channels match); useful for
        restoration, where the network then learns a correction.
    """

    def __init__(
        self,
        dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 2,
        base_channels: int = 32,
        batch_norm: bool = True,
        dropout: float = 0.0,
        n2v2: bool = False,
        residual: bool = False,
    ):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if residual and in_channels != out_channels:
            raise ValueError("residual=True needs as many output channels as input channels")
        self.dims, self.depth, self.n2v2, self.residual = dims, depth, n2v2, residual
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        c_in = in_channels
        for level in range(depth):
            self.encoders.append(ConvBlock(dims, c_in, chans[level], batch_norm, dropout))
            self.pools.append(BlurPool(dims, chans[level]) if n2v2 else _POOL[dims](2))
            c_in = chans[level]
        self.bottleneck = ConvBlock(dims, c_in, chans[depth], batch_norm, dropout)
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            skip = 0 if (n2v2 and level == 0) else chans[level]
            self.decoders.append(
                ConvBlock(dims, chans[level + 1] + skip, chans[level], batch_norm, 0.0)
            )
        self.head = _CONV[dims](chans[0], out_channels, 1)

    def divisibility(self) -> int:
        """Spatial sizes given to :meth:`forward` must be multiples of this number."""
        return 2**self.depth

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the encoder; return the bottleneck features and the skip features."""
        skips = []
        for enc, pool in zip(self.encoders, self.pools, strict=True):
            x = enc(x)
            skips.append(x)
            x = pool(x)
        return self.bottleneck(x), skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, C_in, *spatial) to (N, C_out, *spatial)."""
        inp = x
        x, skips = self.encode(x)
        for level, dec in zip(reversed(range(self.depth)), self.decoders, strict=True):
            x = upsample2(x)
            if not (self.n2v2 and level == 0):
                x = torch.cat([x, skips[level]], dim=1)
            x = dec(x)
        out = self.head(x)
        return out + inp if self.residual else out
