"""Classification: data formats, checks, backbones, transfer/fine-tuning, train → predict → QC.

Tiny synthetic classes (bright vs dim blobs, discs vs squares) and tiny networks.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from deepscope.config import config_from_dict
from deepscope.data import classes as cdata
from deepscope.engine.models import UNet, build_model
from deepscope.errors import DeepscopeError
from deepscope.interfaces.cli import main
from deepscope.tasks import get_task
from deepscope.workflow import transfer
from deepscope.workflow.model_folder import load_model_folder, save_model_folder
from deepscope.workflow.training import ValidationFailed, train

TINY = {
    "task": "classify",
    "model": {"depth": 2, "base_channels": 4, "dropout": 0.0},
    "classify": {"image_size": [16, 16]},
    "training": {
        "epochs": 4,
        "batch_size": 16,
        "learning_rate": 0.02,
        "checkpoint_every": 1,
        "precision": "32",
        "seed": 0,
    },
}


def _cfg(**changes):
    data = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config_from_dict(data)


def _blob(rng, size, bright):
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 6) ** 2))
    level = 200 if bright else 60
    return np.clip(20 + level * blob + rng.normal(0, 5, blob.shape), 0, 255).astype(np.uint8)


def write_class_folders(root: Path, counts: dict[str, int], seed=0, rgb=False) -> Path:
    """``root/<class>/<class>_i.tif``: 'bright' and 'dim' blobs of varying size."""
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = _blob(rng, int(rng.integers(14, 22)), name != "dim")
            if rgb:
                img = np.stack([img, img // 2, img], axis=-1)
            tifffile.imwrite(root / name / f"{name}_{i}.tif", img)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny classifier trained on bright vs dim blobs (shared by several tests)."""
    tmp = tmp_path_factory.mktemp("cls")
    images = write_class_folders(tmp / "train", {"bright": 24, "dim": 24})
    test = write_class_folders(tmp / "test", {"bright": 8, "dim": 8}, seed=1)
    result = train(_cfg(), images, tmp / "run", show_bar=False, log=lambda s: None)
    return result, test


# ------------------------------------------------------------------------ data formats


def test_folder_csv_and_npz_formats_read_the_same_classes(tmp_path):
    root = write_class_folders(tmp_path / "f", {"a": 3, "b": 4})
    by_folder = cdata.load_labelled(root)
    assert by_folder.class_names == ["a", "b"]
    assert by_folder.counts() == {"a": 3, "b": 4}
    assert all(im.shape[0] == 1 for im in by_folder.images)

    rows = [("f/a/a_0.tif", "a", "s1"), ("f/a/a_1.tif", "a", "s1"), ("f/b/b_0.tif", "b", "s2")]
    with (tmp_path / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "group"])
        w.writerows(rows)
    by_csv = cdata.load_labelled(tmp_path / "labels.csv")
    assert by_csv.class_names == ["a", "b"] and by_csv.labels.tolist() == [0, 0, 1]
    assert by_csv.has_groups and by_csv.groups == ["s1", "s1", "s2"]

    rgb = np.random.default_rng(0).integers(0, 255, (6, 20, 20, 3), dtype=np.uint8)
    np.savez(
        tmp_path / "d.npz",
        images=rgb,
        labels=np.array(["x", "y", "x", "y", "x", "y"]),
        source=np.array([f"slide{i // 2}.jpg:0,0,9,9" for i in range(6)]),
    )
    by_npz = cdata.load_labelled(tmp_path / "d.npz")
    assert by_npz.class_names == ["x", "y"]
    assert by_npz.images[0].shape == (3, 20, 20)
    assert np.array_equal(by_npz.images[1][0], rgb[1, :, :, 0])
    assert by_npz.groups[:3] == ["slide0.jpg", "slide0.jpg", "slide1.jpg"]

    np.savez(tmp_path / "cf.npz", images=np.zeros((4, 2, 12, 12)), labels=[0, 1, 0, 1])
    assert cdata.load_labelled(tmp_path / "cf.npz").images[0].shape == (2, 12, 12)


def test_fit_to_size_resizes_or_crops_and_pads():
    img = np.arange(2 * 10 * 30, dtype=np.float32).reshape(2, 10, 30)
    assert cdata.fit_to_size(img, [16, 16], "resize").shape == (2, 16, 16)
    crop = cdata.fit_to_size(img, [8, 8], "crop")
    assert np.array_equal(crop, img[:, 1:9, 11:19])
    assert cdata.fit_to_size(img, [16, 16], "crop").shape == (2, 16, 16)


def test_group_split_keeps_groups_whole_and_stratified_split_keeps_classes():
    labels = np.array([0, 1] * 20)
    groups = [f"g{i // 4}" for i in range(40)]
    tr, va, how = cdata.split_indices(labels, groups, 0.2, seed=0)
    assert not {groups[i] for i in tr} & {groups[i] for i in va}
    assert "groups" in how and len(va) > 0
    tr, va, _ = cdata.split_indices(labels, None, 0.2, seed=0)
    assert sorted(set(labels[va])) == [0, 1] and len(va) == 8


# -------------------------------------------------------------------------- validate


def _findings(report, severity):
    return [f.problem for f in report.findings if f.severity == severity]


def test_validate_warns_on_imbalance_and_few_images(tmp_path):
    root = write_class_folders(tmp_path, {"common": 24, "rare": 4})
    task = get_task("classify")(_cfg())
    report = task.check_training_data(root)
    assert report.ok
    warnings = " ".join(_findings(report, "warning"))
    assert "imbalanced" in warnings and "'rare' has only 4 images" in warnings
    assert report.summary["classes"] == {"common": 24, "rare": 4}
    assert task.config.classify.class_names == ["common", "rare"]


def test_validate_errors_name_the_problem(tmp_path):
    task = get_task("classify")(_cfg())
    one = write_class_folders(tmp_path / "one", {"only": 5})
    assert "at least 2" in " ".join(_findings(task.check_training_data(one), "error"))
    single = write_class_folders(tmp_path / "single", {"a": 5, "b": 1})
    assert "class 'b' has 1 usable image" in " ".join(
        _findings(task.check_training_data(single), "error")
    )
    mixed = write_class_folders(tmp_path / "mixed", {"a": 3, "b": 3})
    tifffile.imwrite(mixed / "b" / "rgb.tif", np.zeros((16, 16, 3), np.uint8))
    assert "different number of channels" in " ".join(
        _findings(task.check_training_data(mixed), "error")
    )
    flat = tmp_path / "flat"
    flat.mkdir()
    tifffile.imwrite(flat / "x.tif", np.zeros((8, 8), np.uint8))
    report = task.check_training_data(flat)
    assert not report.ok and "no sub-folders" in report.format()
    (tmp_path / "bad.csv").write_text("file,label\nmissing.tif,a\n")
    assert "does not exist" in task.check_training_data(tmp_path / "bad.csv").format()


def test_cli_validate_prints_class_counts(tmp_path, capsys):
    root = write_class_folders(tmp_path, {"a": 12, "b": 12})
    assert main(["validate", "classify", "--images", str(root)]) == 0
    out = capsys.readouterr().out
    assert "24 images ready" in out and "a 12, b 12" in out


# -------------------------------------------------------------------------- backbones


@pytest.mark.parametrize("name", ["small", "resnet18", "unet_encoder"])
@pytest.mark.parametrize("channels", [1, 3])
def test_backbones_give_one_score_per_class(name, channels):
    net = build_model(name, in_channels=channels, classes=5, depth=2, base_channels=4)
    assert net(torch.zeros(2, channels, 24, 20)).shape == (2, 5)
    assert len(net.feature_blocks()) >= 2


def test_unet_encoder_has_the_unet_encoder_tensors():
    unet = UNet(dims=2, in_channels=1, out_channels=1, depth=2, base_channels=4)
    enc = build_model("unet_encoder", in_channels=1, classes=3, depth=2, base_channels=4)
    theirs = unet.state_dict()
    for k, v in enc.state_dict().items():
        if not k.startswith("head."):
            assert k in theirs and theirs[k].shape == v.shape, k


# ------------------------------------------------------------------ train → predict → QC


def test_train_predict_qc_give_real_numbers(trained, tmp_path):
    result, test = trained
    model = load_model_folder(result.model_dir)
    assert model.task.class_names == ["bright", "dim"]
    assert (result.run_dir / "split.json").exists()
    out = tmp_path / "pred.csv"
    assert main(["predict", str(result.model_dir), "--input", str(test), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 16 and set(rows[0]) == {"file", "class", "confidence", "p_bright", "p_dim"}
    right = [r["class"] == Path(r["file"]).parent.name for r in rows]
    assert np.mean(right) >= 0.9, rows
    p = np.array([[float(r["p_bright"]), float(r["p_dim"])] for r in rows])
    assert np.allclose(p.sum(axis=1), 1, atol=1e-3)
    # existing results are not overwritten
    assert main(["predict", str(result.model_dir), "--input", str(test), "--out", str(out)]) == 2

    qc = tmp_path / "qc"
    assert main(["qc", str(result.model_dir), "--images", str(test), "--out", str(qc)]) == 0
    summary = json.loads((qc / "summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(np.mean(right))
    assert set(summary["per_class"]) == {"bright", "dim"}
    assert set(summary["per_class"]["dim"]) >= {"precision", "recall", "f1"}
    assert 0 <= summary["ece"] <= 1 and summary["macro_f1"] >= 0.85
    html = (qc / "report.html").read_text()
    for words in ("Confusion matrix", "Reliability diagram", "Loss per epoch", "macro F1"):
        assert words in html


def test_qc_names_images_the_classifier_was_trained_on(trained, tmp_path, capsys):
    import imageio.v3 as iio

    result, test = trained
    qc = tmp_path / "qc_held_out"
    assert main(["qc", str(result.model_dir), "--images", str(test), "--out", str(qc)]) == 0
    assert "seen_in_training" not in json.loads((qc / "summary.json").read_text())
    # a QC set with two training images: one copied, one saved again as PNG
    mixed = tmp_path / "mixed"
    shutil.copytree(test, mixed)
    train_dir = result.run_dir.parent / "train"
    shutil.copy(train_dir / "bright" / "bright_0.tif", mixed / "bright" / "copy.tif")
    iio.imwrite(mixed / "dim" / "again.png", tifffile.imread(train_dir / "dim" / "dim_3.tif"))
    capsys.readouterr()
    qc2 = tmp_path / "qc_mixed"
    assert main(["qc", str(result.model_dir), "--images", str(mixed), "--out", str(qc2)]) == 0
    summary = json.loads((qc2 / "summary.json").read_text())
    assert sorted(summary["seen_in_training"]) == ["again.png", "copy.tif"]
    assert "2 of these 18 QC images" in summary["caution"]
    assert "Caution: 2 of these 18" in capsys.readouterr().out
    html = (qc2 / "report.html").read_text()
    assert html.index("trained on (") < html.index("<h2")
    # the same pixels from an .npz (arrays of one shape: the commonest training size)
    by_shape: dict[tuple, list] = {}
    for f in sorted((train_dir / "dim").glob("*.tif")):
        img = tifffile.imread(f)
        by_shape.setdefault(img.shape, []).append(img)
    group = max(by_shape.values(), key=len)
    np.savez(tmp_path / "few.npz", images=np.stack(group), labels=np.array(["dim"] * len(group)))
    qc3 = tmp_path / "qc_npz"
    npz = str(tmp_path / "few.npz")
    assert main(["qc", str(result.model_dir), "--images", npz, "--out", str(qc3)]) == 0
    assert len(json.loads((qc3 / "summary.json").read_text())["seen_in_training"]) == len(group)


def test_tta_averages_over_the_views_training_used(trained, tmp_path, capsys):
    from deepscope.workflow.predict_classify import classify_arrays, tta_views

    result, test = trained
    model = load_model_folder(result.model_dir)
    assert len(set(tta_views(model))) == 8  # flips and turns: the 8 symmetries of a square
    rng = np.random.default_rng(3)
    images = [_blob(rng, 16, bright)[None].astype(np.float32) for bright in (True, False) * 3]
    turned = [np.rot90(im, 1, axes=(1, 2)).copy() for im in images]
    mirrored = [im[:, :, ::-1].copy() for im in images]
    plain = classify_arrays(model, images)
    averaged = classify_arrays(model, images, tta=True)
    assert np.abs(classify_arrays(model, turned) - plain).max() > 1e-4  # the net is not
    # ... but its average over the 8 views is: the same for a turned or mirrored image
    np.testing.assert_allclose(classify_arrays(model, turned, tta=True), averaged, atol=1e-5)
    np.testing.assert_allclose(classify_arrays(model, mirrored, tta=True), averaged, atol=1e-5)
    assert not np.allclose(averaged, plain)
    np.testing.assert_allclose(averaged.sum(axis=1), 1, atol=1e-5)

    model.config.data.rotations = False  # flips only: 4 views, none of them a quarter turn
    assert sorted(tta_views(model)) == [(0, a, b) for a in (False, True) for b in (False, True)]
    model.config.data.flips, model.config.data.rotations = False, True
    assert [v[0] for v in tta_views(model)] == [0, 1, 2, 3]
    model.config.data.rotations = False
    with pytest.raises(DeepscopeError, match="trained without any"):
        tta_views(model)
    # the web app offers --tta by the saved config alike
    task = get_task("classify")
    assert task.tta_allowed({"data": {"flips": True, "rotations": False}})
    assert not task.tta_allowed({"data": {"flips": False, "rotations": False}})

    out = tmp_path / "pred.csv"
    args = ["predict", str(result.model_dir), "--input", str(test), "--out", str(out), "--tta"]
    assert main(args) == 0
    record = json.loads((tmp_path / "pred_provenance.json").read_text())
    assert record["test_time_augmentation"] is True and len(list(csv.DictReader(out.open()))) == 16
    qc = tmp_path / "qc"
    args = ["qc", str(result.model_dir), "--images", str(test), "--out", str(qc), "--tta"]
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Quality control on 16 labelled images" in printed
    assert "brightness" not in printed  # no restoration summary after the classifier's
    summary = json.loads((qc / "summary.json").read_text())
    assert summary["test_time_augmentation"] is True and summary["accuracy"] >= 0.9


def test_overfitting_point_is_found():
    from deepscope.workflow.qc_classify import overfitting_point

    hist = [
        {"epoch": e, "train_loss": 1 / (e + 1), "val_loss": v}
        for e, v in enumerate([1.0, 0.6, 0.5, 0.55, 0.7, 0.9])
    ]
    point = overfitting_point(hist)
    assert point["best_epoch"] == 3 and point["overfitting"] and point["from_epoch"] == 4
    falling = [dict(h, val_loss=1 / (h["epoch"] + 1)) for h in hist]
    assert not overfitting_point(falling)["overfitting"]


def test_ece_is_zero_when_confidence_matches_accuracy():
    from deepscope.workflow.qc_classify import expected_calibration_error

    conf = np.array([0.75] * 4)
    ece, _ = expected_calibration_error(conf, np.array([1, 1, 1, 0]))
    assert ece == pytest.approx(0.0)
    ece, _ = expected_calibration_error(conf, np.array([0, 0, 0, 0]))
    assert ece == pytest.approx(0.75)


# --------------------------------------------------------------- transfer and freezing


def test_freeze_keeps_first_blocks_fixed_then_fine_tunes(trained, tmp_path):
    result, _ = trained
    images = write_class_folders(tmp_path / "new", {"bright": 12, "dim": 12}, seed=3)
    cfg = _cfg(
        **{
            "training.start_from": str(result.model_dir),
            "training.epochs": 2,
            "classify.freeze_blocks": 1,
            "classify.freeze_epochs": 1,
        }
    )
    run = train(cfg, images, tmp_path / "ft", show_bar=False, log=lambda s: None)
    start = torch.load(result.model_dir / "weights.pt")
    after1 = torch.load(run.model_dir / "checkpoints" / "epoch_0001.pt")
    after2 = torch.load(run.model_dir / "checkpoints" / "epoch_0002.pt")
    first = "blocks.0.0.0.weight"  # first convolution of the small CNN
    assert torch.equal(after1[first], start[first])  # frozen in epoch 1
    assert not torch.equal(after2[first], start[first])  # fine-tuned in epoch 2
    assert not torch.equal(after1["head.weight"], start["head.weight"])
    info = json.loads((run.model_dir / "deepscope_model.json").read_text())
    assert info["training"]["started_from"]["loaded"] > 0

    task = get_task("classify")(cfg)
    net = task.build_model(1)
    groups = task.parameter_groups(net)
    assert groups[1]["lr"] == pytest.approx(0.1 * groups[0]["lr"])
    assert task.on_epoch_start(net, 0) is None
    assert not any(p.requires_grad for p in net.blocks[0].parameters())
    assert "unfrozen" in task.on_epoch_start(net, 1)
    assert all(p.requires_grad for p in net.blocks[0].parameters())


def _unet_model_folder(tmp_path: Path) -> tuple[Path, dict]:
    cfg = config_from_dict({"task": "n2v", "model": {"depth": 2, "base_channels": 4}})
    net = UNet(dims=2, in_channels=1, out_channels=1, depth=2, base_channels=4)
    torch.manual_seed(5)
    for p in net.parameters():
        torch.nn.init.normal_(p)
    from deepscope.data.normalize import PercentileNormalizer

    folder = save_model_folder(
        tmp_path / "unet_model",
        config=cfg,
        weights=net.state_dict(),
        in_channels=1,
        input_axes="YX",
        normalizer=PercentileNormalizer(1, 99.8, (0.0,), (1.0,)),
    )
    return folder, net.state_dict()


def test_start_from_a_unet_model_folder_uses_its_encoder(tmp_path):
    folder, unet_state = _unet_model_folder(tmp_path)
    images = write_class_folders(tmp_path / "imgs", {"a": 6, "b": 6})
    cfg = _cfg(**{"training.start_from": str(folder), "model.depth": 3, "model.base_channels": 8})
    task = get_task("classify")(cfg)
    assert task.check_training_data(images).ok
    cfg = task.config  # the backbone is taken from the start model
    assert cfg.model.architecture == "unet_encoder"
    assert (cfg.model.depth, cfg.model.base_channels) == (2, 4)
    net = get_task("classify")(cfg).build_model(1)
    report = transfer.load_start_weights(net, folder, cfg)
    assert len(report.loaded) == len([k for k in report.loaded if k.startswith(("enc", "bott"))])
    assert "head.weight" in report.not_loaded
    assert torch.equal(net.state_dict()["encoders.0.0.weight"], unet_state["encoders.0.0.weight"])


def test_start_from_the_shipped_stardist_model_uses_its_unet_encoder(tmp_path):
    from deepscope.workflow.pretrained import resolve_model

    nuclei = resolve_model("nuclei")
    images = write_class_folders(tmp_path / "imgs", {"a": 6, "b": 6})
    cfg = _cfg(**{"training.start_from": str(nuclei)})
    task = get_task("classify")(cfg)
    assert task.check_training_data(images).ok
    cfg = task.config
    assert cfg.model.architecture == "unet_encoder"
    net = get_task("classify")(cfg).build_model(1)
    report = transfer.load_start_weights(net, nuclei, cfg)
    shipped = load_model_folder(nuclei).network.state_dict()
    name = "encoders.1.0.weight"  # behind StarDist's stem the first layer differs
    assert name in report.loaded
    assert torch.equal(net.state_dict()[name], shipped[f"unet.{name}"])


def test_start_from_state_dict_file_and_incompatible_weights(tmp_path):
    cfg = _cfg(
        **{"training.start_from": str(tmp_path / "w.pt"), "classify.class_names": ["a", "b"]}
    )
    task = get_task("classify")(cfg)
    source = build_model("small", in_channels=1, classes=7, depth=2, base_channels=4)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    net = task.build_model(1)
    report = transfer.load_start_weights(net, tmp_path / "w.pt", cfg)
    assert "head.weight" in report.not_loaded  # 7 classes there, 2 here
    assert torch.equal(
        net.state_dict()["blocks.1.0.0.weight"], source.state_dict()["blocks.1.0.0.weight"]
    )

    other = build_model("resnet18", in_channels=1, classes=2, base_channels=4)
    torch.save(other.state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(DeepscopeError) as err:
        transfer.load_start_weights(task.build_model(1), tmp_path / "resnet.pt", cfg)
    text = str(err.value)
    assert "resnet.pt" in text and "matched" in text and "not matched" in text
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(DeepscopeError, match="cannot be read as PyTorch weights"):
        transfer.load_start_weights(task.build_model(1), tmp_path / "junk.pt", cfg)


def test_incompatible_start_is_refused_before_the_run_folder_is_made(tmp_path):
    images = write_class_folders(tmp_path / "imgs", {"a": 6, "b": 6})
    other = build_model("resnet18", in_channels=1, classes=2, base_channels=4)
    torch.save(other.state_dict(), tmp_path / "resnet.pt")
    code = main(
        [
            "train",
            "classify",
            "--images",
            str(images),
            "--out",
            str(tmp_path / "run"),
            "--from",
            str(tmp_path / "resnet.pt"),
            "--freeze",
            "1",
            "--epochs",
            "1",
        ]
    )
    assert code == 2 and not (tmp_path / "run").exists()


def test_bad_training_data_writes_nothing(tmp_path):
    root = write_class_folders(tmp_path / "imgs", {"a": 5})
    with pytest.raises(ValidationFailed):
        train(_cfg(), root, tmp_path / "run", show_bar=False, log=lambda s: None)
    assert not (tmp_path / "run").exists()


def test_resume_continues_with_the_saved_classes(tmp_path):
    images = write_class_folders(tmp_path / "imgs", {"a": 8, "b": 8})
    quiet = {"show_bar": False, "log": lambda s: None}
    train(_cfg(**{"training.epochs": 1}), images, tmp_path / "run", **quiet)
    result = train(_cfg(**{"training.epochs": 2}), images, tmp_path / "run", resume=True, **quiet)
    assert result.epochs_trained == 2
    history = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    assert len(history) == 3  # header + 2 epochs
    assert load_model_folder(result.model_dir).task.class_names == ["a", "b"]


def test_qc_of_a_pixel_task_without_targets_says_what_to_give(tmp_path):
    from deepscope.workflow.qc import run_qc

    folder, _ = _unet_model_folder(tmp_path)
    with pytest.raises(DeepscopeError, match="--targets"):
        run_qc(load_model_folder(folder), tmp_path, None, tmp_path / "qc")


def test_balanced_sampling_draws_every_class_equally(tmp_path):
    root = write_class_folders(tmp_path / "imgs", {"big": 30, "small": 6})
    task = get_task("classify")(_cfg(**{"classify.balance": "sampling"}))
    report = task.check_training_data(root)
    data = task.make_datasets(report, tmp_path, False, lambda s: None)
    weights = np.asarray(data.sampler.weights)
    labels = data.train.labels.numpy()
    per_class = [weights[labels == k].sum() for k in (0, 1)]
    assert per_class[0] == pytest.approx(per_class[1])
    assert task.class_weights is None and data.shuffle


def test_augmentation_changes_images_but_keeps_their_shape():
    x = torch.rand(3, 16, 16)
    aug = cdata.Augmentation(intensity=0.2, rotate_degrees=20, scale=0.1, shift=0.1)
    a = cdata.augment(x, aug, torch.Generator().manual_seed(0))
    b = cdata.augment(x, aug, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)
    none = cdata.Augmentation(
        flips=False, rot90=False, intensity=0, rotate_degrees=0, scale=0, shift=0
    )
    assert torch.equal(cdata.augment(x, none, torch.Generator()), x)


def test_classify_defaults_hold_when_a_section_is_partly_given():
    cfg = config_from_dict({"task": "classify", "training": {"epochs": 3}, "data": {"axes": "YX"}})
    assert cfg.training.epochs == 3 and cfg.training.learning_rate == 1e-3
    assert cfg.training.weight_decay == 1e-4 and cfg.data.val_fraction == 0.2
    again = config_from_dict(cfg.model_dump(mode="json"))
    assert again == cfg
