"""The Python API (``import deepscope``): the command line's steps as functions."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import deepscope
from conftest import TINY_CONFIG, synthetic_pair, write_tif
from deepscope.errors import ConfigError, DeepscopeError, OutputError


def test_import_deepscope_is_lazy_and_lists_the_api():
    import subprocess

    code = "import sys, deepscope; print('torch' in sys.modules, 'validate' in dir(deepscope))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]  # the API is there, torch not loaded yet
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        deepscope.trian  # noqa: B018


def test_make_config_takes_dotted_and_nested_settings_and_names_bad_ones(tmp_path):
    cfg = deepscope.make_config(
        "n2v", TINY_CONFIG, {"training.epochs": 7, "model": {"base_channels": 8}}
    )
    assert cfg.training.epochs == 7 and cfg.model.base_channels == 8
    assert cfg.data.patch_size == [32, 32]  # from the config, untouched
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    assert deepscope.make_config("n2v", path).training.epochs == 7
    with pytest.raises(ConfigError, match=r"training\.epochz"):
        deepscope.make_config("n2v", settings={"training.epochz": 3})
    with pytest.raises(ConfigError, match="for task 'n2v', not 'care'"):
        deepscope.make_config("care", path)


def test_validate_train_predict_evaluate_from_python(tmp_path, noisy_dir, clean_pair_dirs):
    report = deepscope.validate("n2v", noisy_dir, config=TINY_CONFIG)
    assert report.ok
    bad = tmp_path / "bad"
    write_tif(bad / "flat.tif", np.full((64, 64), 7, np.uint16))
    assert not deepscope.validate("n2v", bad, config=TINY_CONFIG).ok

    run = deepscope.train(
        "n2v",
        noisy_dir,
        tmp_path / "run",
        config=TINY_CONFIG,
        settings={"training.epochs": 1},
        progress=False,
    )
    assert run.epochs_trained == 1 and (run.model_dir / "weights.pt").exists()

    written = deepscope.predict(run.model_dir, noisy_dir, tmp_path / "out", progress=False)
    assert [p.name for p in written] == ["a.tif", "b.tif", "c.tif"]
    # in memory: exactly what predict wrote for the same file
    model = deepscope.load_model(run.model_dir)
    image = tifffile.imread(noisy_dir / "b.tif")
    result = deepscope.predict_image(model, image)
    assert result.shape == image.shape
    np.testing.assert_array_equal(result, tifffile.imread(tmp_path / "out" / "b.tif"))

    qc_noisy, qc_clean = clean_pair_dirs
    summary = deepscope.evaluate(model, qc_noisy, tmp_path / "qc", qc_clean, progress=False)
    assert set(summary) >= {"model", "input", "gaussian"} and "psnr" in summary["model"]
    assert json.loads((tmp_path / "qc" / "summary.json").read_text())["model"] == summary["model"]
    assert (tmp_path / "qc" / "report.html").exists()

    again = deepscope.train(
        "n2v",
        noisy_dir,
        tmp_path / "run",
        config=TINY_CONFIG,
        settings={"training.epochs": 2},
        resume=True,
        progress=False,
    )
    assert again.epochs_trained == 2


def test_training_starts_from_a_loaded_model(tmp_path, trained_2d_run, noisy_dir):
    model = deepscope.load_model(trained_2d_run / "model")
    targets = tmp_path / "second_noisy"
    for i, name in enumerate(["a", "b", "c"]):
        write_tif(targets / f"{name}.tif", synthetic_pair((64, 64), seed=i)[0])
    run = deepscope.train(
        "n2n",
        noisy_dir,
        tmp_path / "n2n",
        targets,
        config={k: v for k, v in copy.deepcopy(TINY_CONFIG).items() if k != "task"},
        settings={"training.epochs": 1},
        start_from=model,
        progress=False,
    )
    cfg = deepscope.load_model(run.model_dir).config
    assert cfg.task == "n2n"
    assert cfg.training.start_from == str((trained_2d_run / "model").resolve())


def test_prediction_options_are_checked_and_leave_the_callers_model_alone(tmp_path, noisy_dir):
    nuclei = deepscope.load_model("nuclei")
    tuned = nuclei.config.stardist.prob_threshold
    rng = np.random.default_rng(0)
    image = rng.integers(0, 50, (96, 96)).astype(np.uint8)
    for y, x in [(30, 30), (60, 70)]:
        yy, xx = np.ogrid[:96, :96]
        image[(yy - y) ** 2 + (xx - x) ** 2 < 81] = 200
    labels = deepscope.predict_image(nuclei, image)
    assert labels.shape == image.shape and labels.max() == 2
    strict = deepscope.predict_image(nuclei, image, prob_threshold=0.999)
    assert strict.max() < labels.max()
    assert nuclei.config.stardist.prob_threshold == tuned  # the given model is not changed
    rgb = np.repeat(image[..., None], 3, axis=2)  # a colour picture, read as grey
    np.testing.assert_array_equal(deepscope.predict_image(nuclei, rgb), labels)
    # everything predict writes, in memory: the labels and the measurements table
    outputs = deepscope.predict_image_outputs(nuclei, image)
    assert set(outputs) == {"result", "objects"}
    np.testing.assert_array_equal(outputs["result"], labels)
    objects = outputs["objects"]
    assert list(objects["label"]) == [1, 2]
    assert list(objects["area"]) == list(np.bincount(labels.ravel())[1:])
    assert objects["mean_intensity"].min() > 150 and (objects["probability"] > 0.5).all()
    with pytest.raises(DeepscopeError, match="for semantic segmentation models, not stardist"):
        deepscope.predict_image_outputs(nuclei, image, probabilities=True)
    with pytest.raises(DeepscopeError) as err:  # named as a Python caller wrote it
        deepscope.predict_image_outputs(nuclei, image, instances=True)
    text = str(err.value)
    assert text.startswith("instances=True is for semantic") and "--" not in text

    with pytest.raises(DeepscopeError, match="for semantic segmentation models, not stardist"):
        deepscope.predict(nuclei, noisy_dir, tmp_path / "o", instances=True, progress=False)
    with pytest.raises(DeepscopeError, match="between 0 and 1"):
        deepscope.predict_image(nuclei, image, nms_threshold=1.5)
    with pytest.raises(DeepscopeError, match="not a file name"):
        deepscope.predict_image(nuclei, "cells.tif")
    with pytest.raises(DeepscopeError, match="not of numbers"):
        deepscope.predict_image(nuclei, np.array([["a", "b"], ["c", "d"]]))
    assert not (tmp_path / "o").exists()


def test_errors_name_python_parameters_not_command_line_options(
    tmp_path, trained_2d_run, noisy_dir, clean_pair_dirs
):
    model = deepscope.load_model(trained_2d_run / "model")
    out = tmp_path / "out"
    deepscope.predict(model, noisy_dir / "a.tif", out, progress=False)
    with pytest.raises(OutputError) as err:
        deepscope.predict(model, noisy_dir / "a.tif", out, progress=False)
    assert "overwrite=True" in err.value.fix and "resume=True" in err.value.fix
    assert "--" not in str(err.value) and "overwrite=True" in str(err.value)
    qc_noisy, qc_clean = clean_pair_dirs
    shutil.copytree(trained_2d_run, tmp_path / "run")  # QC writes into the model folder
    run_model = tmp_path / "run" / "model"
    deepscope.evaluate(run_model, qc_noisy, tmp_path / "qc", qc_clean, progress=False)
    with pytest.raises(OutputError, match="earlier report") as err:
        deepscope.evaluate(run_model, qc_noisy, tmp_path / "qc", qc_clean, progress=False)
    assert "add overwrite=True" in err.value.fix
    summary = deepscope.evaluate(
        run_model, qc_noisy, tmp_path / "qc", qc_clean, progress=False, overwrite=True
    )
    assert "model" in summary
    # an option that is a setting in Python: said as the setting
    with pytest.raises(DeepscopeError) as err:
        deepscope.train(
            "n2v",
            noisy_dir,
            tmp_path / "run",  # an existing run: only epochs and max_minutes may change
            config=TINY_CONFIG,
            settings={"training.learning_rate": 0.5},
            resume=True,
            progress=False,
        )
    assert "--" not in str(err.value), str(err.value)
    assert 'only settings={"training.epochs": …}' in err.value.fix
    assert "in a new out folder" in err.value.fix


def test_export_refuses_bioimageio_settings_for_onnx(tmp_path, trained_2d_run):
    with pytest.raises(DeepscopeError, match="authors, license: only for BioImage.IO"):
        deepscope.export_model(
            trained_2d_run / "model",
            tmp_path / "m.onnx",
            format="onnx",
            authors="Ada",
            license="MIT",
        )
    out = deepscope.export_model(trained_2d_run / "model", tmp_path / "m.onnx", format="onnx")
    assert out.exists() and not any(tmp_path.glob("*.zip"))
    with pytest.raises(DeepscopeError, match="unknown export format 'onx'") as err:
        deepscope.export_model(trained_2d_run / "model", tmp_path / "m.onx", format="onx")
    assert "bioimageio, onnx, torchscript" in err.value.fix
    assert not (tmp_path / "m.onx").exists()


def test_a_loaded_model_is_shown_in_one_line(trained_2d_run):
    model = deepscope.load_model(trained_2d_run / "model")
    text = repr(model)
    assert text.startswith("TrainedModel('n2v', ") and "2D, 1 input channel(s)" in text
    assert "\n" not in text and "Conv" not in text


def test_predict_image_of_a_classifier_gives_class_probabilities(tmp_path):
    rng = np.random.default_rng(1)
    for cls, level in (("dim", 40), ("bright", 200)):
        for i in range(6):
            img = np.clip(rng.normal(level, 20, (16, 16)), 0, 255).astype(np.uint8)
            write_tif(tmp_path / "cells" / cls / f"{i}.tif", img)
    run = deepscope.train(
        "classify",
        tmp_path / "cells",
        tmp_path / "run",
        settings={
            "classify.image_size": [16, 16],
            "model.depth": 1,
            "model.base_channels": 4,
            "training": {"epochs": 1, "batch_size": 4, "precision": "32"},
        },
        progress=False,
    )
    model = deepscope.load_model(run.model_dir)
    probs = deepscope.predict_image(model, np.full((16, 16), 200, np.uint8))
    assert probs.shape == (2,) and abs(float(probs.sum()) - 1) < 1e-5


def test_errors_keep_their_parts_across_processes():
    import pickle

    from deepscope.errors import OutputError
    from deepscope.workflow.training import ValidationFailed

    err = pickle.loads(pickle.dumps(OutputError("cannot write", "/data/out", "choose another")))
    assert (
        type(err) is OutputError and err.path == Path("/data/out") and err.fix == "choose another"
    )
    assert str(err) == "/data/out: cannot write\n  What to do: choose another"
    failed = ValidationFailed.__new__(ValidationFailed)
    DeepscopeError.__init__(failed, "blocked", None, "fix it")
    back = pickle.loads(pickle.dumps(failed))
    assert type(back) is ValidationFailed and str(back) == str(failed)


@pytest.fixture
def four_images(tmp_path: Path) -> Path:
    folder = tmp_path / "many"
    for i in range(4):
        write_tif(folder / f"img{i}.tif", synthetic_pair((48, 48), seed=10 + i)[0])
    return folder


def _same_results(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("*.tif"))
    assert names == sorted(p.name for p in b.glob("*.tif")) and names
    for name in names:  # other thread counts may round differently
        np.testing.assert_allclose(
            tifffile.imread(a / name), tifffile.imread(b / name), rtol=1e-4, atol=1e-2
        )


def test_predict_on_local_worker_processes(tmp_path, trained_2d_run, four_images, capsys):
    from deepscope.interfaces.cli import main

    model = str(trained_2d_run / "model")
    assert (
        main(["predict", model, "--input", str(four_images), "--out", str(tmp_path / "one")]) == 0
    )
    before = {p.name: p.read_bytes() for p in four_images.iterdir()}
    on_workers = ["predict", model, "--input", str(four_images), "--out", str(tmp_path / "two"),
                  "--workers", "2"]  # fmt: skip
    code = main(on_workers)
    assert code == 0, capsys.readouterr().err
    _same_results(tmp_path / "one", tmp_path / "two")
    record = json.loads((tmp_path / "two" / "provenance.json").read_text())
    assert [Path(f["input"]).name for f in record["files"]] == [f"img{i}.tif" for i in range(4)]
    assert record["cluster"] == {"local_workers": 2}
    assert {p.name: p.read_bytes() for p in four_images.iterdir()} == before  # inputs untouched
    # results exist: refused before any worker starts, as without workers
    code = main(on_workers)
    assert code == 2 and "already exist" in capsys.readouterr().err


def _sigint_ignored() -> bool:
    import signal

    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_local_workers_leave_ctrl_c_to_this_process():
    from deepscope.workflow import predict_cluster

    client = predict_cluster.connect(predict_cluster.ClusterSettings(workers=1))
    try:  # a Ctrl-C in the terminal reaches every process: the workers must not act on it
        assert list(client.run(_sigint_ignored).values()) == [True]
    finally:
        predict_cluster.close(client)
    assert not _sigint_ignored()  # this process gets it as before


def test_predict_through_a_running_scheduler(tmp_path, trained_2d_run, four_images):
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None
    ) as c:
        deepscope.predict(
            trained_2d_run / "model",
            four_images,
            tmp_path / "sched",
            scheduler=c.scheduler_address,
            progress=False,
        )
        deepscope.predict(trained_2d_run / "model", four_images, tmp_path / "here", progress=False)
    _same_results(tmp_path / "here", tmp_path / "sched")
    record = json.loads((tmp_path / "sched" / "provenance.json").read_text())
    assert len(record["files"]) == 4 and "scheduler" in record["cluster"]


def test_a_file_failing_on_a_worker_stops_and_leaves_only_recorded_results(
    tmp_path, trained_2d_run, four_images, monkeypatch
):
    from distributed import LocalCluster

    from deepscope.workflow import predict as predict_module

    real = predict_module.predict_file

    def fails_on_img2(model, src, dst, *args, **kwargs):
        if src.name == "img2.tif":
            raise DeepscopeError("cannot read this image", src, "give another")
        return real(model, src, dst, *args, **kwargs)

    monkeypatch.setattr(predict_module, "predict_file", fails_on_img2)
    out = tmp_path / "out"
    # threads in this process, so that the patched function is the workers' too
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as c:
        with pytest.raises(DeepscopeError, match="cannot read this image") as err:
            deepscope.predict(
                trained_2d_run / "model", four_images, out, scheduler=c.scheduler_address,
                progress=False,
            )  # fmt: skip
    assert err.value.path == four_images / "img2.tif"  # the worker's error, with its parts
    listed = [f["output"] for f in json.loads((out / "provenance.json").read_text())["files"]]
    assert sorted(p.name for p in out.iterdir()) == sorted([*listed, "provenance.json"])
    assert "img2.tif" not in listed


def test_an_interrupted_prediction_resumes_with_the_rest(
    tmp_path, trained_2d_run, four_images, monkeypatch
):
    from deepscope.workflow import predict as predict_module

    real, seen = predict_module.predict_file, []

    def interrupted_at_img2(model, src, dst, *args, **kwargs):
        seen.append(src.name)
        if src.name == "img2.tif":
            raise KeyboardInterrupt
        return real(model, src, dst, *args, **kwargs)

    monkeypatch.setattr(predict_module, "predict_file", interrupted_at_img2)
    model, out = trained_2d_run / "model", tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        deepscope.predict(model, four_images, out, progress=False)
    first = {p.name: p.read_bytes() for p in out.glob("*.tif")}
    assert sorted(first) == ["img0.tif", "img1.tif"]
    with pytest.raises(DeepscopeError, match="resume=True"):  # results there: said what to do
        deepscope.predict(model, four_images, out, progress=False)
    with pytest.raises(DeepscopeError, match="another test time augmentation"):
        deepscope.predict(model, four_images, out, resume=True, tta=True, progress=False)
    seen.clear()
    monkeypatch.setattr(
        predict_module, "predict_file", lambda *a, **k: seen.append(a[1].name) or real(*a, **k)
    )
    deepscope.predict(model, four_images, out, resume=True, progress=False)
    assert seen == ["img2.tif", "img3.tif"]  # only the rest
    assert {p.name: p.read_bytes() for p in out.glob("*.tif") if p.name in first} == first
    record = json.loads((out / "provenance.json").read_text())
    assert [f["output"] for f in record["files"]] == [f"img{i}.tif" for i in range(4)]
    assert record["files_from_earlier_run"] == 2
    np.testing.assert_array_equal(
        tifffile.imread(out / "img3.tif"),
        deepscope.predict_image(model, tifffile.imread(four_images / "img3.tif")),
    )


def test_the_interrupt_message_says_what_was_finished(
    tmp_path, trained_2d_run, four_images, monkeypatch, capsys
):
    from deepscope.interfaces.cli import main
    from deepscope.workflow import predict as predict_module

    real = predict_module.predict_file
    for stop_at, said in (("img0.tif", "No image was finished"), ("img2.tif", "2 images were")):

        def interrupted(model, src, dst, *args, stop_at=stop_at, **kwargs):
            if src.name == stop_at:
                raise KeyboardInterrupt
            return real(model, src, dst, *args, **kwargs)

        monkeypatch.setattr(predict_module, "predict_file", interrupted)
        out = tmp_path / stop_at
        argv = ["predict", str(trained_2d_run / "model"), "--input", str(four_images)]
        assert main([*argv, "--out", str(out)]) == 130
        err = capsys.readouterr().err
        assert said in err and ("--resume" in err) == (stop_at == "img2.tif")


def test_the_command_line_says_why_a_few_planes_became_channels(tmp_path, trained_2d_run, capsys):
    from deepscope.interfaces.cli import main

    images = tmp_path / "stacks"
    images.mkdir()
    tifffile.imwrite(images / "s.tif", synthetic_pair((3, 48, 48), seed=1)[0],
                     photometric="minisblack")  # fmt: skip
    argv = ["predict", str(trained_2d_run / "model"), "--input", str(images)]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"Warning: {images / 's.tif'}: the file does not say what its 3 planes are" in err
    assert "→ if they are Z planes (or time points), give the axes: --axes ZYX" in err
    assert "3 channel(s) but the model was trained on images with 1" in err


def test_cluster_settings_are_checked(tmp_path, trained_2d_run, four_images, monkeypatch):
    from deepscope.workflow import predict_cluster

    with pytest.raises(DeepscopeError, match="at least 1"):
        deepscope.predict(trained_2d_run / "model", four_images, tmp_path / "o", workers=0)
    with pytest.raises(DeepscopeError, match="not both"):
        deepscope.predict(
            trained_2d_run / "model", four_images, tmp_path / "o", workers=2, scheduler="tcp://x:1"
        )
    monkeypatch.setattr(predict_cluster, "SCHEDULER_TIMEOUT_S", 1)
    port = _free_port()
    with pytest.raises(DeepscopeError, match="cannot reach the Dask scheduler"):
        deepscope.predict(
            trained_2d_run / "model",
            four_images,
            tmp_path / "o",
            scheduler=f"tcp://127.0.0.1:{port}",
            progress=False,
        )
    assert not (tmp_path / "o").exists()  # nothing written before the cluster is reached

    import distributed

    def no_start(**kwargs):
        raise RuntimeError("Nanny failed to start.")

    monkeypatch.setattr(distributed, "LocalCluster", no_start)
    with pytest.raises(DeepscopeError, match="if __name__ == "):
        deepscope.predict(trained_2d_run / "model", four_images, tmp_path / "o", workers=2)
    assert not (tmp_path / "o").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tile_sizes_and_scheduler_addresses_are_checked(tmp_path, trained_2d_run, four_images):
    from deepscope.workflow.predict import TileSettings

    with pytest.raises(DeepscopeError, match="positive number of pixels"):
        TileSettings(tile=-5)
    with pytest.warns(UserWarning, match="smaller than twice their 32-pixel overlap"):
        TileSettings(tile=16)
    for address in ("bogus", "http://127.0.0.1:8786"):
        with pytest.raises(DeepscopeError, match="cannot reach the Dask scheduler"):
            deepscope.predict(
                trained_2d_run / "model", four_images, tmp_path / "o", scheduler=address,
                progress=False,
            )  # fmt: skip
    assert not (tmp_path / "o").exists()
