"""8-bit integer prediction of StarDist networks (``predict --int8``): tiny networks only."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from stardist.matching import matching

from conftest import write_tif
from deepscope.engine import int8
from deepscope.engine.models.stardist_net import StarDistNet
from deepscope.engine.models.unet import UNet
from deepscope.errors import DeepscopeError
from deepscope.interfaces.cli import main
from deepscope.workflow.int8_models import int8_network
from deepscope.workflow.model_folder import load_model_folder
from deepscope.workflow.predict import TileSettings, predict_raw
from deepscope.workflow.pretrained import resolve_model

pytestmark = pytest.mark.skipif(
    not int8.int8_supported(), reason="no oneDNN 8-bit convolution in this PyTorch build"
)


def _net(grid=(2, 2), seed=0) -> StarDistNet:
    torch.manual_seed(seed)
    net = StarDistNet(dims=len(grid), n_rays=8, grid=grid, depth=2, base_channels=8,
                      feature_channels=16)  # fmt: skip
    # Give batch norm statistics that are not the identity, so folding them matters.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _images(n=3, size=64, seed=1, dims=2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (size,) * 2 if dims == 2 else (16, 32, 32)
    return [torch.rand(1, 1, *shape, generator=gen) * 1.5 - 0.2 for _ in range(n)]


def _unet(residual: bool = False, dims: int = 2) -> UNet:
    torch.manual_seed(0)
    channels = 1 if residual else 3
    net = UNet(dims=dims, in_channels=1, out_channels=channels, depth=2, base_channels=8,
               residual=residual)  # fmt: skip
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


KINDS = ["grid 2x2", "grid 1x2", "grid 4x4", "grid 1x2x2 (3D)", "unet", "unet residual",
         "unet 3D"]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_int8_network_gives_the_float_networks_output_to_8_bit_precision(kind):
    _check_int8_network(kind)


@pytest.mark.parametrize("kind", ["grid 2x2", "unet 3D"])
def test_int8_network_with_the_7_bit_weights_of_avx2_cpus_is_as_close(kind, monkeypatch):
    # On CPUs without VNNI the weights are rounded to 7 bits (int8_weight_max() == 63),
    # which oneDNN computes exactly on every CPU: check that path wherever tests run.
    assert int8.int8_weight_max() in (63, 127)
    monkeypatch.setattr(int8, "int8_weight_max", lambda: 63)
    _check_int8_network(kind)


def _check_int8_network(kind: str) -> None:
    grids = {
        "grid 2x2": (2, 2),
        "grid 1x2": (1, 2),
        "grid 4x4": (4, 4),
        "grid 1x2x2 (3D)": (1, 2, 2),
    }
    dims = 3 if "3D" in kind else 2
    if kind in grids:
        net = _net(grids[kind])
    else:
        net = _unet(residual="residual" in kind, dims=dims)
    images = _images(dims=dims)
    calibration = int8.calibrate(net, images)
    last = "heads" if kind in grids else "head"  # the layer giving float32
    assert calibration["images"] == 3 and last in calibration["maxima"]
    fast = int8.Int8Network(net, calibration)
    assert not list(fast.parameters())  # nothing to train, nothing the tiler would convert
    with torch.inference_mode():
        for x in images:
            expected = net(x)
            layout = torch.channels_last if dims == 2 else torch.channels_last_3d
            got = fast(x.contiguous(memory_format=layout))
            assert got.shape == expected.shape and got.dtype == torch.float32
            span = float(expected.abs().max())
            # 8-bit rounding of ~10 layers: a few per cent of the output's range at most;
            # a wrong scale, zero point or layer order gives errors of the order of 100 %.
            assert float((got - expected).abs().max()) < 0.08 * span
            assert float((got - expected).abs().mean()) < 0.01 * span
    # the trained network itself is untouched
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_only_2d_networks_with_max_pooling_are_translated_and_calibrations_are_checked(
    tmp_path,
):
    assert int8.network_problem(UNet(dims=2)) is None
    assert "N2V2" in int8.network_problem(UNet(dims=2, n2v2=True))
    assert "U-Net" in int8.network_problem(torch.nn.Conv2d(1, 1, 3))
    assert int8.network_problem(StarDistNet(dims=3, n_rays=8, grid=(1, 2, 2), depth=1)) is None
    with pytest.raises(ValueError, match="N2V2"):
        int8.calibrate(UNet(dims=2, n2v2=True), _images(1))
    net = _net()
    with pytest.raises(ValueError, match="at least one image"):
        int8.calibrate(net, [])
    calibration = int8.calibrate(net, _images(1))
    del calibration["maxima"]["dec0.1"]
    with pytest.raises(ValueError, match="dec0.1"):
        int8.Int8Network(net, calibration)
    # saved and read back; another format version is ignored
    calibration = int8.calibrate(net, _images(1))
    path = int8.save_calibration(tmp_path, calibration)
    assert path.name == int8.CALIBRATION_FILE
    assert int8.load_calibration(tmp_path) == json.loads(json.dumps(calibration))
    path.write_text(json.dumps({**calibration, "version": 99}))
    assert int8.load_calibration(tmp_path) is None
    path.write_text("{not json")
    assert int8.load_calibration(tmp_path) is None


def test_the_shipped_model_finds_the_same_objects_in_8_bit(tmp_path):
    from test_stardist import discs_image

    folder = resolve_model("nuclei")
    assert int8.load_calibration(folder) is not None  # shipped with its calibration
    model = load_model_folder(folder)
    image, truth = discs_image((96, 96))
    plain = model.task.instances(predict_raw(model, image * 3))
    fast_raw = predict_raw(model, image * 3, TileSettings(int8=True))
    fast = model.task.instances(fast_raw)
    assert int8_network(model).calibration["made_from"].startswith("the 32 TRAIN")
    assert matching(plain, fast, thresh=0.5).f1 == 1.0
    assert matching(truth, fast, thresh=0.5).f1 >= 0.9


def test_predict_and_qc_int8_from_the_command_line(tmp_path, capsys):
    from test_stardist import discs_image

    image, truth = discs_image((96, 96))
    write_tif(tmp_path / "imgs" / "a.tif", (image[0] * 3).astype(np.float32))
    write_tif(tmp_path / "masks" / "a.tif", truth)
    # a copy of the shipped model without its calibration: made from the first image
    folder = tmp_path / "nuclei_copy"
    shutil.copytree(resolve_model("nuclei"), folder)
    (folder / int8.CALIBRATION_FILE).unlink()
    out = tmp_path / "out"
    code = main(["predict", str(folder), "--input", str(tmp_path / "imgs"), "--out", str(out),
                 "--int8"])  # fmt: skip
    assert code == 0 and "no 8-bit calibration" in capsys.readouterr().out
    assert matching(truth, load_tif(out / "a.tif"), thresh=0.5).f1 >= 0.9
    assert not (folder / int8.CALIBRATION_FILE).exists()  # a model folder is never written to
    assert json.loads((out / "provenance.json").read_text())["int8"] is True
    qc = tmp_path / "qc"
    assert main(["qc", "nuclei", "--images", str(tmp_path / "imgs"), "--masks",
                 str(tmp_path / "masks"), "--out", str(qc), "--int8"]) == 0  # fmt: skip
    summary = json.loads((qc / "summary.json").read_text())
    assert summary["by_threshold"]["0.5"]["f1"] >= 0.9


def test_int8_is_refused_with_a_fix_where_it_cannot_run(
    tmp_path, trained_2d_run, noisy_dir, capsys
):
    code = main(["predict", str(trained_2d_run / "model"), "--input", str(noisy_dir), "--out",
                 str(tmp_path / "o"), "--int8"])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and "not for n2v models" in err and "leave out --int8" in err
    assert not (tmp_path / "o").exists()
    code = main(["predict", "nuclei", "--input", str(noisy_dir), "--out", str(tmp_path / "p"),
                 "--int8", "--engine", "onnx"])  # fmt: skip
    assert code != 0 and "--engine onnx" in capsys.readouterr().err
    # the Python API says the same
    model = load_model_folder(trained_2d_run / "model")
    with pytest.raises(DeepscopeError, match="not for n2v"):
        predict_raw(model, np.zeros((1, 32, 32), np.float32), TileSettings(int8=True))


def load_tif(path):
    import tifffile

    return tifffile.imread(path)


def test_a_calibration_applies_only_to_the_weights_it_was_made_with(tmp_path):
    from deepscope.workflow.int8_models import int8_calibration_of

    folder = tmp_path / "nuclei_copy"
    shutil.copytree(resolve_model("nuclei"), folder)
    model = load_model_folder(folder)
    assert int8_calibration_of(model)["weights_sha256"]
    image = np.random.default_rng(0).random((1, 64, 64)).astype(np.float32)
    first = int8_network(model, image)
    assert int8_network(model, image) is first  # made once per model
    with torch.no_grad():  # weights changed in place: a new 8-bit copy
        next(model.network.parameters()).mul_(1.0)
    assert int8_network(model, image) is not first
    # another checkpoint made the model's weights: the stored calibration no longer applies
    state = torch.load(folder / "weights.pt", weights_only=True)
    key = next(iter(state))
    state[key] = state[key] * 1.01
    torch.save(state, folder / "weights.pt")
    changed = load_model_folder(folder)
    assert int8_calibration_of(changed) is None
    assert int8_network(changed, image).calibration["made_from"] == "the first image predicted"
