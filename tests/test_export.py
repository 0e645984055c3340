"""Export to BioImage.IO / ONNX / TorchScript, import, and prediction through ONNX Runtime.

Models are tiny, untrained U-Nets written straight into model folders (export does not
care how good a model is). The network is blocked for the whole module: every step must
work offline. Packages are checked with the community's own checker,
``bioimageio.core.test_model``.
"""

from __future__ import annotations

import copy
import json
import socket
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_CONFIG, synthetic_pair, write_tif
from deepscope.config import config_from_dict
from deepscope.data.normalize import PercentileNormalizer
from deepscope.errors import DeepscopeError
from deepscope.export import export_model, import_model
from deepscope.export.compare import TOLERANCE
from deepscope.export.onnx_engine import OnnxNetwork, use_onnx_engine
from deepscope.interfaces.cli import main
from deepscope.tasks import get_task
from deepscope.workflow.model_folder import load_model_folder, save_model_folder
from deepscope.workflow.predict import predict_array, predict_raw


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to open a network connection (the export must work offline)."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def make_model(root: Path, task: str = "n2v", three_d: bool = False, **sections: Any) -> Path:
    """An untrained tiny model folder of ``task`` (random weights, fixed normalisation)."""
    data = copy.deepcopy(TINY_CONFIG)
    data["task"] = task
    data["model"] = {"depth": 2, "base_channels": 4}
    if three_d:
        data["data"] = {"patch_size": [8, 16, 16], "spatial_dims": 3}
    for name, values in sections.items():
        data[name] = values
    config = config_from_dict(data)
    torch.manual_seed(0)
    net = get_task(task)(config).build_model(1)
    with torch.no_grad():  # non-trivial batch-norm statistics, so that they are exported too
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        if task == "stardist":  # objects of a few pixels, as a trained model finds
            net.dist_head.bias.fill_(3.0)
            net.prob_head.bias.fill_(0.5)
    # StarDist maps each image by its own percentiles, as training sets it up
    norm = PercentileNormalizer(1.0, 99.8, (180.0,), (2300.0,), per_image=task == "stardist")
    target = PercentileNormalizer(1.0, 99.8, (150.0,), (2600.0,)) if task == "care" else None
    folder = root / f"{task}{'3d' if three_d else ''}" / "model"
    return save_model_folder(
        folder,
        config=config,
        weights=net.state_dict(),
        in_channels=1,
        input_axes="ZYX" if three_d else "YX",
        normalizer=norm,
        target_normalizer=target,
    )


def export_package(model_dir: Path, out: Path) -> Path:
    """A BioImage.IO package of ``model_dir`` (MIT, one author), unchecked and quiet."""
    return export_model(
        model_dir,
        "bioimageio",
        out,
        authors=["Ada Lovelace"],
        license="MIT",
        check=False,
        log=lambda _m: None,
    )


def read_rdf(package: Path) -> dict:
    with zipfile.ZipFile(package) as z:
        name = next(n for n in z.namelist() if n.endswith(("rdf.yaml", "bioimageio.yaml")))
        return yaml.safe_load(z.read(name))


def _source(entry: str | dict) -> str:
    return entry["source"] if isinstance(entry, dict) else entry


def assert_passes_test_model(package: Path) -> None:
    from bioimageio.core import test_model

    summary = test_model(package)
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed


@pytest.fixture(scope="module")
def n2v_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model folder, BioImage.IO package) of a tiny 2D N2V model with a sample image."""
    root = tmp_path_factory.mktemp("export")
    model = make_model(root, "n2v")
    (model / "history.csv").write_text(
        "epoch,train_loss,val_loss,learning_rate,seconds,best\n0,0.5,0.4,0.0004,0.2,1\n"
    )
    (model / "qc_summary.json").write_text(
        json.dumps({"model": {"psnr": 31.5, "ssim": 0.81}, "input": {"psnr": 25.0}})
    )
    sample = write_tif(root / "sample.tif", synthetic_pair((72, 80), seed=3)[0])
    package = export_model(
        model,
        "bioimageio",
        root / "n2v.zip",
        authors=["Ada Lovelace"],
        license="CC-BY-4.0",
        sample=sample,
        check=False,
        log=lambda _m: None,
    )
    return model, package


# ----------------------------------------------------------------------- BioImage.IO


def test_n2v_package_passes_bioimageio_test_model(n2v_package) -> None:
    assert_passes_test_model(n2v_package[1])


def test_package_describes_processing_docs_and_citations(n2v_package) -> None:
    model_dir, package = n2v_package
    rdf = read_rdf(package)
    assert rdf["format_version"].startswith("0.5")
    assert rdf["license"] == "CC-BY-4.0" and rdf["authors"][0]["name"] == "Ada Lovelace"
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["callable"] == "UNet"
    axes = [a["type"] for a in rdf["inputs"][0]["axes"]]
    assert axes == ["batch", "channel", "space", "space"]
    pre = rdf["inputs"][0]["preprocessing"]
    scale = next(p for p in pre if p["id"] == "scale_linear")["kwargs"]
    model = load_model_folder(model_dir)
    x = np.random.default_rng(0).uniform(0, 4000, (1, 16, 16)).astype(np.float32)
    via_spec = x * np.float32(scale["gain"][0]) + np.float32(scale["offset"][0])
    np.testing.assert_allclose(via_spec, model.normalizer.normalize(x), rtol=0, atol=2e-6)
    post = rdf["outputs"][0]["postprocessing"]
    back = next(p for p in post if p["id"] == "scale_linear")["kwargs"]
    assert back["gain"][0] == pytest.approx(2300.0 - 180.0) and back["offset"][0] == 180.0
    with zipfile.ZipFile(package) as z:
        readme = z.read(_source(rdf["documentation"])).decode()
        cover = z.read(_source(rdf["covers"][0]))
        test_in = np.load(z.open(rdf["inputs"][0]["test_tensor"]["source"]))
    assert "Validation" in readme and "31.5" in readme  # QC metrics
    assert "Krull" in readme and "10.1109/CVPR.2019.00223" in readme
    assert cover[:8] == b"\x89PNG\r\n\x1a\n"
    assert test_in.shape == (1, 1, 72, 80)
    record = rdf["config"]["deepscope"]
    assert record["config"]["task"] == "n2v" and record["normalization"]["input"]["low"] == [180.0]


@pytest.mark.parametrize("fmt", ["pytorch_state_dict", "torchscript", "onnx"])
def test_import_round_trip_predicts_the_same(n2v_package, tmp_path: Path, fmt: str) -> None:
    model_dir, package = n2v_package
    out = import_model(package, tmp_path / "imported", weights_format=fmt, log=lambda _m: None)
    original, imported = load_model_folder(model_dir), load_model_folder(out)
    image = synthetic_pair((1, 60, 52), seed=5)[0].astype(np.float32)
    expected = predict_array(original, image)
    got = predict_array(imported, image)
    tol = 0.0 if fmt == "pytorch_state_dict" else TOLERANCE * float(np.ptp(expected))
    assert np.max(np.abs(got - expected)) <= tol
    if fmt == "pytorch_state_dict":  # a deepscope model again: fine-tunable with --from
        assert imported.config == original.config
        assert (out / "weights.pt").exists()
    else:
        assert imported.info["network"]["format"] == fmt
        with pytest.raises(DeepscopeError, match="imported with"):
            export_model(out, "onnx", tmp_path / "again.onnx", log=lambda _m: None)
    assert (out / "history.csv").read_text() == (model_dir / "history.csv").read_text()


def test_qc_runs_on_a_model_imported_with_onnx_weights(
    n2v_package, tmp_path: Path, clean_pair_dirs
) -> None:
    from deepscope.workflow.qc import run_qc

    out = import_model(
        n2v_package[1], tmp_path / "imported", weights_format="onnx", log=lambda _m: None
    )
    summary = run_qc(load_model_folder(out), *clean_pair_dirs, tmp_path / "qc")
    assert np.isfinite(summary["model"]["psnr"]) and (tmp_path / "qc" / "report.html").exists()


def _as_foreign(package: Path, folder: Path, change=None) -> Path:  # noqa: ANN001
    """The package unpacked as another tool's: no deepscope settings (``change`` edits it)."""
    with zipfile.ZipFile(package) as z:
        z.extractall(folder)
    rdf_path = next(folder.glob("*.yaml"))
    rdf = yaml.safe_load(rdf_path.read_text())
    del rdf["config"]["deepscope"]
    if change is not None:
        change(rdf)
    rdf_path.write_text(yaml.safe_dump(rdf))
    return folder


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_foreign_restoration_package_imports_and_predicts_the_same(
    n2v_package, tmp_path: Path, fmt: str
) -> None:
    model_dir, package = n2v_package
    foreign = _as_foreign(package, tmp_path / "foreign")
    out = import_model(foreign, tmp_path / "m", weights_format=fmt, log=lambda _m: None)
    imported, original = load_model_folder(out), load_model_folder(model_dir)
    assert imported.config.task == "care" and imported.info["network"]["format"] == fmt
    assert imported.info["training"]["foreign_package"]["authors"] == ["Ada Lovelace"]
    image = synthetic_pair((1, 60, 52), seed=5)[0].astype(np.float32)
    expected = predict_array(original, image)
    got = predict_array(imported, image)
    assert np.max(np.abs(got - expected)) <= TOLERANCE * float(np.ptp(expected))


def test_foreign_softmax_package_imports_as_semantic_segmentation(tmp_path: Path) -> None:
    model_dir = make_model(tmp_path, "semantic", semantic={"classes": 3})
    package = export_package(model_dir, tmp_path / "s.zip")
    out = import_model(_as_foreign(package, tmp_path / "f"), tmp_path / "m", log=lambda _m: None)
    imported, original = load_model_folder(out), load_model_folder(model_dir)
    assert (
        imported.config.task == "semantic" and imported.info["network"]["format"] == "torchscript"
    )
    image = np.random.default_rng(2).uniform(100, 2500, (1, 40, 48)).astype(np.float32)
    same = predict_array(imported, image) == predict_array(original, image)
    assert same.mean() > 0.999  # class maps: fp32 network files round differently at ties


def test_import_refuses_foreign_processing_it_cannot_reproduce_and_broken_packages(
    n2v_package, tmp_path: Path
) -> None:
    _, package = n2v_package

    def zero_mean(rdf: dict) -> None:
        rdf["inputs"][0]["preprocessing"] = [
            {"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"]}}
        ]

    foreign = _as_foreign(package, tmp_path / "zm", zero_mean)
    with pytest.raises(DeepscopeError, match="zero_mean_unit_variance") as info:
        import_model(foreign, tmp_path / "m1", log=lambda _m: None)
    assert "bioimageio predict" in str(info.value)
    plain = _as_foreign(package, tmp_path / "sd")
    with pytest.raises(DeepscopeError, match="architecture code"):
        import_model(plain, tmp_path / "m4", weights_format="pytorch_state_dict", log=print)
    with pytest.raises(DeepscopeError, match="not a BioImage.IO package"):
        import_model(tmp_path, tmp_path / "m2", log=lambda _m: None)
    with pytest.raises(DeepscopeError, match="no keras_hdf5|cannot use"):
        import_model(package, tmp_path / "m3", weights_format="keras_hdf5", log=lambda _m: None)
    assert not any((tmp_path / m).exists() for m in ("m1", "m2", "m3", "m4"))


def test_export_of_a_model_that_finds_nothing_in_the_test_image_says_what_to_do(
    tmp_path: Path,
) -> None:
    model_dir = make_model(tmp_path, "stardist")
    (model_dir / "thresholds.json").write_text(json.dumps({"prob_threshold": 0.999}))
    with pytest.raises(DeepscopeError, match="--sample"):
        export_model(
            model_dir, "bioimageio", tmp_path / "p.zip", authors=["A B"], license="MIT",
            check=False, log=lambda _m: None,
        )  # fmt: skip
    assert not (tmp_path / "p.zip").exists()


def test_export_asks_for_authors_and_a_valid_licence(n2v_package, tmp_path: Path) -> None:
    model_dir, package = n2v_package
    quiet = {"log": lambda _m: None, "check": False}
    with pytest.raises(DeepscopeError, match="--authors"):
        export_model(model_dir, "bioimageio", tmp_path / "a.zip", license="MIT", **quiet)
    with pytest.raises(DeepscopeError, match="--license"):
        export_model(model_dir, "bioimageio", tmp_path / "a.zip", authors=["A B"], **quiet)
    with pytest.raises(DeepscopeError, match="SPDX"):
        export_model(
            model_dir, "bioimageio", tmp_path / "a.zip", authors=["A B"], license="free", **quiet
        )
    with pytest.raises(DeepscopeError, match="already exists"):
        export_model(model_dir, "bioimageio", package, authors=["A"], license="MIT", **quiet)
    assert not list(tmp_path.iterdir())  # nothing half-written


# --------------------------------------------------------------- ONNX / TorchScript


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_network_files_match_pytorch(tmp_path: Path, fmt: str) -> None:
    model_dir = make_model(tmp_path, "care", three_d=True, care={"probabilistic": True})
    out = tmp_path / ("net.onnx" if fmt == "onnx" else "net.pt")
    export_model(model_dir, fmt, out, log=lambda _m: None)
    model = load_model_folder(model_dir)
    x = np.random.default_rng(1).normal(0.3, 0.3, (2, 1, 8, 24, 20)).astype(np.float32)
    with torch.no_grad():
        ref = model.network(torch.from_numpy(x)).numpy()
    if fmt == "onnx":
        got = OnnxNetwork(out)(torch.from_numpy(x)).numpy()
    else:
        got = torch.jit.load(str(out))(torch.from_numpy(x)).detach().numpy()
    assert got.shape == ref.shape == (2, 2, 8, 24, 20)
    assert np.max(np.abs(got - ref)) <= TOLERANCE * np.ptp(ref)
    sidecar = json.loads((tmp_path / f"{out.name}.json").read_text())
    assert sidecar["input"]["axes"] == "bczyx" and sidecar["input"]["low"] == [180.0]
    assert sidecar["output"]["target_high"] == [2600.0]


def test_onnx_and_torchscript_exports_can_share_a_name(tmp_path: Path) -> None:
    model_dir = make_model(tmp_path, "n2v")
    for name, fmt in (("net.onnx", "onnx"), ("net.pt", "torchscript")):
        export_model(model_dir, fmt, tmp_path / name, log=lambda _m: None)
    onnx_info = json.loads((tmp_path / "net.onnx.json").read_text())
    torchscript_info = json.loads((tmp_path / "net.pt.json").read_text())
    assert (onnx_info["format"], torchscript_info["format"]) == ("onnx", "torchscript")


def test_cli_predict_with_onnx_engine_matches_pytorch(n2v_package, tmp_path: Path, capsys) -> None:
    model_dir, _ = n2v_package
    images = tmp_path / "images"
    write_tif(images / "x.tif", synthetic_pair((70, 66), seed=9)[0])
    import tifffile

    results = {}
    for engine in ("pytorch", "onnx"):
        out = tmp_path / engine
        code = main(["predict", str(model_dir), "--input", str(images), "--out", str(out),
                     "--engine", engine, "--tile", "32"])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        results[engine] = tifffile.imread(out / "x.tif")
    diff = np.max(np.abs(results["onnx"] - results["pytorch"]))
    assert diff <= TOLERANCE * np.ptp(results["pytorch"])


def test_onnx_engine_keeps_tiling_and_postprocessing(tmp_path: Path) -> None:
    model = load_model_folder(make_model(tmp_path, "semantic", semantic={"classes": 3}))
    image = synthetic_pair((1, 40, 36), seed=2)[0].astype(np.float32)
    expected = predict_array(model, image)
    use_onnx_engine(model)
    assert isinstance(model.network, OnnxNetwork)
    np.testing.assert_array_equal(predict_array(model, image), expected)


def test_cli_export_and_import(n2v_package, tmp_path: Path, capsys) -> None:
    model_dir, package = n2v_package
    code = main(["export", str(model_dir), "--out", str(tmp_path / "m.zip"), "--no-check"])
    assert code == 2 and "--authors" in capsys.readouterr().err
    onnx_file = str(tmp_path / "m.onnx")
    code = main(
        ["export", str(model_dir), "--format", "onnx", "--out", onnx_file, "--license", "MIT"]
    )
    assert (
        code == 2
        and "only for BioImage.IO packages (--format bioimageio)" in capsys.readouterr().err
    )
    code = main(["export", str(model_dir), "--format", "onnx", "--out", onnx_file])
    assert code == 0 and (tmp_path / "m.onnx.json").exists()
    code = main(["import", str(package), "--out", str(tmp_path / "imported")])
    assert code == 0 and "deepscope predict" in capsys.readouterr().out
    code = main(["import", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "x")])
    assert code == 2 and "BioImage.IO" in capsys.readouterr().err


# ------------------------------------------------------- every task (slow: test_model)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "three_d", "sections"),
    [
        ("care", True, {"care": {"probabilistic": True}}),
        ("care", False, {}),
        ("n2n", False, {}),
        ("labelfree", True, {}),
        ("semantic", False, {"semantic": {"classes": 3, "class_names": ["bg", "cell", "edge"]}}),
        ("semantic", True, {"semantic": {"mode": "boundary"}}),
        ("stardist", False, {"stardist": {"n_rays": 8, "grid": [2, 2], "feature_channels": 8}}),
        (
            "classify",
            False,
            {"classify": {"class_names": ["a", "b c", "d"], "image_size": [24, 20]}},
        ),
        ("n2v", True, {"n2v": {"variant": "n2v2"}}),
    ],
)
def test_every_task_exports_a_package_that_passes_test_model(
    tmp_path: Path, task: str, three_d: bool, sections: dict
) -> None:
    model_dir = make_model(tmp_path, task, three_d=three_d, **sections)
    package = export_package(model_dir, tmp_path / f"{task}.zip")
    assert_passes_test_model(package)
    imported = import_model(package, tmp_path / "imported", log=lambda _m: None)
    original, again = load_model_folder(model_dir), load_model_folder(imported)
    shape = (1, 8, 24, 28) if three_d else (1, 36, 28)
    image = np.random.default_rng(0).uniform(100, 2500, shape).astype(np.float32)
    if original.task.image_level:  # one result per image
        from deepscope.workflow.predict_classify import classify_arrays

        np.testing.assert_array_equal(
            classify_arrays(again, [image]), classify_arrays(original, [image])
        )
        return
    np.testing.assert_array_equal(predict_array(again, image), predict_array(original, image))


def test_stardist_package_gives_the_labels_deepscope_gives(tmp_path: Path) -> None:
    """The spec's stardist_postprocessing on the package reproduces deepscope's objects."""
    from bioimageio.core import create_prediction_pipeline, load_model_description
    from bioimageio.core.digest_spec import create_sample_for_model
    from stardist.matching import matching

    model_dir = make_model(
        tmp_path, "stardist", stardist={"n_rays": 8, "grid": [2, 2], "feature_channels": 8}
    )
    package = export_package(model_dir, tmp_path / "sd.zip")
    rdf = read_rdf(package)
    post = rdf["outputs"][0]["postprocessing"][0]
    assert post["id"] == "stardist_postprocessing" and post["kwargs"]["n_rays"] == 8
    assert "scale_range" in [p["id"] for p in rdf["inputs"][0]["preprocessing"]]  # per image
    image = np.random.default_rng(1).uniform(100, 2500, (1, 64, 48)).astype(np.float32)
    descr = load_model_description(package)
    with create_prediction_pipeline(descr, weight_format="onnx") as pipeline:
        sample = create_sample_for_model(descr, inputs={"input": image[None]})
        labels = pipeline.predict_sample_without_blocking(sample).members["output"].data
    labels = np.asarray(labels)[0, ..., 0]
    ours = predict_array(load_model_folder(model_dir), image)[0]
    assert ours.max() > 3
    assert matching(ours, labels, thresh=0.9).f1 == 1.0  # same objects, numbers may differ
    with pytest.raises(DeepscopeError, match="state dict"):
        import_model(package, tmp_path / "ts", weights_format="torchscript", log=lambda _m: None)


def test_3d_stardist_package_holds_the_maps_passes_test_model_and_imports(
    tmp_path: Path,
) -> None:
    """3D: the network's maps on the grid (the spec's 3D label step is broken upstream)."""
    model_dir = make_model(
        tmp_path, "stardist", three_d=True, stardist={"n_rays": 16, "grid": [1, 2, 2]}
    )
    package = export_package(model_dir, tmp_path / "sd3.zip")
    rdf = read_rdf(package)
    out = rdf["outputs"][0]
    assert [op["id"] for op in out.get("postprocessing", [])] in ([], ["ensure_dtype"])
    axes = {a.get("id", a["type"]): a for a in out["axes"]}
    assert [a["type"] for a in out["axes"]] == ["batch", "space", "space", "space", "channel"]
    assert (axes["z"]["scale"], axes["y"]["scale"], axes["x"]["scale"]) == (1.0, 2.0, 2.0)
    assert len(axes["channel"]["channel_names"]) == 17
    readme = tmp_path / "readme.md"
    with zipfile.ZipFile(package) as z:
        readme.write_bytes(z.read("README.md"))
    assert "non_maximum_suppression_3d" in readme.read_text()
    assert_passes_test_model(package)
    imported = import_model(package, tmp_path / "imported", log=lambda _m: None)
    image = np.random.default_rng(2).uniform(100, 2500, (1, 8, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(
        predict_array(load_model_folder(imported), image),
        predict_array(load_model_folder(model_dir), image),
    )


# --------------------------------------------- tuned settings (thresholds.json, int8)


def _write_tuned(model_dir: Path, **values: float) -> None:
    (model_dir / "thresholds.json").write_text(json.dumps(values, indent=2))


def _fake_calibration(model_dir: Path, digest: str) -> None:
    """An 8-bit calibration file tied (by digest) to ``digest``'s weights."""
    from deepscope.engine.int8 import CALIBRATION_FILE, CALIBRATION_VERSION

    calibration = {"version": CALIBRATION_VERSION, "images": 1, "input_range": [0.0, 1.0]}
    calibration |= {"maxima": {}, "weights_sha256": digest}
    (model_dir / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2))


def test_stardist_package_and_import_use_the_tuned_thresholds(tmp_path: Path) -> None:
    """Tuned thresholds reach the package's post-processing, test output, README and import."""
    from stardist.matching import matching

    from deepscope.workflow.int8_models import int8_calibration_of
    from deepscope.workflow.predict import file_sha256

    model_dir = make_model(
        tmp_path, "stardist", stardist={"n_rays": 8, "grid": [2, 2], "feature_channels": 8}
    )
    _write_tuned(model_dir, prob_threshold=0.6, nms_threshold=0.15, score=0.8)
    _fake_calibration(model_dir, file_sha256(model_dir / "weights.pt"))
    package = export_package(model_dir, tmp_path / "sd.zip")
    rdf = read_rdf(package)
    kwargs = rdf["outputs"][0]["postprocessing"][0]["kwargs"]
    assert kwargs["prob_threshold"] == pytest.approx(np.log(0.6 / 0.4))
    assert kwargs["nms_threshold"] == pytest.approx(0.15)
    with zipfile.ZipFile(package) as z:
        readme = z.read(_source(rdf["documentation"])).decode()
        test_in = np.load(z.open(rdf["inputs"][0]["test_tensor"]["source"]))[0]
        test_out = np.load(z.open(rdf["outputs"][0]["test_tensor"]["source"]))[0, ..., 0]
    assert "probability 0.6 (" in readme and "(IoU) 0.15" in readme
    assert "tuned by deepscope after training" in readme
    original = load_model_folder(model_dir)
    ours = predict_array(original, test_in)[0]
    assert ours.max() > 3
    assert matching(ours, test_out, thresh=0.9).f1 == 1.0  # deepscope's objects

    out = import_model(package, tmp_path / "imported", log=lambda _m: None)
    for name in ("thresholds.json", "int8_calibration.json", "weights.pt"):
        assert (out / name).read_bytes() == (model_dir / name).read_bytes(), name
    imported = load_model_folder(out)
    assert int8_calibration_of(imported) is not None  # still tied to the same weights
    image = np.random.default_rng(4).uniform(100, 2500, (1, 64, 48)).astype(np.float32)
    expected = predict_array(original, image)
    assert expected.max() > 3
    np.testing.assert_array_equal(predict_array(imported, image), expected)


def test_semantic_package_states_the_tuned_thresholds_and_import_restores_them(
    tmp_path: Path,
) -> None:
    """A semantic model's tuned foreground and seed thresholds: README, import, prediction."""
    model_dir = make_model(tmp_path, "semantic", semantic={"instances": "outlines"})
    # this untrained network gives class 1 a probability of 0.40 to 0.43 everywhere
    _write_tuned(model_dir, foreground_threshold=0.418, seed_threshold=0.419)
    _fake_calibration(model_dir, "0" * 64)  # made for other weights: not carried
    package = export_package(model_dir, tmp_path / "sem.zip")
    rdf = read_rdf(package)
    with zipfile.ZipFile(package) as z:
        readme = z.read(_source(rdf["documentation"])).decode()
        names = z.namelist()
    assert "exceeds 0.418 (chosen by `deepscope qc`)" in readme
    assert "exceeds 0.419 (the seed threshold, chosen on the validation images" in readme
    assert "thresholds.json" in names and "int8_calibration.json" not in names
    out = import_model(package, tmp_path / "imported", log=lambda _m: None)
    assert (out / "thresholds.json").read_bytes() == (model_dir / "thresholds.json").read_bytes()
    assert not (out / "int8_calibration.json").exists()
    original, imported = load_model_folder(model_dir), load_model_folder(out)
    image = np.random.default_rng(3).uniform(100, 2500, (1, 48, 40)).astype(np.float32)
    expected = predict_array(original, image)
    assert 0 < expected.mean() < 1  # the tuned threshold decides
    np.testing.assert_array_equal(predict_array(imported, image), expected)
    raw = predict_raw(original, image)
    cells = original.task.instances(raw)
    assert cells.max() >= 1  # seeds above the tuned seed threshold (none above 0.9)
    np.testing.assert_array_equal(imported.task.instances(predict_raw(imported, image)), cells)
