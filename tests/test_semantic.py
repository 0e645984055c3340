"""Semantic segmentation: masks, class weights, losses, instances, train → predict → QC.

Tiny synthetic images (bright disks and dim squares on a dark, noisy background) and a
depth-1 U-Net with 4 base channels, so each training takes a second or two.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch

from conftest import TINY_CONFIG, write_tif
from deepscope.config import DataConfig, config_from_dict
from deepscope.data.patches import RandomPatches
from deepscope.data.validation import validate_dataset
from deepscope.errors import ConfigError
from deepscope.interfaces.cli import main
from deepscope.tasks import get_task
from deepscope.tasks.semantic import (
    SemanticSettings,
    boundary_classes,
    compute_class_weights,
    grow_from_outlines,
    instances_from_probabilities,
    mask_to_classes,
    segmentation_loss,
    watershed_split,
)
from deepscope.workflow import semantic_thresholds
from deepscope.workflow.model_folder import load_model_folder
from deepscope.workflow.predict import predict_files
from deepscope.workflow.qc import run_qc
from deepscope.workflow.qc_segmentation import (
    adapted_rand,
    confusion_matrix,
    scores_from_confusion,
    threshold_curve,
)
from deepscope.workflow.training import train


def _quiet(_msg: str) -> None:
    pass


def tiny(three_d: bool = False, **semantic: Any) -> Any:
    """A validated tiny semantic config."""
    data = copy.deepcopy(TINY_CONFIG)
    data["task"] = "semantic"
    if three_d:
        data["data"] = {"patch_size": [8, 16, 16], "spatial_dims": 3}
    data["semantic"] = semantic
    return config_from_dict(data)


def scene(shape: tuple[int, ...], seed: int, kinds: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(image uint16, instance labels): disks (kind 1, bright) and squares (kind 2, dim)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint16)
    kind = np.zeros(shape, np.uint8)
    grid = np.indices(shape)
    for n in range(1, 7):
        centre = [rng.integers(4, s - 4) if s > 8 else s // 2 for s in shape]
        r = rng.integers(3, 6)
        k = 1 + (n % kinds)
        if k == 1:
            inside = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= r * r
        else:
            inside = np.all([np.abs(g - c) <= r for g, c in zip(grid, centre, strict=True)], 0)
        labels[inside & (labels == 0)] = n
        kind[inside & (kind == 0)] = k
    image = 100.0 + np.where(kind == 1, 900.0, 0) + np.where(kind == 2, 400.0, 0)
    image = image + rng.normal(0, 40, shape)
    return np.clip(image, 0, 65535).astype(np.uint16), labels if kinds == 1 else kind


def make_data(root: Path, shape: tuple[int, ...], names: str, how: str) -> tuple[Path, Path]:
    """Write images/ and masks/: ``how`` = "binary255", "classes" (3-class) or "instances"."""
    images, masks = root / f"images_{how}", root / f"masks_{how}"
    for i, name in enumerate(names):
        img, lab = scene(shape, seed=i + 7 * len(names), kinds=2 if how == "classes" else 1)
        write_tif(images / f"{name}.tif", img)
        if how == "binary255":
            lab = np.where(lab > 0, 255, 0).astype(np.uint8)
        write_tif(masks / f"{name}.tif", lab)
    return images, masks


# --------------------------------------------------------------------------- masks


def test_binary_255_mask_is_mapped_with_a_message() -> None:
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 255
    classes, note = mask_to_classes(mask, SemanticSettings())
    assert set(np.unique(classes)) == {0, 1}
    assert classes[5, 5] == 1 and classes.dtype == np.uint8
    assert note is not None and "255 → class 1" in note
    # a 0/1 mask is already classes: no message
    assert mask_to_classes((mask > 0).astype(np.uint8), SemanticSettings())[1] is None


def test_too_many_values_name_the_fix() -> None:
    mask = np.arange(16, dtype=np.uint16).reshape(4, 4)
    with pytest.raises(ValueError, match="--classes 16") as err:
        mask_to_classes(mask, SemanticSettings())
    assert "--boundary" in str(err.value)  # many values: probably an instance mask


def test_boundary_classes_separate_touching_objects() -> None:
    lab = np.zeros((8, 12), np.uint16)
    lab[1:7, 1:6] = 1
    lab[1:7, 6:11] = 2  # touches object 1
    cls = boundary_classes(lab)
    assert cls[0, 0] == 0
    assert cls[3, 5] == 1 and cls[3, 6] == 1  # both sides of the contact are boundary
    assert cls[3, 3] == 2 and cls[3, 8] == 2
    # the interiors are apart, so instances come back as two objects
    probs = np.stack([(cls == c).astype(np.float32) for c in range(3)])
    settings = SemanticSettings(mode="boundary")
    inst = instances_from_probabilities(probs, settings, cls)
    assert inst.max() == 2 and inst[3, 5] != inst[3, 6]


def test_class_weights_favour_rare_classes() -> None:
    maps = [np.array([[0, 0, 0, 1]] * 4), np.zeros((4, 4), int)]
    weights, shares = compute_class_weights(maps, 3)
    assert shares == pytest.approx([7 / 8, 1 / 8, 0.0])
    assert weights.mean() == pytest.approx(1.0)
    assert weights[1] > weights[0]
    assert weights[1] / weights[0] == pytest.approx(np.sqrt(7), rel=1e-6)
    assert weights[2] == pytest.approx(weights[1])  # absent class: the largest weight


def test_loss_and_watershed() -> None:
    target = torch.zeros((1, 8, 8), dtype=torch.long)
    target[0, 2:5, 2:5] = 1
    good = torch.stack([(target == 0).float(), (target == 1).float()], 1) * 20 - 10
    bad = -good
    w = torch.tensor([0.5, 1.5])
    assert segmentation_loss(good, target, w) < 0.05 < segmentation_loss(bad, target, w)
    # two overlapping disks form one region; the watershed splits them
    yy, xx = np.indices((40, 60))
    fg = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 100) | ((yy - 20) ** 2 + (xx - 37) ** 2 <= 100)
    assert watershed_split(fg).max() == 2


def test_metrics_from_confusion_and_threshold_curve() -> None:
    truth = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, 1, 1, 1, 0])
    cm = confusion_matrix(truth, pred, 2)
    sc = scores_from_confusion(cm, ["bg", "fg"])
    assert sc["iou"] == {"bg": pytest.approx(0.5), "fg": pytest.approx(0.5)}
    assert sc["dice"]["fg"] == pytest.approx(2 / 3)
    assert sc["pixel_accuracy"] == pytest.approx(4 / 6)
    pos = np.zeros(200, int)
    neg = np.zeros(200, int)
    pos[140] = 10  # class-1 pixels at probability 0.70
    neg[60] = 10  # class-0 pixels at probability 0.30
    curve = threshold_curve(pos, neg, [0.2, 0.5, 0.8])
    assert [r["mean_iou"] for r in curve] == pytest.approx([0.25, 1.0, 0.25])
    assert adapted_rand(np.array([[1, 1, 2, 2]]), np.array([[5, 5, 6, 6]])) == pytest.approx(0)


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="3 classes"):
        tiny(mode="boundary", classes=2)
    with pytest.raises(ConfigError, match="one weight per class"):
        tiny(class_weights=[1.0, 2.0, 3.0])
    data = copy.deepcopy(TINY_CONFIG)
    data.update(task="semantic")
    data["data"]["intensity_jitter"] = 0.1  # allowed: it changes images, never masks
    assert config_from_dict(data).data.intensity_jitter == 0.1
    assert tiny(mode="boundary").semantic.n_classes == 3
    assert get_task("semantic")(tiny(classes=4)).out_channels(1) == 4


def test_patches_keep_masks_integer() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((1, 40, 40), dtype=np.float32)
    mask = rng.integers(0, 3, (1, 40, 40)).astype(np.float32)
    ds = RandomPatches([image], [mask], (32, 32), 8, DataConfig(patch_size=[32, 32]), seed=1)
    for i in range(8):
        t = ds[i]["target"].numpy()
        assert np.array_equal(t, np.round(t)) and set(np.unique(t)) <= {0.0, 1.0, 2.0}


# ----------------------------------------------------------------------- validation


def test_mask_validation_errors(tmp_path: Path) -> None:
    images, masks = tmp_path / "im", tmp_path / "mk"
    img, lab = scene((32, 32), seed=1)
    for name in ("rgb", "float", "small", "empty", "ok", "picture", "objects"):
        write_tif(images / f"{name}.tif", img)
    rgb = np.stack([(lab > 0) * 255] * 3, axis=-1).astype(np.uint8)
    masks.mkdir(parents=True)
    tifffile.imwrite(masks / "rgb.tif", rgb, photometric="rgb")
    write_tif(masks / "float.tif", (lab > 0).astype(np.float32) * 0.7)
    write_tif(masks / "small.tif", (lab[:16, :16] > 0).astype(np.uint8))
    write_tif(masks / "empty.tif", np.zeros((32, 32), np.uint8))
    write_tif(masks / "ok.tif", (lab > 0).astype(np.uint8) * 255)
    write_tif(masks / "picture.tif", img)  # an image in the masks folder
    from skimage.measure import label

    write_tif(masks / "objects.tif", label(lab > 0).astype(np.uint16))  # an instance mask
    config = tiny()
    task = get_task("semantic")(config)
    report = validate_dataset("semantic", config, images, masks, extra_checks=task.extra_checks)
    by_file = {f.path.name: f for f in report.findings if f.path is not None}
    assert by_file["rgb.tif"].severity == "error" and "channels" in by_file["rgb.tif"].problem
    assert by_file["float.tif"].severity == "error"
    assert "fractional" in by_file["float.tif"].problem
    assert "swapped" in by_file["picture.tif"].fix and "picture" in by_file["picture.tif"].problem
    assert "--boundary" in by_file["objects.tif"].problem  # 3 objects: not a picture
    small = [f for f in report.errors if "16 × 16" in f.problem]
    assert small, report.format()
    assert any(f.path.name == "empty.tif" and f.severity == "warning" for f in report.warnings)
    assert [i.name for i, _ in report.items] == ["empty.tif", "ok.tif"]
    summary = "\n".join(task.data_summary())
    assert "255 → class 1" in summary and "class shares" in summary


# --------------------------------------------------------------- train → predict → qc


def test_binary_2d_train_predict_instances_qc_cli(tmp_path: Path, capsys) -> None:
    images, masks = make_data(tmp_path, (48, 48), "abc", "binary255")
    cfg = tmp_path / "tiny.yaml"
    data = copy.deepcopy(TINY_CONFIG)
    data["task"] = "semantic"
    cfg.write_text(json.dumps(data))
    run = tmp_path / "run"
    assert main(["validate", "semantic", "--images", str(images), "--masks", str(masks),
                 "--config", str(cfg)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "255 → class 1" in out and "class shares" in out
    assert (
        main(["train", "semantic", "--images", str(images), "--masks", str(masks), "--out",
              str(run), "--config", str(cfg)])
        == 0
    )  # fmt: skip
    model = run / "model"
    qc = tmp_path / "qc"
    assert main(["qc", str(model), "--images", str(images), "--masks", str(masks), "--out",
                 str(qc)]) == 0  # fmt: skip
    summary = json.loads((qc / "summary.json").read_text())
    for key in ("iou", "dice", "mean_iou", "mean_dice", "adapted_rand_error", "pixel_accuracy"):
        assert key in summary
    assert set(summary["iou"]) == {"background", "foreground"}
    assert 0.0 <= summary["mean_iou"] <= 1.0
    assert (qc / "report.html").exists() and (qc / "metrics.csv").exists()
    assert (qc / "figures" / "confusion_matrix.png").exists()
    assert (qc / "figures" / "threshold_curve.png").exists()
    tuned = json.loads((model / "thresholds.json").read_text())
    assert tuned["foreground_threshold"] == summary["threshold"]["best"]
    assert "note" not in summary["threshold"]
    # QC again on the same images: the threshold was chosen on them, and it says so
    capsys.readouterr()
    assert main(["qc", str(model), "--images", str(images), "--masks", str(masks), "--out",
                 str(tmp_path / "qc2")]) == 0  # fmt: skip
    again = json.loads((tmp_path / "qc2" / "summary.json").read_text())["threshold"]
    assert again["used"] == tuned["foreground_threshold"]
    assert again["chosen_on_these_images"] == ["a.tif", "b.tif", "c.tif"]
    assert "optimistic" in again["note"] and "optimistic" in capsys.readouterr().out
    assert "optimistic" in (tmp_path / "qc2" / "report.html").read_text()
    pred = tmp_path / "pred"
    assert main(["predict", str(model), "--input", str(images), "--out", str(pred),
                 "--instances", "--probabilities"]) == 0  # fmt: skip
    classes = tifffile.imread(pred / "a.tif")
    assert classes.dtype == np.uint8 and classes.shape == (48, 48)
    assert set(np.unique(classes)) <= {0, 1}
    with tifffile.TiffFile(pred / "a.tif") as tif:  # Fiji shows 0-1, not 0-255 (black)
        assert (tif.imagej_metadata["min"], tif.imagej_metadata["max"]) == (0.0, 1.0)
    with tifffile.TiffFile(pred / "a_probabilities.tif") as tif:  # intensities: viewer's choice
        assert "min" not in (tif.imagej_metadata or {})
    blocks = tmp_path / "pred_blocks"  # an image over the memory limit: block by block
    assert main(["predict", str(model), "--input", str(images), "--out", str(blocks),
                 "--memory-limit", "0.000001"]) == 0  # fmt: skip
    assert "predicted_in_blocks" in json.loads((blocks / "provenance.json").read_text())["files"][0]
    np.testing.assert_array_equal(tifffile.imread(blocks / "a.tif"), classes)
    with tifffile.TiffFile(blocks / "a.tif") as tif:
        assert (tif.imagej_metadata["min"], tif.imagej_metadata["max"]) == (0.0, 1.0)
    inst = tifffile.imread(pred / "a_instances.tif")
    assert inst.dtype == np.uint16 and inst.shape == (48, 48)
    probs = tifffile.imread(pred / "a_probabilities.tif")
    assert probs.shape == (2, 48, 48)
    assert np.allclose(probs.sum(0), 1.0, atol=1e-4)
    # the stored threshold is what predict used
    t = tuned["foreground_threshold"]
    assert np.array_equal(classes, (probs[1] > t).astype(np.uint8))
    # in memory, from Python: the same three results from one call
    import deepscope

    outputs = deepscope.predict_image_outputs(
        model, tifffile.imread(images / "a.tif"), instances=True, probabilities=True
    )
    assert set(outputs) == {"result", "instances", "probabilities"}
    np.testing.assert_array_equal(outputs["result"], classes)
    np.testing.assert_array_equal(outputs["instances"], inst)
    np.testing.assert_allclose(outputs["probabilities"], probs, atol=1e-6)
    assert set(deepscope.predict_image_outputs(model, tifffile.imread(images / "a.tif"))) == {
        "result"
    }
    # 8-bit prediction: calibrated after training on the validation images, nearly the same
    from deepscope.engine import int8

    if int8.int8_supported():
        assert int8.load_calibration(model)["made_from"] == "the validation images"
        fast = tmp_path / "pred8"
        assert main(["predict", str(model), "--input", str(images), "--out", str(fast),
                     "--int8", "--probabilities"]) == 0  # fmt: skip
        probs8 = tifffile.imread(fast / "a_probabilities.tif")
        assert np.abs(probs8 - probs).max() < 0.1
        assert (tifffile.imread(fast / "a.tif") == classes).mean() > 0.97


def test_three_class_3d(tmp_path: Path) -> None:
    images, masks = make_data(tmp_path, (8, 32, 32), "ab", "classes")
    config = tiny(three_d=True, classes=3, class_names=["bg", "disk", "square"])
    run = train(config, images, tmp_path / "run", masks, show_bar=False, log=_quiet)
    model = load_model_folder(run.model_dir)
    assert model.info["out_channels"] == 3
    written = predict_files(model, images, tmp_path / "pred")
    result = tifffile.imread(written[0])
    assert result.shape == (8, 32, 32) and result.max() <= 2
    summary = run_qc(model, images, masks, tmp_path / "qc")
    assert set(summary["iou"]) == {"bg", "disk", "square"}
    assert "threshold" not in summary  # no threshold curve for 3 classes
    assert not (run.model_dir / "thresholds.json").exists()
    assert np.asarray(summary["confusion_matrix"]).shape == (3, 3)


def test_boundary_mode_gives_instances(tmp_path: Path) -> None:
    images, masks = make_data(tmp_path, (48, 48), "abc", "instances")
    config = tiny(mode="boundary")
    messages: list[str] = []
    run = train(config, images, tmp_path / "run", masks, show_bar=False, log=messages.append)
    assert any("class weights" in m for m in messages)
    model = load_model_folder(run.model_dir)
    model.config.semantic.predict_instances = True
    predict_files(model, images, tmp_path / "pred")
    inst = tifffile.imread(tmp_path / "pred" / "a_instances.tif")
    assert inst.shape == (48, 48) and inst.dtype == np.uint16
    summary = run_qc(model, images, masks, tmp_path / "qc")
    assert set(summary["iou"]) == {"background", "boundary", "interior"}
    assert summary["adapted_rand_error"] is None or 0.0 <= summary["adapted_rand_error"] <= 1.0


# ------------------------------------------------------------------ outlines (EM style)


def _three_cells() -> tuple[np.ndarray, np.ndarray]:
    """(cell probability, class map) of three cells in a row separated by two membranes.

    The first membrane has a gap of probability 0.75 (a faint spot of membrane); the third
    cell is predicted less surely (0.92) than the others (0.97).
    """
    prob = np.full((20, 60), 0.97, np.float32)
    prob[:, 41:] = 0.92
    prob[:, [20, 40]] = 0.02
    prob[8:12, 20] = 0.75
    classes = np.ones((20, 60), np.uint8)
    classes[:, [20, 40]] = 0
    return prob, classes


def test_outlines_grow_cells_through_a_gap_in_the_membrane() -> None:
    prob, classes = _three_cells()
    truth = instances_from_probabilities(  # the truth's own cells: 3 components
        np.stack([1 - classes, classes]).astype(np.float32), SemanticSettings(), classes
    )
    assert truth.max() == 3
    probs = np.stack([1 - prob, prob])
    merged = instances_from_probabilities(probs, SemanticSettings(), (prob > 0.5).astype(np.uint8))
    assert merged.max() == 2  # connected regions: the gap joins the first two cells
    grown = grow_from_outlines(prob, 0.9)
    assert grown.max() == 3 and grown.min() == 1  # every pixel belongs to a cell
    assert adapted_rand(truth, grown) == pytest.approx(0.0)
    assert adapted_rand(truth, merged) > 0.1
    assert grow_from_outlines(prob, 0.99).max() == 0  # no pixel sure enough: no cell
    speck = np.zeros((20, 20), np.float32)
    speck[5:7, 5:7] = 1.0  # 4 pixels: too small to start a cell
    assert grow_from_outlines(speck, 0.5).max() == 0
    settings = SemanticSettings(instances="outlines", seed_threshold=0.9)
    via_task = instances_from_probabilities(probs, settings, (prob > 0.5).astype(np.uint8))
    assert via_task.max() == 3


def test_outlines_config_checks() -> None:
    with pytest.raises(ConfigError, match="two classes"):
        tiny(instances="outlines", classes=3)
    with pytest.raises(ConfigError, match="two classes"):
        tiny(instances="outlines", mode="boundary")
    with pytest.raises(ConfigError, match="outlines"):
        tiny(seed_threshold=0.8)
    assert tiny(instances="outlines", seed_threshold=0.8).semantic.seed_threshold == 0.8


def test_seed_threshold_is_chosen_by_adapted_rand(monkeypatch) -> None:
    prob, classes = _three_cells()
    probs = np.stack([1 - prob, prob])
    monkeypatch.setattr(semantic_thresholds, "predict_raw", lambda *_a, **_k: probs)
    model = type("M", (), {"config": tiny(instances="outlines")})()
    result = semantic_thresholds.optimize_seed_threshold(
        model, [np.zeros((1, 20, 60), np.float32)], [classes[None]]
    )
    by = result["by_threshold"]
    # low thresholds leak through the gap, 0.95 leaves the third cell without a seed
    assert by["0.5"] > 0.1 and by["0.7"] > 0.1 and by["0.95"] > 0.1
    assert by["0.8"] == pytest.approx(0.0) and by["0.9"] == pytest.approx(0.0)
    assert result["seed_threshold"] == 0.9  # ties go to the surer seeds
    assert result["images"] == 1
    empty = semantic_thresholds.optimize_seed_threshold(
        model, [np.zeros((1, 20, 60), np.float32)], [np.zeros((1, 20, 60), np.uint8)]
    )
    assert empty["seed_threshold"] is None


def membrane_data(root: Path, names: str) -> tuple[Path, Path]:
    """EM-like images: cells (bright) separated by dark one-to-two-pixel membranes."""
    from skimage.segmentation import find_boundaries

    images, masks = root / "em_images", root / "em_masks"
    for i, name in enumerate(names):
        rng = np.random.default_rng(i)
        seeds = np.zeros((48, 48), np.int32)
        for n, (y, x) in enumerate(rng.integers(0, 48, (6, 2)), start=1):
            seeds[y, x] = n
        from skimage.segmentation import watershed

        cells = watershed(np.zeros((48, 48)), seeds)
        membrane = find_boundaries(cells, mode="inner")
        image = np.where(membrane, 40.0, 200.0) + rng.normal(0, 10, (48, 48))
        write_tif(images / f"{name}.tif", np.clip(image, 0, 255).astype(np.uint8))
        write_tif(masks / f"{name}.tif", np.where(membrane, 0, 255).astype(np.uint8))
    return images, masks


def test_outlines_seed_threshold_tuned_in_training_kept_by_qc_used_by_predict(
    tmp_path: Path,
) -> None:
    images, masks = membrane_data(tmp_path, "abcd")
    config = tiny(instances="outlines", class_names=["membrane", "cell"])
    messages: list[str] = []
    run = train(config, images, tmp_path / "run", masks, show_bar=False, log=messages.append)
    tuned = json.loads((run.model_dir / "thresholds.json").read_text())
    assert tuned["seed_threshold"] in semantic_thresholds.SEED_THRESHOLDS
    assert "validation" in tuned["seed_threshold_chosen_by"]
    assert any(m.startswith("seed threshold:") for m in messages), messages
    model = load_model_folder(run.model_dir)
    assert model.task.seed_threshold is None  # applied at prediction, from the file
    run_qc(model, images, masks, tmp_path / "qc")
    after_qc = json.loads((run.model_dir / "thresholds.json").read_text())
    assert after_qc["seed_threshold"] == tuned["seed_threshold"]  # QC adds, keeps the rest
    assert "foreground_threshold" in after_qc
    assert main(["predict", str(run.model_dir), "--input", str(images), "--out",
                 str(tmp_path / "pred"), "--instances", "--tta"]) == 0  # fmt: skip
    loaded = load_model_folder(run.model_dir)
    from deepscope.workflow.predict import apply_tuned_settings

    apply_tuned_settings(loaded)
    assert loaded.task.seed_threshold == tuned["seed_threshold"]
    provenance = json.loads((tmp_path / "pred" / "provenance.json").read_text())
    assert provenance["test_time_augmentation"] is True
    inst = tifffile.imread(tmp_path / "pred" / "a_instances.tif")
    assert inst.shape == (48, 48)
