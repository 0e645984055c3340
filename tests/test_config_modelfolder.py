"""Config validation and YAML round trip, model folders, performance helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepscope.config import (
    CONFIG_VERSION,
    config_from_dict,
    load_config,
    merge_overrides,
)
from deepscope.data.normalize import PercentileNormalizer
from deepscope.engine import performance
from deepscope.engine.performance import choose_precision, tune_allocator
from deepscope.errors import ConfigError, ModelFolderError
from deepscope.tasks.n2v import N2VConfig, N2VTask
from deepscope.workflow.model_folder import (
    INFO_FILE,
    MODEL_FORMAT_VERSION,
    load_model_folder,
    save_model_folder,
)

# ---------------------------------------------------------------- config


def test_defaults_are_valid():
    cfg = config_from_dict({"task": "n2v"})
    assert isinstance(cfg, N2VConfig)
    assert cfg == N2VConfig()
    assert cfg.version == CONFIG_VERSION
    assert cfg.data.patch_size == [64, 64] and cfg.data.spatial_dims == 2
    assert cfg.model.depth == 2 and cfg.n2v.roi_size == 5 and cfg.n2v.variant == "n2v"


def test_patch_not_divisible_by_depth_names_the_field():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"task": "n2v", "data": {"patch_size": [60, 64]}, "model": {"depth": 3}})
    message = str(info.value)
    assert "patch_size [60, 64]" in message and "divisible by 8" in message
    # The same patch is fine for a shallower network.
    assert config_from_dict({"task": "n2v", "data": {"patch_size": [60, 64]}}).model.depth == 2


def test_3d_needs_three_patch_numbers():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"task": "n2v", "data": {"spatial_dims": 3, "patch_size": [64, 64]}})
    message = str(info.value)
    assert "data" in message and "patch_size" in message and "3 numbers" in message
    ok = config_from_dict({"task": "n2v", "data": {"spatial_dims": 3, "patch_size": [16, 64, 64]}})
    assert ok.data.patch_size == [16, 64, 64]


def test_field_errors_list_their_dotted_location():
    with pytest.raises(ConfigError) as info:
        config_from_dict(
            {"task": "n2v", "training": {"epoch": 5}, "n2v": {"roi_size": 2}}, source="my.yaml"
        )
    message = str(info.value)
    assert "training.epoch" in message and "n2v.roi_size" in message
    assert message.startswith("my.yaml: ")
    assert info.value.fix == "correct the listed settings"


def test_unknown_task_lists_available_tasks():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"task": "n3v"})
    assert "'n3v'" in str(info.value) and "n2v" in str(info.value)
    with pytest.raises(ConfigError, match="no 'task' field"):
        config_from_dict({"data": {}})


def test_newer_config_version_is_rejected():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"task": "n2v", "version": CONFIG_VERSION + 1})
    assert f"version {CONFIG_VERSION + 1}" in str(info.value)
    assert "update deepscope" in str(info.value)


def custom_config() -> N2VConfig:
    return N2VConfig(
        data={"axes": "zyx", "spatial_dims": 3, "patch_size": [16, 32, 32], "flips": False},
        model={"depth": 3, "base_channels": 8, "residual": True},
        training={"epochs": 7, "learning_rate": 1e-3, "max_minutes": 2.5},
        n2v={"variant": "n2v2", "roi_size": 7, "masked_pixel_percentage": 0.5},
    )


def test_yaml_roundtrip(tmp_path):
    cfg = custom_config()
    assert cfg.data.axes == "ZYX"
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg
    assert again.digest() == cfg.digest()
    assert again != N2VConfig()


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: n2v\ndata: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(bad)
    assert info.value.path == bad
    listed = tmp_path / "list.yaml"
    listed.write_text("- task\n- n2v\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listed)


def test_digest_is_stable_and_sensitive():
    a = custom_config().digest()
    assert a == custom_config().digest()
    assert len(a) == 16 and int(a, 16) >= 0
    reordered = config_from_dict(dict(reversed(list(custom_config().model_dump().items()))))
    assert reordered.digest() == a
    changed = custom_config()
    changed.training.epochs = 8
    assert changed.digest() != a


def test_merge_overrides_sets_dotted_keys_and_skips_none():
    data = {"task": "n2v", "training": {"epochs": 3}}
    out = merge_overrides(
        data, {"training.epochs": 9, "model.depth": 3, "training.batch_size": None}
    )
    assert out == {"task": "n2v", "training": {"epochs": 9}, "model": {"depth": 3}}
    assert data == {"task": "n2v", "training": {"epochs": 3}}  # input untouched


# ---------------------------------------------------------------- model folder


def tiny_config() -> N2VConfig:
    return N2VConfig(data={"patch_size": [16, 16]}, model={"depth": 2, "base_channels": 4})


def trained_network(cfg: N2VConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = N2VTask(cfg).build_model(in_channels=2)
    # Non-trivial batch-norm statistics, which are part of the state dict.
    net.train()
    with torch.no_grad():
        net(torch.rand(4, 2, 16, 16) * 3 + 1)
    return net.eval()


@pytest.fixture
def saved(tmp_path) -> tuple[Path, torch.nn.Module, PercentileNormalizer]:
    cfg = tiny_config()
    net = trained_network(cfg)
    norm = PercentileNormalizer(1.0, 99.8, (0.5, 10.0), (2.0, 300.0))
    folder = save_model_folder(
        tmp_path / "run" / "model",
        config=cfg,
        weights=net.state_dict(),
        in_channels=2,
        input_axes="CYX",
        normalizer=norm,
        checkpoints={"epoch_0002": net.state_dict(), "last": net.state_dict()},
        training={"epochs_trained": 2, "best_epoch": 2},
    )
    return folder, net, norm


def test_model_folder_roundtrip_gives_identical_outputs(saved):
    folder, net, norm = saved
    assert folder.is_dir()
    model = load_model_folder(folder)
    assert model.config == tiny_config()
    assert model.normalizer == norm and model.target_normalizer is None
    assert model.in_channels == 2
    assert model.info["format_version"] == MODEL_FORMAT_VERSION
    assert model.info["divisibility"] == 4 and model.info["out_channels"] == 2
    assert model.info["config_digest"] == tiny_config().digest()
    assert not model.network.training
    x = torch.rand(1, 2, 24, 16)
    with torch.no_grad():
        assert torch.equal(model.network(x), net(x))
        other = trained_network(tiny_config(), seed=1)
        assert not torch.equal(other(x), net(x))  # identical outputs are not a given
    assert model.checkpoint_names() == ["epoch_0002", "last"]
    with torch.no_grad():
        assert torch.equal(model.network_from_checkpoint("epoch_0002")(x), net(x))
    card = (folder / "MODEL_CARD.md").read_text()
    assert "Noise2Void" in card and "best epoch: 2" in card


def test_saving_again_replaces_the_folder_without_leftovers(saved, tmp_path):
    folder, _, norm = saved
    new_net = trained_network(tiny_config(), seed=5)
    save_model_folder(
        folder,
        config=tiny_config(),
        weights=new_net.state_dict(),
        in_channels=2,
        input_axes="CYX",
        normalizer=norm,
    )
    x = torch.rand(1, 2, 16, 16)
    with torch.no_grad():
        assert torch.equal(load_model_folder(folder).network(x), new_net(x))
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]
    assert load_model_folder(folder).checkpoint_names() == []


def test_newer_format_version_asks_to_update(saved):
    folder, _, _ = saved
    info = json.loads((folder / INFO_FILE).read_text())
    info["format_version"] = MODEL_FORMAT_VERSION + 1
    (folder / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(ModelFolderError) as err:
        load_model_folder(folder)
    assert f"format version {MODEL_FORMAT_VERSION + 1}" in str(err.value)
    assert "update deepscope" in err.value.fix


def test_run_folder_instead_of_model_folder_gives_a_hint(saved):
    folder, _, _ = saved
    with pytest.raises(ModelFolderError) as err:
        load_model_folder(folder.parent)
    assert "run folder" in str(err.value) and "'model' sub-folder" in str(err.value)
    empty = folder.parent.parent / "empty"
    empty.mkdir()
    with pytest.raises(ModelFolderError) as err:
        load_model_folder(empty)
    assert "run folder" not in str(err.value) and INFO_FILE in str(err.value)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="model folder not found"):
        load_model_folder(tmp_path / "nope")


def test_missing_weights(saved):
    folder, _, _ = saved
    (folder / "weights.pt").unlink()
    with pytest.raises(ModelFolderError, match="weights file is missing") as err:
        load_model_folder(folder)
    assert err.value.path == folder / "weights.pt"


def test_damaged_weights(saved):
    folder, _, _ = saved
    (folder / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelFolderError, match="cannot be read"):
        load_model_folder(folder)


def test_invalid_config_in_model_folder(saved):
    folder, _, _ = saved
    (folder / "config.yaml").write_text("task: n2v\nmodel:\n  depth: 99\n")
    with pytest.raises(ModelFolderError, match="its config is invalid"):
        load_model_folder(folder)


def test_target_normalizer_roundtrip(tmp_path):
    cfg = tiny_config()
    target = PercentileNormalizer(0.0, 100.0, (1.0, 2.0), (3.0, 4.0))
    folder = save_model_folder(
        tmp_path / "m",
        config=cfg,
        weights=trained_network(cfg).state_dict(),
        in_channels=2,
        input_axes="CYX",
        normalizer=PercentileNormalizer(1.0, 99.8, (0.0, 0.0), (1.0, 1.0)),
        target_normalizer=target,
    )
    assert load_model_folder(folder).target_normalizer == target


# ---------------------------------------------------------------- performance


def test_tune_allocator_returns_a_description_and_is_idempotent():
    first = tune_allocator()
    assert isinstance(first, str) and first
    assert tune_allocator() == first
    assert tune_allocator.__wrapped__() == first  # running the tuning again changes nothing
    np.zeros(10_000_000).sum()  # allocations still work afterwards


def test_tune_allocator_leaves_preloaded_allocators_alone(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2:/other.so")
    assert tune_allocator.__wrapped__() == "allocator from LD_PRELOAD (libjemalloc.so.2)"


@pytest.mark.parametrize("accelerator", ["cpu", "gpu"])
def test_choose_precision_explicit(accelerator):
    assert choose_precision("32", accelerator) == "32-true"
    assert choose_precision("bf16", accelerator) == "bf16-mixed"


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_choose_precision_auto_cpu(monkeypatch, bf16, expected):
    monkeypatch.setattr(performance, "cpu_supports_bf16", lambda: bf16)
    assert choose_precision("auto", "cpu") == expected


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_choose_precision_auto_gpu(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert choose_precision("auto", "gpu") == expected
