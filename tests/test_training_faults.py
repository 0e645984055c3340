"""Numerical faults during training: a NaN gradient is skipped, a diverged training stops."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_CONFIG, synthetic_pair, write_tif
from deepscope.config import config_from_dict
from deepscope.engine.module import TaskModule
from deepscope.errors import DeepscopeError
from deepscope.tasks import get_task
from deepscope.tasks.n2v import N2VTask
from deepscope.workflow.training import train


def _module() -> TaskModule:
    return TaskModule(get_task("n2v")(config_from_dict(copy.deepcopy(TINY_CONFIG))), 1)


def test_a_step_with_a_nan_gradient_is_skipped_and_counted() -> None:
    module = _module()
    opt = torch.optim.AdamW(module.model.parameters(), lr=0.1)
    params = list(module.model.parameters())
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    params[3].grad[0] = float("nan")
    module.on_before_optimizer_step(opt)
    opt.step()
    assert module.skipped_steps == 1
    assert all(p.grad is None for p in params)
    assert all(torch.equal(a, p) for a, p in zip(before, params, strict=True))

    for p in params:  # finite gradients: the step is taken
        p.grad = torch.ones_like(p)
    module.on_before_optimizer_step(opt)
    opt.step()
    assert module.skipped_steps == 1
    assert not torch.equal(before[0], params[0].detach())


def test_gradients_finite_finds_nan_and_infinity_anywhere() -> None:
    from deepscope.engine.module import gradients_finite

    grads = [torch.ones(3, 4), torch.zeros(5, dtype=torch.bfloat16), torch.full((2, 2), 3e38)]
    assert gradients_finite(grads)  # however large, finite is finite
    for bad in (float("nan"), float("inf"), -float("inf")):
        for i in range(len(grads)):
            broken = [g.clone() for g in grads]
            broken[i].view(-1)[-1] = bad
            assert not gradients_finite(broken)


def _weights_are_finite(model_dir: Path) -> bool:
    state = torch.load(model_dir / "weights.pt", map_location="cpu")
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


@pytest.fixture
def images(tmp_path: Path) -> Path:
    for i, name in enumerate("abc"):
        write_tif(tmp_path / "imgs" / f"{name}.tif", synthetic_pair((64, 64), seed=i)[0])
    return tmp_path / "imgs"


def _nan_validation_from(epoch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the validation loss NaN from the given (1-based) epoch on."""
    original = N2VTask.training_loss
    calls = {"validation": 0}
    per_epoch = 1  # TINY_CONFIG: 8 validation patches, batch 8

    def loss(self, model, batch, generator=None):
        value = original(self, model, batch, generator)
        if generator is not None:  # validation batches are the seeded ones
            calls["validation"] += 1
            if calls["validation"] > (epoch - 1) * per_epoch:
                return value * float("nan")
        return value

    monkeypatch.setattr(N2VTask, "training_loss", loss)


def test_skipped_steps_are_recorded_in_the_model_folder(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = TaskModule.on_before_optimizer_step

    def nan_first_step(self, optimizer):
        if self.global_step == 0:  # the very first step gets a NaN gradient
            next(self.model.parameters()).grad.fill_(float("nan"))
        original(self, optimizer)

    monkeypatch.setattr(TaskModule, "on_before_optimizer_step", nan_first_step)
    result = train(config_from_dict(copy.deepcopy(TINY_CONFIG)), images, tmp_path / "run")
    info = json.loads((result.model_dir / "deepscope_model.json").read_text())
    assert info["training"]["skipped_steps"] == 1
    assert "skipped steps: 1" in (result.model_dir / "MODEL_CARD.md").read_text()
    assert _weights_are_finite(result.model_dir)


def test_a_diverged_training_stops_and_keeps_the_model_from_before(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _nan_validation_from(3, monkeypatch)
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["training"]["epochs"] = 6
    result = train(config_from_dict(cfg), images, tmp_path / "run", show_bar=False)
    assert result.epochs_trained == 3  # stopped after epoch 3, not 6
    assert "diverged at epoch 3" in result.stopped_because
    info = json.loads((result.model_dir / "deepscope_model.json").read_text())
    assert "diverged" in info["training"]["stopped_because"]
    assert _weights_are_finite(result.model_dir)


def test_a_training_that_diverges_at_once_is_refused_clearly(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _nan_validation_from(1, monkeypatch)
    with pytest.raises(DeepscopeError, match="diverged in its first epoch"):
        train(config_from_dict(copy.deepcopy(TINY_CONFIG)), images, tmp_path / "run")
