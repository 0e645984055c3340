"""End-to-end Noise2Void: train → model folder → predict → QC, stopping and resuming.

Tiny synthetic data and a tiny network (see conftest.py), so each training takes seconds.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import signal

import numpy as np
import pytest
import tifffile
import torch

from conftest import folder_digest
from deepscope.config import load_config
from deepscope.data.io import read_image
from deepscope.engine.module import TaskModule
from deepscope.errors import DeepscopeError, OutputError
from deepscope.interfaces.cli import main
from deepscope.workflow.model_folder import MODEL_FORMAT_VERSION, load_model_folder
from deepscope.workflow.predict import predict_files
from deepscope.workflow.qc import run_qc
from deepscope.workflow.training import train

MODEL_FILES = [
    "deepscope_model.json",
    "config.yaml",
    "normalization.json",
    "weights.pt",
    "history.csv",
    "MODEL_CARD.md",
]


def _quiet(_msg: str) -> None:
    pass


def _train(config, images, run_dir, **kwargs):
    kwargs.setdefault("show_bar", False)
    kwargs.setdefault("log", _quiet)
    return train(config, images, run_dir, **kwargs)


def _rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _epochs(run_dir):
    return [int(r["epoch"]) for r in _rows(run_dir / "metrics.csv")]


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_metrics(run_dir, n_epochs):
    rows = _rows(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(n_epochs))
    for r in rows:
        assert math.isfinite(float(r["train_loss"])), r
        assert math.isfinite(float(r["val_loss"])), r
    return rows


def _check_model_folder(model_dir, *, dims, axes, n_epochs):
    for name in MODEL_FILES:
        assert (model_dir / name).is_file(), f"{name} missing in {model_dir}"
    kept = sorted(p.name for p in (model_dir / "checkpoints").glob("*.pt"))
    # checkpoint_every=1: one per epoch, plus the last one.
    assert kept == [f"epoch_{e:04d}.pt" for e in range(1, n_epochs + 1)] + ["last.pt"]
    info = json.loads((model_dir / "deepscope_model.json").read_text())
    assert info["format_version"] == MODEL_FORMAT_VERSION
    assert info["task"] == "n2v"
    assert info["spatial_dims"] == dims
    assert info["input_axes"] == axes
    assert info["in_channels"] == 1
    assert info["training"]["epochs_trained"] == n_epochs
    cfg = load_config(model_dir / "config.yaml")
    assert cfg.model.base_channels == 4 and cfg.data.spatial_dims == dims
    norm = json.loads((model_dir / "normalization.json").read_text())
    assert "input" in norm
    # history.csv is the run's metrics.csv.
    run_dir = model_dir.parent
    assert _rows(model_dir / "history.csv") == _rows(run_dir / "metrics.csv")
    assert "Noise2Void" in (model_dir / "MODEL_CARD.md").read_text()
    # Loadable, and the periodic checkpoints too.
    model = load_model_folder(model_dir)
    assert model.checkpoint_names() == [p.removesuffix(".pt") for p in kept]
    model.network_from_checkpoint("epoch_0001")


def _check_predictions(inputs, out_dir, model_dir, axes):
    names = sorted(p.name for p in inputs.iterdir())
    results = sorted(p.name for p in out_dir.glob("*.tif"))
    assert results == names
    for name in names:
        src = read_image(inputs / name)
        dst = read_image(out_dir / name)
        assert dst.data.shape == src.data.shape
        assert dst.axes == src.axes == axes
        assert dst.data.dtype == np.float32
        assert np.isfinite(dst.data).all()
        assert dst.data.std() > 0
    prov = json.loads((out_dir / "provenance.json").read_text())
    assert prov["task"] == "n2v"
    assert prov["model"] == str(model_dir.resolve())
    listed = {f["output"]: f for f in prov["files"]}
    assert sorted(listed) == names
    for name in names:
        assert listed[name]["input"] == str((inputs / name).resolve())
        assert listed[name]["input_sha256"] == _sha256(inputs / name)
        assert listed[name]["input_axes"] == listed[name]["axes"] == axes
    # Nothing but the results and the record.
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(names + ["provenance.json"])


def _check_qc(qc_dir, model_dir, n_images):
    html = (qc_dir / "report.html").read_text()
    assert "<html" in html.lower()
    summary = json.loads((qc_dir / "summary.json").read_text())
    for key in ("model", "input", "gaussian", "checkpoints"):
        assert key in summary, f"summary.json lacks {key!r}"
    assert math.isfinite(summary["model"]["psnr"])
    names = {c["name"] for c in summary["checkpoints"]}
    assert "last" in names and "epoch_0001" in names
    rows = _rows(qc_dir / "metrics.csv")
    assert {r["method"] for r in rows} >= {"model", "input"}
    assert len({r["image"] for r in rows}) == n_images
    in_model = json.loads((model_dir / "qc_summary.json").read_text())
    assert in_model["model"] == summary["model"]


# ----------------------------------------------------------------------- end to end


def test_end_to_end_2d_cli(tmp_path, noisy_dir, clean_pair_dirs, tiny_config_args, capsys):
    qc_in, qc_gt = clean_pair_dirs
    before = {d: folder_digest(d) for d in (noisy_dir, qc_in, qc_gt)}
    run = tmp_path / "run"
    assert (
        main(["train", "n2v", "--images", str(noisy_dir), "--out", str(run), *tiny_config_args])
        == 0
    )
    out = capsys.readouterr().out
    assert "finished all 2 epochs" in out and str(run / "model") in out
    _check_metrics(run, 2)
    _check_model_folder(run / "model", dims=2, axes="YX", n_epochs=2)

    pred = tmp_path / "denoised"
    assert main(["predict", str(run / "model"), "--input", str(noisy_dir), "--out", str(pred)]) == 0
    _check_predictions(noisy_dir, pred, run / "model", "YX")

    qc = tmp_path / "qc"
    assert (
        main(
            [
                "qc",
                str(run / "model"),
                "--images",
                str(qc_in),
                "--targets",
                str(qc_gt),
                "--out",
                str(qc),
            ]
        )
        == 0
    )
    assert "PSNR" in capsys.readouterr().out
    _check_qc(qc, run / "model", n_images=2)

    for d, digest in before.items():
        assert folder_digest(d) == digest, f"{d} was modified"


def test_end_to_end_3d_api(tmp_path, stack_dir, stack_pair_dirs, make_config):
    qc_in, qc_gt = stack_pair_dirs
    before = {d: folder_digest(d) for d in (stack_dir, qc_in, qc_gt)}
    run = tmp_path / "run3d"
    result = _train(make_config(three_d=True), stack_dir, run)
    assert result.model_dir == run / "model"
    assert result.epochs_trained == 2
    assert result.stopped_because == "finished all 2 epochs"
    _check_metrics(run, 2)
    _check_model_folder(run / "model", dims=3, axes="ZYX", n_epochs=2)

    model = load_model_folder(run / "model")
    pred = tmp_path / "pred3d"
    written = predict_files(model, stack_dir, pred)
    assert sorted(p.name for p in written) == ["s1.tif", "s2.tif"]
    _check_predictions(stack_dir, pred, run / "model", "ZYX")

    qc = tmp_path / "qc3d"
    summary = run_qc(model, qc_in, qc_gt, qc)
    assert set(summary) >= {"model", "input", "gaussian", "checkpoints"}
    _check_qc(qc, run / "model", n_images=1)

    for d, digest in before.items():
        assert folder_digest(d) == digest, f"{d} was modified"


def test_single_file_prediction_keeps_name_as_tif(tmp_path, noisy_dir, trained_2d_run):
    src = tmp_path / "one.ome.tiff"
    tifffile.imwrite(src, tifffile.imread(noisy_dir / "a.tif"))
    model = load_model_folder(trained_2d_run / "model")
    written = predict_files(model, src, tmp_path / "out")
    assert [p.name for p in written] == ["one.tif"]
    assert tifffile.imread(written[0]).shape == (64, 64)


# ------------------------------------------------------------------ stopping early


def test_time_budget_stops_gracefully_and_keeps_a_model(tmp_path, noisy_dir, make_config):
    cfg = make_config(training__epochs=1000, training__max_minutes=0.02)
    result = _train(cfg, noisy_dir, tmp_path / "run")
    assert result.stopped_because == "time budget reached"
    assert 1 <= result.epochs_trained < 1000
    assert result.minutes < 0.5
    info = json.loads((result.model_dir / "deepscope_model.json").read_text())
    assert info["training"]["stopped_because"] == "time budget reached"
    assert info["training"]["epochs_trained"] == len(_epochs(tmp_path / "run"))
    load_model_folder(result.model_dir)


def test_stop_file_stops_training_and_keeps_a_model(tmp_path, noisy_dir, make_config):
    run = tmp_path / "run"

    def press_stop(event):
        if event["epoch"] == 1:
            (run / "STOP").write_text("")

    result = _train(make_config(training__epochs=50), noisy_dir, run, listener=press_stop)
    assert result.stopped_because == "stopped on request"
    assert result.epochs_trained < 50
    assert not (run / "STOP").exists(), "the STOP file must be removed once obeyed"
    assert _epochs(run) == list(range(result.epochs_trained))
    load_model_folder(result.model_dir)


def test_stale_stop_file_does_not_stop_a_new_resume(tmp_path, noisy_dir, make_config):
    run = tmp_path / "run"
    _train(make_config(), noisy_dir, run)
    (run / "STOP").write_text("")  # e.g. left behind by a crash after the button was pressed
    result = _train(make_config(training__epochs=3), noisy_dir, run, resume=True)
    assert result.stopped_because == "finished all 3 epochs"
    assert _epochs(run) == [0, 1, 2]


# ------------------------------------------------------------------------- resuming


def test_resume_finished_run_with_more_epochs_continues(tmp_path, noisy_dir, make_config):
    run = tmp_path / "run"
    first = _train(make_config(training__epochs=2), noisy_dir, run)
    assert first.epochs_trained == 2
    rows_before = _rows(run / "metrics.csv")
    config_before = (run / "config.yaml").read_text()

    logs: list[str] = []
    second = _train(make_config(training__epochs=4), noisy_dir, run, resume=True, log=logs.append)
    assert any("resuming from last.ckpt" in m for m in logs), logs
    assert second.epochs_trained == 4
    assert second.stopped_because == "finished all 4 epochs"
    rows = _check_metrics(run, 4)
    assert rows[:2] == rows_before, "finished epochs must be kept as they were"
    assert (run / "config.yaml").read_text() == config_before
    _check_model_folder(run / "model", dims=2, axes="YX", n_epochs=4)


def test_resume_keeps_the_runs_own_epochs_unless_given(tmp_path, noisy_dir, make_config, capsys):
    run = tmp_path / "run"
    _train(make_config(training__epochs=3), noisy_dir, run)
    # Resumed without an epoch count (the CLI without --epochs): the run's own 3 stay;
    # the default (100) used to replace them.
    data = make_config().model_dump(mode="json", exclude_unset=True)
    del data["training"]["epochs"]
    unset = type(make_config()).model_validate(data)
    assert "epochs" not in unset.training.model_fields_set
    again = _train(unset, noisy_dir, run, resume=True)
    assert again.epochs_trained == 3 and _epochs(run) == [0, 1, 2]
    # The same from the command line, without --config or --epochs.
    args = ["train", "n2v", "--images", str(noisy_dir), "--out", str(run), "--resume"]
    assert main(args) == 0
    assert _epochs(run) == [0, 1, 2]
    # Fewer epochs than the run has done: a clear message, not Lightning's traceback.
    with pytest.raises(DeepscopeError, match="already run 3 epochs") as err:
        _train(make_config(training__epochs=2), noisy_dir, run, resume=True)
    assert "--epochs larger than 3" in err.value.fix
    assert _epochs(run) == [0, 1, 2]


def test_resume_without_a_run_is_a_clear_error(tmp_path, noisy_dir, make_config):
    run = tmp_path / "nothing-here"
    with pytest.raises(DeepscopeError) as exc:
        _train(make_config(), noisy_dir, run, resume=True)
    err = exc.value
    assert err.path == run
    assert "resume" in err.problem and err.fix
    assert not (run / "checkpoints").exists()


def test_existing_run_folder_without_resume_is_refused(tmp_path, noisy_dir, make_config):
    run = tmp_path / "run"
    _train(make_config(), noisy_dir, run)
    before = folder_digest(run)
    with pytest.raises(OutputError) as exc:
        _train(make_config(), noisy_dir, run)
    assert exc.value.path == run
    assert "--resume" in exc.value.fix
    assert folder_digest(run) == before, "a refused training must not touch the old run"


def test_damaged_last_checkpoint_falls_back_to_epoch_checkpoint(tmp_path, noisy_dir, make_config):
    run = tmp_path / "run"
    _train(make_config(training__epochs=3, training__checkpoint_every=2), noisy_dir, run)
    ckpts = run / "checkpoints"
    assert (ckpts / "epoch_0002.ckpt").exists() and not (ckpts / "epoch_0003.ckpt").exists()
    last = ckpts / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # truncated copy

    logs: list[str] = []
    result = _train(
        make_config(training__epochs=4, training__checkpoint_every=2),
        noisy_dir,
        run,
        resume=True,
        log=logs.append,
    )
    assert any("resuming from epoch_0002.ckpt" in m for m in logs), logs
    assert result.epochs_trained == 4
    # Epoch 3 (index 2) is trained again, its old row replaced, not duplicated.
    _check_metrics(run, 4)
    load_model_folder(run / "model")


@pytest.fixture
def time_limit():
    """Turn a hang (e.g. an endless loop while saving a checkpoint) into a failure."""

    def on_alarm(signum, frame):
        raise TimeoutError("training did not finish in time: is it stuck?")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_last_checkpoint_is_the_last_epoch_even_when_val_loss_gets_worse(
    tmp_path, noisy_dir, make_config, monkeypatch, time_limit
):
    def worse_each_epoch(self, batch, batch_idx):
        self.log(
            "val_loss",
            torch.tensor(float(self.current_epoch)),
            on_epoch=True,
            batch_size=len(batch["input"]),
        )

    monkeypatch.setattr(TaskModule, "validation_step", worse_each_epoch)
    run = tmp_path / "run"
    _train(make_config(training__epochs=3), noisy_dir, run)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2
    assert torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)["epoch"] == 0
    info = json.loads((run / "model" / "deepscope_model.json").read_text())["training"]
    assert info["epochs_trained"] == 3
    assert info["best_epoch"] == 1
    assert info["best_val_loss"] == 0.0
    best = torch.load(run / "model" / "weights.pt")
    last = torch.load(run / "model" / "checkpoints" / "last.pt")
    assert any(not torch.equal(best[k], last[k]) for k in best), "last.pt must be epoch 3"

    logs: list[str] = []
    _train(make_config(training__epochs=4), noisy_dir, run, resume=True, log=logs.append)
    assert any("resuming from last.ckpt" in m for m in logs), logs
    assert _epochs(run) == [0, 1, 2, 3]


def test_resume_retrains_an_epoch_whose_periodic_checkpoint_exists(
    tmp_path, noisy_dir, make_config, time_limit
):
    """As after a kill between writing epoch_0002.ckpt and last.ckpt."""
    run = tmp_path / "run"
    _train(make_config(training__epochs=2), noisy_dir, run)
    ckpts = run / "checkpoints"
    shutil.copyfile(ckpts / "epoch_0001.ckpt", ckpts / "last.ckpt")
    old = (ckpts / "epoch_0002.ckpt").read_bytes()

    result = _train(make_config(training__epochs=3), noisy_dir, run, resume=True)
    assert result.epochs_trained == 3
    assert _epochs(run) == [0, 1, 2]
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == [
        "best.ckpt",
        "epoch_0001.ckpt",
        "epoch_0002.ckpt",
        "epoch_0003.ckpt",
        "last.ckpt",
    ]
    assert (ckpts / "epoch_0002.ckpt").read_bytes() != old, "the re-trained epoch replaces it"


def test_resume_after_time_budget_gets_a_new_budget(tmp_path, noisy_dir, make_config):
    run = tmp_path / "run"
    cfg = make_config(training__epochs=1000, training__max_minutes=0.02)
    first = _train(cfg, noisy_dir, run)
    assert first.stopped_because == "time budget reached"
    n_first = len(_epochs(run))
    second = _train(cfg, noisy_dir, run, resume=True)
    assert second.stopped_because == "time budget reached"
    assert len(_epochs(run)) > n_first, "the resumed session must train more epochs"


def test_demo_runs_the_whole_workflow_on_the_shipped_images(tmp_path, capsys):
    """`deepscope demo` (the README's first command), with a few seconds of training."""
    from deepscope.demo import demo_data_dir

    shipped = folder_digest(demo_data_dir())
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-minutes", "0.05"]) == 0
    printed = capsys.readouterr().out
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "PSNR (brightness-matched)"):
        assert step in printed
    assert str(out / "qc" / "report.html") in printed
    assert (out / "qc" / "report.html").stat().st_size > 10_000  # with its pictures
    noisy = sorted(p.name for p in (demo_data_dir() / "noisy").glob("*.tif"))
    assert sorted(p.name for p in (out / "denoised").glob("*.tif")) == noisy
    summary = json.loads((out / "qc" / "summary.json").read_text())
    # seconds of training: the workflow is under test here, its quality in benchmarks/
    assert all(math.isfinite(summary[m]["psnr_matched"]) for m in ("model", "input", "gaussian"))
    assert folder_digest(demo_data_dir()) == shipped  # the shipped images are untouched
    provenance = json.loads((out / "denoised" / "provenance.json").read_text())
    assert provenance["test_time_augmentation"] is True  # as step 3 says

    # A second demo replaces the first; a folder that is not a demo's is refused.
    assert main(["demo", "--out", str(out), "--max-minutes", "0.05"]) == 0
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    assert main(["demo", "--out", str(other), "--max-minutes", "0.05"]) != 0
    assert (other / "keep.txt").read_text() == "precious"


def test_the_live_progress_bar_is_only_drawn_on_a_terminal(tmp_path, make_config, monkeypatch):
    import sys

    from deepscope.engine.trainer import build_trainer

    cfg = make_config().training
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    trainer, _ = build_trainer(tmp_path / "a", cfg)
    assert trainer.progress_bar_callback is None  # a log file gets the per-epoch lines only
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    trainer, _ = build_trainer(tmp_path / "b", cfg)
    assert trainer.progress_bar_callback is not None
    trainer, _ = build_trainer(tmp_path / "c", cfg, show_bar=False)
    assert trainer.progress_bar_callback is None
