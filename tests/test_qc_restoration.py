from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from deepscope.errors import DeepscopeError
from deepscope.workflow import qc_figures
from deepscope.workflow.qc_restoration import (
    METRICS,
    affine_match,
    best_gaussian_sigma,
    evaluate_restoration,
    gaussian_baseline,
    restoration_metrics,
)
from deepscope.workflow.report import HtmlReport

NOISE = 0.15
RAW = {"psnr", "ssim", "nrmse", "mae"}


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


def rescaled_denoise(image: np.ndarray) -> np.ndarray:
    """A good denoiser whose output has the wrong brightness and contrast."""
    return 3 * denoise(image) + 1


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
    calls = []
    summary = evaluate_restoration(
        make_pairs((32, 32), 3),
        denoise,
        out / "qc",
        checkpoint_predicts={"epoch=1": identity, "epoch=5": rescaled_denoise},
        history_csv=history,
        model_info={"task": "n2v", "note": "<b>not bold</b>"},
        max_figure_images=1,
        progress=lambda *call: calls.append(call),
    )
    return summary, out / "qc", calls


# ------------------------------------------------------------------------ metrics


def test_identity_metrics_are_perfect():
    target = smooth_image(np.random.default_rng(1), (32, 32))
    metrics = restoration_metrics(target, target)
    assert list(metrics) == list(METRICS)
    assert set(METRICS) == RAW | {f"{m}_matched" for m in RAW} | {"pearson_r"}
    for suffix in ("", "_matched"):
        assert math.isinf(metrics["psnr" + suffix]) or metrics["psnr" + suffix] > 100
        assert metrics["ssim" + suffix] == pytest.approx(1.0)
        assert metrics["nrmse" + suffix] == pytest.approx(0.0)
        assert metrics["mae" + suffix] == pytest.approx(0.0)


def test_matched_metrics_ignore_brightness_and_contrast():
    target = smooth_image(np.random.default_rng(11), (32, 32))
    metrics = restoration_metrics(2 * target + 5, target)
    assert metrics["psnr_matched"] > 100  # perfect up to rounding
    assert metrics["ssim_matched"] == pytest.approx(1.0)
    assert metrics["mae_matched"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["psnr"] < 0  # errors larger than the target's range
    assert metrics["ssim"] < 0.5


def test_affine_match_fits_each_channel():
    rng = np.random.default_rng(12)
    target = np.stack([smooth_image(rng, (32, 32)), smooth_image(rng, (32, 32))])
    prediction = np.stack([2 * target[0] + 5, -0.5 * target[1] + 3])
    np.testing.assert_allclose(affine_match(prediction, target, channel_axis=0), target, atol=1e-9)
    pooled = affine_match(prediction, target)  # one gain and offset for both channels
    assert np.abs(pooled - target).max() > 0.1
    flat = affine_match(np.full((32, 32), 7.0), target[0])  # nothing to fit: the mean
    np.testing.assert_allclose(flat, target[0].mean())
    with pytest.raises(DeepscopeError):
        affine_match(prediction[:, :16], target, channel_axis=0)


def test_matched_scores_of_a_noisy_image_are_not_worse_than_raw():
    noisy, target = noisy_pair(np.random.default_rng(13), (32, 32))
    metrics = restoration_metrics(noisy, target)
    assert metrics["psnr_matched"] >= metrics["psnr"]
    assert metrics["nrmse_matched"] <= metrics["nrmse"]


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


def test_best_gaussian_sigma_ignores_brightness_and_contrast_of_the_input():
    pairs = make_pairs((32, 32), 2, seed=14)
    inputs, targets = [x for _, x, _ in pairs], [y for _, _, y in pairs]
    sigmas = (0.5, 1.0, 1.5, 3.0)
    rescaled = [10 * x + 50 for x in inputs]
    assert best_gaussian_sigma(rescaled, targets, sigmas) == best_gaussian_sigma(
        inputs, targets, sigmas
    )


# ---------------------------------------------------------------------- evaluation


def test_summary_has_exactly_the_documented_shape(qc_2d):
    summary, out, _ = qc_2d
    assert list(summary) == ["model", "input", "gaussian", "checkpoints", "n_images"]
    assert list(summary["model"]) == list(summary["input"]) == list(METRICS)
    assert list(summary["gaussian"]) == [*METRICS, "sigma"]
    assert all(list(c) == ["name", *METRICS, "best"] for c in summary["checkpoints"])
    assert summary["n_images"] == 3
    assert json.loads((out / "summary.json").read_text()) == summary


def test_model_beats_noisy_input_and_best_checkpoint_uses_matched_psnr(qc_2d):
    summary, _, _ = qc_2d
    assert summary["model"]["psnr_matched"] > summary["input"]["psnr_matched"]
    assert summary["model"]["psnr"] > summary["input"]["psnr"]
    scores = {c["name"]: c for c in summary["checkpoints"]}
    # epoch=5 denoises well but with 3x the contrast: worst raw, best matched
    assert scores["epoch=5"]["psnr"] < scores["epoch=1"]["psnr"]
    assert scores["epoch=5"]["psnr_matched"] == pytest.approx(summary["model"]["psnr_matched"])
    assert [name for name, c in scores.items() if c["best"]] == ["epoch=5"]


def test_progress_reports_every_stage(qc_2d):
    _, _, calls = qc_2d
    stages = list(dict.fromkeys(stage for stage, _, _ in calls))
    assert stages == ["baseline", "images", "checkpoints", "figures"]
    for stage in stages:
        done = [d for s, d, _ in calls if s == stage]
        totals = {t for s, _, t in calls if s == stage}
        assert len(totals) == 1 and done == list(range(totals.pop() + 1))
    totals = {stage: total for stage, _, total in calls}
    assert totals["images"] == 3 and totals["checkpoints"] == 6
    assert totals["figures"] == 3 + 2  # means, checkpoints, loss + 2 per image shown


def test_metrics_csv_has_one_row_per_image_and_method(qc_2d):
    _, out, _ = qc_2d
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["image", "method", *METRICS]
    assert len(rows) == 9
    assert {r["method"] for r in rows} == {"model", "input", "gaussian"}


def test_report_is_self_contained_and_readable(qc_2d):
    _, out, _ = qc_2d
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page
    assert "Gaussian filter" in page and "σ=" in page
    assert "The model improves PSNR by" in page
    assert "compared after matching brightness and contrast to the clean" in page
    assert "PSNR (dB), matched" in page and "PSNR (dB), raw" in page
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page  # model_info escaped
    assert "http://" not in page and "https://" not in page and "<script" not in page
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert {"mean_metrics.png", "loss_curves.png", "checkpoints.png"} <= figures
    assert {"00_img_0.tif_comparison.png", "00_img_0.tif_errors.png"} <= figures
    assert not any(name.startswith("01_") for name in figures)  # max_figure_images=1


def test_report_figures_are_compact_pngs(qc_2d):
    from PIL import Image

    _, out, _ = qc_2d
    with Image.open(out / "figures" / "00_img_0.tif_comparison.png") as grey:
        assert grey.mode == "L"  # grey panels and black text only
    with Image.open(out / "figures" / "00_img_0.tif_errors.png") as colour:
        assert colour.mode == "P"  # colour maps: at most 256 colours


def test_progress_can_stop_the_evaluation(tmp_path):
    def stop(stage, done, total):
        if stage == "figures":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate_restoration(make_pairs((32, 32), 1), denoise, tmp_path, progress=stop)
    assert not (tmp_path / "summary.json").exists()
    assert not (tmp_path / "report.html").exists()


def test_image_views_crop_large_images():
    rng = np.random.default_rng(15)
    target = rng.random((2, 600, 400))
    views = qc_figures.image_views(
        "big", {"model": target}, target, target, {"model": (30.0, 0.9)}, channel_axis=0
    )
    side = int(qc_figures.CROP_SIZE / math.sqrt(2))  # two channels: same number of pixels
    assert all(p.shape == (2, side, side) for p in views.planes.values())
    assert views.ssim_map.shape == (2, side, side)
    assert "crop" in views.where and "2 of 2" in views.where
    figure = qc_figures.comparison_figure(views)
    width, height = figure.get_size_inches() * HtmlReport.DPI
    assert width < 2 * side + 80 and height < 2 * side + 120  # ~1 screen px per pixel


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
    assert summary["model"]["psnr_matched"] > summary["input"]["psnr_matched"]
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
