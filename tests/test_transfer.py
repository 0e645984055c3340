"""Transfer learning: ``--from MODEL`` and ``--freeze-encoder``.

One tiny Noise2Void model is trained once per module and used as the start model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from conftest import TINY_CONFIG, synthetic_pair, write_tif
from deepscope.config import config_from_dict, load_config
from deepscope.engine import performance
from deepscope.errors import DeepscopeError
from deepscope.interfaces.cli import main
from deepscope.workflow.model_folder import load_model_folder
from deepscope.workflow.training import train
from deepscope.workflow.transfer import (
    adopt_start_network,
    check_start_model,
    load_start_weights,
)

ENCODER = ("encoders.", "bottleneck.")


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Noisy/clean 2D pairs, a tiny config file and a trained n2v start model."""
    root = tmp_path_factory.mktemp("transfer")
    for i, name in enumerate("abc"):
        noisy, clean = synthetic_pair((64, 64), seed=i)
        write_tif(root / "low" / f"{name}.tif", noisy)
        write_tif(root / "high" / f"{name}.tif", clean)
    tiny = root / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(TINY_CONFIG))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(performance, "available_cores", lambda: 1)
        result = train(
            config_from_dict(TINY_CONFIG),
            root / "low",
            root / "n2v_run",
            show_bar=False,
            log=_quiet,
        )
    return {
        "root": root,
        "low": root / "low",
        "high": root / "high",
        "tiny": tiny,
        "n2v": result.model_dir,
    }


def _config(task: str, **training: object):
    d = copy.deepcopy(TINY_CONFIG)
    d["task"] = task
    d["training"].update(training)
    return config_from_dict(d)


def _encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(ENCODER)}


def _cli_train(data: dict[str, Path], task: str, out: Path, *extra: str) -> int:
    args = [
        "train",
        task,
        "--images",
        str(data["low"]),
        "--out",
        str(out),
        "--config",
        str(data["tiny"]),
    ]
    if task != "n2v":
        args += ["--targets", str(data["high"])]
    return main(args + list(extra))


def _cli_config(data: dict[str, Path], task: str) -> Path:
    """The tiny settings file, for ``task``."""
    path = data["root"] / f"tiny_{task}.yaml"
    d = copy.deepcopy(TINY_CONFIG)
    d["task"] = task
    path.write_text(yaml.safe_dump(d))
    return path


# ------------------------------------------------------------------- compatible


def test_care_starts_from_an_n2v_model_and_records_it(data, tmp_path, capsys) -> None:
    data = {**data, "tiny": _cli_config(data, "care")}
    out = tmp_path / "care_run"
    rc = _cli_train(data, "care", out, "--from", str(data["n2v"]), "--probabilistic")
    assert rc == 0, capsys.readouterr().err
    info = json.loads((out / "model" / "deepscope_model.json").read_text())
    started = info["training"]["started_from"]
    assert started["folder"] == str(data["n2v"].resolve()) and started["task"] == "n2v"
    assert started["loaded"] > 0
    # Probabilistic CARE predicts mean and scale: its last layer has 2 outputs, n2v's 1.
    assert set(started["not_loaded"]) == {"head.weight", "head.bias"}
    assert "size (1, 4, 1, 1) there, (2, 4, 1, 1) here" in started["not_loaded"]["head.weight"]
    assert load_config(out / "config.yaml").training.start_from == str(data["n2v"].resolve())
    assert "copied" in capsys.readouterr().out


def test_n2v_starts_from_a_care_model(data, tmp_path, capsys) -> None:
    care = train(
        _config("care"), data["low"], tmp_path / "care", data["high"], show_bar=False, log=_quiet
    ).model_dir
    data = {**data, "tiny": _cli_config(data, "n2v")}
    out = tmp_path / "n2v_from_care"
    assert _cli_train(data, "n2v", out, "--from", str(care)) == 0, capsys.readouterr().err
    started = json.loads((out / "model" / "deepscope_model.json").read_text())["training"][
        "started_from"
    ]
    assert started["task"] == "care" and started["not_loaded"] == {}


def test_start_weights_are_copied_exactly(data) -> None:
    config = _config("care")
    from deepscope.tasks import get_task

    network = get_task("care")(config).build_model(1)
    report = load_start_weights(network, data["n2v"], config)
    source = load_model_folder(data["n2v"]).network.state_dict()
    for name, tensor in network.state_dict().items():
        assert torch.equal(tensor, source[name]), name
    assert not report.not_loaded and "copied" in report.summary()


# ------------------------------------------------- StarDist and the U-Net tasks


def _nuclei_unet_config(task: str):
    """A tiny training of ``task`` with the U-Net of the shipped StarDist model."""
    from deepscope.workflow.pretrained import resolve_model

    shipped = load_config(resolve_model("nuclei") / "config.yaml").model
    d = copy.deepcopy(TINY_CONFIG)
    d["task"] = task
    d["model"] = {"depth": shipped.depth, "base_channels": shipped.base_channels}
    return config_from_dict(d)


def test_n2v_starts_from_the_unet_of_the_shipped_stardist_model() -> None:
    from deepscope.tasks import get_task
    from deepscope.workflow.pretrained import resolve_model

    folder = resolve_model("nuclei")
    config = _nuclei_unet_config("n2v")
    network = get_task("n2v")(config).build_model(1)
    report = load_start_weights(network, folder, config)
    source = load_model_folder(folder).network.state_dict()
    assert report.source_task == "stardist" and len(report.loaded) > 50
    for name in report.loaded:
        assert torch.equal(network.state_dict()[name], source[f"unet.{name}"]), name
    # Behind StarDist's stem the U-Net's first convolution reads 32 channels, not the
    # image; its last one gives StarDist's 128 features, not one denoised channel.
    assert set(report.not_loaded) == {"encoders.0.0.weight", "head.weight", "head.bias"}
    assert "unet.encoders.0.0.weight" in report.not_loaded["encoders.0.0.weight"]
    assert {"stem.0.0.weight", "prob_head.weight", "dist_head.weight"} <= set(report.unused)


def test_stardist_starts_from_an_n2v_model(data) -> None:
    from deepscope.tasks import get_task

    d = copy.deepcopy(TINY_CONFIG)  # the n2v model's U-Net: depth 1, 4 base channels
    d.update(task="stardist", stardist={"n_rays": 8, "feature_channels": 8})
    config = config_from_dict(d)
    network = get_task("stardist")(config).build_model(1)
    report = load_start_weights(network, data["n2v"], config)
    source = load_model_folder(data["n2v"]).network.state_dict()
    assert "unet.bottleneck.0.weight" in report.loaded
    for name in report.loaded:
        assert name.startswith("unet.")
        assert torch.equal(network.state_dict()[name], source[name.removeprefix("unet.")])
    new = set(report.not_loaded)
    assert {"stem.0.0.weight", "prob_head.weight", "dist_head.weight"} <= new
    assert {"unet.encoders.0.0.weight", "unet.head.weight"} <= new  # sizes differ
    assert report.unused == []  # every tensor of the n2v model has its place


def test_cli_n2v_from_nuclei_trains_and_notes_the_new_frozen_layer(data, tmp_path, capsys):
    d = copy.deepcopy(TINY_CONFIG)
    del d["model"]  # taken from the shipped model
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump(d))
    out = tmp_path / "n2v_from_nuclei"
    options = ["--from", "nuclei", "--epochs", "1", "--freeze-encoder", "1"]
    rc = _cli_train({**data, "tiny": partial}, "n2v", out, *options)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    started = json.loads((out / "model" / "deepscope_model.json").read_text())["training"][
        "started_from"
    ]
    assert started["task"] == "stardist" and started["loaded"] > 50
    assert "encoders.0.0.weight" in captured.out and "kept fixed" in captured.out
    assert "trained from the first epoch" in captured.out
    # the same command resumed for longer: a bare --freeze-encoder means the run's own
    options = ["--from", "nuclei", "--epochs", "10", "--freeze-encoder", "--resume"]
    options += ["--max-minutes", "0.02"]  # (10 // 5 would be 2 frozen epochs, not the run's 1)
    rc = _cli_train({**data, "tiny": partial}, "n2v", out, *options)
    assert rc == 0, capsys.readouterr().err
    assert load_config(out / "config.yaml").training.freeze_encoder_epochs == 1


def test_weights_the_start_model_did_not_provide_are_trained_while_the_encoder_is_frozen(
    tmp_path,
):
    from deepscope.engine.module import TaskModule, encoder_modules
    from deepscope.tasks import get_task

    d = copy.deepcopy(TINY_CONFIG)
    d["training"].update(freeze_encoder_epochs=2, start_from=str(tmp_path))
    module = TaskModule(get_task("n2v")(config_from_dict(d)), 1)
    module.train_while_frozen = {"encoders.0.0.weight"}
    module.on_train_epoch_start()  # epoch 0: frozen
    encoder = {id(p) for m in encoder_modules(module.model) for p in m.parameters()}
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in module.model.named_parameters() if id(p) in encoder} - trainable
    assert "encoders.0.0.weight" in trainable and "encoders.0.0.weight" not in frozen
    assert frozen and all(n.startswith(("encoders.", "bottleneck.")) for n in frozen)


# ------------------------------------------- network settings from the start model


def test_unset_network_settings_are_taken_from_the_start_model(data) -> None:
    d = copy.deepcopy(TINY_CONFIG)
    del d["model"]  # the user chose no network: defaults (depth 2, 32 channels) would not fit
    d["task"] = "care"
    config, adopted = adopt_start_network(config_from_dict(d), data["n2v"])
    assert adopted == {"model.depth": 1, "model.base_channels": 4}
    assert (config.model.depth, config.model.base_channels) == (1, 4)
    check_start_model(data["n2v"], config)  # fits now
    # settings left unset stay unset (e.g. StarDist fits an unset patch size to the data)
    assert "batch_norm" not in config.model.model_fields_set
    given = config_from_dict(d)
    for section in ("data", "training"):
        assert getattr(config, section).model_fields_set == getattr(given, section).model_fields_set

    d["model"] = {"depth": 2}  # what the user set is kept (and then refused, naming both)
    config, adopted = adopt_start_network(config_from_dict(d), data["n2v"])
    assert adopted == {"model.base_channels": 4} and config.model.depth == 2
    with pytest.raises(DeepscopeError, match="depth 1.*depth 2"):
        check_start_model(data["n2v"], config)


def test_cli_from_with_a_partial_config_file_fine_tunes(data, tmp_path, capsys) -> None:
    d = copy.deepcopy(TINY_CONFIG)
    del d["model"]
    d["task"] = "care"
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump(d))
    out = tmp_path / "tuned"
    rc = _cli_train(
        {**data, "tiny": partial}, "care", out, "--from", str(data["n2v"]), "--freeze-encoder"
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "network settings taken from the model to start from: model.depth 1" in captured.out
    saved = load_config(out / "model" / "config.yaml")
    assert (saved.model.depth, saved.model.base_channels) == (1, 4)
    assert saved.training.freeze_encoder_epochs == 1
    report = json.loads((out / "transfer.json").read_text())
    assert not report["not_loaded"] or "head" in " ".join(report["not_loaded"])


# ----------------------------------------------------------------- incompatible


def test_other_network_depth_is_refused_naming_both(data, tmp_path, capsys) -> None:
    d = copy.deepcopy(TINY_CONFIG)
    d["task"] = "care"
    d["model"]["depth"] = 2
    cfg = tmp_path / "deep.yaml"
    cfg.write_text(yaml.safe_dump(d))
    out = tmp_path / "refused"
    rc = _cli_train({**data, "tiny": cfg}, "care", out, "--from", str(data["n2v"]))
    err = capsys.readouterr().err
    assert rc == 2
    assert "depth 1" in err and "depth 2" in err and "config.yaml" in err
    assert not out.exists(), "nothing may be written when the start model does not fit"


def test_2d_model_cannot_start_a_3d_training(data) -> None:
    d = copy.deepcopy(TINY_CONFIG)
    d.update(task="care", data={"patch_size": [8, 16, 16], "spatial_dims": 3})
    with pytest.raises(DeepscopeError, match="2D U-Net.*3D U-Net"):
        check_start_model(data["n2v"], config_from_dict(d))


def test_nothing_matching_is_refused_saying_what_differs(data) -> None:
    with pytest.raises(DeepscopeError, match="no layer") as err:
        load_start_weights(nn.Conv2d(1, 1, 3), data["n2v"], _config("care"))
    # The descriptions alone are the same: the message names the layers too.
    assert "encoders.0.0.weight" in err.value.problem and "e.g. weight" in err.value.problem


def test_a_run_folder_is_not_a_model_folder(data, tmp_path, capsys) -> None:
    run_dir = data["n2v"].parent
    rc = _cli_train(
        {**data, "tiny": _cli_config(data, "care")}, "care", tmp_path / "x", "--from", str(run_dir)
    )
    assert rc == 2 and "run folder" in capsys.readouterr().err


def test_freeze_encoder_needs_a_start_model(data, tmp_path, capsys) -> None:
    rc = _cli_train(
        {**data, "tiny": _cli_config(data, "care")}, "care", tmp_path / "x", "--freeze-encoder", "1"
    )
    assert rc == 2 and "--from" in capsys.readouterr().err


# ------------------------------------------------------------------------ freeze


def test_freeze_encoder_keeps_it_fixed_then_trains_it(data, tmp_path) -> None:
    config = _config(
        "care", start_from=str(data["n2v"]), freeze_encoder_epochs=1, epochs=2, learning_rate=0.01
    )
    result = train(config, data["low"], tmp_path / "run", data["high"], show_bar=False, log=_quiet)
    source = load_model_folder(data["n2v"]).network.state_dict()
    folder = result.model_dir / "checkpoints"
    frozen = torch.load(folder / "epoch_0001.pt", weights_only=True)
    free = torch.load(folder / "epoch_0002.pt", weights_only=True)
    # Learnt weights (conv kernels, batch-norm scales/offsets) stay; batch-norm running
    # statistics are re-estimated on the new images for every layer (engine).
    weights = {k: v for k, v in _encoder(source).items() if k.endswith(("weight", "bias"))}
    assert weights
    for name, tensor in weights.items():
        assert torch.equal(frozen[name], tensor), f"{name} changed while frozen"
    assert any(not torch.equal(free[k], v) for k, v in weights.items())
    assert any(not torch.equal(frozen[k], v) for k, v in source.items() if k.startswith("dec"))


def test_freeze_encoder_without_number_uses_a_fifth_of_the_epochs(data, tmp_path) -> None:
    out = tmp_path / "run"
    rc = _cli_train(
        {**data, "tiny": _cli_config(data, "care")},
        "care",
        out,
        "--epochs",
        "5",
        "--from",
        str(data["n2v"]),
        "--freeze-encoder",
    )
    assert rc == 0
    assert load_config(out / "config.yaml").training.freeze_encoder_epochs == 1


def test_resume_keeps_the_start_record(data, tmp_path) -> None:
    config = _config("care", start_from=str(data["n2v"]), epochs=1)
    train(config, data["low"], tmp_path / "run", data["high"], show_bar=False, log=_quiet)
    longer = _config("care", start_from=str(data["n2v"]), epochs=2)
    messages: list[str] = []
    result = train(
        longer,
        data["low"],
        tmp_path / "run",
        data["high"],
        resume=True,
        show_bar=False,
        log=messages.append,
    )
    assert not any("started from" in m for m in messages), "resume must not reload start weights"
    info = json.loads((result.model_dir / "deepscope_model.json").read_text())
    assert info["training"]["started_from"]["task"] == "n2v"
