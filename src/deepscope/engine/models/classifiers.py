"""Image classifiers (pure ``torch.nn.Module`` s) for the ``classify`` task.

Three backbones, each a list of ``blocks`` (run in order, each halving the image size
except the first block of the ResNet) followed by global average pooling, dropout and a
linear ``head`` with one output per class:

* ``small`` — a VGG-style CNN: ``depth`` blocks of two 3×3 convolutions and max pooling,
  channels doubling per block. Few parameters: the course's first remedy against
  overfitting is a smaller network.
* ``resnet18`` — the ResNet-18 layout (He et al. 2016): a stem and four stages of two
  basic residual blocks; widths ``base, 2·base, 4·base, 8·base`` (64 in the original).
* ``unet_encoder`` — the encoder of :class:`deepscope.engine.models.unet.UNet` (its
  ``encoders`` and ``bottleneck`` modules, same names and shapes), so the weights of a
  segmentation or restoration U-Net trained on microscopy can start a classifier.

``blocks`` is what ``--freeze N`` counts: the first N blocks can be kept fixed.
torchvision cannot be installed beside the CPU torch wheel used here, so the layouts are
written out; they follow the published architectures.
"""

from __future__ import annotations

import torch
from torch import nn

from deepscope.engine.models.registry import register_model
from deepscope.engine.models.unet import ConvBlock


class _Classifier(nn.Module):
    """Blocks → global average pooling → dropout → linear head."""

    blocks: nn.ModuleList

    def _init_head(self, features: int, classes: int, dropout: float) -> None:
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(features, classes)

    def feature_blocks(self) -> list[nn.Module]:
        """The blocks that ``--freeze N`` counts, in order (input side first)."""
        return list(self.blocks)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, F) of images (N, C, Y, X)."""
        for block in self.feature_blocks():
            x = block(x)
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits, N × classes) of images (N, C, Y, X)."""
        return self.head(self.dropout(self.features(x)))

    def divisibility(self) -> int:
        """Any image size works (global pooling); 1 for the shared model-folder record."""
        return 1


@register_model("small")
class SmallCNN(_Classifier):
    """A small VGG-style classifier.

    Parameters
    ----------
    in_channels
        Channels of the input images.
    classes
        Number of classes (outputs).
    depth
        Number of blocks; each has two 3×3 convolutions and halves the image size.
    base_channels
        Channels of the first block, doubled in each following block.
    batch_norm
        Batch normalisation after each convolution.
    dropout
        Dropout before the linear head (0 disables it).
    """

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 2,
        depth: int = 4,
        base_channels: int = 32,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.blocks = nn.ModuleList()
        c_in = in_channels
        for level in range(depth):
            c_out = base_channels * 2**level
            self.blocks.append(
                nn.Sequential(ConvBlock(2, c_in, c_out, batch_norm, 0.0), nn.MaxPool2d(2))
            )
            c_in = c_out
        self._init_head(c_in, classes, dropout)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convolutions with a shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, batch_norm: bool):
        super().__init__()

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if batch_norm else nn.Identity()

        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not batch_norm)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not batch_norm)
        self.bn2 = norm(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=not batch_norm), norm(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual update of ``x``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@register_model("resnet18")
class ResNet18(_Classifier):
    """A ResNet-18-like classifier for small microscopy images.

    The stem is a 3×3 convolution without pooling (as for CIFAR-sized images), so that
    32–128 pixel crops keep enough resolution; then four stages of two basic blocks,
    the last three halving the size.

    Parameters
    ----------
    in_channels, classes
        Input channels and number of classes.
    depth
        Unused (the layout is fixed); accepted so every backbone takes the same settings.
    base_channels
        Width of the first stage (64 in the original ResNet-18).
    batch_norm
        Batch normalisation after each convolution.
    dropout
        Dropout before the linear head.
    """

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 2,
        depth: int = 4,
        base_channels: int = 32,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        widths = [base_channels * 2**i for i in range(4)]
        stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=not batch_norm),
            nn.BatchNorm2d(widths[0]) if batch_norm else nn.Identity(),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.ModuleList([stem])
        c_in = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            self.blocks.append(
                nn.Sequential(
                    BasicBlock(c_in, width, stride, batch_norm),
                    BasicBlock(width, width, 1, batch_norm),
                )
            )
            c_in = width
        self._init_head(c_in, classes, dropout)


@register_model("unet_encoder")
class UNetEncoderClassifier(_Classifier):
    """The encoder of deepscope's 2D U-Net with a classification head.

    Its ``encoders`` and ``bottleneck`` have the names and shapes of
    :class:`~deepscope.engine.models.unet.UNet`'s, so a U-Net state dict of the same
    depth, base channels and batch-norm setting loads into them.

    Parameters
    ----------
    in_channels, classes
        Input channels and number of classes.
    depth
        Down-sampling steps of the U-Net (its ``model.depth``).
    base_channels
        Channels of the U-Net's first level.
    batch_norm
        Batch normalisation (must match the U-Net whose weights are used).
    dropout
        Dropout before the linear head.
    """

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 2,
        depth: int = 2,
        base_channels: int = 32,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        c_in = in_channels
        for level in range(depth):
            self.encoders.append(ConvBlock(2, c_in, chans[level], batch_norm, 0.0))
            self.pools.append(nn.MaxPool2d(2))
            c_in = chans[level]
        self.bottleneck = ConvBlock(2, c_in, chans[depth], batch_norm, 0.0)
        self.blocks = nn.ModuleList()  # not registered twice: see feature_blocks
        self._init_head(chans[depth], classes, dropout)

    def feature_blocks(self) -> list[nn.Module]:
        """Each U-Net level (convolutions, then pooling) and the bottleneck."""
        levels: list[nn.Module] = [
            nn.Sequential(enc, pool) for enc, pool in zip(self.encoders, self.pools, strict=True)
        ]
        return [*levels, self.bottleneck]
