"""Images larger than the memory limit are predicted block by block, from disk to disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import synthetic_pair, write_tif
from deepscope.data.io import open_image, read_image, write_image
from deepscope.workflow import large_images
from deepscope.workflow.model_folder import load_model_folder
from deepscope.workflow.predict import TileSettings, predict_files

# Everything in these tests is above this limit, so the block path is taken.
TINY_LIMIT = 1000


def test_blocks_cover_the_image_once_with_margins():
    shape, block, margin = (70, 45), (32, 32), (8, 8)
    covered = np.zeros(shape, int)
    for read, write, crop in large_images.blocks(shape, block, margin):
        covered[write] += 1
        for r, w, c, size in zip(read, write, crop, shape, strict=True):
            assert r.start == max(0, w.start - 8) and r.stop == min(size, w.stop + 8)
            assert c.stop - c.start == w.stop - w.start
            assert r.start + c.start == w.start
    assert (covered == 1).all()


def test_open_image_reads_regions_without_loading(tmp_path):
    data = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 40, 50)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    image = open_image(path)
    assert image.axes == "ZYX"
    assert not isinstance(image.data, np.ndarray)  # lazy
    np.testing.assert_array_equal(image.data[1, 5:9, 10:20], data[1, 5:9, 10:20])
    assert read_image(path).axes == image.axes


def test_memory_needed_grows_with_pixels_and_channels():
    small = large_images.memory_needed((100, 100), 1, 1)
    assert large_images.memory_needed((200, 100), 1, 1) == 2 * small
    assert large_images.memory_needed((100, 100), 3, 1) > small


@pytest.mark.parametrize("suffix", [".tif", ".ome.zarr"])
def test_blockwise_prediction_matches_in_memory(trained_2d_run, tmp_path, suffix):
    model = load_model_folder(trained_2d_run / "model")
    noisy = synthetic_pair((150, 130), seed=7)[0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    src = inputs / f"big{suffix}"
    if suffix == ".tif":
        write_tif(src, noisy)
    else:
        write_image(src, noisy, "YX")
    whole = predict_files(model, src, tmp_path / "whole", tiles=TileSettings(tile=64))
    blocked = predict_files(
        model,
        src,
        tmp_path / "blocks",
        tiles=TileSettings(tile=64, memory_limit=TINY_LIMIT, block=48),
    )
    a = read_image(whole[0]).data
    b = read_image(blocked[0]).data
    assert a.shape == b.shape == noisy.shape
    assert a.dtype == b.dtype
    # Same network on the same pixels; only tile placement differs, so results agree
    # closely (a seam at the block borders would show as large local differences).
    scale = float(np.percentile(a, 99) - np.percentile(a, 1))
    assert np.abs(a - b).max() < 0.02 * scale
    record = json.loads((tmp_path / "blocks" / "provenance.json").read_text())
    assert record["files"][0]["predicted_in_blocks"]["block"] == [48, 48]
    assert record["files"][0]["input_axes"] == record["files"][0]["axes"] == "YX"
    assert (
        "predicted_in_blocks"
        not in json.loads((tmp_path / "whole" / "provenance.json").read_text())["files"][0]
    )
    # Nothing but the results and provenance is left behind (no scratch files).
    assert sorted(p.name for p in (tmp_path / "blocks").iterdir()) == sorted(
        [f"big{suffix}" if suffix == ".ome.zarr" else "big.tif", "provenance.json"]
    )


def test_blockwise_keeps_pixel_size(trained_2d_run, tmp_path):
    model = load_model_folder(trained_2d_run / "model")
    noisy = synthetic_pair((100, 90), seed=3)[0]
    src = tmp_path / "in" / "calibrated.tif"
    write_image(src, noisy, "YX", metadata={"pixel_size": {"Y": 0.25, "X": 0.25}, "unit": "um"})
    out = predict_files(
        model, src, tmp_path / "out", tiles=TileSettings(tile=64, memory_limit=TINY_LIMIT, block=40)
    )
    result = read_image(out[0])
    assert result.metadata["pixel_size"]["X"] == pytest.approx(0.25)


def test_interrupted_blockwise_prediction_leaves_nothing(trained_2d_run, tmp_path, monkeypatch):
    model = load_model_folder(trained_2d_run / "model")
    src = write_tif(tmp_path / "in" / "big.tif", synthetic_pair((120, 120), seed=1)[0])
    calls = {"n": 0}
    original = model.task.postprocess

    def failing(output):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(output)

    monkeypatch.setattr(model.task, "postprocess", failing)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict_files(
            model, src, out, tiles=TileSettings(tile=64, memory_limit=TINY_LIMIT, block=40)
        )
    assert [p.name for p in out.iterdir()] == []


def test_tasks_needing_the_whole_image_are_not_cut(trained_2d_run, tmp_path, monkeypatch):
    model = load_model_folder(trained_2d_run / "model")
    monkeypatch.setattr(model.task, "blockwise_ok", lambda: False)
    src = write_tif(tmp_path / "in" / "img.tif", synthetic_pair((80, 80), seed=2)[0])
    with pytest.warns(UserWarning, match="whole image at once"):
        out = predict_files(
            model, src, tmp_path / "out", tiles=TileSettings(tile=64, memory_limit=TINY_LIMIT)
        )
    record = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert "predicted_in_blocks" not in record["files"][0]
    assert read_image(out[0]).data.shape == (80, 80)


def test_input_file_is_unchanged(trained_2d_run, tmp_path):
    model = load_model_folder(trained_2d_run / "model")
    src = write_tif(tmp_path / "in" / "img.tif", synthetic_pair((90, 90), seed=4)[0])
    before = Path(src).read_bytes()
    predict_files(
        model, src, tmp_path / "out", tiles=TileSettings(tile=64, memory_limit=TINY_LIMIT, block=40)
    )
    assert Path(src).read_bytes() == before


def test_models_that_map_each_image_by_its_own_percentiles_use_the_whole_images(
    trained_2d_run, tmp_path
):
    import dataclasses

    model = load_model_folder(trained_2d_run / "model")
    model = dataclasses.replace(
        model, normalizer=dataclasses.replace(model.normalizer, per_image=True)
    )
    noisy = synthetic_pair((150, 130), seed=7)[0].astype(np.float32)
    noisy[:, 80:] *= 0.2  # a dim part: its blocks' own percentiles would brighten it
    src = tmp_path / "in" / "big.tif"
    write_tif(src, noisy)
    whole = predict_files(model, src, tmp_path / "whole", tiles=TileSettings(tile=64))
    tiles = TileSettings(tile=64, memory_limit=TINY_LIMIT, block=48)
    blocked = predict_files(model, src, tmp_path / "blocks", tiles=tiles)
    a, b = read_image(whole[0]).data, read_image(blocked[0]).data
    scale = float(np.percentile(a, 99) - np.percentile(a, 1))
    assert np.abs(a - b).max() < 0.03 * scale
    record = json.loads((tmp_path / "blocks" / "provenance.json").read_text())
    assert "whole image's percentiles" in record["files"][0]["predicted_in_blocks"]["reason"]
