"""What ``train --resume`` refuses, and what a new run that fails to start leaves behind.

A resumed training is the run's own training continued: its task, its data and its
settings (only the number of epochs and the time budget can change). Anything else given
is refused before the run folder is touched, naming what differs and what to do.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import TINY_CONFIG, folder_digest, synthetic_pair, write_tif
from deepscope.config import config_from_dict
from deepscope.errors import DeepscopeError
from deepscope.interfaces.cli import main
from deepscope.workflow import transfer
from deepscope.workflow.training import train


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture
def run(trained_2d_run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished 2-epoch n2v run (trained on ``images/``)."""
    copy_ = tmp_path / "run"
    shutil.copytree(trained_2d_run, copy_)
    return copy_


@pytest.fixture
def images(trained_2d_run: Path) -> Path:
    return trained_2d_run.parent / "images"


def _tiny_file(tmp_path: Path, **data: object) -> Path:
    d = copy.deepcopy(TINY_CONFIG)
    d["data"].update(data)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _user_error(code: int, err: str, *names: object) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "What to do:" in err
    for name in names:
        assert str(name) in err, f"{name!r} not named in:\n{err}"


# ------------------------------------------------------------------- refused


def test_resume_as_another_task_is_refused_naming_both(run, images, tmp_path, capsys):
    before = folder_digest(run)
    args = ["--images", images, "--targets", images, "--out", run, "--resume", "--epochs", 5]
    code, err = _cli(capsys, "train", "care", *args)
    _user_error(code, err, run, "task n2v", "task care", "train n2v", "new --out")
    assert folder_digest(run) == before


def test_resume_on_other_images_is_refused_naming_both_folders(run, images, tmp_path, capsys):
    other = tmp_path / "other_images"
    for i, name in enumerate("abc"):
        write_tif(other / f"{name}.tif", synthetic_pair((64, 64), seed=50 + i)[0])
    before = folder_digest(run)
    args = ["--images", other, "--out", run, "--resume", "--epochs", 5]
    code, err = _cli(capsys, "train", "n2v", *args, "--config", _tiny_file(tmp_path))
    _user_error(code, err, images, other, "--images", "validation.json", "images_folder")
    assert folder_digest(run) == before, "the run's validation.json must stay as it was"


def test_resume_with_other_settings_is_refused_naming_each(run, images, tmp_path, capsys):
    before = folder_digest(run)
    args = ["--images", images, "--out", run, "--resume", "--epochs", 5, "--learning-rate", 0.1]
    code, err = _cli(
        capsys, "train", "n2v", *args, "--config", _tiny_file(tmp_path, patch_size=[48, 48])
    )
    _user_error(
        code,
        err,
        "training.learning_rate 0.1 (the run has 0.0004)",
        "data.patch_size [48, 48] (the run has [32, 32])",
        "--epochs and --max-minutes",
        f"--from {run / 'model'}",
    )
    assert "training.epochs" not in err  # the one thing that may change
    assert folder_digest(run) == before


# ------------------------------------------------------------------- accepted


def test_resume_of_the_same_data_by_another_path_and_the_same_settings(
    run, images, tmp_path, monkeypatch
):
    link = tmp_path / "link_to_images"
    link.symlink_to(images, target_is_directory=True)
    longer = copy.deepcopy(TINY_CONFIG)  # the run's own settings, given again
    longer["training"]["epochs"] = 3
    result = train(config_from_dict(longer), link, run, resume=True, show_bar=False, log=_quiet)
    assert result.epochs_trained == 3
    record = json.loads((run / "validation.json").read_text())["summary"]
    assert record["images_folder"] == str(images.resolve())  # recorded absolute

    # An older run recorded the folder as given, relative to where it was started.
    record["images_folder"] = "images"
    (run / "validation.json").write_text(json.dumps({"summary": record}))
    monkeypatch.chdir(tmp_path)
    result = train(
        config_from_dict({"task": "n2v", "training": {"epochs": 4}}),
        images,
        run,
        resume=True,
        show_bar=False,
        log=_quiet,
    )
    assert result.epochs_trained == 4

    (run / "validation.json").write_text(json.dumps({"summary": {}}))  # nothing recorded
    result = train(
        config_from_dict({"task": "n2v", "training": {"epochs": 5}}),
        images,
        run,
        resume=True,
        show_bar=False,
        log=_quiet,
    )
    assert result.epochs_trained == 5


# ------------------------------------------------- a new run that fails to start


def test_a_run_that_fails_before_training_leaves_nothing_behind(run, images, tmp_path, monkeypatch):
    def no_fit(*_args, **_kwargs):
        raise DeepscopeError("no layer of the start model fits", fix="train from scratch")

    monkeypatch.setattr(transfer, "load_start_weights", no_fit)
    d = copy.deepcopy(TINY_CONFIG)
    d["training"]["start_from"] = str(tmp_path / "start")
    monkeypatch.setattr(transfer, "check_start_model", lambda *_a: None)
    monkeypatch.setattr(transfer, "adopt_start_network", lambda c, _s: (c, {}))
    out = tmp_path / "runs" / "new"
    with pytest.raises(DeepscopeError, match="no layer"):
        train(config_from_dict(d), images, out, show_bar=False, log=_quiet)
    assert not out.exists(), "the failed start must not block a retry"

    empty = tmp_path / "made_by_the_user"
    empty.mkdir()
    with pytest.raises(DeepscopeError, match="no layer"):
        train(config_from_dict(d), images, empty, show_bar=False, log=_quiet)
    assert empty.is_dir() and not any(empty.iterdir()), "a folder that existed stays"

    # Any failure before the first epoch, e.g. a setting the data cannot have.
    d = copy.deepcopy(TINY_CONFIG)
    d["data"]["foreground_fraction"] = 0.5
    with pytest.raises(DeepscopeError, match="foreground_fraction"):
        train(config_from_dict(d), images, out, show_bar=False, log=_quiet)
    assert not out.exists()

    # A resumed run that fails keeps every file: it is the user's training.
    monkeypatch.setattr("deepscope.workflow.training._patch_datasets", no_fit)
    before = set(folder_digest(run))
    with pytest.raises(DeepscopeError, match="no layer"):
        longer = config_from_dict({"task": "n2v", "training": {"epochs": 3}})
        train(longer, images, run, resume=True, show_bar=False, log=_quiet)
    assert set(folder_digest(run)) == before


def test_an_onnx_only_start_model_is_refused_before_anything_is_written(
    trained_2d_run, images, tmp_path
):
    start = tmp_path / "imported"
    shutil.copytree(trained_2d_run / "model", start)
    info = json.loads((start / "deepscope_model.json").read_text())
    info["network"] = {"format": "onnx", "file": "weights.pt"}
    (start / "deepscope_model.json").write_text(json.dumps(info))
    d = copy.deepcopy(TINY_CONFIG)
    d["training"]["start_from"] = str(start)
    out = tmp_path / "new"
    with pytest.raises(DeepscopeError) as err:
        train(config_from_dict(d), images, out, show_bar=False, log=_quiet)
    assert not out.exists()
    assert "ONNX weights only" in err.value.problem
