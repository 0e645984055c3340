"""Blind-spot masking and the Noise2Void loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepscope.tasks.n2v import (
    N2VConfig,
    N2VTask,
    blind_spot_mask,
    expected_masked_fraction,
    stratified_coordinates,
)

SCALE = 1000  # pixel value = z * SCALE**2 + y * SCALE + x (float64: exact)


def coordinate_image(batch: int, channels: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Every pixel holds its own coordinate; channel c adds c * SCALE**3."""
    grids = torch.meshgrid(*(torch.arange(s, dtype=torch.float64) for s in shape), indexing="ij")
    code = sum(g * SCALE ** (len(shape) - 1 - d) for d, g in enumerate(grids))
    chans = torch.stack([code + c * SCALE**3 for c in range(channels)])
    return chans.unsqueeze(0).repeat(batch, *([1] * (1 + len(shape))))


def decode(values: torch.Tensor, dims: int) -> torch.Tensor:
    """(M,) coordinate codes of channel 0 -> (M, dims) coordinates."""
    v = values.long()
    return torch.stack([(v // SCALE ** (dims - 1 - d)) % SCALE for d in range(dims)], dim=1)


def masked_offsets(x: torch.Tensor, masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Offset (source - centre) of every masked pixel's new value, channel 0."""
    dims = x.ndim - 2
    where = mask[:, 0].nonzero()  # (M, 1 + dims)
    values = masked[(where[:, 0], 0) + tuple(where[:, 1 + d] for d in range(dims))]
    return decode(values, dims) - where[:, 1:]


@pytest.mark.parametrize(
    ("shape", "percentage"),
    [((64, 64), 1.0), ((60, 50), 4.0), ((16, 32, 32), 1.5625), ((12, 24, 24), 3.7)],
)
def test_masked_fraction_matches_request(shape, percentage):
    x = torch.zeros((8, 1) + shape)
    g = torch.Generator().manual_seed(0)
    _, mask = blind_spot_mask(x, percentage, 5, generator=g)
    fraction = mask.float().mean().item()
    assert fraction == pytest.approx(percentage / 100, rel=0.15)
    assert fraction == pytest.approx(expected_masked_fraction(percentage, len(shape)), rel=0.15)


def test_default_percentage_in_3d_is_close_but_rounded_to_grid():
    x = torch.zeros((4, 1, 20, 40, 40))
    _, mask = blind_spot_mask(x, 1.0, 5, generator=torch.Generator().manual_seed(1))
    fraction = mask.float().mean().item()
    # 100/1 % -> grid spacing round(100 ** (1/3)) = 5 -> 1/125 = 0.8 %.
    assert expected_masked_fraction(1.0, 3) == pytest.approx(0.008)
    assert fraction == pytest.approx(0.008, rel=0.15)


def test_coordinates_are_stratified_one_per_cell_and_inside():
    shape = (30, 41)
    coords = stratified_coordinates(shape, 4.0, batch=3, generator=torch.Generator().manual_seed(0))
    spacing = 5  # sqrt(100 / 4)
    assert coords.shape[1] == 3
    assert set(coords[:, 0].tolist()) == {0, 1, 2}
    assert (coords[:, 1] < shape[0]).all() and (coords[:, 2] < shape[1]).all()
    assert (coords[:, 1:] >= 0).all()
    cells = torch.cat([coords[:, :1], coords[:, 1:] // spacing], dim=1)
    assert torch.unique(cells, dim=0).shape[0] == cells.shape[0]  # never two in one cell


@pytest.mark.parametrize("roi", [3, 5, 7])
@pytest.mark.parametrize("shape", [(24, 31), (9, 12, 13)])
def test_n2v_values_change_only_at_mask_and_come_from_roi(shape, roi):
    dims = len(shape)
    batch = 32 if dims == 2 else 6
    x = coordinate_image(batch, 1, shape)
    g = torch.Generator().manual_seed(3)
    masked, mask = blind_spot_mask(x, 8.0, roi, "n2v", generator=g)
    assert mask.shape == (batch, 1) + shape and mask.dtype == torch.bool
    assert mask.sum() > 50
    # All values are distinct, so a pixel changed exactly where it was masked.
    assert torch.equal(masked != x, mask)
    offsets = masked_offsets(x, masked, mask)
    assert (offsets.abs() <= roi // 2).all()
    assert (offsets.abs().sum(dim=1) > 0).all()  # never the pixel's own value
    if dims == 2:  # every neighbour in the roi is used, not just a few fixed ones
        assert torch.unique(offsets, dim=0).shape[0] == roi**dims - 1


def test_n2v_never_copies_the_centre_at_the_image_border():
    # Reflecting centre + offset about the border can land on the centre itself
    # (row 1 with dy = -2 -> -1 -> 1); many samples make sure rows 0, 1, 14, 15 are hit.
    x = coordinate_image(256, 1, (16, 16))
    masked, mask = blind_spot_mask(x, 10.0, 5, "n2v", generator=torch.Generator().manual_seed(0))
    where = mask[:, 0].nonzero()
    at_border = ((where[:, 1:] <= 1) | (where[:, 1:] >= 14)).any(dim=1)
    assert at_border.sum() > 500
    offsets = masked_offsets(x, masked, mask)
    assert (offsets.abs().sum(dim=1) > 0).all()
    assert (offsets.abs() <= 2).all()


def test_all_channels_take_the_same_neighbour():
    x = coordinate_image(4, 3, (20, 20))
    masked, mask = blind_spot_mask(x, 5.0, 5, generator=torch.Generator().manual_seed(2))
    assert mask.shape == (4, 1, 20, 20)
    changed = masked != x
    assert torch.equal(changed, mask.expand_as(changed))
    # Channel c keeps its own offset c * SCALE**3: same spatial source as channel 0.
    for c in (1, 2):
        assert torch.equal(masked[:, c] - c * SCALE**3, masked[:, 0])


def neighbourhood_values(x: torch.Tensor, n: int, y: int, xx: int, r: int) -> torch.Tensor:
    window = x[n, 0, y - r : y + r + 1, xx - r : xx + r + 1].flatten()
    centre = window.shape[0] // 2
    return torch.cat([window[:centre], window[centre + 1 :]])


def test_n2v2_uses_median_of_neighbourhood_without_centre():
    roi, r = 5, 2
    x = torch.rand((4, 1, 24, 24), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    masked, mask = blind_spot_mask(x, 5.0, roi, "n2v2", generator=torch.Generator().manual_seed(1))
    checked = 0
    for n, _, y, xx in mask.nonzero().tolist():
        replacement = masked[n, 0, y, xx]
        assert replacement != x[n, 0, y, xx]
        if r <= y < 24 - r and r <= xx < 24 - r:
            values = neighbourhood_values(x, n, y, xx, r).sort().values
            assert replacement == values[(values.numel() - 1) // 2]  # torch's lower median
            checked += 1
    assert checked > 20


def test_n2v2_border_replacement_is_a_neighbour_value():
    x = coordinate_image(64, 1, (12, 12))
    masked, mask = blind_spot_mask(x, 10.0, 5, "n2v2", generator=torch.Generator().manual_seed(4))
    offsets = masked_offsets(x, masked, mask)
    assert (offsets.abs() <= 2).all()
    assert (offsets.abs().sum(dim=1) > 0).all()


@pytest.mark.parametrize("variant", ["n2v", "n2v2"])
def test_generator_makes_masking_reproducible(variant):
    x = torch.rand((2, 2, 32, 32), generator=torch.Generator().manual_seed(0))
    a = blind_spot_mask(x, 2.0, 5, variant, generator=torch.Generator().manual_seed(7))
    b = blind_spot_mask(x, 2.0, 5, variant, generator=torch.Generator().manual_seed(7))
    c = blind_spot_mask(x, 2.0, 5, variant, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(x, torch.rand((2, 2, 32, 32), generator=torch.Generator().manual_seed(0)))


class AddMap(nn.Module):
    """Stub network: output = input + a learnable map (so gradients are per pixel)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(shape, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.delta


def n2v_task(variant: str = "n2v") -> N2VTask:
    cfg = N2VConfig(n2v={"masked_pixel_percentage": 5.0, "roi_size": 5, "variant": variant})
    return N2VTask(cfg)


@pytest.mark.parametrize("variant", ["n2v", "n2v2"])
def test_training_loss_is_mse_at_masked_pixels_only(variant):
    task = n2v_task(variant)
    x = torch.rand((3, 2, 20, 20), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = AddMap((3, 2, 20, 20))
    loss = task.training_loss(model, {"input": x}, generator=torch.Generator().manual_seed(5))
    masked, mask = blind_spot_mask(x, 5.0, 5, variant, generator=torch.Generator().manual_seed(5))
    expected = ((masked - x) ** 2)[mask.expand_as(x)].mean()
    assert torch.isfinite(loss) and loss.ndim == 0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() > 0

    loss.backward()
    grad = model.delta.grad
    assert torch.isfinite(grad).all()
    full_mask = mask.expand_as(grad)
    assert (grad[~full_mask] == 0).all()
    assert (grad[full_mask] != 0).all()


def test_loss_ignores_output_at_unmasked_pixels():
    task = n2v_task()
    x = torch.rand((2, 1, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, mask = blind_spot_mask(x, 5.0, 5, generator=torch.Generator().manual_seed(9))
    free = (~mask).nonzero()[0].tolist()
    hit = mask.nonzero()[0].tolist()

    def loss_with(delta_at: list[int] | None) -> float:
        model = AddMap((2, 1, 16, 16))
        if delta_at is not None:
            with torch.no_grad():
                model.delta[tuple(delta_at)] = 100.0
        return task.training_loss(model, {"input": x}, torch.Generator().manual_seed(9)).item()

    base = loss_with(None)
    assert loss_with(free) == base
    assert loss_with(hit) > base + 1.0


def test_training_loss_backpropagates_through_a_real_conv():
    task = n2v_task()
    net = nn.Conv2d(1, 1, 3, padding=1)
    x = torch.rand((2, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    loss = task.training_loss(net, {"input": x}, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0
    again = task.training_loss(net, {"input": x}, torch.Generator().manual_seed(0))
    assert again.item() == loss.item()


def test_n2v2_variant_switches_the_architecture():
    assert n2v_task("n2v2").extra_model_kwargs() == {"n2v2": True}
    assert n2v_task("n2v").extra_model_kwargs() == {"n2v2": False}
