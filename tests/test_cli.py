"""The ``deepscope`` command line: help texts, exit codes and errors a person can act on.

Bad input must end with exit code 2 and a message that names the file and says what
to do, never a Python traceback, and must leave no half-written output behind.
"""

from __future__ import annotations

import argparse
import errno
import json
import shutil
import subprocess
import sys
from unittest.mock import ANY

import numpy as np
import pytest
import tifffile
import yaml

import deepscope.data.io as dsio
from conftest import TINY_CONFIG, folder_digest, synthetic_pair, write_tif
from deepscope.interfaces.cli import build_parser, main

OPTIONS = {
    "validate": [
        "--images",
        "--targets",
        "--masks",
        "--classes",
        "--boundary",
        "--rays",
        "--grid",
        "--anisotropy",
        "--axes",
        "--3d",
        "--patch-size",
        "--config",
        "--image-size",
    ],
    "train": [
        "--images",
        "--targets",
        "--out",
        "--variant",
        "--axes",
        "--3d",
        "--patch-size",
        "--epochs",
        "--max-minutes",
        "--config",
        "--resume",
        "--batch-size",
        "--patches-per-epoch",
        "--learning-rate",
        "--checkpoint-every",
        "--seed",
        "--precision",
        "--devices",
        "--nodes",
        "--loss",
        "--probabilistic",
        "--from",
        "--freeze-encoder",
        "--masks",
        "--classes",
        "--boundary",
        "--image-size",
        "--backbone",
        "--freeze",
        "--rays",
        "--grid",
        "--anisotropy",
    ],
    "predict": [
        "--input",
        "--out",
        "--memory-limit",
        "--axes",
        "--tile",
        "--overwrite",
        "--resume",
        "--workers",
        "--scheduler",
        "--instances",
        "--probabilities",
        "--engine",
        "--prob-threshold",
        "--nms-threshold",
        "--tta",
        "--int8",
    ],
    "qc": ["--images", "--targets", "--masks", "--out", "--tile", "--tta", "--int8", "--overwrite"],
    "demo": ["--out", "--max-minutes"],
    "track": [
        "--input",
        "--model",
        "--labels",
        "--out",
        "--axes",
        "--max-distance",
        "--gap-frames",
        "--division-distance",
        "--no-divisions",
        "--no-drift-correction",
        "--tile",
        "--int8",
        "--overwrite",
    ],
    "qc-track": ["--gt", "--seg-gt", "--out", "--overwrite"],
    "export": ["--format", "--out", "--authors", "--license", "--name", "--sample", "--no-check"],
    "import": ["--out", "--weights"],
    "app": ["--host", "--port", "--data-root", "--runs", "--no-browser"],
}
POSITIONALS = {
    "validate": ["task"],
    "train": ["task"],
    "predict": ["model"],
    "qc": ["model"],
    "demo": [],
    "track": [],
    "qc-track": ["tracks"],
    "export": ["model"],
    "import": ["package"],
    "app": [],
}


def run_cli(capsys, *argv):
    """Run ``deepscope ARGV`` in this process; return (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *names):
    """Exit code 2, every name in the message, a 'What to do' line, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    assert "Error:" in err
    assert "What to do:" in err
    for name in names:
        assert str(name) in err, f"{name!r} not named in:\n{err}"


def no_partial_files(folder):
    return [p.name for p in folder.rglob("*") if p.name.endswith(".partial")]


# ---------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_help_of_every_command_lists_its_options(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in OPTIONS[command] + POSITIONALS[command]:
        assert opt in out, f"{command} --help does not mention {opt}"


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in OPTIONS:
        assert command in out


def test_every_option_is_explained_and_documented_here():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(OPTIONS)
    for command, parser in sub.choices.items():
        actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
        for action in actions:
            assert action.help, f"{command}: {action.dest} has no help text"
        flags = {s for a in actions for s in a.option_strings}
        assert flags == set(OPTIONS[command]), f"{command}: update OPTIONS in this test"


# ------------------------------------------------------------------------ validate


def test_validate_good_data_exits_0(noisy_dir, tiny_config_file, capsys):
    code, out, _ = run_cli(
        capsys, "validate", "n2v", "--images", noisy_dir, "--config", tiny_config_file
    )
    assert code == 0, out


def test_validate_bad_data_exits_1_and_names_the_file(noisy_dir, tiny_config_file, capsys):
    (noisy_dir / "broken.tif").write_bytes(b"II*\x00 this is not really a TIFF")
    before = folder_digest(noisy_dir)
    code, out, err = run_cli(
        capsys, "validate", "n2v", "--images", noisy_dir, "--config", tiny_config_file
    )
    assert code == 1
    assert "broken.tif" in out
    assert "Traceback" not in out + err
    assert folder_digest(noisy_dir) == before


# --------------------------------------------------------------------------- train


def test_missing_images_folder_is_exit_2_without_traceback(tmp_path, tiny_config_file):
    """Through the real entry point (a new Python process)."""
    missing = tmp_path / "no-such-folder"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepscope",
            "train",
            "n2v",
            "--images",
            str(missing),
            "--out",
            str(tmp_path / "run"),
            "--config",
            str(tiny_config_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_user_error(proc.returncode, proc.stderr, missing)
    assert "Traceback" not in proc.stdout
    assert not (tmp_path / "run").exists()


def _corrupt(path):
    path.write_bytes(b"II*\x00" + bytes(range(256)) * 4)


def _empty(path):
    path.write_bytes(b"")


def _nan(path):
    data = synthetic_pair((64, 64), seed=7)[0].astype(np.float32)
    data[10:12, 10:12] = np.nan
    tifffile.imwrite(path, data)


@pytest.mark.parametrize(
    "spoil, problem",
    [(_corrupt, "damaged"), (_empty, "empty (0 bytes)"), (_nan, "NaN")],
    ids=["corrupt", "0-byte", "nan"],
)
def test_train_with_a_bad_file_writes_nothing(
    spoil, problem, tmp_path, noisy_dir, tiny_config_args, capsys
):
    bad = noisy_dir / "bad.tif"
    spoil(bad)
    before = folder_digest(noisy_dir)
    run = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "train", "n2v", "--images", noisy_dir, "--out", run, *tiny_config_args
    )
    assert_user_error(code, err, bad, problem)
    assert not run.exists() or not list(run.rglob("*.ckpt")), "nothing may be trained"
    assert folder_digest(noisy_dir) == before


def test_image_smaller_than_the_patch(tmp_path, noisy_dir, tiny_config_args, capsys):
    small = write_tif(noisy_dir / "small.tif", synthetic_pair((16, 16), seed=3)[0])
    code, _, err = run_cli(
        capsys, "train", "n2v", "--images", noisy_dir, "--out", tmp_path / "run", *tiny_config_args
    )
    assert_user_error(code, err, small, "patch")
    assert "--patch-size" in err  # the fix names the option to change


def test_resume_without_a_run_via_cli(tmp_path, noisy_dir, tiny_config_args, capsys):
    run = tmp_path / "never-trained"
    code, _, err = run_cli(
        capsys, "train", "n2v", "--images", noisy_dir, "--out", run, *tiny_config_args, "--resume"
    )
    assert_user_error(code, err, run, "resume")


def test_train_into_existing_run_via_cli(noisy_dir, trained_2d_run, tiny_config_args, capsys):
    before = folder_digest(trained_2d_run)
    code, _, err = run_cli(
        capsys, "train", "n2v", "--images", noisy_dir, "--out", trained_2d_run, *tiny_config_args
    )
    assert_user_error(code, err, trained_2d_run, "--resume")
    assert folder_digest(trained_2d_run) == before


@pytest.mark.parametrize(
    "change, field",
    [
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"data": {"patch_size": [31, 31], "spatial_dims": 2}}, "patch_size"),
        ({"training": {"learning_rat": 0.1}}, "training.learning_rat"),
        ({"model": {"base_channels": "many"}}, "model.base_channels"),
    ],
    ids=["too-small", "not-divisible", "misspelt", "wrong-type"],
)
def test_config_file_with_invalid_value_lists_the_field(change, field, tmp_path, noisy_dir, capsys):
    data = json.loads(json.dumps(TINY_CONFIG))
    for section, values in change.items():
        data[section].update(values)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(data))
    code, _, err = run_cli(
        capsys, "train", "n2v", "--images", noisy_dir, "--out", tmp_path / "run", "--config", cfg
    )
    assert_user_error(code, err, cfg, field)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "option, field",
    [
        (["--epochs", "0"], "training.epochs"),
        (["--patch-size", "31", "31"], "patch_size"),
        (["--learning-rate", "5"], "training.learning_rate"),
    ],
    ids=["epochs", "patch", "learning-rate"],
)
def test_invalid_command_line_value_lists_the_field(
    option, field, tmp_path, noisy_dir, tiny_config_args, capsys
):
    code, _, err = run_cli(
        capsys,
        "train",
        "n2v",
        "--images",
        noisy_dir,
        "--out",
        tmp_path / "run",
        *tiny_config_args,
        *option,
    )
    assert code == 2 and field in err and "What to do:" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------- predict


def test_predict_into_the_input_folder_is_refused(trained_2d_run, noisy_dir, capsys):
    before = folder_digest(noisy_dir)
    code, _, err = run_cli(
        capsys,
        "predict",
        trained_2d_run / "model",
        "--input",
        noisy_dir,
        "--out",
        noisy_dir,
        "--overwrite",
    )
    assert_user_error(code, err, noisy_dir, "input")
    assert folder_digest(noisy_dir) == before


def test_predict_lists_every_unusable_input_before_predicting_any(
    tmp_path, trained_2d_run, noisy_dir, capsys
):
    batch = tmp_path / "batch"
    shutil.copytree(noisy_dir, batch)
    (batch / "0_empty.tif").write_bytes(b"")  # sorted first
    (batch / "z_damaged.tif").write_bytes(b"II*\x00garbage")  # sorted last
    write_tif(batch / "stack.tif", np.zeros((5, 64, 64), np.uint16))  # 3D for a 2D model
    before = folder_digest(batch)
    out = tmp_path / "results"
    code, _, err = run_cli(
        capsys, "predict", trained_2d_run / "model", "--input", batch, "--out", out
    )
    assert code == 2 and "Traceback" not in err, err
    assert "3 of 6 input images cannot be used" in err
    for name in ("0_empty.tif", "z_damaged.tif", "stack.tif"):
        assert name in err
    assert "What to do:" in err
    assert not out.exists()  # nothing predicted, not even the good images
    assert folder_digest(batch) == before

    (batch / "0_empty.tif").unlink()
    (batch / "stack.tif").unlink()
    code, _, err = run_cli(
        capsys, "predict", trained_2d_run / "model", "--input", batch, "--out", out
    )
    assert code == 2 and "z_damaged.tif" in err and "cannot be used" not in err  # one: its own
    assert not out.exists()


def test_predict_checks_channels_and_result_names_before_predicting_any(
    tmp_path, trained_2d_run, noisy_dir, capsys
):
    batch = tmp_path / "batch"
    shutil.copytree(noisy_dir, batch)
    tifffile.imwrite(batch / "colour.tif", np.zeros((64, 64, 3), np.uint8))  # RGB
    tifffile.imwrite(batch / "two.tif", np.zeros((2, 64, 64), np.uint16), metadata={"axes": "CYX"})
    out = tmp_path / "results"
    model = trained_2d_run / "model"
    code, _, err = run_cli(capsys, "predict", model, "--input", batch, "--out", out)
    assert code == 2 and "Traceback" not in err, err
    assert "2 of " in err and "colour.tif" in err and "two.tif" in err
    assert "3 channel(s)" in err and "2 channel(s)" in err and "trained on images with 1" in err
    assert not out.exists()

    (batch / "two.tif").unlink()
    (batch / "colour.tif").unlink()
    first = sorted(batch.glob("*.tif"))[0]
    write_tif(batch / f"{first.stem}.png", np.zeros((64, 64), np.uint8))  # a.tif and a.png
    for extra in ([], ["--overwrite"]):
        code, _, err = run_cli(capsys, "predict", model, "--input", batch, "--out", out, *extra)
        assert_user_error(code, err, batch, "same name", first.name, f"{first.stem}.png")
        assert not out.exists()


def test_provenance_records_the_precision_the_network_ran_in(tmp_path, trained_2d_run, capsys):
    from deepscope.engine.performance import cpu_supports_bf16
    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.predict import TileSettings, prediction_precision

    model_dir = trained_2d_run / "model"
    input_dir = tmp_path / "in"
    write_tif(input_dir / "x.tif", np.random.default_rng(0).random((64, 64)).astype(np.float32))
    code, _, err = run_cli(
        capsys, "predict", model_dir, "--input", input_dir, "--out", tmp_path / "o"
    )
    assert code == 0, err
    record = json.loads((tmp_path / "o" / "provenance.json").read_text())
    model = load_model_folder(model_dir)
    assert record["precision"] == prediction_precision(model)
    model.config.training.precision = "32"
    assert prediction_precision(model) == "float32"
    model.config.training.precision = "auto"
    assert prediction_precision(model) == ("bfloat16" if cpu_supports_bf16() else "float32")
    assert prediction_precision(model, TileSettings(int8=True)) == "int8"


def test_predict_does_not_overwrite_without_permission(tmp_path, trained_2d_run, noisy_dir, capsys):
    model, out = trained_2d_run / "model", tmp_path / "results"
    code, _, err = run_cli(capsys, "predict", model, "--input", noisy_dir, "--out", out)
    assert code == 0, err
    earlier = folder_digest(out)
    (out / "a.tif").write_bytes(b"the user's edited result")  # must survive
    earlier["a.tif"] = folder_digest(out)["a.tif"]

    code, _, err = run_cli(capsys, "predict", model, "--input", noisy_dir, "--out", out)
    assert_user_error(code, err, out, "--overwrite")
    assert folder_digest(out) == earlier

    code, _, err = run_cli(
        capsys, "predict", model, "--input", noisy_dir, "--out", out, "--overwrite"
    )
    assert code == 0, err
    assert tifffile.imread(out / "a.tif").shape == (64, 64)
    assert no_partial_files(out) == []


def test_model_path_that_is_a_run_folder_gets_a_hint(tmp_path, trained_2d_run, noisy_dir, capsys):
    code, _, err = run_cli(
        capsys, "predict", trained_2d_run, "--input", noisy_dir, "--out", tmp_path / "out"
    )
    assert_user_error(code, err, trained_2d_run, "run folder", "'model'")
    assert not (tmp_path / "out").exists()


def test_missing_model_folder(tmp_path, noisy_dir, capsys):
    missing = tmp_path / "no-model"
    code, _, err = run_cli(
        capsys, "predict", missing, "--input", noisy_dir, "--out", tmp_path / "out"
    )
    assert_user_error(code, err, missing)


def test_model_folder_of_a_newer_format_is_refused(tmp_path, trained_2d_run, noisy_dir, capsys):
    model = tmp_path / "future-model"
    shutil.copytree(trained_2d_run / "model", model)
    info = json.loads((model / "deepscope_model.json").read_text())
    info["format_version"] = 99
    (model / "deepscope_model.json").write_text(json.dumps(info))
    code, _, err = run_cli(
        capsys, "predict", model, "--input", noisy_dir, "--out", tmp_path / "out"
    )
    assert_user_error(code, err, model, "99", "update deepscope")
    assert not (tmp_path / "out").exists()


def _fail_during_write(code):
    def writer(tmp, data, axes, metadata):
        tmp.write_bytes(b"half an image")  # the disk fills up mid-file
        raise OSError(code, "simulated")

    return writer


def _fail_on_rename(code):
    def replace(src, dst):
        raise OSError(code, "simulated")

    return replace


@pytest.mark.parametrize(
    "code, words",
    [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only")],
    ids=["disk-full", "read-only"],
)
@pytest.mark.parametrize("where", ["write", "rename"])
def test_unwritable_output_is_a_clear_error_without_partial_files(
    where, code, words, tmp_path, trained_2d_run, noisy_dir, capsys, monkeypatch
):
    out = tmp_path / "results"
    model = trained_2d_run / "model"
    before = folder_digest(noisy_dir)
    if where == "write":
        monkeypatch.setitem(dsio._WRITERS, ".tif", _fail_during_write(code))
    else:
        monkeypatch.setattr(dsio.os, "replace", _fail_on_rename(code))
    status, _, err = run_cli(capsys, "predict", model, "--input", noisy_dir, "--out", out)
    monkeypatch.undo()
    assert_user_error(status, err, out, words)
    assert no_partial_files(out) == []
    assert list(out.glob("*.tif")) == []
    assert folder_digest(noisy_dir) == before


# ------------------------------------------------------------------------------ qc


def test_qc_with_unpaired_names(tmp_path, trained_2d_run, clean_pair_dirs, capsys):
    qc_in, qc_gt = clean_pair_dirs
    (qc_gt / "q.tif").rename(qc_gt / "other.tif")
    code, _, err = run_cli(
        capsys,
        "qc",
        trained_2d_run / "model",
        "--images",
        qc_in,
        "--targets",
        qc_gt,
        "--out",
        tmp_path / "qc",
    )
    assert_user_error(code, err, qc_in, "q.tif")


def test_qc_refuses_an_earlier_report_or_a_data_folder_without_losing_anything(
    tmp_path, trained_2d_run, clean_pair_dirs, capsys
):
    run = tmp_path / "run"
    shutil.copytree(trained_2d_run, run)  # QC writes into the model folder
    qc_in, qc_gt = clean_pair_dirs
    out = tmp_path / "qc"
    args = ["qc", run / "model", "--images", qc_in, "--targets", qc_gt, "--out", out]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    first = folder_digest(out)
    assert "report.html" in first and any(name.startswith("figures/") for name in first)
    (out / "figures" / "stale.png").write_bytes(b"an earlier report's figure")
    notes = out / "my notes.txt"  # not the report's: stays in every case
    notes.write_text("keep me")
    code, _, err = run_cli(capsys, *args)
    assert_user_error(code, err, out, "earlier report", "--overwrite")
    assert folder_digest(out) == {**first, "figures/stale.png": ANY, "my notes.txt": ANY}
    code, _, err = run_cli(capsys, *args, "--overwrite")
    assert code == 0, err
    assert not (out / "figures" / "stale.png").exists()
    assert notes.read_text() == "keep me"
    assert json.loads((out / "summary.json").read_text())["model"]["psnr"] > 0
    # the images' or the targets' folder as the report folder: refused, nothing written
    for data in (qc_in, qc_gt):
        before = folder_digest(data)
        code, _, err = run_cli(capsys, *args[:-1], data, "--overwrite")
        assert_user_error(code, err, data, "separate folder")
        assert folder_digest(data) == before


def test_qc_on_training_images_says_the_scores_are_not_held_out(
    tmp_path, trained_2d_run, clean_pair_dirs, capsys
):
    run = tmp_path / "run"
    shutil.copytree(trained_2d_run, run)  # QC writes into the model folder
    model = run / "model"
    record = json.loads((model / "training_images.json").read_text())
    assert [i["name"] for i in record["images"]] == ["a.tif", "b.tif", "c.tif"]
    qc_in, qc_gt = clean_pair_dirs
    code, out, err = run_cli(
        capsys, "qc", model, "--images", qc_in, "--targets", qc_gt, "--out", tmp_path / "qc1"
    )
    assert code == 0, err
    assert "Caution" not in out
    assert "seen_in_training" not in json.loads((tmp_path / "qc1" / "summary.json").read_text())
    # a training image among the QC images (under another name: the content counts)
    write_tif(qc_in / "r.tif", synthetic_pair((64, 64), seed=1)[0])  # training image b
    write_tif(qc_gt / "r.tif", synthetic_pair((64, 64), seed=1)[1])
    code, out, err = run_cli(
        capsys, "qc", model, "--images", qc_in, "--targets", qc_gt, "--out", tmp_path / "qc2"
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "qc2" / "summary.json").read_text())
    assert summary["seen_in_training"] == ["r.tif"]
    assert "1 of these 3 QC images" in summary["caution"] and "Caution: 1 of these 3" in out
    html = (tmp_path / "qc2" / "report.html").read_text()
    assert html.index("trained on (r.tif)") < html.index("<h2")  # at the top


def test_progress_in_a_log_is_a_line_per_image_not_a_flood(capsys, monkeypatch):
    from deepscope.interfaces import progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)  # a log file
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    update = progress.progress_bar("predicting")
    for i in range(1, 41):  # 40 tiles of 4 images, a second each
        clock[0] += 1.0
        update(f"{'abcd'[(i - 1) // 10]}.tif", i / 10, 4)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 5 and "\r" not in "".join(lines)  # the first tile, then each image
    assert lines[0].startswith("predicting: 0.1/4 images (a.tif;")
    assert lines[1].startswith("predicting: 1/4 images (a.tif; 10 s elapsed, about 30 s left")
    assert lines[-1].startswith("predicting: 4/4 images (d.tif; 40 s") and "left" not in lines[-1]
    fast = progress.progress_bar("measuring", "frames")  # 300 frames in 3 seconds: not 300 lines
    for i in range(1, 301):
        clock[0] += 0.01
        fast("", i, 300)
    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= 3 and lines[-1].startswith("measuring: 300/300 frames (")


def test_progress_bar_counts_parts_of_images_without_a_bogus_rate(capsys, monkeypatch):
    from deepscope.interfaces.progress import progress_bar, stage_bars

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a terminal
    update = progress_bar("predicting")
    update("a.tif", 0.5, 2)  # the first half of an image, done within microseconds
    update("a.tif", 1.0, 2)
    update("b.tif", 2.0, 2)
    err = capsys.readouterr().err
    assert "0.5/2 images" in err and "2/2 images" in err and "b.tif" in err
    assert "/s" not in err  # no images-per-second figure from a near-zero time

    stages = stage_bars()
    stages("checkpoints", 0, 3)
    stages("checkpoints", 3, 3)
    assert "3/3 steps" in capsys.readouterr().err


def test_restoration_summary_prints_images_identical_to_their_targets(capsys) -> None:
    from deepscope.interfaces.cli import _print_restoration_summary

    _print_restoration_summary(  # summary.json stores an infinite PSNR as null
        {
            "input": {"psnr": None, "psnr_matched": None, "ssim": 1.0, "ssim_matched": 1.0},
            "model": {"psnr_matched": 30.0, "ssim_matched": 0.9},
        }  # fmt: skip
    )
    out = capsys.readouterr().out
    assert "noisy input            identical to the targets" in out
    assert "PSNR  30.00 dB   SSIM 0.900" in out
