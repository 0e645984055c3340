"""Batches prepared one ahead in a background thread (engine.prefetch)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from deepscope.engine.prefetch import PrefetchLoader


class _Numbered(Dataset):
    """Item i is {"input": [i + a random draw]}: order and random draws are visible."""

    def __init__(self, n: int = 10):
        self.n = n
        self.rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input": torch.tensor([float(i) + self.rng.random()])}


def _values(loader) -> list[float]:
    return [float(v) for batch in loader for v in batch["input"].ravel()]


def test_same_batches_in_the_same_order_with_the_preparation_applied():
    plain = _values(DataLoader(_Numbered(), batch_size=3))
    wrapped = PrefetchLoader(
        DataLoader(_Numbered(), batch_size=3), lambda b: {**b, "twice": 2 * b["input"]}
    )
    assert len(wrapped) == 4 and wrapped.batch_size == 3 and len(wrapped.dataset) == 10
    batches = list(wrapped)
    assert _values(batches) == plain  # the random draws too: one thread draws them in order
    for b in batches:
        assert torch.equal(b["twice"], 2 * b["input"])
    assert _values(wrapped) != plain  # a second epoch draws new numbers, as a DataLoader does


def test_a_preparation_error_reaches_the_training_thread():
    def fail_on_third(batch):
        if batch["input"][0] >= 2:
            raise ValueError("bad patch")
        return batch

    it = iter(PrefetchLoader(DataLoader(_Numbered(), batch_size=1), fail_on_third))
    next(it), next(it)
    with pytest.raises(ValueError, match="bad patch"):
        next(it)


def test_stopping_early_stops_the_thread():
    prepared = []

    def slow(batch):
        prepared.append(batch)
        time.sleep(0.01)
        return batch

    loader = PrefetchLoader(DataLoader(_Numbered(1000), batch_size=1), slow, ahead=2)
    it = iter(loader)
    next(it)
    it.close()  # what happens when the training stops at its time budget
    assert not any(t.name == "deepscope-batches" for t in threading.enumerate())
    assert len(prepared) <= 5  # it did not go on through the other 999


def test_ahead_must_be_positive():
    with pytest.raises(ValueError):
        PrefetchLoader([], ahead=0)
