"""The U-Net and the architecture registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepscope.engine.models import UNet, build_model, get_model_class, register_model
from deepscope.engine.models.unet import BlurPool, upsample2
from deepscope.tasks.n2v import N2VConfig, N2VTask


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("n2v2", [False, True])
def test_output_shape_2d(n2v2):
    net = UNet(dims=2, in_channels=2, out_channels=3, depth=2, base_channels=4, n2v2=n2v2)
    out = net(torch.rand(2, 2, 16, 24))
    assert out.shape == (2, 3, 16, 24)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("n2v2", [False, True])
def test_output_shape_3d(n2v2):
    net = UNet(dims=3, in_channels=1, out_channels=2, depth=2, base_channels=4, n2v2=n2v2)
    out = net(torch.rand(1, 1, 8, 12, 16))
    assert out.shape == (1, 2, 8, 12, 16)
    assert any(isinstance(m, nn.Conv3d) for m in net.modules())
    assert not any(isinstance(m, nn.Conv2d) for m in net.modules())


def test_depth_one_and_three():
    assert UNet(depth=1, base_channels=4)(torch.rand(1, 1, 10, 6)).shape == (1, 1, 10, 6)
    assert UNet(depth=3, base_channels=4)(torch.rand(1, 1, 16, 24)).shape == (1, 1, 16, 24)


def test_divisibility():
    assert UNet(depth=1, base_channels=4).divisibility() == 2
    assert UNet(depth=3, base_channels=4).divisibility() == 8
    assert UNet(dims=3, depth=2, base_channels=4).divisibility() == 4


def test_n2v2_uses_blur_pool_and_drops_top_skip():
    plain = UNet(depth=2, base_channels=4)
    n2v2 = UNet(depth=2, base_channels=4, n2v2=True)
    assert not any(isinstance(m, BlurPool) for m in plain.modules())
    assert sum(isinstance(m, BlurPool) for m in n2v2.modules()) == 2
    # Top decoder input: upsampled 8 channels, plus the 4 skip channels only without n2v2.
    assert plain.decoders[-1][0].in_channels == 12
    assert n2v2.decoders[-1][0].in_channels == 8
    # The lower skip connection is kept in both.
    assert plain.decoders[0][0].in_channels == n2v2.decoders[0][0].in_channels == 16 + 8


@pytest.mark.parametrize("dims", [2, 3])
def test_blur_pool_halves_and_keeps_constants(dims):
    pool = BlurPool(dims, channels=3)
    shape = (2, 3) + (8,) * dims
    out = pool(torch.full(shape, 2.5))
    assert out.shape == (2, 3) + (4,) * dims
    assert torch.allclose(out, torch.full_like(out, 2.5))
    # Max pooling first: a single bright pixel survives (spread), not averaged away to 0.
    spike = torch.zeros((1, 3) + (8,) * dims)
    spike[(0, slice(None)) + (4,) * dims] = 1.0
    assert pool(spike).max() > 0.1


@pytest.mark.parametrize("dims", [2, 3])
def test_upsample2_matches_interpolate_in_values_and_gradients(dims):
    layout = torch.channels_last if dims == 2 else torch.channels_last_3d
    mode = "bilinear" if dims == 2 else "trilinear"
    torch.manual_seed(0)
    shape = (2, 3) + (4,) * dims
    x0 = torch.randn(shape).contiguous(memory_format=layout)
    skip = torch.randn((2, 2) + (8,) * dims)
    grads, outs = [], []
    for fn in (upsample2, lambda t: nn.functional.interpolate(t, scale_factor=2, mode=mode)):
        x = x0.clone().requires_grad_()
        y = fn(x)
        outs.append(y.detach())
        # the gradient reaches the up-sampling as a channel slice, as in the U-Net
        (torch.cat([y, skip], 1) * torch.arange(5.0).view(1, 5, *([1] * dims))).sum().backward()
        grads.append(x.grad)
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


def test_residual_adds_input():
    net = UNet(in_channels=2, out_channels=2, depth=1, base_channels=4, residual=True).eval()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
    x = torch.rand(1, 2, 8, 8)
    assert torch.allclose(net(x), x, atol=1e-6)
    plain = UNet(in_channels=2, out_channels=2, depth=1, base_channels=4).eval()
    plain.load_state_dict(net.state_dict())
    assert torch.count_nonzero(plain(x)) == 0


def test_residual_needs_equal_channels():
    with pytest.raises(ValueError, match="residual=True needs as many output channels"):
        UNet(in_channels=1, out_channels=2, residual=True)


def test_invalid_dims():
    with pytest.raises(ValueError, match="dims must be 2 or 3, got 4"):
        UNet(dims=4)


def test_registry_lookup_and_build():
    assert get_model_class("unet") is UNet
    net = build_model("unet", dims=3, in_channels=2, out_channels=1, depth=1, base_channels=4)
    assert isinstance(net, UNet) and net.dims == 3 and net.depth == 1


def test_registry_unknown_name_lists_known_architectures():
    with pytest.raises(KeyError) as info:
        get_model_class("resnet9000")
    message = str(info.value)
    assert "'resnet9000'" in message
    assert "known architectures: " in message and "unet" in message


def test_registry_rejects_a_second_class_under_a_taken_name():
    class Other(nn.Module):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_model("unet")(Other)
    assert get_model_class("unet") is UNet
    # Registering the same class again is harmless (module reloads).
    assert register_model("unet")(UNet) is UNet


def test_task_builds_n2v2_unet_from_config():
    cfg = N2VConfig(
        data={"spatial_dims": 3, "patch_size": [8, 16, 16]},
        model={"depth": 2, "base_channels": 4},
        n2v={"variant": "n2v2"},
    )
    net = N2VTask(cfg).build_model(in_channels=2)
    assert isinstance(net, UNet)
    assert net.dims == 3 and net.n2v2 and net.divisibility() == 4
    assert net(torch.rand(1, 2, 8, 16, 16)).shape == (1, 2, 8, 16, 16)


def test_batch_norm_recalibration_runs_about_128_patches_and_at_most_8_batches():
    from deepscope.engine.callbacks import RecalibrateBatchNorm

    callback = RecalibrateBatchNorm()
    assert [callback.batches(b) for b in (1, 4, 16, 64, 100, 1000)] == [8, 8, 8, 2, 2, 1]
