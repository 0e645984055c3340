import errno
import os

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from deepscope.data import io
from deepscope.data.io import (
    Image,
    atomic_write_bytes,
    atomic_write_text,
    is_image_path,
    list_images,
    open_image,
    read_image,
    write_image,
)
from deepscope.errors import ImageReadError, OutputError

RNG = np.random.default_rng(0)


def _random(shape, dtype):
    if np.dtype(dtype).kind == "f":
        return RNG.random(shape, dtype=np.float32).astype(dtype)
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)


def _no_partials(folder):
    return not [p for p in folder.iterdir() if p.name.endswith(".partial")]


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize(
    ("shape", "axes"),
    [((12, 10), "YX"), ((6, 12, 10), "ZYX"), ((2, 12, 10), "CYX"), ((2, 5, 12, 10), "CZYX")],
)
def test_tiff_roundtrip(tmp_path, shape, axes, dtype):
    data = _random(shape, dtype)
    out = write_image(tmp_path / "out.tif", data, axes)
    image = read_image(out)
    assert isinstance(image, Image)
    assert image.axes == axes
    assert image.data.dtype == dtype
    np.testing.assert_array_equal(image.data, data)
    assert _no_partials(tmp_path)


def test_tiff_float64_keeps_values(tmp_path):
    data = _random((3, 8, 9), np.float64)
    image = read_image(write_image(tmp_path / "f.tiff", data, "ZYX"))
    assert image.axes == "ZYX"
    np.testing.assert_array_equal(image.data, data)


def test_tiff_rgb_roundtrip(tmp_path):
    data = _random((8, 9, 3), np.uint8)
    image = read_image(write_image(tmp_path / "rgb.tif", data, "YXC"))
    assert image.axes == "YXC"
    np.testing.assert_array_equal(image.data, data)


def test_tiff_pixel_size_roundtrip(tmp_path):
    meta = {"pixel_size": {"Z": 2.0, "Y": 0.25, "X": 0.25}, "unit": "micrometer"}
    out = write_image(tmp_path / "cal.tif", _random((3, 8, 8), np.uint16), "ZYX", metadata=meta)
    assert read_image(out).metadata == meta


@pytest.mark.parametrize("name", ["out.ome.tif", "out.ome.tiff"])
def test_ome_tiff_roundtrip(tmp_path, name):
    data = _random((2, 4, 8, 9), np.uint16)
    meta = {"pixel_size": {"Z": 1.5, "Y": 0.2, "X": 0.2}, "unit": "micrometer"}
    out = write_image(tmp_path / name, data, "CZYX", metadata=meta)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
    image = read_image(out)
    assert image.axes == "CZYX"
    assert image.metadata == meta
    np.testing.assert_array_equal(image.data, data)


def test_plain_tiff_without_axes_is_guessed(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, _random((7, 8, 9), np.uint8), metadata=None)
    assert read_image(path).axes == "ZYX"
    assert read_image(path, axes="tyx").axes == "TYX"


def test_a_few_planes_without_axes_are_read_as_channels_with_a_warning(tmp_path):
    import warnings

    path = tmp_path / "three.tif"
    tifffile.imwrite(path, _random((3, 8, 9), np.uint16), photometric="minisblack")
    with pytest.warns(io.AxesGuessWarning, match="its 3 planes .* 3 channels") as caught:
        assert read_image(path).axes == "CYX"
    assert "--axes ZYX" in caught[0].message.fix
    with pytest.warns(io.AxesGuessWarning):
        assert open_image(path).axes == "CYX"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning where the axes are known or unambiguous
        assert read_image(path, axes="ZYX").axes == "ZYX"
        written = write_image(tmp_path / "said.tif", _random((3, 8, 9), np.uint16), "ZYX")
        assert read_image(written).axes == "ZYX"
        tifffile.imwrite(tmp_path / "one.tif", _random((1, 8, 9), np.uint16))
        assert read_image(tmp_path / "one.tif").data.shape == (1, 8, 9)


def test_four_axes_without_names_are_guessed_with_a_warning(tmp_path):
    import warnings

    path = tmp_path / "zc.tif"
    tifffile.imwrite(path, _random((6, 2, 8, 9), np.uint16))  # Z 6, C 2 as many tools write
    with pytest.warns(io.AxesGuessWarning, match=r"read as C 6, Z 2, Y 8, X 9 \(axes CZYX\)") as w:
        assert read_image(path).axes == "CZYX"
    assert "--axes ZCYX" in w[0].message.fix
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said by the caller: no warning
        image = read_image(path, axes="ZCYX")
    assert image.axes == "ZCYX" and image.data.shape == (6, 2, 8, 9)
    named = write_image(tmp_path / "named.tif", _random((2, 6, 8, 9), np.uint16), "CZYX")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # named in the file: no warning
        assert read_image(named).axes == "CZYX"


def test_tiff_with_several_images_warns(tmp_path):
    path = tmp_path / "two.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((8, 8), np.uint8))
        tif.write(np.ones((4, 4), np.uint8))
    with pytest.warns(UserWarning, match="only the first"):
        image = read_image(path)
    assert image.data.shape == (8, 8)


def test_read_image_axes_argument_must_fit(tmp_path):
    path = write_image(tmp_path / "a.tif", _random((8, 9), np.uint8), "YX")
    with pytest.raises(ImageReadError, match="3 letters") as info:
        read_image(path, axes="ZYX")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_grey_roundtrip(tmp_path, dtype):
    data = _random((8, 9), dtype)
    image = read_image(write_image(tmp_path / "g.png", data, "YX"))
    assert image.axes == "YX"
    assert image.data.dtype == dtype
    np.testing.assert_array_equal(image.data, data)


def test_png_rgb_roundtrip_and_channel_first_input(tmp_path):
    data = _random((8, 9, 3), np.uint8)
    image = read_image(write_image(tmp_path / "c.png", data, "YXC"))
    assert image.axes == "YXC"
    np.testing.assert_array_equal(image.data, data)
    image = read_image(write_image(tmp_path / "cf.png", np.moveaxis(data, -1, 0), "CYX"))
    np.testing.assert_array_equal(image.data, data)


def test_png_opaque_alpha_and_grey_rgb_are_simplified(tmp_path):
    grey = _random((8, 9), np.uint8)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    iio.imwrite(tmp_path / "rgba.png", rgba)
    image = read_image(tmp_path / "rgba.png")
    assert image.axes == "YX"
    np.testing.assert_array_equal(image.data, grey)


def test_png_refuses_float(tmp_path):
    with pytest.raises(OutputError, match="save it as .tif"):
        write_image(tmp_path / "f.png", np.zeros((4, 4), np.float32), "YX")
    assert not list(tmp_path.iterdir())


def test_jpeg_read(tmp_path):
    iio.imwrite(tmp_path / "a.jpg", np.full((8, 8), 100, np.uint8))
    image = read_image(tmp_path / "a.jpg")
    assert image.axes == "YX" and image.data.shape == (8, 8)


@pytest.mark.parametrize(
    ("shape", "axes", "dtype"),
    [((12, 10), "YX", np.uint16), ((3, 12, 10), "ZYX", np.float32), ((2, 3, 8, 8), "ZCYX", "u1")],
)
def test_ome_zarr_roundtrip(tmp_path, shape, axes, dtype):
    data = _random(shape, np.dtype(dtype))
    meta = {"pixel_size": {"Y": 0.5, "X": 0.5}, "unit": "micrometer"}
    out = write_image(tmp_path / "img.ome.zarr", data, axes, metadata=meta)
    assert out.is_dir()
    image = read_image(out)
    canonical = "".join(a for a in "TCZYX" if a in axes)
    assert image.axes == canonical
    expected = np.transpose(data, [axes.index(a) for a in canonical])
    np.testing.assert_array_equal(image.data, expected)
    assert image.metadata["pixel_size"]["X"] == 0.5
    assert _no_partials(tmp_path)


def test_ome_zarr_overwrite_replaces_folder(tmp_path):
    target = tmp_path / "img.ome.zarr"
    write_image(target, np.zeros((8, 8), np.uint8), "YX")
    with pytest.raises(OutputError, match="already exists"):
        write_image(target, np.ones((8, 8), np.uint8), "YX")
    write_image(target, np.ones((8, 8), np.uint8), "YX", overwrite=True)
    assert read_image(target).data.min() == 1
    assert _no_partials(tmp_path)


# --------------------------------------------------------------------------- bad inputs


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist") as info:
        read_image(tmp_path / "nope.tif")
    assert "nope.tif" in str(info.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.tif"
    path.touch()
    with pytest.raises(ImageReadError, match="0 bytes") as info:
        read_image(path)
    assert "empty.tif" in str(info.value) and "copy the file again" in str(info.value)


@pytest.mark.parametrize("kwargs", [{}, {"imagej": True}])
def test_truncated_tiff(tmp_path, kwargs):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, _random((5, 64, 64), np.uint16), **kwargs)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(ImageReadError, match="damaged") as info:
        read_image(path)
    assert "cut.tif" in str(info.value) and "Fiji" in str(info.value)
    assert path.stat().st_size == len(content) // 2


def test_random_bytes_tiff(tmp_path):
    path = tmp_path / "noise.tif"
    path.write_bytes(RNG.integers(0, 256, 1000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError, match="damaged"):
        read_image(path)


def test_random_bytes_png(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(b"\x89PNG" + bytes(200))
    with pytest.raises(ImageReadError, match="damaged"):
        read_image(path)


def test_zarr_folder_without_image(tmp_path):
    path = tmp_path / "bad.ome.zarr"
    path.mkdir()
    with pytest.raises(ImageReadError, match="bad.ome.zarr") as info:
        read_image(path)
    assert "whole folder was copied" in str(info.value)


@pytest.mark.parametrize("name", ["notes.txt", "stack.czi"])
def test_unsupported_suffix(tmp_path, name):
    path = tmp_path / name
    path.write_text("hello")
    with pytest.raises(ImageReadError, match="cannot read") as info:
        read_image(path)
    assert "Fiji" in str(info.value)


# ---------------------------------------------------------------------------- listing


def test_list_images(tmp_path):
    for name in ["b.tif", "a.PNG", "c.ome.tiff", "._a.tif", ".hidden.tif", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "d.ome.zarr").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "dir.tif").mkdir()
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["a.PNG", "b.tif", "c.ome.tiff", "d.ome.zarr"]


def test_list_images_errors(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "file.tif").write_bytes(b"x")
    with pytest.raises(ImageReadError, match="is a file"):
        list_images(tmp_path / "file.tif")
    empty = tmp_path / "raw"
    empty.mkdir()
    (empty / "a.czi").write_bytes(b"x")
    (empty / "b.czi").write_bytes(b"x")
    with pytest.raises(ImageReadError, match=r"found: 2 \.czi") as info:
        list_images(empty)
    assert "raw" in str(info.value)


def test_is_image_path(tmp_path):
    assert is_image_path("a.OME.TIF")
    assert is_image_path(tmp_path / "not_yet.ome.zarr")
    assert not is_image_path("a.txt")
    (tmp_path / "file.zarr").write_bytes(b"x")
    assert not is_image_path(tmp_path / "file.zarr")


# ---------------------------------------------------------------------------- writing


def test_write_refuses_to_overwrite(tmp_path):
    target = tmp_path / "out.tif"
    target.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists") as info:
        write_image(target, np.zeros((4, 4), np.uint8), "YX")
    assert "out.tif" in str(info.value)
    assert target.read_bytes() == b"precious"
    write_image(target, np.zeros((4, 4), np.uint8), "YX", overwrite=True)
    assert read_image(target).data.shape == (4, 4)


def test_write_refuses_jpeg(tmp_path):
    with pytest.raises(OutputError, match="JPEG"):
        write_image(tmp_path / "a.jpg", np.zeros((4, 4), np.uint8), "YX")


def test_write_checks_axes(tmp_path):
    with pytest.raises(OutputError, match="2 letters") as info:
        write_image(tmp_path / "x.tif", np.zeros((2, 4, 4), np.uint8), "YX")
    assert "x.tif" in str(info.value)


def test_write_creates_parent_folders(tmp_path):
    out = write_image(tmp_path / "a" / "b" / "x.tif", np.zeros((4, 4), np.uint8), "YX")
    assert out.is_file()


def _fail_replace(code):
    def replace(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    return replace


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.EROFS, "read-only"), (errno.EACCES, "permission"), (errno.ENOSPC, "disk is full")],
)
@pytest.mark.parametrize("name", ["out.tif", "out.ome.zarr"])
def test_write_failure_removes_partial(tmp_path, monkeypatch, code, words, name):
    monkeypatch.setattr(io.os, "replace", _fail_replace(code))
    with pytest.raises(OutputError, match=words) as info:
        write_image(tmp_path / name, np.zeros((4, 4), np.uint8), "YX")
    assert name in str(info.value) and "What to do" in str(info.value)
    assert not list(tmp_path.iterdir())


def test_disk_full_during_write_removes_partial(tmp_path, monkeypatch):
    def full_disk(path, data, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"half an image")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full_disk)
    with pytest.raises(OutputError, match="disk is full") as info:
        write_image(tmp_path / "big.tif", np.zeros((4, 4), np.uint8), "YX")
    assert "big.tif" in str(info.value)
    assert not list(tmp_path.iterdir())


def test_real_read_only_folder(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running with rights that ignore folder permissions (root)")
        with pytest.raises(OutputError, match="permission"):
            write_image(folder / "x.tif", np.zeros((4, 4), np.uint8), "YX")
    finally:
        folder.chmod(0o755)


def test_atomic_write_text_and_bytes(tmp_path):
    target = tmp_path / "sub" / "report.json"
    atomic_write_text(target, '{"a": 1}')
    assert target.read_text(encoding="utf-8") == '{"a": 1}'
    atomic_write_text(target, "µm ✓")
    assert target.read_text(encoding="utf-8") == "µm ✓"
    atomic_write_bytes(tmp_path / "blob.bin", b"\x00\x01")
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(OutputError, match="already exists"):
        atomic_write_bytes(tmp_path / "blob.bin", b"", overwrite=False)
    assert _no_partials(tmp_path) and _no_partials(tmp_path / "sub")


def test_atomic_write_failure_removes_partial(tmp_path, monkeypatch):
    monkeypatch.setattr(io.os, "replace", _fail_replace(errno.ENOSPC))
    with pytest.raises(OutputError, match="disk is full"):
        atomic_write_text(tmp_path / "a.yaml", "x: 1")
    assert not list(tmp_path.iterdir())
