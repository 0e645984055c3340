from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from deepscope.errors import DeepscopeError
from deepscope.workflow.qc_restoration import (
    best_gaussian_sigma,
    evaluate_restoration,
    gaussian_baseline,
    restoration_metrics,
)
from deepscope.workflow.report import HtmlReport

NOISE = 0.15


def smooth_image(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    image = ndimage.gaussian_filter(rng.random(shape), sigma=3)
    return (image - image.min()) / (image.max() - image.min())


def noisy_pair(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    target = smooth_image(rng, shape)
    return target + rng.normal(0, NOISE, shape), target


def make_pairs(shape: tuple[int, ...], n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(f"img_{i}.tif", *noisy_pair(rng, shape)) for i in range(n)]


def denoise(image: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(image, sigma=1.5)


def identity(image: np.ndarray) -> np.ndarray:
    return image


def write_history(path: Path) -> Path:
    lines = [
        "epoch,step,train_loss,val_loss,lr",
        "0,10,1.0,,0.001",
        "0,10,,0.9,0.001",
        "1,20,0.6,nan,0.001",
        "1,20,,0.7,0.001",
        "2,30,0.4,,",
        "2,30,,0.5,",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def qc_2d(tmp_path_factory):
    out = tmp_path_factory.mktemp("qc2d")
    history = write_history(out / "train_metrics.csv")
    summary = evaluate_restoration(
        make_pairs((32, 32), 3),
        denoise,
        out / "qc",
        checkpoint_predicts={"epoch=1": identity, "epoch=5": denoise},
        history_csv=history,
        model_info={"task": "n2v", "note": "<b>not bold</b>"},
        max_figure_images=2,
    )
    return summary, out / "qc"


# ------------------------------------------------------------------------ metrics


def test_identity_metrics_are_perfect():
    target = smooth_image(np.random.default_rng(1), (32, 32))
    metrics = restoration_metrics(target, target)
    assert set(metrics) == {"psnr", "ssim", "nrmse", "mae"}
    assert math.isinf(metrics["psnr"]) or metrics["psnr"] > 100
    assert metrics["ssim"] == pytest.approx(1.0)
    assert metrics["nrmse"] == pytest.approx(0.0)
    assert metrics["mae"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("shape", "channel_axis"),
    [((8, 32, 32), None), ((2, 32, 32), 0), ((2, 8, 32, 32), 0), ((32, 32, 2), -1)],
)
def test_metrics_on_3d_and_channels(shape, channel_axis):
    noisy, target = noisy_pair(np.random.default_rng(2), shape)
    metrics = restoration_metrics(noisy, target, channel_axis=channel_axis)
    assert all(math.isfinite(v) for v in metrics.values())
    assert 0 < metrics["ssim"] < 1


def test_denoising_scores_above_noisy_input():
    noisy, target = noisy_pair(np.random.default_rng(3), (32, 32))
    raw, denoised = restoration_metrics(noisy, target), restoration_metrics(denoise(noisy), target)
    assert denoised["psnr"] > raw["psnr"]
    assert denoised["ssim"] > raw["ssim"]
    assert denoised["mae"] < raw["mae"]


def test_data_range_defaults_to_target_range():
    noisy, target = noisy_pair(np.random.default_rng(4), (32, 32))
    span = float(target.max() - target.min())
    assert restoration_metrics(noisy, target) == restoration_metrics(noisy, target, span)


@pytest.mark.parametrize(
    ("prediction", "target"),
    [
        (np.zeros((32, 32)), np.ones((32, 32))),  # constant target: no scale
        (np.zeros((32, 31)), np.linspace(0, 1, 1024).reshape(32, 32)),  # shape mismatch
        (np.zeros(32), np.linspace(0, 1, 32)),  # 1D
        (np.full((32, 32), np.nan), np.linspace(0, 1, 1024).reshape(32, 32)),  # NaN
    ],
)
def test_metrics_reject_bad_input(prediction, target):
    with pytest.raises(DeepscopeError):
        restoration_metrics(prediction, target)


# --------------------------------------------------------------- gaussian baseline


def test_gaussian_baseline_does_not_mix_channels():
    image = np.stack([np.zeros((16, 16)), np.random.default_rng(5).random((16, 16))])
    smoothed = gaussian_baseline(image, 2.0, channel_axis=0)
    assert smoothed.shape == image.shape
    assert np.all(smoothed[0] == 0)


def test_best_gaussian_sigma_follows_noise_level():
    rng = np.random.default_rng(6)
    targets = [smooth_image(rng, (32, 32)) for _ in range(2)]
    clean = best_gaussian_sigma(targets, targets, sigmas=(0.5, 1.0, 3.0))
    noisy = [t + rng.normal(0, 0.3, t.shape) for t in targets]
    assert clean == 0.5
    assert best_gaussian_sigma(noisy, targets, sigmas=(0.5, 1.0, 3.0)) > 0.5


# ---------------------------------------------------------------------- evaluation


def test_summary_has_exactly_the_documented_shape(qc_2d):
    summary, out = qc_2d
    assert list(summary) == ["model", "input", "gaussian", "checkpoints", "n_images"]
    assert set(summary["model"]) == set(summary["input"]) == {"psnr", "ssim", "nrmse", "mae"}
    assert set(summary["gaussian"]) == {"psnr", "ssim", "nrmse", "mae", "sigma"}
    assert all(set(c) == {"name", "psnr", "ssim", "best"} for c in summary["checkpoints"])
    assert summary["n_images"] == 3
    assert json.loads((out / "summary.json").read_text()) == summary


def test_model_beats_noisy_input_and_best_checkpoint_is_flagged(qc_2d):
    summary, _ = qc_2d
    assert summary["model"]["psnr"] > summary["input"]["psnr"]
    best = [c["name"] for c in summary["checkpoints"] if c["best"]]
    assert best == ["epoch=5"]


def test_metrics_csv_has_one_row_per_image_and_method(qc_2d):
    _, out = qc_2d
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["image", "method", "psnr", "ssim", "nrmse", "mae"]
    assert len(rows) == 9
    assert {r["method"] for r in rows} == {"model", "input", "gaussian"}


def test_report_is_self_contained_and_readable(qc_2d):
    _, out = qc_2d
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page
    assert "Gaussian filter" in page and "σ=" in page
    assert "The model improves PSNR by" in page
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page  # model_info escaped
    assert "http://" not in page and "https://" not in page and "<script" not in page
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert {"mean_metrics.png", "loss_curves.png", "checkpoints.png"} <= figures
    assert "01_img_1.tif_errors.png" in figures
    assert not any(name.startswith("02_") for name in figures)  # max_figure_images=2


def test_3d_report_shows_middle_slice_and_admits_defeat(tmp_path):
    pairs = make_pairs((8, 32, 32), 1, seed=7)
    summary = evaluate_restoration(pairs, identity, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "middle Z slice" in page
    assert "does NOT improve on the noisy input" in page
    assert summary["checkpoints"] == []


def test_channel_first_pairs(tmp_path):
    pairs = make_pairs((2, 32, 32), 2, seed=8)
    summary = evaluate_restoration(pairs, denoise, tmp_path, channel_axis=0, max_figure_images=1)
    assert summary["model"]["psnr"] > summary["input"]["psnr"]
    assert len(list((tmp_path / "figures").glob("*_comparison.png"))) == 1


def test_wrong_prediction_shape_names_the_image(tmp_path):
    with pytest.raises(DeepscopeError, match="img_0.tif"):
        evaluate_restoration(make_pairs((32, 32), 1), lambda x: x[:16], tmp_path)


def test_history_without_epoch_column_is_reported(tmp_path):
    history = tmp_path / "metrics.csv"
    history.write_text("step,train_loss\n1,0.5\n")
    with pytest.raises(DeepscopeError, match="epoch"):
        evaluate_restoration(make_pairs((32, 32), 1), identity, tmp_path, history_csv=history)


# -------------------------------------------------------------------------- report


def test_html_report_escapes_and_formats(tmp_path):
    report = HtmlReport("A <title>")
    report.add_paragraph("<script>alert(1)</script>", css_class="warning")
    report.add_table([{"a": float("nan"), "b": float("inf"), "c": True, "d": 0.123456}], "t")
    path = report.write(tmp_path / "r.html")
    page = path.read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "A &lt;title&gt;" in page
    assert all(cell in page for cell in (">–<", ">∞<", ">yes<", ">0.1235<"))


def test_bad_pairs_fail_before_writing_anything(tmp_path):
    pairs = make_pairs((32, 32), 2)
    constant = [*pairs, ("flat.tif", np.zeros((32, 32)), np.ones((32, 32)))]
    with pytest.raises(DeepscopeError, match="flat.tif"):
        evaluate_restoration(constant, identity, tmp_path / "qc")
    with pytest.raises(DeepscopeError, match="unique"):
        evaluate_restoration([pairs[0], pairs[0]], identity, tmp_path / "qc")
    assert not (tmp_path / "qc").exists()


def test_html_report_formats_numpy_scalars_and_embeds_png_files(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.subplots().plot([0, 1])
    report = HtmlReport("r", figures_dir=tmp_path / "figs")
    saved = report.add_figure(fig, "a line", filename="line.png")
    report.add_figure(saved, "the same, from its file")
    report.add_table([{"x": np.float32(0.5), "n": np.int64(3), "flag": np.bool_(True)}])
    page = report.to_html()
    assert saved == tmp_path / "figs" / "line.png" and saved.exists()
    assert page.count("data:image/png;base64,") == 2
    assert ">0.5<" in page and ">3<" in page
