"""Tiled prediction: coverage, blending and exactness against untiled prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deepscope.workflow.tiling import blend_window, fit_tile_shape, predict_tiled, tile_starts


@pytest.mark.parametrize("size", [1, 5, 15, 16, 17, 28, 31, 32, 37, 53, 64, 100])
@pytest.mark.parametrize("overlap", [0, 1, 4, 8, 15])
def test_tile_starts_cover_with_overlap(size, overlap):
    tile = 16
    starts = tile_starts(size, tile, overlap)
    if size <= tile:
        assert starts == [0]
        return
    assert starts[0] == 0
    assert starts == sorted(set(starts))
    assert starts[-1] + tile == size  # last tile flush with the end, never past it
    covered = np.zeros(size, dtype=int)
    for s in starts:
        covered[s : s + tile] += 1
    assert (covered >= 1).all()
    gaps = np.diff(starts)
    assert (gaps <= tile - overlap).all()  # neighbours overlap by at least `overlap`
    # No more tiles than needed at the requested step.
    assert len(starts) == int(np.ceil((size - tile) / (tile - overlap))) + 1


def test_tile_starts_examples():
    assert tile_starts(37, 16, 4) == [0, 12, 21]
    assert tile_starts(53, 16, 4) == [0, 12, 24, 36, 37]
    assert tile_starts(32, 16, 0) == [0, 16]


def test_fit_tile_shape_clips_and_rounds_to_divisibility():
    assert fit_tile_shape((37, 53), (16, 16), 8) == (16, 16)
    assert fit_tile_shape((5, 7), (16, 16), 8) == (8, 8)
    assert fit_tile_shape((37, 100), (20, 64), 8) == (24, 64)
    assert fit_tile_shape((5, 20, 33), (8, 16, 16), 4) == (8, 16, 16)


def test_fit_tile_shape_shares_the_axis_evenly_between_overlapping_tiles():
    # 512-px tiles on 1024 px with 32 px overlap need three tiles; three of 368 px cover
    # it, where 512-px ones would make the last overlap its neighbour by 480 px.
    assert tile_starts(1024, 512, 32) == [0, 480, 512]
    assert fit_tile_shape((1024, 1024), (512, 512), 16, 32) == (368, 368)
    assert tile_starts(1024, 368, 32) == [0, 336, 656]
    assert fit_tile_shape((600,), (512,), 16, 32) == (320,)  # two tiles of 320, not 512
    assert fit_tile_shape((100,), (64,), 8, 16) == (64,)  # already even: unchanged
    assert fit_tile_shape((300,), (512,), 16, 32) == (304,)  # one tile: clipped as before
    for size in range(40, 700, 7):  # never more tiles, never a larger tile
        tile = fit_tile_shape((size,), (128,), 8, 16)[0]
        assert tile <= 136 and tile % 8 == 0
        assert len(tile_starts(size, tile, 16)) <= len(tile_starts(size, 128, 16))


@pytest.mark.parametrize("shape", [(16, 16), (16, 24), (8, 16, 16)])
@pytest.mark.parametrize("overlap", [0, 1, 4, 8])
def test_blend_window_positive_and_shaped(shape, overlap):
    w = blend_window(shape, overlap)
    assert w.shape == shape and w.dtype == np.float32
    assert (w > 0).all() and (w <= 1).all()
    centre = tuple(s // 2 for s in shape)
    assert w[centre] == w.max()
    if all(2 * overlap < s for s in shape):
        assert w[centre] == 1.0
    for axis in range(len(shape)):
        assert np.array_equal(w, np.flip(w, axis))  # symmetric
    if overlap > 0:
        corner = (0,) * len(shape)
        assert w[corner] < 1e-3  # outermost pixels (no context) hardly count
    else:
        assert (w == 1).all()


class Recorder(nn.Module):
    """Identity network with one dummy parameter; records the tile shapes it saw."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return x + self.dummy


def conv_1x1(dims: int, weight: list[list[float]]) -> nn.Module:
    w = torch.tensor(weight, dtype=torch.float32)
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(w.shape[1], w.shape[0], 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(w.reshape(conv.weight.shape))
    return conv.eval()


def mean_filter(dims: int, channels: int = 1) -> nn.Module:
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(
        channels, channels, 3, padding=1, bias=False, groups=channels
    )
    with torch.no_grad():
        conv.weight.fill_(1.0 / 3**dims)
    return conv.eval()


def untiled(network: nn.Module, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return network(torch.from_numpy(image)[None]).numpy()[0]


def rand(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


@pytest.mark.parametrize(
    ("shape", "tile", "divisibility"),
    [((1, 37, 53), (16, 16), 1), ((3, 37, 53), (16, 16), 8), ((2, 5, 20, 33), (4, 16, 16), 4)],
)
def test_identity_network_reproduces_image(shape, tile, divisibility):
    image = rand(shape)
    net = Recorder()
    progress: list[tuple[int, int]] = []
    out = predict_tiled(
        net,
        image,
        out_channels=shape[0],
        tile_shape=tile,
        overlap=4,
        divisibility=divisibility,
        batch_size=3,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, image, rtol=0, atol=1e-6)
    tile_shape = fit_tile_shape(shape[1:], tile, divisibility, 4)
    assert all(s[2:] == tile_shape for s in net.seen)
    overlap = min(4, min(tile_shape) // 2)
    starts = [tile_starts(s, t, overlap) for s, t in zip(shape[1:], tile_shape, strict=True)]
    n_tiles = int(np.prod([len(s) for s in starts]))
    assert sum(s[0] for s in net.seen) == n_tiles > 1
    assert progress[-1] == (n_tiles, n_tiles)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_two_output_channels_from_one():
    image = rand((1, 37, 53), seed=1)
    out = predict_tiled(
        conv_1x1(2, [[1.0], [-2.0]]),
        image,
        out_channels=2,
        tile_shape=(16, 16),
        overlap=4,
        divisibility=4,
    )
    assert out.shape == (2, 37, 53)
    np.testing.assert_allclose(out[0], image[0], atol=1e-6)
    np.testing.assert_allclose(out[1], -2 * image[0], atol=1e-5)


def test_two_output_channels_in_3d():
    image = rand((1, 5, 20, 33), seed=2)
    out = predict_tiled(
        conv_1x1(3, [[1.0], [0.5]]),
        image,
        out_channels=2,
        tile_shape=(4, 16, 16),
        overlap=2,
        divisibility=4,
    )
    assert out.shape == (2, 5, 20, 33)
    np.testing.assert_allclose(out, np.concatenate([image, 0.5 * image]), atol=1e-6)


@pytest.mark.parametrize("overlap", [2, 4, 6])
def test_mean_filter_tiled_equals_untiled_2d(overlap):
    image = rand((2, 37, 53), seed=3)
    net = mean_filter(2, channels=2)
    expected = untiled(net, image)
    out = predict_tiled(
        net, image, out_channels=2, tile_shape=(16, 16), overlap=overlap, divisibility=1
    )
    np.testing.assert_allclose(out[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-4)
    # The tiles' outer edges coincide with the image's, so the borders agree too.
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_mean_filter_tiled_equals_untiled_3d():
    image = rand((1, 6, 20, 33), seed=4)
    net = mean_filter(3)
    expected = untiled(net, image)
    out = predict_tiled(
        net, image, out_channels=1, tile_shape=(4, 16, 16), overlap=2, divisibility=1
    )
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_without_enough_overlap_seams_appear():
    # Makes sure the comparison above can fail: with overlap 0 every tile edge is wrong.
    image = rand((1, 37, 53), seed=3)
    net = mean_filter(2)
    out = predict_tiled(net, image, out_channels=1, tile_shape=(16, 16), overlap=0, divisibility=1)
    assert np.abs(out - untiled(net, image))[:, 1:-1, 1:-1].max() > 0.05


def test_image_smaller_than_tile_is_padded_and_cropped():
    image = rand((1, 5, 7), seed=5)
    net = Recorder()
    out = predict_tiled(net, image, out_channels=1, tile_shape=(16, 16), overlap=4, divisibility=8)
    assert out.shape == (1, 5, 7)
    np.testing.assert_allclose(out, image, atol=1e-6)
    assert net.seen == [(1, 1, 8, 8)]


def test_image_smaller_than_tile_along_one_axis_3d():
    image = rand((1, 3, 20, 20), seed=6)
    net = Recorder()
    out = predict_tiled(
        net, image, out_channels=1, tile_shape=(8, 16, 16), overlap=4, divisibility=4
    )
    assert out.shape == image.shape
    np.testing.assert_allclose(out, image, atol=1e-6)
    # Z clipped to the (rounded) image; Y and X shared evenly by two tiles of 12.
    assert {s[2:] for s in net.seen} == {(4, 12, 12)}


def test_result_does_not_depend_on_batch_size():
    image = rand((1, 37, 53), seed=7)
    net = mean_filter(2)
    a = predict_tiled(
        net, image, out_channels=1, tile_shape=(16, 16), overlap=4, divisibility=1, batch_size=1
    )
    b = predict_tiled(
        net, image, out_channels=1, tile_shape=(16, 16), overlap=4, divisibility=1, batch_size=16
    )
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_dihedral_average_turns_every_version_back():
    from deepscope.workflow.predict import DIHEDRAL, dihedral_average

    x = np.random.default_rng(0).random((2, 5, 7)).astype(np.float32)  # not square
    seen: list[tuple[int, ...]] = []
    calls: list[tuple[int, int]] = []

    def identity(image, report):
        seen.append(image.shape)
        for done in (1, 2):
            report(done, 2)
        return image.copy()

    out = dihedral_average(identity, x, lambda done, total: calls.append((done, total)))
    assert np.allclose(out, x, atol=1e-6)  # each version was turned back before averaging
    assert len(seen) == len(DIHEDRAL) == 8 and {s[1:] for s in seen} == {(5, 7), (7, 5)}
    assert calls[-1] == (16, 16) and all(t == 16 for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)

    # an operation that does not turn with the image (a left-to-right ramp) is averaged out
    ramp = np.arange(7, dtype=np.float32)
    out = dihedral_average(lambda image, _r: image * 0 + np.arange(image.shape[-1]), x[:, :5, :5])
    assert np.allclose(out, ramp[:5].mean())
    # 3D stacks turn in YX only
    z = np.random.default_rng(1).random((1, 3, 4, 6)).astype(np.float32)
    assert np.allclose(dihedral_average(lambda image, _r: image.copy(), z), z, atol=1e-6)


def test_inference_network_folds_batch_norm_and_follows_new_weights():
    from deepscope.engine.inference import inference_network
    from deepscope.engine.models.unet import UNet

    torch.manual_seed(0)
    net = UNet(dims=2, in_channels=1, out_channels=2, depth=2, base_channels=8, batch_norm=True)
    for m in net.modules():  # give batch norm statistics that matter
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    net.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        reference = net(x)
    fast = inference_network(net, torch.channels_last, bf16=False)
    assert fast is not net and not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # original untouched
    with torch.inference_mode():
        assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last)), reference,
                              atol=1e-4)  # fmt: skip
    assert inference_network(net, torch.channels_last, bf16=False) is fast  # kept
    with torch.no_grad():  # other weights loaded into the same module: a new copy
        net.load_state_dict({k: v * 0.5 if v.is_floating_point() else v
                             for k, v in net.state_dict().items()})  # fmt: skip
    renewed = inference_network(net, torch.channels_last, bf16=False)
    assert renewed is not fast
    with torch.inference_mode():
        assert torch.allclose(renewed(x), net(x), atol=1e-4)
    half = inference_network(net, torch.channels_last, bf16=True)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    net.train()
    assert inference_network(net, torch.channels_last, bf16=True) is net  # training: as is


@pytest.mark.parametrize("dims", [2, 3])
def test_inference_network_fuses_relu_into_convolutions_without_changing_the_result(dims):
    from deepscope.engine.inference import ConvReLU, fused_conv_relu_works, inference_network
    from deepscope.engine.models.unet import UNet

    torch.manual_seed(0)
    net = UNet(dims=dims, in_channels=1, out_channels=2, depth=1, base_channels=4).eval()
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    x = torch.randn((1, 1) + (8,) * dims).contiguous(memory_format=fmt)
    with torch.inference_mode():
        reference = net(x)
    for bf16 in (False, True):
        fast = inference_network(net, fmt, bf16=bf16)
        dtype = torch.bfloat16 if bf16 else torch.float32
        fused = sum(isinstance(m, ConvReLU) for m in fast.modules())
        # every conv -> (batch norm) -> ReLU of the U-Net's blocks, where this build can
        assert fused == (6 if fused_conv_relu_works(dims, dtype) else 0)
        assert not any(isinstance(m, ConvReLU) for m in net.modules())  # original untouched
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = fast(x).float()
        assert torch.allclose(out, reference, atol=0.05 if bf16 else 1e-4)


@pytest.mark.parametrize("dims", [2, 3])
def test_stardist_network_prepared_for_prediction_gives_the_same_output(dims):
    from deepscope.engine.inference import ConvReLU, fused_conv_relu_works, inference_network
    from deepscope.engine.models.stardist_net import StarDistNet

    torch.manual_seed(0)
    grid = (2, 2) if dims == 2 else (1, 2, 2)
    net = StarDistNet(dims=dims, n_rays=8, grid=grid, depth=1, base_channels=4,
                      feature_channels=6).eval()  # fmt: skip
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    x = torch.randn((1, 1) + (8,) * dims).contiguous(memory_format=fmt)
    with torch.inference_mode():
        reference = net(x)
    fast = inference_network(net, fmt, bf16=False)
    # the two heads are one convolution; the features' ReLU is inside the last one
    assert fast.heads is not None and fast.heads.out_channels == 9
    assert net.heads is None and net.relu_features  # the trained network is untouched
    # saved weights keep their keys (older model folders load as before)
    assert not any(k.startswith("heads") for k in net.state_dict())
    assert any(k.startswith("heads") for k in fast.state_dict())
    assert isinstance(fast.unet.head, ConvReLU) == fused_conv_relu_works(dims, torch.float32)
    assert fast.relu_features != isinstance(fast.unet.head, ConvReLU)
    with torch.inference_mode():
        out = fast(x)
    assert out.shape == reference.shape
    assert torch.allclose(out, reference, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "stride"), [((3, 5, 7), (2, 2)), ((2, 3, 4, 5), (1, 2, 2)), ((2, 3, 4, 5), (2, 4, 2))]
)
def test_repeat_blocks_equals_numpy_repeat(shape, stride):
    from deepscope.workflow.predict import repeat_blocks

    y = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected = y
    for axis, g in enumerate(stride, start=1):
        expected = np.repeat(expected, g, axis=axis)
    out = repeat_blocks(y, stride)
    assert out.dtype == np.float32 and np.array_equal(out, expected)


def test_default_tiles_hold_a_1024_image_in_2d_and_keep_the_pixels_per_pass():
    from deepscope.workflow.predict import TileSettings

    default = TileSettings()
    assert default.tile_shape(2) == (1024, 1024) and default.tiles_per_pass(2) == 1
    assert default.tile_shape(3) == (32, 512, 512) and default.tiles_per_pass(3) == 1
    assert TileSettings(tile=128).tiles_per_pass(3) == 16  # 3D: by voxels
    small = TileSettings(tile=256)  # smaller tiles: more per pass, the same pixels
    assert small.tile_shape(2) == (256, 256) and small.tiles_per_pass(2) == 16
    assert TileSettings(tile=2048).tiles_per_pass(2) == 1
    assert TileSettings(tile=256, batch_size=2).tiles_per_pass(2) == 2  # given: kept
