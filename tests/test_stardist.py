"""StarDist task: targets, loss, instances, tiling seams, thresholds, outputs, CLI, pretrained.

Synthetic star-convex objects (discs, ellipses, spheres) and tiny networks only.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from roifile import roiread
from scipy import ndimage
from skimage.draw import disk, ellipse
from stardist.matching import matching
from torch import nn
from torch.nn import functional as F

from conftest import write_tif
from deepscope.errors import DeepscopeError
from deepscope.interfaces.cli import main
from deepscope.tasks import get_task
from deepscope.tasks.stardist import (
    StarDistTask,
    instances_from_maps,
    measurements_csv,
    object_weights,
    star_targets,
    stardist_loss,
)
from deepscope.workflow.model_folder import load_model_folder
from deepscope.workflow.predict import TileSettings, predict_raw

TINY = {
    "task": "stardist",
    "data": {"patch_size": [32, 32], "spatial_dims": 2},
    "model": {"depth": 1, "base_channels": 8},
    "stardist": {"n_rays": 16, "feature_channels": 8},
    "training": {
        "epochs": 2,
        "patches_per_epoch": 16,
        "batch_size": 8,
        "val_patches": 8,
        "checkpoint_every": 1,
        "precision": "32",
        "seed": 0,
    },
}
TINY_3D = copy.deepcopy(TINY)
TINY_3D["data"] = {"patch_size": [8, 16, 16], "spatial_dims": 3}
TINY_3D["stardist"] = {"n_rays": 16, "feature_channels": 8, "anisotropy": [2.0, 1.0, 1.0]}


def config(data: dict):
    return get_task("stardist").config_class.model_validate(copy.deepcopy(data))


def blob_labels(shape=(96, 96), n=12, seed=0, radius=(4, 7)) -> np.ndarray:
    """Non-overlapping ellipses, labelled 1..k."""
    rng = np.random.default_rng(seed)
    lbl = np.zeros(shape, np.uint16)
    k = 0
    for _ in range(n * 5):
        cy, cx = (int(rng.integers(radius[1], s - radius[1])) for s in shape)
        r1, r2 = rng.uniform(*radius, size=2)
        rr, cc = ellipse(cy, cx, r1, r2, shape=shape, rotation=rng.uniform(0, np.pi))
        if lbl[rr, cc].any():
            continue
        k += 1
        lbl[rr, cc] = k
        if k == n:
            break
    return lbl


def blob_image(lbl: np.ndarray, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter((lbl > 0).astype(np.float32), 1.0) * 800 + 100
    return (img + rng.normal(0, 20, lbl.shape)).astype(np.float32)


def sphere_labels(shape=(16, 32, 32)) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    lbl = np.zeros(shape, np.uint16)
    for k, (z, y, x, r) in enumerate([(8, 9, 9, 5), (8, 22, 20, 6), (7, 10, 24, 4)], start=1):
        lbl[(zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= r * r] = k
    return lbl


def perfect_output(task: StarDistTask, lbl: np.ndarray) -> np.ndarray:
    """An image-sized output (1 + n_rays, *spatial) built from the true targets."""
    prob, dist = star_targets(lbl, task.n_rays, task.grid, task.rays, task.anisotropy)
    out = np.concatenate([prob[None], dist])
    for axis, g in enumerate(task.grid, start=1):
        out = np.repeat(out, g, axis=axis)
    return out[(slice(None),) + tuple(slice(0, s) for s in lbl.shape)]


# ---------------------------------------------------------------------------- targets


def test_targets_of_a_disc_2d():
    lbl = np.zeros((40, 40), np.uint16)
    lbl[disk((20, 20), 8)] = 5
    prob, dist = star_targets(lbl, 16, (2, 2))
    assert prob.shape == (20, 20) and dist.shape == (16, 20, 20)
    assert prob[10, 10] == pytest.approx(1.0)  # the centre (20, 20) is on the grid
    assert prob[0, 0] == 0 and np.all(dist[:, 0, 0] == 0)
    assert np.allclose(dist[:, 10, 10], 8.5, atol=1.0)  # every ray reaches the edge


def test_targets_of_a_sphere_3d_with_anisotropy():
    task = StarDistTask(config(TINY_3D))
    lbl = sphere_labels()
    prob, dist = star_targets(lbl, task.n_rays, task.grid, task.rays, task.anisotropy)
    assert prob.shape == (16, 16, 16) and dist.shape == (16, 16, 16, 16)
    assert prob.max() == pytest.approx(1.0) and prob[0, 0, 0] == 0
    assert dist[:, 8, 11, 10].min() > 3  # centre of the sphere of radius 6 at (8, 22, 20)


def test_loss_is_lower_for_the_truth_and_decreases_with_training():
    lbl = blob_labels((32, 32), n=4)
    prob, dist = star_targets(lbl, 16, (2, 2))
    p, d = torch.from_numpy(prob)[None], torch.from_numpy(dist)[None]
    logit = torch.logit(p.clamp(1e-4, 1 - 1e-4))
    good = stardist_loss(torch.cat([logit[:, None], d], 1), p, d)
    bad = stardist_loss(torch.cat([-logit[:, None], d + 3], 1), p, d)
    assert good < bad

    task = StarDistTask(config(TINY))
    torch.manual_seed(0)
    net = task.build_model(1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.from_numpy(blob_image(lbl)[None, None] / 900)
    batch = {"input": x, "target": torch.from_numpy(lbl[None, None].astype(np.float32))}
    losses = []
    for _ in range(25):
        loss = task.training_loss(net, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]


def test_object_balance_weights_small_objects_up_and_keeps_the_published_loss_at_0():
    lbl = np.zeros((2, 16, 16), np.int64)
    lbl[0, :8, :8] = 1  # 64 pixels
    lbl[0, 12:14, 12:14] = 2  # 4 pixels
    lbl[1, :4, :4] = 1  # 16 pixels, label 1 again but another patch: another object
    assert np.array_equal(object_weights(lbl, 0.0), np.ones(lbl.shape, np.float32))
    w = object_weights(lbl, 1.0)  # typical size: the batch's median, 16
    assert np.all(w[lbl == 0] == 1) and np.all(w[0][lbl[0] == 1] == 1)
    assert np.all(w[1][lbl[1] == 1] == 1)
    assert np.all(w[0][lbl[0] == 2] == 4)  # 4 pixels count as much as the typical 16
    w = object_weights(lbl, 1.0, typical_size=64)
    assert np.allclose([w[0, 0, 0], w[1, 0, 0], w[0, 12, 12]], [1, 4, 10])  # 16 capped at 10
    assert object_weights(lbl, 0.5, typical_size=64)[1, 0, 0] == pytest.approx(2.0)

    # weights of 1 everywhere give the published loss; other weights change it
    prob, dist = star_targets(blob_labels((32, 32), n=4), 16, (2, 2))
    p, d = torch.from_numpy(prob)[None], torch.from_numpy(dist)[None]
    out = torch.cat([torch.zeros_like(p)[:, None], d + 1], 1)
    published = stardist_loss(out, p, d)
    assert torch.allclose(stardist_loss(out, p, d, torch.ones_like(p)), published)
    w = torch.ones_like(p)
    w[p > 0.5] = 3.0
    assert not torch.allclose(stardist_loss(out, p, d, w), published)


def test_training_with_object_balance_gives_a_finite_loss():
    task = StarDistTask(config({**TINY, "stardist": {**TINY["stardist"], "object_balance": 1}}))
    lbl = blob_labels((32, 32), n=4)
    batch = {
        "input": torch.from_numpy(blob_image(lbl)[None, None] / 900),
        "target": torch.from_numpy(lbl[None, None].astype(np.float32)),
    }
    task.prepare_targets([lbl[None].astype(np.float32)], log=lambda _: None)
    areas = np.bincount(lbl.ravel())[1:]
    assert task._typical_size == pytest.approx(np.median(areas[areas > 0]) / 4)  # grid 2x2
    prob, dist, weight = task.batch_targets(batch["target"])
    assert weight is not None and weight.shape == prob.shape and weight.min() == 1
    assert torch.isfinite(task.training_loss(task.build_model(1), batch))
    assert StarDistTask(config(TINY)).batch_targets(batch["target"])[2] is None


def test_network_output_is_on_the_grid():
    task = StarDistTask(config({**TINY, "stardist": {"n_rays": 8, "grid": [4, 4]}}))
    net = task.build_model(2)
    assert task.divisibility() == 8
    assert net(torch.zeros(1, 2, 32, 48)).shape == (1, 9, 8, 12)
    task3 = StarDistTask(config(TINY_3D))
    assert task3.grid == (1, 2, 2) and task3.out_channels(1) == 17
    assert task3.build_model(1)(torch.zeros(1, 1, 8, 16, 16)).shape == (1, 17, 8, 8, 8)


def test_config_checks():
    with pytest.raises(ValueError, match="divisible by 8"):
        config({**TINY, "data": {"patch_size": [36, 36]}, "model": {"depth": 2}})
    with pytest.raises(ValueError, match="anisotropy"):
        config({**TINY, "stardist": {"anisotropy": [2, 1, 1]}})
    with pytest.raises(ValueError, match="grid"):
        config({**TINY, "stardist": {"grid": [3, 3]}})
    defaults = StarDistTask(config({"task": "stardist"}))
    assert defaults.n_rays == 32 and defaults.grid == (2, 2)
    assert defaults.thresholds() == (0.5, 0.4)


# -------------------------------------------------------------------------- instances


@pytest.mark.parametrize("three_d", [False, True])
def test_perfect_maps_give_back_the_objects(three_d):
    task = StarDistTask(config(TINY_3D if three_d else TINY))
    lbl = sphere_labels() if three_d else blob_labels()
    labels, details = task.instances_with_details(perfect_output(task, lbl))
    m = matching(lbl, labels, thresh=0.5)
    assert m.f1 == 1.0 and labels.shape == lbl.shape and labels.dtype == np.uint16
    n = int(labels.max())
    assert n == len(np.unique(lbl)) - 1 and set(np.unique(labels)) == set(range(n + 1))
    assert details["prob"].shape == (n,) and details["dist"].shape == (n, task.n_rays)
    # Row k - 1 describes label k: its centre lies inside it.
    for k, point in enumerate(details["points"], start=1):
        assert labels[tuple(point)] == k


def test_thresholds_change_the_result():
    task = StarDistTask(config(TINY))
    out = perfect_output(task, blob_labels())
    assert task.instances_with_details(out, prob_threshold=1.0)[0].max() == 0
    prob, dist = task.grid_maps(out)
    labels, details = instances_from_maps(prob * 0, dist, out.shape[1:], task.grid, 0.5, 0.4)
    assert labels.max() == 0 and details["dist"].shape == (0, 16)


def test_an_object_hidden_by_more_probable_ones_is_dropped_and_labels_stay_1_to_n():
    # three candidates on a 2x2 grid, no suppression (threshold 1): a small one inside a
    # more probable large one is painted over and must vanish from the result, and the
    # labels after it close the gap
    prob = np.zeros((16, 16), np.float32)
    dist = np.zeros((8, 16, 16), np.float32)
    prob[4, 4], dist[:, 4, 4] = 0.9, 6.0  # large, most probable
    prob[4, 5], dist[:, 4, 5] = 0.6, 1.5  # small, inside the large one
    prob[12, 12], dist[:, 12, 12] = 0.55, 3.0  # elsewhere, least probable
    labels, details = instances_from_maps(prob, dist, (32, 32), (2, 2), 0.5, 1.0)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert details["prob"].tolist() == pytest.approx([0.9, 0.55])
    for k, point in enumerate(details["points"], start=1):
        assert labels[tuple(point)] == k


class BlobNet(nn.Module):
    """A fixed 'network' with a small receptive field: blurred intensity → probability,
    a constant distance of 6 pixels on every ray, on a 2×2 grid."""

    def __init__(self, n_rays: int):
        super().__init__()
        g = np.exp(-((np.arange(9) - 4) ** 2) / (2 * 2.0**2))
        self.register_buffer(
            "kernel", torch.tensor(np.outer(g, g) / np.outer(g, g).sum())[None, None].float()
        )
        self.n_rays = n_rays
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blur = F.conv2d(x[:, :1], self.kernel, padding=4)[:, :, ::2, ::2]
        logit = 12 * (blur - 0.45)
        dist = torch.full((x.shape[0], self.n_rays, *blur.shape[2:]), 6.0)
        return torch.cat([logit, dist], 1)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny 2D StarDist training (2 epochs) on synthetic blobs: run folder."""
    from deepscope.workflow.training import train

    base = tmp_path_factory.mktemp("sd")
    for i in range(3):
        lbl = blob_labels(seed=i)
        write_tif(base / "images" / f"b{i}.tif", blob_image(lbl, i).astype(np.uint16))
        write_tif(base / "masks" / f"b{i}.tif", lbl)
    logs: list[str] = []
    train(
        config(TINY), base / "images", base / "run", base / "masks", show_bar=False, log=logs.append
    )
    (base / "log.txt").write_text("\n".join(logs))
    return base


def discs_image(shape=(100, 100)) -> tuple[np.ndarray, np.ndarray]:
    """Discs of radius 6 centred on grid points, some across the tile borders at 32 and 64."""
    lbl = np.zeros(shape, np.uint16)
    centres = [(32, 32), (16, 64), (64, 20), (50, 50), (80, 80), (30, 90), (88, 34), (64, 64)]
    for k, c in enumerate(centres, start=1):
        lbl[disk(c, 6, shape=shape)] = k
    return blob_image(lbl)[None], lbl


def test_tiled_prediction_equals_whole_prediction(trained_run):
    model = load_model_folder(trained_run / "run" / "model")
    net = BlobNet(model.task.n_rays)
    image, truth = discs_image()
    model.task.use_tuned_settings({"prob_threshold": 0.5, "nms_threshold": 0.3})
    whole = model.task.instances(predict_raw(model, image, TileSettings(tile=512), network=net))
    tiled = model.task.instances(
        predict_raw(model, image, TileSettings(tile=32, overlap=16), network=net)
    )
    assert whole.max() == tiled.max() == truth.max()
    m = matching(whole, tiled, thresh=0.5)
    assert m.tp == truth.max() and m.mean_matched_score > 0.99
    assert matching(truth, tiled, thresh=0.5).f1 == 1.0  # nothing cut or doubled at seams


@pytest.mark.parametrize("shape", [(100, 100), (97, 101)])
def test_maps_kept_at_the_grid_give_the_same_objects(trained_run, shape):
    from deepscope.tasks.base import GridOutput, image_shape_of

    model = load_model_folder(trained_run / "run" / "model")
    model.task.use_tuned_settings({"prob_threshold": 0.5, "nms_threshold": 0.3})
    net = BlobNet(model.task.n_rays)
    image = discs_image((104, 104))[0][:, : shape[0], : shape[1]]
    full = predict_raw(model, image, TileSettings(tile=64, overlap=16), network=net)
    small = predict_raw(model, image, TileSettings(tile=64, overlap=16), network=net, grid=True)
    assert isinstance(small, GridOutput) and not isinstance(full, GridOutput)
    assert full.shape[1:] == image_shape_of(full) == image_shape_of(small) == shape
    assert small.shape[1:] == tuple(-(-n // 2) for n in shape)  # one value per 2x2 block
    np.testing.assert_array_equal(np.asarray(small), full[:, ::2, ::2])
    labels, details = model.task.instances_with_details(small)
    expected, expected_details = model.task.instances_with_details(full)
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(details["points"], expected_details["points"])
    assert labels.shape == shape and labels.max() >= 6
    # a view of it still knows the image (numpy keeps the attribute on views)
    assert image_shape_of(small[:, :10]) == shape


def test_stardist_maps_are_denormalised_in_place_only_when_writable():
    task = get_task("stardist")(config(TINY))
    raw = np.array([[[0.0, 2.0]], [[-1.0, 3.0]]], np.float32)
    frozen = raw.copy()
    frozen.flags.writeable = False
    out = task.denormalize_output(frozen, None)
    assert out is not frozen and frozen[1, 0, 0] == -1.0  # untouched
    np.testing.assert_allclose(out[0, 0], [0.5, 1 / (1 + np.exp(-2.0))], rtol=1e-6)
    np.testing.assert_array_equal(out[1, 0], [0.0, 3.0])
    same = task.denormalize_output(raw, None)
    assert same is raw  # prediction's own array is reused
    np.testing.assert_array_equal(same, out)


def test_thresholds_are_tuned_written_and_used(trained_run, tmp_path):
    from deepscope.engine import int8
    from deepscope.workflow.predict import update_tuned_settings
    from deepscope.workflow.stardist_thresholds import optimize_thresholds

    assert "thresholds" in (trained_run / "log.txt").read_text()  # tuning ran after training
    if int8.int8_supported():  # and the 8-bit calibration of `predict --int8`, on the same images
        calibration = int8.load_calibration(trained_run / "run" / "model")
        assert calibration["made_from"] == "the validation images" and calibration["images"] >= 1
        assert "8-bit calibration" in (trained_run / "log.txt").read_text()
    folder = tmp_path / "model"
    shutil.copytree(trained_run / "run" / "model", folder)
    model = load_model_folder(folder)
    model.network = BlobNet(model.task.n_rays)
    images, masks = zip(*[discs_image() for _ in range(2)], strict=True)
    result = optimize_thresholds(model, images, masks)
    assert result["score"] > 0.9 and result["nms_threshold"] in (0.3, 0.4, 0.5)
    update_tuned_settings(folder, {**result, "prob_threshold": 0.77})
    again = load_model_folder(folder)
    predict_raw(again, images[0], TileSettings(tile=64))
    assert again.task.thresholds() == (0.77, result["nms_threshold"])
    fixed = load_model_folder(folder)
    fixed.config.stardist.prob_threshold = 0.6
    fixed.task.prob_threshold = 0.6
    predict_raw(fixed, images[0], TileSettings(tile=64))
    assert fixed.task.thresholds()[0] == 0.6  # a threshold in the config wins


# ---------------------------------------------------------------------------- outputs


def test_predict_writes_labels_rois_and_measurements(trained_run, tmp_path):
    from deepscope.workflow.predict import predict_files

    model = load_model_folder(trained_run / "run" / "model")
    model.network = BlobNet(model.task.n_rays)
    image, truth = discs_image()
    rgb = np.repeat(image[0][..., None], 3, axis=-1).astype(np.uint16)
    write_tif(tmp_path / "in" / "cells.tif", image[0].astype(np.uint16))
    tifffile.imwrite(tmp_path / "in" / "colour.tif", rgb, photometric="rgb")
    written = predict_files(model, tmp_path / "in", tmp_path / "out")
    assert len(written) == 2
    for stem in ("cells", "colour"):
        # A label image of an RGB input has no colour axis.
        labels = tifffile.imread(tmp_path / "out" / f"{stem}.tif")
        assert labels.dtype == np.uint16 and labels.shape == truth.shape
        assert matching(truth, labels, thresh=0.5).f1 == 1.0  # RGB read as grey
        rois = roiread(tmp_path / "out" / f"{stem}_rois.zip")
        assert len(rois) == labels.max()
        xy = rois[0].coordinates()
        assert labels[int(round(xy[:, 1].mean())), int(round(xy[:, 0].mean()))] == 1
        rows = list(csv.DictReader((tmp_path / "out" / f"{stem}_measurements.csv").open()))
        assert len(rows) == labels.max()
        assert 100 < float(rows[0]["area"]) < 130  # disc of radius 6
        assert 0.5 < float(rows[0]["probability"]) <= 1
    cols = (tmp_path / "out" / "colour_measurements.csv").read_text().splitlines()[0]
    assert cols == (
        "label,centroid_y,centroid_x,area,mean_intensity_ch0,mean_intensity_ch1,"
        "mean_intensity_ch2,probability"
    )
    record = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert record["files"][0]["rois"] == "cells_rois.zip"
    with pytest.raises(DeepscopeError, match="already exist"):
        predict_files(model, tmp_path / "in", tmp_path / "out")


def test_measurements_3d_and_point_rois(tmp_path):
    from deepscope.tasks.stardist import roi_zip_bytes

    task = StarDistTask(config(TINY_3D))
    lbl = sphere_labels()
    labels, details = task.instances_with_details(perfect_output(task, lbl))
    text = measurements_csv(labels, np.ones((1, *lbl.shape)), details)
    assert text.splitlines()[0] == (
        "label,centroid_z,centroid_y,centroid_x,volume,mean_intensity,probability"
    )
    (tmp_path / "r.zip").write_bytes(roi_zip_bytes(details, task.rays))
    rois = roiread(tmp_path / "r.zip")
    assert len(rois) == 3 and rois[0].z_position == details["points"][0][0] + 1


def test_3d_train_and_predict(tmp_path):
    from deepscope.workflow.predict import predict_files
    from deepscope.workflow.training import train

    for i in range(2):
        lbl = sphere_labels()
        write_tif(tmp_path / "images" / f"s{i}.tif", blob_image(lbl, i).astype(np.uint16))
        write_tif(tmp_path / "masks" / f"s{i}.tif", lbl)
    cfg = copy.deepcopy(TINY_3D)
    cfg["training"]["epochs"] = 1
    result = train(
        config(cfg),
        tmp_path / "images",
        tmp_path / "run",
        tmp_path / "masks",
        show_bar=False,
        log=lambda _m: None,
    )
    model = load_model_folder(result.model_dir)
    assert model.info["divisibility"] == 4
    predict_files(
        model, tmp_path / "images", tmp_path / "out", tiles=TileSettings(tile=16, tile_z=8)
    )
    labels = tifffile.imread(tmp_path / "out" / "s0.tif")
    assert labels.shape == (16, 32, 32)
    with pytest.raises(DeepscopeError, match="2D StarDist models only"):
        predict_raw(model, tifffile.imread(tmp_path / "images" / "s0.tif")[None],
                    TileSettings(tta=True))  # fmt: skip
    assert (tmp_path / "out" / "s0_measurements.csv").read_text().startswith("label,centroid_z")
    code = main(["predict", str(result.model_dir), "--input", str(tmp_path / "images"),
                 "--out", str(tmp_path / "tta"), "--tta"])  # fmt: skip
    assert code == 2 and not (tmp_path / "tta").exists()
    from deepscope.app.runs import _tta_ok

    assert not _tta_ok("stardist", model.info) and _tta_ok("stardist", {"spatial_dims": 2})
    from deepscope.app.runs import int8_ok
    from deepscope.engine.int8 import int8_supported

    assert not int8_ok("n2v", {"spatial_dims": 2}) and not int8_ok("nonsense", None)
    assert int8_ok("stardist", model.info) == int8_supported()  # 3D too
    assert int8_ok("semantic", {"spatial_dims": 2}) == int8_supported()
    if int8_supported():  # the 3D network in 8-bit integers: the same maps within rounding
        volume = tifffile.imread(tmp_path / "images" / "s0.tif")[None].astype(np.float32)
        plain = predict_raw(model, volume, grid=True)
        fast = predict_raw(model, volume, TileSettings(int8=True), grid=True)
        assert fast.shape == plain.shape
        assert np.abs(fast[0] - plain[0]).max() < 0.05  # probabilities
        code = main(["predict", str(result.model_dir), "--input", str(tmp_path / "images"),
                     "--out", str(tmp_path / "int8"), "--int8"])  # fmt: skip
        assert code == 0 and tifffile.imread(tmp_path / "int8" / "s0.tif").shape == (16, 32, 32)


# -------------------------------------------------------------------------- CLI, masks


def test_cli_train_predict_and_thresholds_options(tmp_path, trained_run):
    import yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    d = trained_run
    code = main(
        [
            "train",
            "stardist",
            "--images",
            str(d / "images"),
            "--masks",
            str(d / "masks"),
            "--out",
            str(tmp_path / "run"),
            "--config",
            str(cfg),
            "--epochs",
            "1",
            "--rays",
            "8",
            "--grid",
            "1",
        ]
    )
    assert code == 0
    saved = yaml.safe_load((tmp_path / "run" / "model" / "config.yaml").read_text())
    assert saved["stardist"]["n_rays"] == 8 and saved["stardist"]["grid"] == [1, 1]
    code = main(
        [
            "predict",
            str(tmp_path / "run" / "model"),
            "--input",
            str(d / "images"),
            "--out",
            str(tmp_path / "pred"),
            "--prob-threshold",
            "0.99",
            "--nms-threshold",
            "0.3",
        ]
    )
    assert code == 0 and (tmp_path / "pred" / "b0_rois.zip").exists()
    assert (
        main(
            [
                "predict",
                str(tmp_path / "run" / "model"),
                "--input",
                str(d / "images"),
                "--out",
                str(tmp_path / "p2"),
                "--prob-threshold",
                "1.5",
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "train",
                "n2v",
                "--images",
                str(d / "images"),
                "--out",
                str(tmp_path / "x"),
                "--rays",
                "8",
            ]
        )
        == 2
    )


def test_bad_masks_are_refused_with_a_fix(tmp_path, trained_run):
    from deepscope.workflow.training import ValidationFailed, train

    shutil.copytree(trained_run / "images", tmp_path / "images")
    for i in range(3):
        write_tif(tmp_path / "masks" / f"b{i}.tif", blob_labels(seed=i) * 0.5)
    with pytest.raises(ValidationFailed, match="fractional"):
        train(
            config(TINY),
            tmp_path / "images",
            tmp_path / "run",
            tmp_path / "masks",
            show_bar=False,
            log=lambda _m: None,
        )


# ------------------------------------------------------------------------ pretrained


def test_shipped_nuclei_model_loads_predicts_and_starts_a_training(tmp_path, trained_run):
    from deepscope.workflow.pretrained import available_pretrained, resolve_model
    from deepscope.workflow.training import train

    assert "nuclei" in available_pretrained()
    folder = resolve_model("nuclei")
    model = load_model_folder(folder)
    assert model.config.task == "stardist" and (folder / "thresholds.json").is_file()
    assert (folder / "MODEL_CARD.md").read_text().count("BBBC038") >= 1
    image, truth = discs_image((64, 64))
    labels = model.task.instances(predict_raw(model, image * 3))
    assert labels.shape == truth.shape
    cfg = json.loads(json.dumps(model.config.model_dump(mode="json")))
    cfg["training"].update(TINY["training"], epochs=1, start_from=str(folder))
    cfg["data"]["patch_size"] = [64, 64]
    result = train(
        config(cfg),
        trained_run / "images",
        tmp_path / "ft",
        trained_run / "masks",
        show_bar=False,
        log=lambda _m: None,
    )
    started = json.loads((result.model_dir / "deepscope_model.json").read_text())
    assert started["training"]["started_from"]["loaded"] > 10
    assert resolve_model(tmp_path) == tmp_path  # an existing folder always wins


def test_qc_of_the_shipped_model_leaves_its_folder_untouched(tmp_path):
    from deepscope.workflow.pretrained import resolve_model

    folder = resolve_model("nuclei")
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    image, truth = discs_image((64, 64))
    write_tif(tmp_path / "imgs" / "a.tif", (image * 3).astype(np.float32))
    write_tif(tmp_path / "masks" / "a.tif", truth.astype(np.uint16))
    code = main(
        [
            "qc",
            "nuclei",
            "--images",
            str(tmp_path / "imgs"),
            "--targets",
            str(tmp_path / "masks"),
            "--out",
            str(tmp_path / "qc"),
        ]
    )
    assert code == 0 and (tmp_path / "qc" / "summary.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


@pytest.mark.parametrize("shape", [(64, 80), (63, 71)])
@pytest.mark.parametrize("grid", [1, 2])
def test_turned_predictions_are_read_back_at_the_same_pixels_and_rays(shape, grid):
    """An oracle 'network' computing StarDist's targets from the (turned) label image
    itself: averaged over the 8 turns, every ray of every grid point must come back."""
    from stardist import star_dist

    from deepscope.tasks.stardist import ray_order
    from deepscope.workflow.predict import dihedral_average

    lbl = np.zeros(shape, np.uint16)
    lbl[ellipse(20, 25, 8, 14, rotation=0.5, shape=shape)] = 1
    lbl[ellipse(40, 55, 10, 6, rotation=-0.3, shape=shape)] = 2

    def oracle(image, _report):
        labels = np.rint(image[0]).astype(np.uint16)
        dist = star_dist(labels, 32, grid=(grid, grid)).transpose(2, 0, 1)
        return np.concatenate([(labels > 0)[::grid, ::grid][None].astype(np.float32), dist])

    x = lbl[None].astype(np.float32)
    truth = oracle(x, None)
    order = lambda k, flip: np.concatenate([[0], 1 + ray_order(32, k, flip)])  # noqa: E731
    averaged = dihedral_average(oracle, x, stride=(grid, grid), channel_order=order)
    assert averaged.shape == truth.shape
    np.testing.assert_allclose(averaged, truth, atol=1e-4)
    # without re-ordering the rays the turned versions disagree
    unordered = dihedral_average(oracle, x, stride=(grid, grid))
    assert np.abs(unordered[1:] - truth[1:]).max() > 5


def test_rays_that_do_not_turn_onto_each_other_are_refused():
    from deepscope.tasks.stardist import ray_order

    # numpy.rot90 turns rows towards columns: the ray pointing right now points up
    assert list(ray_order(8, 1, False)) == [6, 7, 0, 1, 2, 3, 4, 5]
    assert list(ray_order(8, 0, True)) == [4, 3, 2, 1, 0, 7, 6, 5]  # mirrored left-right
    assert sorted(ray_order(30, 2, False)) == list(range(30))  # 180 degrees: any even count
    with pytest.raises(DeepscopeError, match="multiple of 4"):
        ray_order(30, 1, False)


def test_test_time_augmentation_of_a_stardist_model(trained_run, tmp_path):
    from deepscope.workflow.pretrained import resolve_model

    model = load_model_folder(trained_run / "run" / "model")
    model.task.use_tuned_settings({"prob_threshold": 0.5, "nms_threshold": 0.3})
    net = BlobNet(model.task.n_rays)
    image, truth = discs_image()
    plain = predict_raw(model, image, TileSettings(), network=net)
    turned = predict_raw(model, image, TileSettings(tta=True), network=net)
    assert turned.shape == plain.shape
    inner = (slice(None), slice(8, -8), slice(8, -8))  # the reflected border differs
    np.testing.assert_allclose(turned[inner], plain[inner], atol=1e-4)
    assert matching(truth, model.task.instances(turned), thresh=0.5).f1 == 1.0

    # from the command line, with the shipped model
    write_tif(tmp_path / "imgs" / "a.tif", image[0].astype(np.float32))
    out = tmp_path / "out"
    assert main(["predict", "nuclei", "--input", str(tmp_path / "imgs"), "--out", str(out),
                 "--tta"]) == 0  # fmt: skip
    assert tifffile.imread(out / "a.tif").max() > 0
    assert load_model_folder(resolve_model("nuclei")).task.tta_ok


def test_nms_uses_every_core_only_when_nothing_else_runs(tmp_path, monkeypatch):
    from deepscope.tasks import stardist as sd

    loadavg = tmp_path / "loadavg"
    monkeypatch.setattr(sd, "_LOADAVG", str(loadavg))
    monkeypatch.setattr(sd, "available_cores", lambda: 2)
    loadavg.write_text("0.10 0.20 0.30 1/230 4242\n")  # only the asking thread runs
    assert sd.nms_threads() == 2
    loadavg.write_text("2.10 2.20 1.30 3/230 4242\n")  # a training beside it
    assert sd.nms_threads() == 1
    loadavg.write_text("garbage\n")
    assert sd.nms_threads() == 1
    loadavg.unlink()
    assert sd.nms_threads() == 1
    loadavg.write_text("0.10 0.20 0.30 1/230 4242\n")
    monkeypatch.setattr(sd, "available_cores", lambda: 1)
    assert sd.nms_threads() == 1


def test_the_nms_thread_limit_reaches_the_stardist_packages_own_openmp(monkeypatch):
    from threadpoolctl import threadpool_info

    from deepscope.tasks import stardist as sd

    def openmp_threads() -> dict[str, int]:
        return {
            i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"
        }

    monkeypatch.setattr(sd, "nms_threads", lambda: 1)
    inside = sd._nms_thread_limit(openmp_threads)()
    assert any("stardist" in path for path in inside)  # its runtime is among those limited
    assert set(inside.values()) == {1}


def test_fine_tuning_the_shipped_model_takes_its_network_settings():
    # `deepscope train stardist --from nuclei` with no settings must fit the shipped network.
    from deepscope.config import config_from_dict, load_config
    from deepscope.workflow.pretrained import resolve_model
    from deepscope.workflow.transfer import adopt_start_network, check_start_model

    folder = resolve_model("nuclei")
    shipped = load_config(folder / "config.yaml")
    config, adopted = adopt_start_network(config_from_dict({"task": "stardist"}), folder)
    assert config.model.depth == shipped.model.depth
    assert config.model.base_channels == shipped.model.base_channels
    assert config.stardist.n_rays == shipped.stardist.n_rays
    assert config.stardist.grid == shipped.stardist.grid
    assert config.stardist.feature_channels == shipped.stardist.feature_channels
    assert adopted  # the defaults of a new training differ from the shipped network
    check_start_model(folder, config)


def test_a_patch_inside_one_object_gives_targets_without_a_warning(recwarn):
    inside = np.full((16, 16), 3, np.int32)  # the patch lies wholly inside object 3
    prob, dist = star_targets(inside, 8, (1, 1))
    assert prob.shape == (16, 16) and dist.shape == (8, 16, 16)
    assert prob.max() > 0 and np.all(np.isfinite(dist))
    assert not [w for w in recwarn if "EDT" in str(w.message)]


def test_stardist_defaults_follow_the_stardist_package():
    c = config({"task": "stardist"})
    assert c.data.patch_size == [160, 160] and c.model.depth == 3
    assert (c.training.batch_size, c.training.learning_rate) == (4, 3e-4)
    assert c.training.lr_patience == 40  # the package's ReduceLROnPlateau patience
    from deepscope.config import config_from_dict

    assert config_from_dict({"task": "n2v"}).training.lr_patience == 10
    assert c.model_dump(exclude_unset=True) == {"task": "stardist"}  # defaults stay unset


def _write_blob_pairs(folder: Path, shapes: list[tuple[int, int]]) -> None:
    for i, shape in enumerate(shapes):
        labels = blob_labels(shape, n=6, seed=i)
        write_tif(folder / "imgs" / f"{i}.tif", ((labels > 0) * 100.0 + 5).astype(np.float32))
        write_tif(folder / "masks" / f"{i}.tif", labels.astype(np.uint16))


def test_default_patch_size_shrinks_to_the_smallest_image(tmp_path):
    _write_blob_pairs(tmp_path, [(90, 200), (200, 72)])
    task = get_task("stardist")(config({"task": "stardist"}))
    report = task.check_training_data(tmp_path / "imgs", tmp_path / "masks")
    assert report.ok
    assert task.config.data.patch_size == [80, 64]  # multiples of 16 (depth 3, grid 2)
    assert any("patches of 80 × 64 pixels are used" in w.problem for w in report.warnings)
    assert report.summary["warnings"] == len(report.warnings)


def test_a_chosen_patch_size_is_kept_and_too_small_images_are_errors(tmp_path):
    _write_blob_pairs(tmp_path, [(96, 200), (200, 72)])
    task = get_task("stardist")(config({"task": "stardist", "data": {"patch_size": [96, 96]}}))
    report = task.check_training_data(tmp_path / "imgs", tmp_path / "masks")
    assert task.config.data.patch_size == [96, 96]
    assert [e.path.name for e in report.errors] == ["1.tif"]
    assert "smaller than the training patch size" in report.errors[0].problem


def test_training_with_the_default_patch_size_records_the_fitted_one(tmp_path):
    from deepscope.workflow.training import train

    _write_blob_pairs(tmp_path, [(64, 64)] * 3)
    cfg = copy.deepcopy(TINY)
    del cfg["data"]["patch_size"]
    run = tmp_path / "run"
    train(config(cfg), tmp_path / "imgs", run, tmp_path / "masks", show_bar=False)
    assert load_model_folder(run / "model").config.data.patch_size == [64, 64]


# ------------------------------------------------------------ images larger than memory


def many_discs(shape=(200, 232), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Discs of radius 6 every ~20 pixels: many of them across 64-pixel block borders."""
    rng = np.random.default_rng(seed)
    lbl = np.zeros(shape, np.uint16)
    k = 0
    for cy in range(12, shape[0] - 8, 20):
        for cx in range(12, shape[1] - 8, 20):
            k += 1
            centre = (cy + int(rng.integers(-3, 4)), cx + int(rng.integers(-3, 4)))
            lbl[disk(centre, 6, shape=shape)] = k
    return blob_image(lbl, seed)[None], lbl


def test_objects_found_block_by_block_are_those_found_in_memory(trained_run, tmp_path):
    import dataclasses

    from deepscope.data.io import open_image
    from deepscope.data.normalize import PercentileNormalizer
    from deepscope.workflow.instances_in_blocks import predict_instances_in_blocks

    model = load_model_folder(trained_run / "run" / "model")
    model.task.use_tuned_settings({"prob_threshold": 0.5, "nms_threshold": 0.3})
    # one fixed intensity map for the whole image and its blocks (as predict_files does)
    fixed = PercentileNormalizer(1.0, 99.8, (100.0,), (900.0,), False)
    model = dataclasses.replace(model, normalizer=fixed)
    net = BlobNet(model.task.n_rays)
    image, truth = many_discs()
    raw = predict_raw(model, image, TileSettings(), network=net)
    in_memory, details = model.task.instances_with_details(raw)
    n = int(in_memory.max())
    assert matching(truth, in_memory, thresh=0.5).tp == truth.max() == 99
    src, out = tmp_path / "big.tif", tmp_path / "out"
    tifffile.imwrite(src, image[0])
    out.mkdir()
    done: list[int] = []
    info = predict_instances_in_blocks(
        open_image(src),
        out / "big.tif",
        model.task,
        lambda cf: predict_raw(model, cf, TileSettings(), network=net),
        block=(64, 64),
        margin=(32, 32),
        progress=lambda d, t: done.append(d),
    )
    blocks = tifffile.imread(out / "big.tif")
    assert blocks.shape == truth.shape and blocks.dtype == np.uint16
    assert info["objects"] == blocks.max() == n and info["cut_objects"] == 0
    # the same objects, pixel for pixel (numbers may differ between equally probable ones)
    m = matching(in_memory, blocks, thresh=0.999)
    assert m.tp == n and m.fp == m.fn == 0
    assert done == list(range(1, 2 * 16 + 1))  # 4 x 4 blocks found, then drawn
    with open(out / "big_measurements.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["label"]) for r in rows] == list(range(1, n + 1))
    areas = np.bincount(blocks.ravel())[1:]
    assert [int(r["area"]) for r in rows] == list(areas)
    yy, _ = np.indices(blocks.shape)
    centre_y = np.bincount(blocks.ravel(), weights=yy.ravel())[1:] / areas
    np.testing.assert_allclose([float(r["centroid_y"]) for r in rows], centre_y, atol=0.01)
    mean = np.bincount(blocks.ravel(), weights=image[0].ravel())[1:] / areas
    np.testing.assert_allclose([float(r["mean_intensity"]) for r in rows], mean, rtol=1e-4)
    assert len(roiread(out / "big_rois.zip")) == n
    # nothing but the results is left behind (no scratch files)
    assert sorted(p.name for p in out.iterdir()) == [
        "big.tif",
        "big_measurements.csv",
        "big_rois.zip",
    ]


def test_a_large_image_is_segmented_in_blocks_with_the_whole_images_percentiles(
    trained_run, tmp_path
):
    import json as json_

    from deepscope.data.io import open_image
    from deepscope.workflow.large_images import whole_image_normalizer
    from deepscope.workflow.predict import predict_files

    image, _ = many_discs()
    image[0, :, 116:] = 100 + np.random.default_rng(1).normal(0, 20, (200, 116))  # empty half
    write_tif(tmp_path / "in" / "big.tif", image[0].astype(np.float32))
    model = load_model_folder(trained_run / "run" / "model")
    assert model.normalizer.per_image  # StarDist maps each image by its own percentiles
    whole = whole_image_normalizer(
        open_image(tmp_path / "in" / "big.tif"), 2, model.normalizer, (64, 64), samples=4000
    )
    lo, hi = np.percentile(image[0], [1, 99.8])
    assert not whole.per_image and abs(whole.low[0] - lo) < 15 and abs(whole.high[0] - hi) < 60

    model.network = BlobNet(model.task.n_rays)  # a 'network' that finds the discs
    model.task.use_tuned_settings({"prob_threshold": 0.5, "nms_threshold": 0.3})
    tiles = TileSettings(tile=64, block=64, memory_limit=1)
    predict_files(model, tmp_path / "in", tmp_path / "blocks", tiles=tiles)
    predict_files(model, tmp_path / "in", tmp_path / "memory", tiles=TileSettings(tile=64))
    record = json_.loads((tmp_path / "blocks" / "provenance.json").read_text())
    blockwise = record["files"][0]["predicted_in_blocks"]
    assert "whole image's percentiles" in blockwise["reason"] and blockwise["margin"] == 128
    a = tifffile.imread(tmp_path / "blocks" / "big.tif")
    b = tifffile.imread(tmp_path / "memory" / "big.tif")
    assert a.shape == b.shape and b.max() >= 50 and not b[:, 124:].any()
    assert matching(b, a, thresh=0.5).f1 > 0.98 and not a[:, 124:].any()
    for name in ("big_rois.zip", "big_measurements.csv"):
        assert (tmp_path / "blocks" / name).is_file()

    # why: blocks mapped by their own percentiles turn the empty half's noise into objects
    from deepscope.workflow.instances_in_blocks import predict_instances_in_blocks

    predict_instances_in_blocks(
        open_image(tmp_path / "in" / "big.tif"),
        tmp_path / "own.tif",
        model.task,
        lambda cf: predict_raw(model, cf, TileSettings(tile=64)),
        block=(64, 64),
        margin=(32, 32),
    )
    assert tifffile.imread(tmp_path / "own.tif")[:, 192:].any()
