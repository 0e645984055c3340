"""Make a trained network fast for prediction: batch norm folded, ReLU fused, bf16.

Prediction runs the same network over many tiles. Four changes make each pass cheaper
without changing what it computes (beyond rounding):

- batch normalisation, in eval mode a fixed per-channel scale and shift, is folded into
  the weights and bias of the convolution before it (``torch.nn.utils.fusion``), which
  removes one pass over every feature map;
- the weights take the channels-last layout of the input tiles (2.3x faster bf16
  convolutions on this project's CPU, see benchmarks/RESULTS.md);
- with bf16 prediction the weights are stored in bf16 once, instead of being cast by
  autocast in every pass;
- on CPUs, a ReLU that follows a convolution is computed by the convolution itself
  (oneDNN's fused convolution, the kernel ``torch.compile`` uses for the same pattern),
  which removes another pass over every feature map. It is used only after a check that
  it gives the same result as the two steps on this PyTorch build.

A network may also merge its own steps for prediction: if it has a
``prepare_for_prediction(fused_relu)`` method, the copy's is called last (StarDist joins
its two output heads into one convolution and fuses the ReLU before them).

:func:`inference_network` returns such a copy and keeps it while the network's weights
are unchanged (loading other weights into the same module makes a new copy); the
network itself is never modified.
"""

from __future__ import annotations

import copy
import functools
import weakref

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]] = weakref.WeakKeyDictionary()


def fold_batch_norm(network: nn.Module) -> int:
    """Fold every batch norm that directly follows a convolution in an ``nn.Sequential``.

    The network must be in eval mode (the running statistics are used). Modifies
    ``network`` in place: the convolution gets the folded weights, the batch norm
    becomes ``nn.Identity``. Returns the number of folded pairs.
    """
    folded = 0
    for module in list(network.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = module._modules[first], module._modules[second]
            if (
                isinstance(conv, _CONVS)
                and isinstance(norm, _NORMS)
                and norm.track_running_stats
                and conv.out_channels == norm.num_features
            ):
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = nn.Identity()
                folded += 1
    return folded


class ConvReLU(nn.Module):
    """A convolution and the ReLU after it in one oneDNN call (CPU prediction only).

    Holds the convolution's own weight and bias; see :func:`fuse_conv_relu`.
    """

    def __init__(self, conv: nn.Conv2d | nn.Conv3d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.padding = list(conv.padding)
        self.stride, self.dilation = list(conv.stride), list(conv.dilation)
        self.groups = conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU(convolution(x)), in the weights' precision (autocast does not see this call)."""
        return torch.ops.mkldnn._convolution_pointwise(
            x.to(self.weight.dtype),
            self.weight,
            self.bias,
            self.padding,
            self.stride,
            self.dilation,
            self.groups,
            "relu",
            [],
            "",
        )


@functools.cache
def fused_conv_relu_works(dims: int, dtype: torch.dtype) -> bool:
    """Whether this PyTorch build's fused convolution + ReLU matches the two separate steps."""
    if not torch.backends.mkldnn.is_available():
        return False
    conv_cls = nn.Conv2d if dims == 2 else nn.Conv3d
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    gen = torch.Generator().manual_seed(0)
    conv = conv_cls(3, 4, 3, padding=1).to(dtype).to(memory_format=fmt).eval()
    x = torch.randn((1, 3) + (6,) * dims, generator=gen).to(dtype).contiguous(memory_format=fmt)
    try:
        with torch.inference_mode():
            expected = torch.relu(conv(x)).float()
            fused = ConvReLU(conv)(x).float()
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    return fused.shape == expected.shape and bool(torch.allclose(fused, expected, atol=tol))


def fuse_conv_relu(network: nn.Module, dtype: torch.dtype) -> int:
    """Replace each convolution followed by a ReLU in an ``nn.Sequential`` by :class:`ConvReLU`.

    Identities between the two (left by :func:`fold_batch_norm`) are skipped over; the
    ReLU becomes ``nn.Identity``. Only plain zero-padded convolutions are fused, and only
    when :func:`fused_conv_relu_works` for their dimension. Modifies ``network`` in place;
    returns the number of fused pairs.
    """
    fused = 0
    for module in list(network.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for i, name in enumerate(names):
            conv = module._modules[name]
            if not (
                isinstance(conv, nn.Conv2d | nn.Conv3d)
                and conv.padding_mode == "zeros"
                and not isinstance(conv.padding, str)
                and fused_conv_relu_works(conv.weight.dim() - 2, dtype)
            ):
                continue
            j = i + 1
            while j < len(names) and isinstance(module._modules[names[j]], nn.Identity):
                j += 1
            if j < len(names) and isinstance(module._modules[names[j]], nn.ReLU):
                module._modules[name] = ConvReLU(conv)
                module._modules[names[j]] = nn.Identity()
                fused += 1
    return fused


def weights_version(network: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer of ``network`` is replaced or written in place."""
    return tuple((id(t), t._version) for t in (*network.parameters(), *network.buffers()))


def inference_network(
    network: nn.Module, memory_format: torch.memory_format, bf16: bool
) -> nn.Module:
    """A copy of ``network`` prepared for prediction (see the module documentation).

    Networks without parameters (e.g. an ONNX Runtime wrapper) are returned as they are;
    networks in training mode and TorchScript networks are only moved to ``memory_format``.
    """
    params = list(network.parameters())
    if not params:
        return network
    if network.training or isinstance(network, torch.jit.ScriptModule):
        # TorchScript (e.g. an imported package) cannot be copied and rebuilt like this.
        return network.to(memory_format=memory_format)
    key = (memory_format, bf16, weights_version(network))
    cached = _CACHE.get(network)
    if cached is not None and cached[0] == key:
        return cached[1]
    prepared = copy.deepcopy(network).eval()
    fold_batch_norm(prepared)
    prepared = prepared.to(memory_format=memory_format)
    if bf16 and params[0].device.type == "cpu":
        prepared = prepared.to(torch.bfloat16)
    dtype = torch.bfloat16 if bf16 and params[0].device.type == "cpu" else torch.float32
    if params[0].device.type == "cpu":
        fuse_conv_relu(prepared, dtype)
    prepare = getattr(prepared, "prepare_for_prediction", None)
    if callable(prepare):  # a network's own merges (e.g. StarDist's heads)
        dims = params[0].dim() - 2
        fusable = params[0].device.type == "cpu" and fused_conv_relu_works(dims, dtype)
        prepare(ConvReLU if fusable else None)
    prepared.requires_grad_(False)
    _CACHE[network] = (key, prepared)
    return prepared
