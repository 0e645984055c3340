"""Make a trained network fast for prediction: batch norm folded, channels-last, bf16.

Prediction runs the same network over many tiles. Three changes make each pass cheaper
without changing what it computes (beyond rounding):

- batch normalisation, in eval mode a fixed per-channel scale and shift, is folded into
  the weights and bias of the convolution before it (``torch.nn.utils.fusion``), which
  removes one pass over every feature map;
- the weights take the channels-last layout of the input tiles (2.3x faster bf16
  convolutions on this project's CPU, see benchmarks/RESULTS.md);
- with bf16 prediction the weights are stored in bf16 once, instead of being cast by
  autocast in every pass.

:func:`inference_network` returns such a copy and keeps it while the network's weights
are unchanged (loading other weights into the same module makes a new copy); the
network itself is never modified.
"""

from __future__ import annotations

import copy
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


def _weights_version(network: nn.Module) -> tuple:
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
    key = (memory_format, bf16, _weights_version(network))
    cached = _CACHE.get(network)
    if cached is not None and cached[0] == key:
        return cached[1]
    prepared = copy.deepcopy(network).eval()
    fold_batch_norm(prepared)
    prepared = prepared.to(memory_format=memory_format)
    if bf16 and params[0].device.type == "cpu":
        prepared = prepared.to(torch.bfloat16)
    prepared.requires_grad_(False)
    _CACHE[network] = (key, prepared)
    return prepared
