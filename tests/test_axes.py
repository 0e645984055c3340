import numpy as np
import pytest

from deepscope.data.axes import (
    check_axes,
    from_channel_first,
    guess_axes,
    output_axes,
    to_channel_first,
)
from deepscope.errors import DeepscopeError


def test_check_axes_upper_cases():
    assert check_axes("zyx", 3) == "ZYX"


@pytest.mark.parametrize(
    ("axes", "ndim", "words"),
    [
        ("ZYQ", 3, "unknown letter"),
        ("YYX", 3, "more than once"),
        ("ZC", 2, "Y and X"),
        ("ZYX", 2, "3 letters but the image has 2"),
    ],
)
def test_check_axes_errors_explain(axes, ndim, words):
    with pytest.raises(DeepscopeError, match=words) as info:
        check_axes(axes, ndim)
    assert "--axes" in str(info.value)


@pytest.mark.parametrize(
    ("shape", "rgb_last", "expected"),
    [
        ((32, 32), False, "YX"),
        ((3, 32, 32), False, "CYX"),
        ((4, 32, 32), False, "CYX"),
        ((5, 32, 32), False, "ZYX"),
        ((32, 32, 3), True, "YXC"),
        ((32, 32, 4), True, "YXC"),
        ((3, 32, 32), True, "CYX"),
        ((2, 5, 32, 32), False, "CZYX"),
        ((2, 2, 5, 32, 32), False, "TCZYX"),
    ],
)
def test_guess_axes(shape, rgb_last, expected):
    assert guess_axes(shape, rgb_last=rgb_last) == expected


def test_guess_axes_refuses_six_dims():
    with pytest.raises(DeepscopeError, match="6 dimensions"):
        guess_axes((1,) * 4 + (8, 8))


@pytest.mark.parametrize(
    ("shape", "axes", "spatial_ndim", "cf_shape"),
    [
        ((6, 7), "YX", 2, (1, 6, 7)),
        ((6, 7, 3), "YXC", 2, (3, 6, 7)),
        ((2, 6, 7), "CYX", 2, (2, 6, 7)),
        ((1, 6, 7), "ZYX", 2, (1, 6, 7)),
        ((1, 2, 1, 6, 7), "TCZYX", 2, (2, 6, 7)),
        ((4, 6, 7), "ZYX", 3, (1, 4, 6, 7)),
        ((4, 2, 6, 7), "ZCYX", 3, (2, 4, 6, 7)),
        ((1, 4, 6, 7, 2), "TZYXC", 3, (2, 4, 6, 7)),
    ],
)
def test_channel_first_roundtrip(shape, axes, spatial_ndim, cf_shape):
    data = np.arange(np.prod(shape)).reshape(shape)
    cf = to_channel_first(data, axes, spatial_ndim)
    assert cf.shape == cf_shape
    back = from_channel_first(cf, axes, spatial_ndim)
    np.testing.assert_array_equal(back, data)


def test_channel_first_moves_channels_correctly():
    data = np.zeros((5, 6, 3))
    data[..., 1] = 1.0
    cf = to_channel_first(data, "YXC", 2)
    assert cf[1].min() == 1.0 and cf[0].max() == 0.0


def test_from_channel_first_adds_channel_axis_when_needed():
    cf = np.zeros((3, 4, 6, 7))
    assert output_axes("ZYX", 3, 3) == "CZYX"
    assert from_channel_first(cf, "ZYX", 3).shape == (3, 4, 6, 7)
    assert output_axes("TYX", 2, 2) == "TCYX"
    assert from_channel_first(np.zeros((2, 6, 7)), "TYX", 2).shape == (1, 2, 6, 7)


def test_from_channel_first_keeps_new_channel_count_and_order():
    out = from_channel_first(np.zeros((1, 6, 7)), "YXC", 2)
    assert out.shape == (6, 7, 1)
    assert from_channel_first(np.zeros((1, 6, 7)), "YXC", 2, input_channels=1).shape == (6, 7, 1)


def test_single_channel_result_of_rgb_input_has_no_channel_axis():
    # e.g. a label image predicted from an RGB (H&E) image
    assert output_axes("YXC", 2, 1, input_channels=3) == "YX"
    assert from_channel_first(np.zeros((1, 6, 7)), "YXC", 2, input_channels=3).shape == (6, 7)
    assert output_axes("CZYX", 3, 1, input_channels=2) == "ZYX"
    assert output_axes("YXC", 2, 3, input_channels=3) == "YXC"


def test_to_channel_first_refuses_time_lapse():
    with pytest.raises(DeepscopeError, match="time-lapse with 3 time points") as info:
        to_channel_first(np.zeros((3, 6, 7)), "TYX", 2, path="movie.tif")
    assert "movie.tif" in str(info.value)


def test_to_channel_first_refuses_stack_for_2d():
    with pytest.raises(DeepscopeError, match="3D stack with 4 planes") as info:
        to_channel_first(np.zeros((4, 6, 7)), "ZYX", 2)
    assert "--axes" in str(info.value) and "a model trained on Z-stacks" in str(info.value)
    assert "--3d" in str(info.value)


def test_to_channel_first_refuses_missing_z_for_3d():
    with pytest.raises(DeepscopeError, match="no depth"):
        to_channel_first(np.zeros((3, 6, 7)), "CYX", 3)


def test_from_channel_first_checks_dimensions():
    with pytest.raises(ValueError, match="channel-first"):
        from_channel_first(np.zeros((6, 7)), "YX", 2)
