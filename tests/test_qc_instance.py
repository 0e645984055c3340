"""Instance-segmentation QC scores and report, on hand-built label images (no model)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from deepscope.workflow.qc_instance import (
    IOU_THRESHOLDS,
    METRICS,
    InstanceCase,
    evaluate_instances,
    match_dataset,
    match_image,
    outcome_labels,
    overlay_rgb,
    recall_by_size,
    summary_text,
)


def _pair() -> tuple[np.ndarray, np.ndarray]:
    """Truth with 4 squares; prediction: 2 exact, 1 shifted (IoU 0.6), 1 missed, 2 spurious."""
    truth = np.zeros((60, 80), np.uint16)
    truth[5:15, 5:15] = 1  # found exactly
    truth[5:15, 30:40] = 2  # found exactly
    truth[30:40, 5:15] = 3  # found with IoU 2/3 (shifted prediction)
    truth[30:40, 40:50] = 4  # missed
    pred = np.zeros_like(truth)
    pred[5:15, 5:15] = 7
    pred[5:15, 30:40] = 3
    pred[30:40, 7:17] = 5  # overlap 10x8 = 80, union 120 -> IoU 2/3
    pred[50:58, 60:70] = 9  # spurious
    pred[45:50, 20:25] = 2  # spurious
    return truth, pred


def test_match_image_counts_known_tp_fp_fn():
    truth, pred = _pair()
    scores = match_image(truth, pred)
    assert list(scores) == [f"{t:.1f}" for t in IOU_THRESHOLDS]
    at5 = scores["0.5"]
    assert (at5["tp"], at5["fp"], at5["fn"]) == (3, 2, 1)
    assert at5["n_true"] == 4 and at5["n_pred"] == 5
    assert at5["precision"] == pytest.approx(3 / 5)
    assert at5["recall"] == pytest.approx(3 / 4)
    assert at5["accuracy"] == pytest.approx(3 / 6)
    assert at5["f1"] == pytest.approx(6 / 9)
    assert at5["mean_matched_score"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert at5["panoptic_quality"] == pytest.approx((1 + 1 + 2 / 3) / (3 + 1 + 0.5))
    at7 = scores["0.7"]  # the shifted object no longer counts
    assert (at7["tp"], at7["fp"], at7["fn"]) == (2, 3, 2)
    assert scores["0.9"]["accuracy"] == pytest.approx(2 / 7)


def test_match_dataset_pools_objects_of_all_images():
    truth, pred = _pair()
    perfect = match_dataset([truth, truth], [pred, truth])["0.5"]
    assert (perfect["tp"], perfect["fp"], perfect["fn"]) == (7, 2, 1)
    assert perfect["f1"] == pytest.approx(14 / 17)
    # an image without objects on both sides adds nothing
    empty = np.zeros_like(truth)
    assert match_dataset([truth, empty], [pred, empty])["0.5"]["tp"] == 3


def test_outcome_labels_and_overlay_colours():
    truth, pred = _pair()
    out = outcome_labels(truth, pred)
    assert out == {"tp_true": [1, 2, 3], "tp_pred": [3, 5, 7], "fn": [4], "fp": [2, 9]}
    image = np.random.default_rng(0).random((1, *truth.shape)).astype(np.float32)
    rgb = overlay_rgb(image, truth, pred, outcomes=out)
    assert rgb.shape == (*truth.shape, 3)
    green, magenta, yellow = (
        np.all(np.isclose(rgb, c), axis=-1)
        for c in ((0.15, 0.85, 0.25), (1.0, 0.2, 1.0), (1.0, 0.85, 0.0))
    )
    assert green[5, 5] and green[30, 7]  # outlines of matched predictions
    assert magenta[50, 60] and magenta[45, 20]  # spurious predictions
    assert yellow[30, 40] and not yellow[35, 45]  # outline (not inside) of the missed object
    assert not (green | magenta | yellow)[20:28, 20:28].any()  # background untouched


def test_overlay_of_3d_rgb_images_uses_middle_plane():
    truth = np.zeros((5, 20, 20), np.uint16)
    truth[1:4, 5:15, 5:15] = 1
    image = np.random.default_rng(1).random((3, 5, 20, 20))
    rgb = overlay_rgb(image, truth, np.zeros_like(truth))
    assert rgb.shape == (20, 20, 3)
    assert np.allclose(rgb[5, 5], (1.0, 0.85, 0.0))  # missed object outlined in yellow


def test_evaluate_instances_writes_summary_csv_and_report(tmp_path):
    truth, pred = _pair()
    image = np.random.default_rng(0).random((1, *truth.shape)).astype(np.float32)
    history = tmp_path / "history.csv"
    history.write_text("epoch,train_loss,val_loss\n0,1.0,1.2\n1,0.5,0.7\n")
    cases = [InstanceCase("a.tif", image, truth, pred), InstanceCase("b.tif", image, truth, truth)]
    checkpoints = [
        {"checkpoint": "weights used (best)", "used": True, "f1@0.5": 0.8, "accuracy@0.5": 0.7},
        {"checkpoint": "epoch_0001", "used": False, "f1@0.5": 0.5, "accuracy@0.5": 0.4},
    ]
    out = tmp_path / "qc"
    summary = evaluate_instances(
        cases, out, checkpoints=checkpoints, history_csv=history, model_info={"task": "x"}
    )
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert set(saved["by_threshold"]) == {f"{t:.1f}" for t in IOU_THRESHOLDS}
    for metrics in saved["by_threshold"].values():
        assert set(METRICS) <= set(metrics)
    assert saved["by_threshold"]["0.5"]["tp"] == 7
    assert [p["image"] for p in saved["per_image"]] == ["a.tif", "b.tif"]
    assert saved["per_image"][1]["by_threshold"]["0.9"]["f1"] == 1.0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 2 * len(IOU_THRESHOLDS)
    assert {"image", "iou_threshold", "f1", "accuracy", "tp", "fp", "fn"} <= set(rows[0])
    html = (out / "report.html").read_text()
    assert html.count("<img") >= 5  # 2 overlays, scores curve, checkpoints, loss curves
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "scores_vs_iou.png" in figures and "loss_curves.png" in figures
    assert "checkpoints.png" in figures
    assert sum("overlay" in f for f in figures) == 2
    assert "epoch_0001" in html
    text = summary_text(saved)
    assert "IoU 0.5: F1 0.824" in text and "(TP 7, FP 2, FN 1)" in text
    # all 8 true squares have 100 pixels: one size bin (1-2 x median) holds them
    by_size = saved["by_size"]
    assert by_size["median_true_size"] == 100 and by_size["true"] == [0, 0, 0, 8, 0]
    assert by_size["found"][3] == 7 and "Found by size" in html


def test_recall_by_size_tells_missed_small_objects_from_found_large_ones():
    truth = np.zeros((40, 60), np.uint16)
    truth[2:4, 2:4] = 1  # 4 pixels, missed
    truth[10:12, 2:4] = 2  # 4 pixels, found
    truth[20:30, 20:30] = 3  # 100 pixels, found
    truth[20:30, 40:50] = 4  # 100 pixels, found as an outline too large (IoU 100/144)
    pred = np.zeros_like(truth)
    pred[10:12, 2:4] = 5
    pred[20:30, 20:30] = 6
    pred[19:31, 39:51] = 7
    pred[35:37, 55:57] = 8  # a small false object
    out = recall_by_size([truth], [pred], edges=[10, 50])
    assert out["true"] == [2, 0, 2] and out["found"] == [1, 0, 2]
    assert out["recall"] == [0.5, None, 1.0] and out["predicted"] == [2, 0, 2]
    assert out["lower"] == [0, 10, 50] and out["upper"] == [10, 50, None]
    strict = recall_by_size([truth], [pred], edges=[10, 50], threshold=0.8)
    assert strict["found"] == [1, 0, 1]


def test_evaluate_instances_rejects_shape_mismatch(tmp_path):
    from deepscope.errors import DeepscopeError

    truth, pred = _pair()
    case = InstanceCase("a.tif", np.zeros((1, 60, 80)), truth, pred[:50])
    with pytest.raises(DeepscopeError, match="same pixels"):
        evaluate_instances([case], tmp_path / "qc")


# ------------------------------------------------------------- end to end, with a model


class _DiscNet:
    """A fixed StarDist 'network' for discs: blurred intensity → probability, and the same
    distance ``radius`` on every ray, on a 2×2 grid (no training needed)."""

    def __new__(cls, n_rays: int, radius: float):
        import torch
        from torch import nn
        from torch.nn import functional as F

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                g = np.exp(-((np.arange(9) - 4) ** 2) / 8.0)
                k = np.outer(g, g) / np.outer(g, g).sum()
                self.register_buffer("kernel", torch.tensor(k, dtype=torch.float32)[None, None])
                self.unused = nn.Parameter(torch.zeros(1))  # the tiler reads the device here

            def forward(self, x):
                blur = F.conv2d(x[:, :1], self.kernel, padding=4)[:, :, ::2, ::2]
                dist = torch.full((x.shape[0], n_rays, *blur.shape[2:]), float(radius))
                return torch.cat([12 * (blur - 0.45), dist], 1)

        return Net().eval()


def _discs(seed: int) -> np.ndarray:
    from skimage.draw import disk

    lbl = np.zeros((64, 64), np.uint16)
    centres = [(14, 14), (14, 46), (46, 16), (44, 48)][: 3 + seed % 2]
    for k, c in enumerate(centres, start=1):
        lbl[disk(c, 6, shape=lbl.shape)] = k
    return lbl


def test_qc_of_a_stardist_model_folder(tmp_path):
    import tifffile

    from deepscope.data.normalize import PercentileNormalizer
    from deepscope.tasks import get_task
    from deepscope.workflow.model_folder import load_model_folder, save_model_folder
    from deepscope.workflow.qc import run_qc

    config = get_task("stardist").config_class.model_validate(
        {
            "task": "stardist",
            "data": {"patch_size": [32, 32], "spatial_dims": 2},
            "model": {"depth": 1, "base_channels": 8},
            "stardist": {"n_rays": 16, "feature_channels": 8},
        }
    )
    task = get_task("stardist")(config)
    weights = task.build_model(1).state_dict()
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    images = []
    for i in range(2):
        lbl = _discs(i)
        img = (lbl > 0).astype(np.float32) * 800 + 100
        images.append(img[None])
        tifffile.imwrite(tmp_path / "images" / f"d{i}.tif", img)
        tifffile.imwrite(tmp_path / "masks" / f"d{i}.tif", lbl)
    history = tmp_path / "history.csv"
    history.write_text("epoch,train_loss_epoch,val_loss\n0,2.0,2.1\n1,1.0,1.1\n")
    save_model_folder(
        tmp_path / "model",
        config=config,
        weights=weights,
        in_channels=1,
        input_axes="YX",
        normalizer=PercentileNormalizer.fit(images),
        checkpoints={"epoch_0001": weights},
        history_csv=history,
    )
    (tmp_path / "model" / "thresholds.json").write_text(
        json.dumps({"prob_threshold": 0.5, "nms_threshold": 0.3})
    )
    model = load_model_folder(tmp_path / "model")
    model.network = _DiscNet(16, 6.0)  # right-sized discs: every object found
    model.network_from_checkpoint = lambda name: _DiscNet(16, 3.0)  # too small: IoU 1/4

    summary = run_qc(model, tmp_path / "images", tmp_path / "masks", tmp_path / "qc")
    at5 = summary["by_threshold"]["0.5"]
    assert (at5["tp"], at5["fp"], at5["fn"]) == (7, 0, 0)
    assert at5["f1"] == 1.0 and at5["mean_matched_score"] > 0.8
    assert summary["by_threshold"]["0.3"]["f1"] == 1.0
    rows = {c["checkpoint"]: c for c in summary["checkpoints"]}
    assert rows["weights used (best)"]["f1@0.5"] == 1.0
    assert rows["epoch_0001"]["f1@0.5"] == 0.0  # the worse checkpoint is told apart
    assert summary["model_info"]["tuned nms_threshold"] == 0.3
    assert (tmp_path / "qc" / "report.html").is_file()
    assert (tmp_path / "model" / "qc_summary.json").is_file()
    assert (tmp_path / "qc" / "figures" / "loss_curves.png").is_file()
