"""Shared fixtures: tiny synthetic microscopy data and settings that train in seconds.

Images are smooth random blobs (the "clean" signal) plus Gaussian noise, written as
uint16 TIFFs. Networks are a depth-1 U-Net with 4 base channels, trained on a few
dozen 32×32 patches, so a whole training takes about a second on one CPU core.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
import yaml
from scipy import ndimage

# Everything that keeps a run short. ``checkpoint_every: 1`` so that every epoch leaves
# an ``epoch_XXXX.ckpt`` (resume and checkpoint tests need them).
TINY_CONFIG: dict[str, Any] = {
    "task": "n2v",
    "data": {"patch_size": [32, 32], "spatial_dims": 2},
    "model": {"depth": 1, "base_channels": 4},
    "training": {
        "epochs": 2,
        "patches_per_epoch": 16,
        "batch_size": 8,
        "val_patches": 8,
        "checkpoint_every": 1,
        "precision": "32",
        "seed": 0,
    },
}

TINY_CONFIG_3D: dict[str, Any] = copy.deepcopy(TINY_CONFIG)
TINY_CONFIG_3D["data"] = {"patch_size": [8, 16, 16], "spatial_dims": 3}


# Tiny test networks run fastest on one thread (and do not fight over a busy machine):
# the environment variable reaches deepscope's own thread set-up inside training.
os.environ.setdefault("DEEPSCOPE_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _one_thread():
    """Keep every test on one torch thread, whatever an earlier test set."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_pair(
    shape: tuple[int, ...], seed: int, noise: float = 60.0
) -> tuple[np.ndarray, np.ndarray]:
    """A (noisy, clean) uint16 pair: smooth random blobs plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.random(shape), sigma=max(2.0, min(shape) / 16))
    blobs = (blobs - blobs.min()) / max(float(np.ptp(blobs)), 1e-9)
    clean = 200.0 + 2000.0 * blobs
    noisy = clean + rng.normal(0.0, noise, shape)
    to_u16 = lambda a: np.clip(np.round(a), 0, 65535).astype(np.uint16)  # noqa: E731
    return to_u16(noisy), to_u16(clean)


def write_tif(path: Path, data: np.ndarray) -> Path:
    """Write a plain TIFF (no axes metadata: deepscope guesses YX / ZYX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data)
    return path


def folder_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def noisy_dir(tmp_path: Path) -> Path:
    """Three noisy 2D images, 64×64 uint16: a.tif, b.tif, c.tif."""
    folder = tmp_path / "noisy"
    for i, name in enumerate(["a", "b", "c"]):
        write_tif(folder / f"{name}.tif", synthetic_pair((64, 64), seed=i)[0])
    return folder


@pytest.fixture
def clean_pair_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """Two held-out 2D pairs for QC: (qc_noisy/, qc_clean/) with the same file names."""
    noisy, clean = tmp_path / "qc_noisy", tmp_path / "qc_clean"
    for i, name in enumerate(["p", "q"]):
        n, c = synthetic_pair((64, 64), seed=100 + i)
        write_tif(noisy / f"{name}.tif", n)
        write_tif(clean / f"{name}.tif", c)
    return noisy, clean


@pytest.fixture
def stack_dir(tmp_path: Path) -> Path:
    """Two noisy Z-stacks, 8×32×32 uint16: s1.tif, s2.tif."""
    folder = tmp_path / "stacks"
    for i in range(2):
        write_tif(folder / f"s{i + 1}.tif", synthetic_pair((8, 32, 32), seed=10 + i)[0])
    return folder


@pytest.fixture
def stack_pair_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """One held-out 3D pair for QC: (qc_stacks_noisy/, qc_stacks_clean/)."""
    noisy, clean = tmp_path / "qc_stacks_noisy", tmp_path / "qc_stacks_clean"
    n, c = synthetic_pair((8, 32, 32), seed=200)
    write_tif(noisy / "z.tif", n)
    write_tif(clean / "z.tif", c)
    return noisy, clean


@pytest.fixture
def tiny_config_dict() -> dict[str, Any]:
    """A fresh copy of the tiny 2D settings (a dict for the Python API)."""
    return copy.deepcopy(TINY_CONFIG)


@pytest.fixture
def make_config() -> Callable[..., Any]:
    """Build a validated tiny config; keyword ``section__field=value`` overrides.

    ``make_config(training__epochs=3)`` or ``make_config(three_d=True)``.
    """
    from deepscope.tasks import get_task

    def make(three_d: bool = False, **overrides: Any) -> Any:
        data = copy.deepcopy(TINY_CONFIG_3D if three_d else TINY_CONFIG)
        for key, value in overrides.items():
            section, field = key.split("__")
            data[section][field] = value
        return get_task("n2v").config_class.model_validate(data)

    return make


@pytest.fixture
def tiny_config_file(tmp_path: Path) -> Path:
    """The tiny 2D settings as a YAML file for ``--config``."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_CONFIG))
    return path


@pytest.fixture
def tiny_config_args(tiny_config_file: Path) -> list[str]:
    """CLI options for ``deepscope train n2v`` that keep a run to a few seconds."""
    return ["--config", str(tiny_config_file), "--epochs", "2"]


@pytest.fixture(scope="session")
def trained_2d_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with a finished 2-epoch 2D model (``run/model``), trained once per session.

    Shared: tests must not change it (copy it with ``shutil.copytree`` first).
    """
    from deepscope.tasks import get_task
    from deepscope.workflow.training import train

    base = tmp_path_factory.mktemp("trained_2d")
    for i, name in enumerate(["a", "b", "c"]):
        write_tif(base / "images" / f"{name}.tif", synthetic_pair((64, 64), seed=i)[0])
    config = get_task("n2v").config_class.model_validate(copy.deepcopy(TINY_CONFIG))
    train(config, base / "images", base / "run", show_bar=False, log=lambda _m: None)
    return base / "run"
