"""Mask checks of ``deepscope validate stardist`` on tiny synthetic label images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepscope.tasks.stardist_checks import (
    mask_statistics,
    reconstruction_ious,
    stardist_mask_findings,
)

IMG = Path("img.tif")
MASK = Path("mask.tif")


def _disk(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def _blobs(shape=(64, 64)) -> np.ndarray:
    lab = np.zeros(shape, np.uint16)
    for i, c in enumerate([(15, 15), (15, 45), (45, 20), (45, 48)], start=1):
        lab[_disk(shape, c, 8)] = i
    return lab


def _check(mask: np.ndarray, image: np.ndarray | None = None, dims: int = 2, **kw):
    mask_cf = mask[None] if mask.ndim == dims else mask
    image = np.zeros((1, *mask_cf.shape[1:]), np.float32) if image is None else image
    return stardist_mask_findings(IMG, image, MASK, mask_cf, 32 if dims == 2 else 48, dims, **kw)


def _only(findings, severity):
    assert len(findings) == 1, [f.problem for f in findings]
    assert findings[0].severity == severity
    assert findings[0].path == MASK
    return findings[0]


def test_good_label_image_has_no_findings():
    assert _check(_blobs()) == []


@pytest.mark.parametrize("value", [1, 255])
def test_binary_mask_is_an_error_naming_the_fix(value):
    mask = (_blobs() > 0).astype(np.uint8) * value
    finding = _only(_check(mask), "error")
    assert "binary mask" in finding.problem
    assert "skimage.measure.label" in finding.fix


def test_single_object_labelled_255_is_not_called_binary():
    mask = np.zeros((32, 32), np.uint8)
    mask[_disk(mask.shape, (16, 16), 6)] = 255
    assert _check(mask) == []


def test_rgb_mask_is_an_error():
    rgb = np.stack([_blobs()] * 3)  # channel first, 3 channels
    finding = _only(_check(rgb), "error")
    assert "RGB" in finding.problem


def test_fractional_and_negative_masks_are_errors():
    frac = _blobs().astype(np.float32) * 0.5
    assert "fractional" in _only(_check(frac), "error").problem
    neg = _blobs().astype(np.int16)
    neg[0, 0] = -1
    assert "negative" in _only(_check(neg), "error").problem


def test_float_mask_with_whole_numbers_is_accepted():
    assert _check(_blobs().astype(np.float32)) == []


def test_shape_mismatch_is_an_error_unless_already_checked():
    image = np.zeros((1, 60, 64), np.float32)
    finding = _only(_check(_blobs(), image), "error")
    assert "60 × 64" in finding.problem and "64 × 64" in finding.problem
    # validate compares shapes itself; the hook can skip it (then the mask is still checked)
    assert _check(_blobs(), image, in_validate=True) == []


def test_empty_mask_is_a_warning():
    finding = _only(_check(np.zeros((32, 32), np.uint16)), "warning")
    assert "no objects" in finding.problem
    assert _check(np.zeros((32, 32), np.uint16), in_validate=True) == []  # validate warns


def test_label_shared_by_separate_objects_is_a_warning():
    mask = _blobs()
    mask[mask == 4] = 1  # objects 1 and 4 now share a label
    finding = _only(_check(mask), "warning")
    assert "several separate regions" in finding.problem
    assert "(label 1)" in finding.problem
    assert mask_statistics(mask).split_labels == [1]


def test_u_shaped_object_is_not_star_convex():
    mask = _blobs((96, 96))
    u = np.zeros((96, 96), np.uint16)
    u[30:90, 30:40] = 1
    u[30:90, 80:90] = 1
    u[80:90, 30:90] = 1
    mask[u > 0] = 9
    ious = reconstruction_ious(mask, 32)
    assert ious[9] < 0.7
    assert all(v > 0.85 for k, v in ious.items() if k != 9)
    finding = _only(_check(mask), "warning")
    assert "not star-convex" in finding.problem
    assert "1 of 5 objects" in finding.problem
    assert "labels 9" in finding.problem


def test_3d_masks():
    shape = (24, 32, 32)
    mask = np.zeros(shape, np.uint16)
    mask[_disk(shape, (12, 10, 10), 6)] = 1
    mask[_disk(shape, (12, 22, 22), 6)] = 2
    assert _check(mask, dims=3) == []
    stats = mask_statistics(mask, 48)
    assert stats.n_objects == 2 and min(stats.ious.values()) > 0.8
    # a 3D U: two pillars joined at the bottom
    u = np.zeros(shape, np.uint16)
    u[2:22, 4:10, 4:28] = 1
    u[2:22, 22:28, 4:28] = 1
    u[16:22, 4:28, 4:28] = 1
    assert mask_statistics(u, 48).ious[1] < 0.7
    assert "binary mask" in _only(_check((mask > 0).astype(np.uint8), dims=3), "error").problem


def test_validate_stardist_reports_mask_problems_once(tmp_path, capsys):
    from conftest import write_tif
    from deepscope.interfaces.cli import main

    rng = np.random.default_rng(0)
    good = _blobs()
    u = good.copy()
    u[40:60, 2:8] = 5
    u[40:60, 56:62] = 5
    u[56:62, 2:62] = 5  # a U-shaped object
    masks = {"good": good, "binary": (good > 0).astype(np.uint16), "empty": 0 * good, "u": u}
    for name, mask in masks.items():
        image = (mask > 0) * 100.0 + rng.normal(10, 2, mask.shape)
        write_tif(tmp_path / "images" / f"{name}.tif", image.astype(np.float32))
        write_tif(tmp_path / "masks" / f"{name}.tif", mask)
    code = main(
        [
            "validate",
            "stardist",
            "--images",
            str(tmp_path / "images"),
            "--masks",
            str(tmp_path / "masks"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    lines = [line for line in out.splitlines() if line.startswith(("ERROR", "WARNING"))]
    by_file = {name: [line for line in lines if f"{name}.tif" in line] for name in masks}
    assert by_file["good"] == []
    assert len(by_file["binary"]) == 1 and "binary mask" in by_file["binary"][0]
    assert len(by_file["empty"]) == 1  # validate's own warning, not repeated
    assert len(by_file["u"]) == 1 and "not star-convex" in by_file["u"][0]
