"""Percentile normalisation, train/validation split and random training patches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from deepscope.config import DataConfig
from deepscope.data.normalize import PercentileNormalizer
from deepscope.data.patches import RandomPatches, split_train_val

# ---------------------------------------------------------------- normalisation


def two_channel_images() -> list[np.ndarray]:
    """Channel 0 holds 0..100 split over two images, channel 1 is 1000 x + 5."""
    values = np.arange(101, dtype=np.float32)
    a = np.stack([values[:51], values[:51] * 1000 + 5]).reshape(2, 3, 17)
    b = np.stack([values[51:], values[51:] * 1000 + 5]).reshape(2, 5, 10)
    return [a, b]


def test_fit_uses_per_channel_percentiles_over_all_images():
    norm = PercentileNormalizer.fit(two_channel_images(), low_pct=1.0, high_pct=99.0)
    # Percentiles of 0..100 are the numbers themselves.
    assert norm.low == pytest.approx((1.0, 1005.0))
    assert norm.high == pytest.approx((99.0, 99005.0))
    assert (norm.low_pct, norm.high_pct) == (1.0, 99.0)


@pytest.mark.parametrize("shape", [(2, 12, 13), (2, 4, 6, 7)])
def test_normalize_maps_percentiles_to_0_and_1_and_roundtrips(shape):
    rng = np.random.default_rng(0)
    images = [
        rng.normal(size=shape) * np.array([1.0, 300.0]).reshape((2,) + (1,) * (len(shape) - 1))
    ]
    images = [im.astype(np.float32) + 7 for im in images]
    norm = PercentileNormalizer.fit(images, 2.0, 98.0)
    out = norm.normalize(images[0])
    assert out.dtype == np.float32 and out.shape == shape
    for c in range(2):
        lo, hi = np.percentile(out[c], [2.0, 98.0])
        assert lo == pytest.approx(0.0, abs=1e-5)
        assert hi == pytest.approx(1.0, abs=1e-5)
    back = norm.denormalize(out)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, images[0], rtol=1e-5, atol=1e-3)


def test_normalize_accepts_integer_images():
    image = np.arange(2 * 100, dtype=np.uint16).reshape(2, 10, 10)
    norm = PercentileNormalizer.fit([image], 0.0, 100.0)
    out = norm.normalize(image)
    assert out.dtype == np.float32
    assert out[0].min() == 0.0 and out[0].max() == 1.0
    assert out[1].min() == 0.0 and out[1].max() == 1.0


def test_constant_channel_does_not_divide_by_zero():
    image = np.stack([np.full((8, 8), 3.0), np.arange(64.0).reshape(8, 8)]).astype(np.float32)
    norm = PercentileNormalizer.fit([image])
    assert norm.low[0] == 3.0 and norm.high[0] == 4.0
    out = norm.normalize(image)
    assert np.isfinite(out).all()
    assert (out[0] == 0.0).all()
    np.testing.assert_allclose(norm.denormalize(out), image, atol=1e-5)


def test_dict_roundtrip_through_json():
    norm = PercentileNormalizer.fit(two_channel_images())
    again = PercentileNormalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert again == norm
    assert norm.to_dict()["method"] == "percentile"


def test_from_dict_rejects_unknown_method():
    d = PercentileNormalizer(1.0, 99.0, (0.0,), (1.0,)).to_dict()
    d["method"] = "zscore"
    with pytest.raises(ValueError, match="'zscore'"):
        PercentileNormalizer.from_dict(d)


# ---------------------------------------------------------------- train/val split


def constant_images(n: int, shape=(1, 20, 24)) -> list[np.ndarray]:
    return [np.full(shape, float(i), dtype=np.float32) for i in range(n)]


def ids(images: list[np.ndarray]) -> list[int]:
    return [int(im.flat[0]) for im in images]


def test_many_images_hold_out_whole_images():
    inputs = constant_images(6)
    targets = [im * 2 + 1 for im in inputs]
    split = split_train_val(inputs, targets, 0.34, (16, 16), seed=0)
    train, val = ids(split.train_inputs), ids(split.val_inputs)
    assert len(val) == 2 and len(train) == 4
    assert sorted(train + val) == list(range(6))
    assert not set(train) & set(val)
    assert all(im.shape == (1, 20, 24) for im in split.train_inputs + split.val_inputs)
    assert [int((t.flat[0] - 1) / 2) for t in split.train_targets] == train
    assert [int((t.flat[0] - 1) / 2) for t in split.val_targets] == val
    assert "2 of 6 images" in split.how
    again = split_train_val(inputs, targets, 0.34, (16, 16), seed=0)
    assert ids(again.val_inputs) == val
    others = {
        tuple(ids(split_train_val(inputs, None, 0.34, (16, 16), seed=s).val_inputs))
        for s in range(6)
    }
    assert len(others) > 1  # the seed chooses which images
    assert split_train_val(inputs, None, 0.34, (16, 16)).val_targets is None


def row_image(ny: int, nx: int = 12, lead: tuple[int, ...] = (1,)) -> np.ndarray:
    """Every pixel holds its row number."""
    rows = np.arange(ny, dtype=np.float32)[:, None] * np.ones(nx, dtype=np.float32)
    return np.broadcast_to(rows, lead + (ny, nx)).copy()


@pytest.mark.parametrize("lead", [(1,), (2,), (1, 3)])  # 2D, 2 channels, 3D (Z = 3)
def test_single_image_is_cut_along_y(lead):
    image = row_image(100, lead=lead)
    target = image * 2
    split = split_train_val([image], [target], 0.2, (16, 16))
    (train,), (val,) = split.train_inputs, split.val_inputs
    assert train.shape == lead + (80, 12) and val.shape == lead + (20, 12)
    train_rows, val_rows = set(np.unique(train)), set(np.unique(val))
    assert not train_rows & val_rows
    assert train_rows | val_rows == set(range(100))
    assert max(train_rows) < min(val_rows)  # the bottom part is held out
    np.testing.assert_array_equal(split.train_targets[0], 2 * train)
    np.testing.assert_array_equal(split.val_targets[0], 2 * val)
    assert "bottom part" in split.how and "both" not in split.how


def test_validation_part_is_at_least_one_patch_high():
    image = row_image(40)
    split = split_train_val([image], None, 0.1, (16, 16))
    assert split.val_inputs[0].shape[-2] == 16
    assert split.train_inputs[0].shape[-2] == 24
    assert split.train_targets is None and split.val_targets is None


def test_few_images_are_each_cut():
    images = [row_image(64), row_image(48)]
    split = split_train_val(images, None, 0.25, (16, 16))
    assert [t.shape[-2] for t in split.train_inputs] == [48, 32]
    assert [v.shape[-2] for v in split.val_inputs] == [16, 16]


def test_image_too_small_to_split_is_shared_and_says_so():
    image = row_image(20)
    split = split_train_val([image], None, 0.2, (16, 16))
    np.testing.assert_array_equal(split.train_inputs[0], image)
    np.testing.assert_array_equal(split.val_inputs[0], image)
    assert "both training and validation" in split.how


# ---------------------------------------------------------------- random patches


def coordinate_image(shape: tuple[int, ...]) -> np.ndarray:
    """(1, *shape) image whose values encode the pixel coordinate (y * 1000 + x, z * 1e6 ...)."""
    grids = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    code = sum(g * 1000 ** (len(shape) - 1 - d) for d, g in enumerate(grids))
    return code[None].astype(np.float32)


def no_aug() -> DataConfig:
    return DataConfig(flips=False, rotations=False)


def test_patch_shapes_2d_and_3d():
    ds2 = RandomPatches(
        [np.zeros((2, 40, 50), np.float32)], None, (16, 24), length=5, data_config=DataConfig()
    )
    assert len(ds2) == 5
    item = ds2[0]
    assert set(item) == {"input"}
    assert item["input"].shape == (2, 16, 24)
    cfg3 = DataConfig(spatial_dims=3, patch_size=[8, 16, 16])
    image = np.zeros((1, 10, 20, 20), np.float32)
    ds3 = RandomPatches([image], [image + 1], (8, 16, 16), length=3, data_config=cfg3)
    item = ds3[2]
    assert item["input"].shape == item["target"].shape == (1, 8, 16, 16)
    assert str(item["input"].dtype) == "torch.float32"


def test_patch_without_augmentation_is_a_window_of_the_image():
    image = coordinate_image((30, 40))
    ds = RandomPatches([image], None, (16, 16), length=20, data_config=no_aug(), augment=False)
    starts = set()
    for i in range(len(ds)):
        patch = ds[i]["input"].numpy()[0]
        y0, x0 = divmod(int(patch[0, 0]), 1000)
        np.testing.assert_array_equal(patch, image[0, y0 : y0 + 16, x0 : x0 + 16])
        starts.add((y0, x0))
    assert len(starts) > 5  # random positions, not always the same one


@pytest.mark.parametrize("spatial", [(24, 24), (10, 24, 24)])
def test_pairs_stay_aligned_under_augmentation(spatial):
    image = coordinate_image(spatial)
    patch = (8, 16, 16) if len(spatial) == 3 else (16, 16)
    cfg = DataConfig(spatial_dims=len(spatial), patch_size=list(patch), intensity_jitter=0.3)
    ds = RandomPatches([image], [image * 2], patch, length=40, data_config=cfg, seed=1)
    orientations = set()
    for i in range(len(ds)):
        item = ds[i]
        x, t = item["input"].numpy(), item["target"].numpy()
        np.testing.assert_array_equal(t, 2 * x)
        # How values change along the last two axes reveals flips and rotations.
        dy = float(np.ravel(x[0, ..., 1, 0] - x[0, ..., 0, 0])[0])
        dx = float(np.ravel(x[0, ..., 0, 1] - x[0, ..., 0, 0])[0])
        orientations.add((np.sign(dy), np.sign(dx), abs(dy) > abs(dx)))
    assert len(orientations) >= 6  # of the 8: flips and 90-degree rotations both happen
    assert {o[2] for o in orientations} == {True, False}


def test_intensity_augmentations_change_images_but_never_masks():
    rng = np.random.default_rng(5)
    image = rng.random((1, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 4, (1, 32, 32)).astype(np.float32)
    cfg = DataConfig(
        spatial_dims=2,
        patch_size=[16, 16],
        intensity_jitter=0.3,
        invert=True,
        flips=False,
        rotations=False,
    )
    ds = RandomPatches([image], [labels], (16, 16), 60, cfg, seed=2, scale_targets=False)
    inverted = 0
    for i in range(len(ds)):
        item = ds[i]
        x, t = item["input"].numpy(), item["target"].numpy()
        assert set(np.unique(t)) <= {0.0, 1.0, 2.0, 3.0}  # labels untouched
        # the input is the image patch at the labels' position, scaled or inverted
        rows = [
            (y, xx)
            for y in range(17)
            for xx in range(17)
            if np.array_equal(t[0], labels[0, y : y + 16, xx : xx + 16])
        ]
        y, xx = rows[0]
        ref = image[0, y : y + 16, xx : xx + 16]
        r = np.corrcoef(x[0].ravel(), ref.ravel())[0, 1]
        assert abs(abs(r) - 1) < 1e-4
        inverted += r < 0
    assert 15 < inverted < 45  # about half the patches inverted
    paired = RandomPatches([image], [image * 2], (16, 16), 20, cfg, seed=2)
    for i in range(len(paired)):  # restoration pairs: the same change on both
        item = paired[i]
        x, t = item["input"].numpy(), item["target"].numpy()
        assert np.corrcoef(x.ravel(), t.ravel())[0, 1] > 0.999


def test_fixed_seed_without_augmentation_is_deterministic():
    rng = np.random.default_rng(0)
    images = [rng.random((1, 30, 30), dtype=np.float32), rng.random((1, 50, 20), dtype=np.float32)]
    a = RandomPatches(images, None, (16, 16), 10, no_aug(), seed=3, augment=False)
    b = RandomPatches(images, None, (16, 16), 10, no_aug(), seed=3, augment=False)
    c = RandomPatches(images, None, (16, 16), 10, no_aug(), seed=4, augment=False)
    first = [a[i]["input"].numpy() for i in range(10)]
    for i in reversed(range(10)):  # any access order
        np.testing.assert_array_equal(b[i]["input"].numpy(), first[i])
        np.testing.assert_array_equal(a[i]["input"].numpy(), first[i])
    assert any(not np.array_equal(c[i]["input"].numpy(), first[i]) for i in range(10))


def test_image_smaller_than_patch_is_padded():
    image = coordinate_image((5, 6))
    ds = RandomPatches([image], [image + 1], (8, 8), 2, no_aug(), augment=False)
    item = ds[0]
    x = item["input"].numpy()
    assert x.shape == (1, 8, 8)
    np.testing.assert_array_equal(x[:, :5, :6], image)
    np.testing.assert_array_equal(x, np.pad(image, [(0, 0), (0, 3), (0, 2)], mode="reflect"))
    np.testing.assert_array_equal(item["target"].numpy(), x + 1)


def test_sampling_follows_image_size():
    small = np.zeros((1, 16, 16), np.float32)
    large = np.ones((1, 16, 160), np.float32)
    ds = RandomPatches([small, large], None, (16, 16), 200, no_aug(), augment=False)
    from_large = sum(float(ds[i]["input"][0, 0, 0]) for i in range(len(ds)))
    assert 160 < from_large < 200  # about 10 / 11 of the patches


def test_elastic_deformation_moves_image_and_mask_together():
    from scipy import ndimage

    rng = np.random.default_rng(3)
    labels = ndimage.zoom(rng.integers(1, 5, (4, 4)), 16, order=0).astype(np.float32)[None]
    image = labels * 100.0 + 7.0  # an image whose intensity tells its label
    cfg = DataConfig(spatial_dims=2, patch_size=[64, 64], elastic=8.0, flips=False, rotations=False)
    ds = RandomPatches([image], [labels], (64, 64), 10, cfg, seed=4, scale_targets=False)
    moved = 0
    for i in range(len(ds)):
        item = ds[i]
        x, t = item["input"].numpy(), item["target"].numpy()
        assert set(np.unique(t)) <= {1.0, 2.0, 3.0, 4.0}  # labels stay labels
        agree = np.isclose(x, t * 100.0 + 7.0, atol=1.0).mean()
        assert agree > 0.9  # same deformation (they differ only on blurred label edges)
        moved += not np.array_equal(t[0], labels[0])  # the only 64x64 position
    assert moved >= 8  # the patches are deformed


@pytest.mark.parametrize("spatial", [(200, 200), (24, 100, 100)])
def test_foreground_fraction_places_patches_on_objects(spatial):
    labels = np.zeros((1, *spatial), np.float32)
    labels[(0,) + tuple(slice(n - 5, n) for n in spatial)] = 7  # one small object in a corner
    image = labels + 0.5
    patch = (16, 16) if len(spatial) == 2 else (8, 16, 16)
    cfg = DataConfig(spatial_dims=len(spatial), patch_size=list(patch))

    def on_object(fraction: float) -> int:
        ds = RandomPatches(
            [image],
            [labels],
            patch,
            200,
            cfg,
            seed=5,
            scale_targets=False,
            foreground_fraction=fraction,
        )
        hits = 0
        for i in range(len(ds)):
            item = ds[i]
            t = item["target"].numpy()
            np.testing.assert_array_equal(item["input"].numpy(), t + 0.5)  # still aligned
            hits += bool((t > 0).any())
        return hits

    assert on_object(0.0) < 20  # by chance: a few per cent of the positions
    assert 160 <= on_object(0.9) <= 200  # 90 %, plus the chance ones
    assert on_object(1.0) == 200


def test_foreground_fraction_is_refused_for_image_targets(tmp_path):
    from deepscope.config import config_from_dict
    from deepscope.errors import DeepscopeError
    from deepscope.workflow.training import train

    rng = np.random.default_rng(0)
    for folder in ("low", "high"):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "a.tif", rng.random((64, 64), dtype=np.float32))
    cfg = config_from_dict(
        {"task": "care", "data": {"patch_size": [32, 32], "foreground_fraction": 0.5}}
    )
    with pytest.raises(DeepscopeError, match="foreground_fraction"):
        train(cfg, tmp_path / "low", tmp_path / "run", tmp_path / "high", show_bar=False)


def test_training_notes_when_validation_outweighs_training(tmp_path):
    import copy

    from conftest import TINY_CONFIG, synthetic_pair, write_tif
    from deepscope.config import config_from_dict
    from deepscope.workflow.training import train

    for i, name in enumerate("ab"):
        write_tif(tmp_path / "imgs" / f"{name}.tif", synthetic_pair((64, 64), seed=i)[0])
    lines: list[str] = []
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["training"].update(epochs=1, val_patches=8)  # 8 of 16: no note
    train(config_from_dict(cfg), tmp_path / "imgs", tmp_path / "run1", log=lines.append)
    assert not any("validation patches" in line for line in lines)
    cfg["training"]["val_patches"] = 32
    train(config_from_dict(cfg), tmp_path / "imgs", tmp_path / "run2", log=lines.append)
    assert any("32 validation patches beside 16 training patches" in line for line in lines)


def test_zoom_shows_objects_larger_and_smaller_and_keeps_labels_whole():
    from deepscope.config import DataConfig
    from deepscope.data.patches import RandomPatches

    labels = np.zeros((1, 128, 128), np.float32)
    for k, (y, x) in enumerate([(20, 20), (20, 90), (90, 40), (95, 100)], start=1):
        yy, xx = np.ogrid[:128, :128]
        labels[0][(yy - y) ** 2 + (xx - x) ** 2 <= 10**2] = k
    image = (labels > 0).astype(np.float32) + 0.1
    cfg = DataConfig(patch_size=[32, 32], zoom=1.0, flips=False, rotations=False)
    patches = RandomPatches([image], [labels], (32, 32), 300, cfg, scale_targets=False)
    areas, most_labels = [], 0
    for i in range(300):
        item = patches[i]
        assert item["input"].shape == item["target"].shape == (1, 32, 32)
        target = item["target"].numpy()
        assert set(np.unique(target)) <= {0, 1, 2, 3, 4}  # labels stay whole numbers
        inside = item["input"].numpy() > 0.6  # the image follows its labels
        assert (inside == (target > 0)).mean() > 0.9
        for k in np.unique(target)[1:]:
            areas.append((target == k).sum())
        most_labels = max(most_labels, len(np.unique(target)) - 1)
    # a disc of radius 10 (~314 pixels) is seen magnified (factor up to 2)...
    assert max(areas) > 500
    # ...and shrunk: two discs 50 pixels apart edge to edge never fit in 32 pixels unshrunk
    assert most_labels >= 2
    # no zoom: the same patch size, the original scale
    plain = RandomPatches([image], [labels], (32, 32), 5, DataConfig(patch_size=[32, 32]))
    assert plain[0]["input"].shape == (1, 32, 32)


def test_zoom_is_refused_for_noise2void():
    from deepscope.tasks import get_task

    with pytest.raises(ValueError, match="Noise2Void"):
        get_task("n2v").config_class.model_validate({"data": {"zoom": 0.3}})
