"""CARE, Noise2Noise and label-free prediction: configs, losses, pairs, train → predict → QC.

Tiny synthetic pairs (smooth blobs; the input is a noisy or transformed version of the
target) and a depth-1 U-Net with 4 base channels, so each training takes about a second.
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
from scipy import ndimage

from conftest import TINY_CONFIG, synthetic_pair, write_tif
from deepscope.config import DataConfig, config_from_dict
from deepscope.data.patches import RandomPatches
from deepscope.data.validation import validate_dataset
from deepscope.errors import ConfigError
from deepscope.interfaces.cli import main
from deepscope.tasks import get_task
from deepscope.tasks.restoration import (
    INITIAL_SCALE,
    describe_shift,
    estimate_shift,
    laplace_nll,
    laplace_scale,
)
from deepscope.workflow.model_folder import load_model_folder
from deepscope.workflow.predict import predict_files
from deepscope.workflow.qc import run_qc
from deepscope.workflow.training import _patch_datasets, train

PATCH_3D = [8, 16, 16]  # anisotropic: thin in Z


def _quiet(_msg: str) -> None:
    pass


def tiny(task: str, three_d: bool = False, **sections: dict[str, Any]) -> Any:
    """A validated tiny config of ``task``; ``sections`` update whole config sections."""
    data = copy.deepcopy(TINY_CONFIG)
    data["task"] = task
    if three_d:
        data["data"] = {"patch_size": PATCH_3D, "spatial_dims": 3}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return config_from_dict(data)


def _blobs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.random(shape), sigma=3)
    return (blobs - blobs.min()) / np.ptp(blobs)


def make_pairs(root: Path, task: str, shape: tuple[int, ...], names: str = "abc") -> tuple:
    """Write (inputs/, targets/) for ``task``: noisy→clean, noisy→noisy, or 'transmitted'→'fluo'."""
    images, targets = root / f"{task}_{len(shape)}d_in", root / f"{task}_{len(shape)}d_tg"
    for i, name in enumerate(names):
        noisy, clean = synthetic_pair(shape, seed=i + 10 * len(shape))
        if task == "n2n":  # a second, independent noisy image of the same signal
            rng = np.random.default_rng(1000 + i)
            clean = np.clip(clean + rng.normal(0, 60, shape), 0, 65535).astype(np.uint16)
        elif task == "labelfree":
            fluo = _blobs(shape, seed=i)
            # 'Transmitted light': edges of the structures on a bright background.
            noisy = (3000 - 800 * ndimage.gaussian_gradient_magnitude(fluo, 1.5) * 10).astype(
                np.float32
            )
            clean = (100 + 1000 * fluo).astype(np.uint16)
        write_tif(images / f"{name}.tif", noisy)
        write_tif(targets / f"{name}.tif", clean)
    return images, targets


# ------------------------------------------------------------------- configs, losses


def test_tasks_are_registered_with_paired_settings() -> None:
    for name in ("care", "n2n", "labelfree"):
        task = get_task(name)
        assert task.needs_targets and task.normalize_targets and task.qc_kind == "restoration"
    assert tiny("care").care.loss == "l1"
    assert tiny("n2n").n2n.loss == "l2"
    assert tiny("labelfree", labelfree={"loss": "l1"}).labelfree.loss == "l1"


@pytest.mark.parametrize(
    ("sections", "words"),
    [
        ({"care": {"probabilistic": True, "loss": "l2"}}, "care.loss must be 'l1'"),
        ({"care": {"probabilistic": True}, "model": {"residual": True}}, "model.residual"),
        ({"training": {"freeze_encoder_epochs": 1}}, "start_from"),
    ],
)
def test_contradictory_settings_are_refused(sections: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        tiny("care", **sections)


def test_probabilistic_care_has_mean_and_scale_outputs() -> None:
    task = get_task("care")(tiny("care", care={"probabilistic": True}))
    assert task.out_channels(2) == 4
    out = np.stack([np.full((4, 4), v, np.float32) for v in (0.5, 0.25, 0.0, 0.0)])
    from deepscope.data.normalize import PercentileNormalizer

    norm = PercentileNormalizer(1, 99, (10.0, 100.0), (110.0, 300.0))
    den = task.denormalize_output(out, norm)
    assert np.allclose(den[0], 60) and np.allclose(den[1], 150)  # means like targets
    scale0 = float(laplace_scale(torch.tensor(0.0)))
    assert np.allclose(den[2], scale0 * 100) and np.allclose(den[3], scale0 * 200)
    assert task.postprocess(den).shape == (2, 4, 4)
    assert set(task.side_outputs(den)) == {"uncertainty"}
    assert get_task("care")(tiny("care")).side_outputs(den[:2]) == {}
    # A new network starts with small scales, so a short training ends calibrated.
    bias = task.build_model(2).head.bias.detach()
    assert torch.allclose(laplace_scale(bias[2:]), torch.tensor(INITIAL_SCALE))


def test_laplace_nll_is_smallest_at_the_true_mean_and_error_scale() -> None:
    torch.manual_seed(0)
    target = torch.randn(4, 1, 16, 16)
    mean = target + 0.3 * torch.randn_like(target)
    err = (target - mean).abs().mean()

    def nll(shift: float, scale: float) -> float:
        raw = torch.full_like(target, float(np.log(np.expm1(scale))))  # softplus⁻¹
        return float(laplace_nll(mean + shift, raw, target))

    best = nll(0.0, float(err))
    assert best < nll(0.5, float(err)) and best < nll(0.0, 2 * float(err))
    assert best < nll(0.0, float(err) / 2)


# -------------------------------------------------------------- pair-aware patches


@pytest.mark.parametrize("patch", [[16, 16], PATCH_3D])
def test_augmentation_moves_input_and_target_together(patch: list[int]) -> None:
    shape = (1, 10, 24, 24)[-(len(patch) + 1) :]
    grids = np.meshgrid(*(np.arange(s) for s in shape[1:]), indexing="ij")
    coded = sum(g * 100 ** (len(grids) - 1 - d) for d, g in enumerate(grids))[None]
    image = coded.astype(np.float32)
    target = 3 * image + 1  # any pixel-wise relation must survive augmentation
    cfg = DataConfig(spatial_dims=len(patch), patch_size=patch)
    ds = RandomPatches([image], [target], patch, 64, cfg, seed=0, augment=True)
    orientations = set()
    for i in range(len(ds)):
        item = ds[i]
        assert torch.equal(item["target"], 3 * item["input"] + 1)
        x = item["input"][0].numpy()
        orientations.add(tuple(np.sign(np.diff(x, axis=a).ravel()[0]) for a in range(x.ndim)))
    assert len(orientations) > 1, "no flips or rotations were applied"


# ------------------------------------------------------------- registration check


def _shifted_pair(root: Path, dy: int, dx: int) -> tuple[Path, Path]:
    big = 200 + 2000 * _blobs((96, 96), seed=5)
    noisy = big + np.random.default_rng(1).normal(0, 60, big.shape)
    images, targets = root / f"reg_{dy}_{dx}_in", root / f"reg_{dy}_{dx}_tg"
    write_tif(images / "p.tif", noisy[16:80, 16:80].astype(np.float32))
    # The target's content lies dy pixels lower and dx pixels further right.
    write_tif(targets / "p.tif", big[16 - dy : 80 - dy, 16 - dx : 80 - dx].astype(np.float32))
    return images, targets


def test_estimate_shift_finds_direction_and_amount(tmp_path: Path) -> None:
    base = _blobs((80, 80), seed=3)
    moved = np.zeros_like(base)
    moved[4:, :-3] = base[:-4, 3:]  # content 4 px down, 3 px left
    shift, correlation = estimate_shift(base[None, 8:72, 8:72], moved[None, 8:72, 8:72])
    assert tuple(shift) == (4, -3) and correlation > 0.9
    assert describe_shift(shift) == "4 px down, 3 px left"
    volume = _blobs((24, 64, 64), seed=4)
    shift, _ = estimate_shift(volume[None, 4:20, 8:56, 8:56], volume[None, 2:18, 4:52, 11:59])
    assert tuple(shift) == (2, 4, -3)
    assert describe_shift(np.array([2, 0, -1])) == "2 px towards the last plane, 1 px left"


def test_validate_warns_on_a_shifted_pair_only(tmp_path: Path) -> None:
    config = tiny("care")
    task = get_task("care")(config)
    aligned = validate_dataset(
        "care", config, *_shifted_pair(tmp_path, 0, 0), extra_checks=task.extra_checks
    )
    assert aligned.ok and not [w for w in aligned.warnings if "misaligned" in w.problem]
    shifted = validate_dataset(
        "care", config, *_shifted_pair(tmp_path, 5, -4), extra_checks=task.extra_checks
    )
    (warning,) = [w for w in shifted.warnings if "misaligned" in w.problem]
    assert "5 px down, 4 px left" in warning.problem and warning.path.name == "p.tif"
    assert "register" in warning.fix


def test_validate_warns_when_a_target_shows_another_field(tmp_path: Path) -> None:
    field = 200 + 2000 * _blobs((256, 256), seed=5)
    noisy = field + np.random.default_rng(1).normal(0, 600, field.shape)
    other = 200 + 2000 * _blobs((256, 256), seed=11)  # another field of view
    images, targets = tmp_path / "in", tmp_path / "tg"
    write_tif(images / "p.tif", noisy.astype(np.float32))
    write_tif(images / "q.tif", noisy.astype(np.float32))
    write_tif(targets / "p.tif", other.astype(np.float32))
    write_tif(targets / "q.tif", field.astype(np.float32))  # its own field: no warning
    for name in ("care", "n2n", "labelfree"):
        config = tiny(name)
        task = get_task(name)(config)
        report = validate_dataset(name, config, images, targets, extra_checks=task.extra_checks)
        found = [w for w in report.warnings if "share little structure" in w.problem]
        if name == "labelfree":  # transmitted light and fluorescence look unalike anyway
            assert not found
        else:
            (warning,) = found
            assert warning.path.name == "p.tif" and "another image" in warning.problem


def test_cli_validate_reports_misalignment(tmp_path: Path, capsys) -> None:
    images, targets = _shifted_pair(tmp_path, 0, 6)
    assert (
        main(
            [
                "validate",
                "n2n",
                "--images",
                str(images),
                "--targets",
                str(targets),
                "--patch-size",
                "32",
                "32",
            ]
        )
        == 0
    )
    assert "6 px right" in capsys.readouterr().out


# ------------------------------------------------------- train → predict → QC


CASES = [
    ("care", False, {"care": {"probabilistic": True}}),
    ("care", True, {"care": {"loss": "l2"}}),
    ("n2n", False, {}),
    ("n2n", True, {}),
    ("labelfree", False, {"labelfree": {"loss": "l1"}}),
    ("labelfree", True, {}),
]


@pytest.mark.parametrize(
    ("task", "three_d", "sections"), CASES, ids=[f"{t}-{'3d' if d else '2d'}" for t, d, _ in CASES]
)
def test_train_predict_qc(tmp_path: Path, task: str, three_d: bool, sections: dict) -> None:
    shape = (8, 48, 48) if three_d else (64, 64)
    images, targets = make_pairs(tmp_path, task, shape)
    config = tiny(task, three_d, **sections)
    result = train(config, images, tmp_path / "run", targets, show_bar=False, log=_quiet)
    model = load_model_folder(result.model_dir)
    info = model.info
    probabilistic = task == "care" and config.care.probabilistic
    assert info["task"] == task and info["spatial_dims"] == (3 if three_d else 2)
    assert info["out_channels"] == (2 if probabilistic else 1)
    assert model.target_normalizer is not None  # targets normalised with their own stats

    out = tmp_path / "pred"
    written = predict_files(model, images, out)
    assert [p.name for p in written] == ["a.tif", "b.tif", "c.tif"]
    result_a = tifffile.imread(out / "a.tif")
    assert result_a.shape == shape and np.all(np.isfinite(result_a))
    provenance = json.loads((out / "provenance.json").read_text())
    if probabilistic:
        unc = tifffile.imread(out / "a_uncertainty.tif")
        assert unc.shape == shape and unc.min() > 0
        assert provenance["files"][0]["uncertainty"] == "a_uncertainty.tif"
        import deepscope

        outputs = deepscope.predict_image_outputs(
            model, tifffile.imread(images / "a.tif"), "ZYX" if three_d else "YX"
        )
        assert set(outputs) == {"result", "uncertainty"}
        np.testing.assert_allclose(outputs["result"], result_a, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(outputs["uncertainty"], unc, rtol=1e-5, atol=1e-6)
    else:
        assert not list(out.glob("*_uncertainty.tif"))

    qc_in, qc_tg = make_pairs(tmp_path / "qc", task, shape, names="q")
    summary = run_qc(model, qc_in, qc_tg, tmp_path / "qc_out")
    for method in ("model", "input", "gaussian"):
        assert -1.0 <= summary[method]["pearson_r"] <= 1.0
    assert (tmp_path / "qc_out" / "report.html").is_file()
    assert ("uncertainty" in summary) == probabilistic
    if probabilistic:
        calib = summary["uncertainty"]
        assert calib["mean_predicted_error"] > 0 and calib["mean_actual_error"] > 0
        assert len(calib["bins"]) >= 2
        figures = {p.name for p in (tmp_path / "qc_out" / "figures").iterdir()}
        assert "calibration.png" in figures
        assert any(name.endswith("_uncertainty.png") for name in figures)
        assert "Uncertainty</h2>" in (tmp_path / "qc_out" / "report.html").read_text()


@pytest.mark.parametrize("per_image", [False, True])
def test_per_image_normalisation_applies_to_targets_too(tmp_path: Path, per_image: bool) -> None:
    # Two pairs whose targets differ 10x in brightness (independently stretched images).
    images, targets = tmp_path / "in", tmp_path / "tg"
    for i, (name, gain) in enumerate((("a", 1), ("b", 10))):
        noisy, clean = synthetic_pair((64, 64), seed=i)
        write_tif(images / f"{name}.tif", noisy)
        write_tif(targets / f"{name}.tif", (clean.astype(np.float32) * gain).astype(np.float32))
    config = tiny("care", data={"normalize_per_image": per_image, "val_fraction": 0.3})
    task = get_task("care")(config)
    report = task.check_training_data(images, targets)
    (tmp_path / "run").mkdir()
    data = _patch_datasets(task, report, tmp_path / "run", False, _quiet)
    # (the split cuts each image into a training and a validation part)
    highs = [float(np.percentile(t, 99.8)) for t in data.train.targets + data.val.targets]
    assert data.target_normalizer.per_image is per_image
    if per_image:  # each target's own 99.8th percentile maps to 1
        assert all(0.5 < h < 1.5 for h in highs), highs
    else:  # one map for all: the bright target stays ~10x the dim one
        assert max(highs) / min(highs) > 5


def test_resume_continues_a_care_training(tmp_path: Path) -> None:
    images, targets = make_pairs(tmp_path, "care", (64, 64))
    config = tiny("care", training={"epochs": 1})
    train(config, images, tmp_path / "run", targets, show_bar=False, log=_quiet)
    longer = tiny("care", training={"epochs": 2})
    result = train(
        longer, images, tmp_path / "run", targets, resume=True, show_bar=False, log=_quiet
    )
    assert result.epochs_trained == 2
    info = json.loads((result.model_dir / "deepscope_model.json").read_text())
    assert info["training"]["epochs_trained"] == 2
