import hashlib
import json
from pathlib import Path

import numpy as np
import tifffile

from deepscope.data.io import write_image
from deepscope.data.pairing import image_stem, pair_by_name
from deepscope.data.validation import Finding, ValidationReport, validate_dataset
from deepscope.tasks import get_task
from deepscope.tasks.base import Task

RNG = np.random.default_rng(0)
N2V = get_task("n2v")
N2VConfig = N2V.config_class


class PairedTask(Task):
    """A task that learns from pairs, for these tests only (not registered)."""

    name = "paired-test"
    title = "paired test task"
    description = "test only"
    config_class = N2VConfig
    needs_targets = True

    def training_loss(self, model, batch):
        raise NotImplementedError


def _config(patch=(16, 16), **data):
    return N2VConfig(data={"patch_size": list(patch), "spatial_dims": len(patch), **data})


def _noise(shape, dtype=np.uint16):
    return RNG.integers(1, 1000, size=shape).astype(dtype)


def _write(path, data=None, axes="YX", **kwargs):
    data = _noise((32, 32)) if data is None else data
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(path, data, axes, **kwargs)


def _folder(tmp_path, names=("a.tif", "b.tif", "c.tif"), sub="images", shape=(32, 32)):
    for name in names:
        _write(tmp_path / sub / name, _noise(shape))
    return tmp_path / sub


def _only(report, severity, path=None):
    found = [f for f in report.findings if f.severity == severity]
    assert len(found) == 1, report.format()
    if path is not None:
        assert found[0].path == path, report.format()
    return found[0]


def _hashes(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------ pairing


def test_image_stem_drops_image_endings_only():
    assert image_stem(Path("x/cell01.ome.tif")) == "cell01"
    assert image_stem("cell01.OME.TIFF") == "cell01"
    assert image_stem("cell.01.tif") == "cell.01"
    assert image_stem("cell01.ome.zarr") == "cell01"
    assert image_stem("notes.txt") == "notes"


def test_pair_by_name():
    images = [Path("i/a.tif"), Path("i/b.ome.tif"), Path("i/c.png"), Path("i/D.tif")]
    targets = [Path("t/a.tiff"), Path("t/b.png"), Path("t/d.tif"), Path("t/e.tif")]
    result = pair_by_name(images, targets)
    assert result.pairs == [
        (Path("i/a.tif"), Path("t/a.tiff")),
        (Path("i/b.ome.tif"), Path("t/b.png")),
    ]
    assert result.unpaired_images == [Path("i/c.png"), Path("i/D.tif")]
    assert result.unpaired_targets == [Path("t/d.tif"), Path("t/e.tif")]
    assert result.duplicates == []


def test_pair_by_name_duplicates_are_not_paired():
    result = pair_by_name([Path("i/a.tif"), Path("i/a.png")], [Path("t/a.tif")])
    assert result.pairs == [] and result.unpaired_images == [] and result.unpaired_targets == []
    assert result.duplicates == [(Path("i/a.tif"), Path("i/a.png"))]


# -------------------------------------------------------------------------- good data


def test_good_folder_is_ok(tmp_path):
    images = _folder(tmp_path)
    calls = []
    report = validate_dataset("n2v", _config(), images, progress=lambda i, n: calls.append((i, n)))
    assert report.ok and report.findings == []
    assert report.items == [(images / n, None) for n in ("a.tif", "b.tif", "c.tif")]
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert report.format() == "3 images ready for training"
    summary = report.summary
    assert summary["ready"] == 3 and summary["images"]["shapes"] == {"32x32": 3}
    assert summary["images"]["dtypes"] == {"uint16": 3}
    assert summary["images"]["channels"] == {"1": 3}
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


def test_good_pairs_are_ok(tmp_path):
    images = _folder(tmp_path, ("a.tif", "b.png"))
    targets = _folder(tmp_path, ("a.ome.tif", "b.tif"), sub="targets")
    report = validate_dataset(PairedTask, _config(), images, targets)
    assert report.ok and report.findings == [], report.format()
    assert report.items == [
        (images / "a.tif", targets / "a.ome.tif"),
        (images / "b.png", targets / "b.tif"),
    ]
    assert report.format() == "2 image pairs ready for training"


# ------------------------------------------------------------------------------ folders


def test_missing_and_empty_folders(tmp_path):
    report = validate_dataset("n2v", _config(), tmp_path / "nope")
    assert not report.ok and "does not exist" in _only(report, "error", tmp_path / "nope").problem
    (tmp_path / "empty").mkdir()
    report = validate_dataset("n2v", _config(), tmp_path / "empty")
    assert not report.ok and "no images" in _only(report, "error", tmp_path / "empty").problem
    assert report.format().endswith("1 problem blocks training")


def test_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    report = validate_dataset("n2v", _config(), tmp_path)
    assert "1 .txt" in _only(report, "error", tmp_path).problem


def test_non_image_files_are_a_warning(tmp_path):
    images = _folder(tmp_path, ("a.tif", "b.tif"))
    (images / "notes.txt").write_text("hello")
    (images / "old").mkdir()
    report = validate_dataset("n2v", _config(), images)
    assert report.ok and len(report.items) == 2
    assert {f.path for f in report.warnings} == {images / "notes.txt", images / "old"}
    assert "2 images ready for training (2 warnings to look at)" in report.format()


# --------------------------------------------------------------------------- bad files


def test_broken_files_each_named(tmp_path):
    images = _folder(tmp_path, ("good1.tif", "good2.tif"))
    (images / "empty.tif").touch()
    (images / "noise.tif").write_bytes(RNG.integers(0, 256, 1000, dtype=np.uint8).tobytes())
    cut = images / "cut.tif"
    tifffile.imwrite(cut, _noise((5, 64, 64)))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    before = _hashes(images)
    report = validate_dataset("n2v", _config(), images)
    assert not report.ok
    by_file = {f.path.name: f for f in report.errors}
    assert set(by_file) == {"empty.tif", "noise.tif", "cut.tif"}, report.format()
    assert "0 bytes" in by_file["empty.tif"].problem
    assert "damaged" in by_file["noise.tif"].problem and "damaged" in by_file["cut.tif"].problem
    assert all(f.fix for f in report.findings)
    assert report.items == [(images / "good1.tif", None), (images / "good2.tif", None)]
    assert report.format().endswith("3 problems block training")
    assert _hashes(images) == before


def test_nan_and_inf(tmp_path):
    images = _folder(tmp_path, ("a.tif",), shape=(64, 64))
    data = RNG.random((32, 32), dtype=np.float32)
    data[0, :3] = np.nan
    data[1, 0] = np.inf
    _write(images / "nan.tif", data)
    report = validate_dataset("n2v", _config(), images)
    error = _only(report, "error", images / "nan.tif")
    assert "3 pixels hold NaN" in error.problem and "1 pixel hold an infinite" in error.problem
    assert "Remove NaNs" in error.fix


def test_constant_image(tmp_path):
    images = _folder(tmp_path, ("a.tif",), shape=(64, 64))
    _write(images / "flat.tif", np.full((32, 32), 7, np.uint16))
    report = validate_dataset("n2v", _config(), images)
    assert "same value (7)" in _only(report, "error", images / "flat.tif").problem
    assert report.items == [(images / "a.tif", None)]


def test_image_smaller_than_patch(tmp_path):
    images = _folder(tmp_path, ("a.tif",), shape=(64, 64))
    _write(images / "small.tif", _noise((24, 40)))
    report = validate_dataset("n2v", _config(patch=(32, 32)), images)
    error = _only(report, "error", images / "small.tif")
    assert "24 × 40" in error.problem and "32 × 32" in error.problem
    assert "data.patch_size" in error.fix and "--patch-size" in error.fix and "24 32" in error.fix


def test_image_too_small_for_any_patch(tmp_path):
    images = _folder(tmp_path, ("a.tif",), shape=(64, 64))
    _write(images / "tiny.tif", _noise((6, 40)))
    error = _only(validate_dataset("n2v", _config(), images), "error", images / "tiny.tif")
    assert "leave this image out" in error.fix


def test_stack_given_to_2d_config(tmp_path):
    images = _folder(tmp_path, ("a.tif",), shape=(64, 64))
    _write(images / "stack.tif", _noise((6, 32, 32)), "ZYX")
    report = validate_dataset("n2v", _config(), images)
    error = _only(report, "error", images / "stack.tif")
    assert "3D stack" in error.problem
    assert "--axes" in error.fix and "spatial_dims" in error.fix


def test_configured_axes_are_used(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(
            images / name, _noise((3, 32, 32)), metadata=None, photometric="minisblack"
        )  # guessed CYX
    report = validate_dataset("n2v", _config(), images)
    assert report.ok
    guessed = [f for f in report.warnings if "3 planes" in f.problem]
    assert {f.path for f in guessed} == {images / "a.tif", images / "b.tif"}
    assert all("--axes ZYX" in f.fix for f in guessed)
    report = validate_dataset("n2v", _config(axes="ZYX"), images)
    assert {f.path for f in report.errors} == {images / "a.tif", images / "b.tif"}
    assert not [f for f in report.warnings if "3 planes" in f.problem]


def test_channel_count_differs(tmp_path):
    images = _folder(tmp_path, ("a.tif", "b.tif"))
    _write(images / "two.tif", _noise((2, 32, 32)), "CYX")
    error = _only(validate_dataset("n2v", _config(), images), "error", images / "two.tif")
    assert "2 channels" in error.problem and "2 of the 3 images have 1" in error.problem


def test_file_with_several_images_is_a_warning(tmp_path):
    images = _folder(tmp_path, ("a.tif",))
    with tifffile.TiffWriter(images / "two.tif") as tif:
        tif.write(_noise((32, 32)))
        tif.write(_noise((8, 8)))
    report = validate_dataset("n2v", _config(), images)
    assert report.ok and len(report.items) == 2
    assert "only the first" in _only(report, "warning", images / "two.tif").problem


def test_mixed_dtypes_is_a_warning(tmp_path):
    images = _folder(tmp_path, ("a.tif", "b.tif"))
    _write(images / "c.tif", _noise((32, 32), np.uint8))
    report = validate_dataset("n2v", _config(), images)
    assert report.ok
    warning = _only(report, "warning", images)
    assert "16-bit (2 files)" in warning.problem and "8-bit (c.tif)" in warning.problem


# ----------------------------------------------------------------------------- amount


def test_single_image_for_n2v(tmp_path):
    big = _folder(tmp_path, ("a.tif",), sub="big", shape=(64, 32))
    assert validate_dataset("n2v", _config(), big).findings == []
    small = _folder(tmp_path, ("a.tif",), sub="small", shape=(24, 64))
    report = validate_dataset("n2v", _config(), small)
    assert report.ok
    short = [f for f in report.warnings if f.path == small / "a.tif"]
    assert len(short) == 1 and "only image" in short[0].problem


def test_single_pair_is_a_warning(tmp_path):
    images = _folder(tmp_path, ("a.tif",))
    targets = _folder(tmp_path, ("a.tif",), sub="targets")
    report = validate_dataset(PairedTask, _config(), images, targets)
    assert report.ok and "only 1 image pair" in _only(report, "warning", images).problem
    assert "kept aside" in _only(report, "warning", images).problem
    # too short to keep part of it aside: said as for a single unpaired image
    small = _folder(tmp_path, ("a.tif",), sub="small", shape=(24, 64))
    small_t = _folder(tmp_path, ("a.tif",), sub="small_t", shape=(24, 64))
    report = validate_dataset(PairedTask, _config(), small, small_t)
    assert report.ok
    short = [f for f in report.warnings if f.path == small / "a.tif"]
    assert len(short) == 1 and "only image" in short[0].problem


# ---------------------------------------------------------------------------------- 3D


def test_3d_without_z_pixel_size(tmp_path):
    images = tmp_path / "images"
    _write(images / "known.tif", _noise((8, 32, 32)), "ZYX", metadata={"pixel_size": {"Z": 2.0}})
    _write(images / "unknown.tif", _noise((8, 32, 32)), "ZYX")
    report = validate_dataset("n2v", _config(patch=(8, 16, 16)), images)
    assert report.ok and len(report.items) == 2
    assert "anisotropy unknown" in _only(report, "warning", images / "unknown.tif").problem


def test_2d_image_given_to_3d_config(tmp_path):
    images = _folder(tmp_path, ("a.tif", "b.tif"))
    report = validate_dataset("n2v", _config(patch=(8, 16, 16)), images)
    assert {f.path for f in report.errors} == {images / "a.tif", images / "b.tif"}
    assert all("no depth" in f.problem and "--axes" in f.fix for f in report.errors)


# ------------------------------------------------------------------------------- pairs


def test_missing_partners_both_ways_and_shape_mismatch(tmp_path):
    images = _folder(tmp_path, ("a.tif", "b.tif", "only_image.tif", "Case.tif", "wide.tif"))
    targets = _folder(tmp_path, ("a.tif", "b.tif", "only_target.tif", "case.tif"), sub="targets")
    _write(targets / "wide.tif", _noise((32, 48)))
    before = {**_hashes(images), **_hashes(targets)}
    report = validate_dataset(PairedTask, _config(), images, targets)
    assert not report.ok
    by_file = {f.path: f for f in report.errors}
    assert set(by_file) == {
        images / "only_image.tif",
        images / "Case.tif",
        targets / "only_target.tif",
        targets / "case.tif",
        images / "wide.tif",
    }, report.format()
    assert (
        "no target has this image's name 'only_image'" in by_file[images / "only_image.tif"].problem
    )
    assert (
        "no image has this target's name 'only_target'"
        in by_file[targets / "only_target.tif"].problem
    )
    assert "capital letters" in by_file[images / "Case.tif"].problem
    mismatch = by_file[images / "wide.tif"].problem
    assert "32 × 32" in mismatch and "32 × 48" in mismatch and str(targets / "wide.tif") in mismatch
    assert report.items == [
        (images / "a.tif", targets / "a.tif"),
        (images / "b.tif", targets / "b.tif"),
    ]
    assert {**_hashes(images), **_hashes(targets)} == before


def test_no_names_match(tmp_path):
    images = _folder(tmp_path, ("a_raw.tif", "b_raw.tif"))
    targets = _folder(tmp_path, ("a_gt.tif", "b_gt.tif"), sub="targets")
    report = validate_dataset(PairedTask, _config(), images, targets)
    summary = [f for f in report.errors if f.path == targets]
    assert len(summary) == 1 and "'a_raw' and 'a_gt'" in summary[0].problem
    assert len(report.errors) == 5 and report.items == []


def test_duplicate_names(tmp_path):
    images = _folder(tmp_path, ("a.tif", "a.png", "b.tif"))
    targets = _folder(tmp_path, ("a.tif", "b.tif"), sub="targets")
    calls = []
    report = validate_dataset(
        PairedTask, _config(), images, targets, progress=lambda i, n: calls.append((i, n))
    )
    assert calls == [(i, 5) for i in range(1, 6)]
    error = _only(report, "error")
    assert "a.tif, a.png" in error.problem or "a.png, a.tif" in error.problem
    assert report.items == [(images / "b.tif", targets / "b.tif")]


def test_targets_missing(tmp_path):
    images = _folder(tmp_path, ("a.tif", "b.tif"))
    report = validate_dataset(PairedTask, _config(), images)
    assert "no folder of targets" in _only(report, "error", None).problem
    report = validate_dataset(PairedTask, _config(), images, tmp_path / "targets")
    assert "does not exist" in _only(report, "error", tmp_path / "targets").problem
    report = validate_dataset(PairedTask, _config(), images, images)
    assert "same folder" in _only(report, "error", images).problem


def test_bad_target_is_named(tmp_path):
    images = _folder(tmp_path, ("a.tif", "b.tif", "c.tif"))
    targets = _folder(tmp_path, ("a.tif", "b.tif"), sub="targets")
    data = RNG.random((32, 32), dtype=np.float32)
    data[5, 5] = np.nan
    _write(targets / "c.tif", data)
    _write(targets / "flat.tif", np.zeros((32, 32), np.uint8))
    (images / "flat.tif").write_bytes(b"")
    report = validate_dataset(PairedTask, _config(), images, targets)
    assert {f.path for f in report.errors} == {targets / "c.tif", images / "flat.tif"}
    assert "NaN" in next(f for f in report.errors if f.path == targets / "c.tif").problem
    constant = [f for f in report.warnings if f.path == targets / "flat.tif"]
    assert len(constant) == 1 and "same value (0)" in constant[0].problem
    assert len(report.items) == 2


def test_single_channel_target_for_multichannel_images(tmp_path):
    images, targets = tmp_path / "images", tmp_path / "targets"
    for name in ("a.tif", "b.tif"):
        _write(images / name, _noise((2, 32, 32)), "CYX")
        _write(targets / name, _noise((32, 32)))
    report = validate_dataset(PairedTask, _config(axes="CYX"), images, targets)
    assert report.ok and report.findings == [], report.format()


def test_targets_given_to_task_without_targets(tmp_path):
    images = _folder(tmp_path, ("a.tif", "b.tif"))
    report = validate_dataset("n2v", _config(), images, tmp_path / "targets")
    assert report.ok and "not used" in _only(report, "warning", tmp_path / "targets").problem


# -------------------------------------------------------------------------- hook, report


def test_extra_checks_hook(tmp_path):
    images = _folder(tmp_path, ("a.tif", "b.tif"))
    targets = _folder(tmp_path, ("a.tif", "b.tif"), sub="targets")
    seen = []

    def masks_hold_labels(image_path, image_cf, target_path, target_cf):
        seen.append((image_path.name, image_cf.shape, target_path.name, target_cf.shape))
        if image_path.name == "b.tif":
            return [Finding("error", target_path, "this mask holds no labels.", "draw labels.")]
        return []

    report = validate_dataset(
        PairedTask, _config(), images, targets, extra_checks=masks_hold_labels
    )
    assert seen == [
        ("a.tif", (1, 32, 32), "a.tif", (1, 32, 32)),
        ("b.tif", (1, 32, 32), "b.tif", (1, 32, 32)),
    ]
    assert _only(report, "error", targets / "b.tif").problem == "this mask holds no labels."
    assert report.items == [(images / "a.tif", targets / "a.tif")]


def test_report_format_and_dict(tmp_path):
    images = _folder(tmp_path, ("a.tif", "b.tif"))
    (images / "empty.tif").touch()
    (images / "notes.txt").write_text("x")
    report = validate_dataset("n2v", _config(), images)
    lines = report.format().splitlines()
    assert lines[0].startswith(f"ERROR   {images / 'empty.tif'}: ") and " → " in lines[0]
    assert lines[1].startswith(f"WARNING {images / 'notes.txt'}: ")
    assert lines[-1] == "1 problem blocks training"
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["summary"]["errors"] == 1
    assert {f["path"] for f in data["findings"]} == {
        str(images / "empty.tif"),
        str(images / "notes.txt"),
    }
    assert data["items"] == [[str(images / "a.tif"), None], [str(images / "b.tif"), None]]


def test_report_properties():
    report = ValidationReport(
        findings=[Finding("warning", None, "w", "f"), Finding("error", Path("x.tif"), "e", "f")]
    )
    assert not report.ok and len(report.errors) == 1 and len(report.warnings) == 1
    assert ValidationReport().ok
