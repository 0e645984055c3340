"""Training in several processes (Lightning's DDP), tested on the CPU with 2 processes.

The commands run in subprocesses, as a user runs them: Lightning's launcher (``--devices``)
starts the other process by running the same command again, and torchrun starts both.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_CONFIG, synthetic_pair, write_tif
from deepscope.engine import distributed
from deepscope.errors import DeepscopeError

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this PyTorch has no torch.distributed"
)


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    for i, name in enumerate("abc"):
        write_tif(tmp_path / "imgs" / f"{name}.tif", synthetic_pair((64, 64), seed=i)[0])
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY_CONFIG))
    return tmp_path / "imgs", cfg


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def _epochs(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_devices_2_trains_in_two_processes_and_only_the_first_writes(tmp_path, data):
    images, cfg = data
    cmd = [sys.executable, "-m", "deepscope", "train", "n2v", "--images", str(images),
           "--config", str(cfg), "--epochs", "3"]  # fmt: skip
    two = _run([*cmd, "--out", str(tmp_path / "two"), "--devices", "2"], tmp_path)
    assert two.returncode == 0, two.stderr
    out = two.stdout + two.stderr
    assert "training in 2 processes" in out and "MEMBER: 2/2" in out
    assert out.count("epoch 3/3") == 1 and out.count("Model: ") == 1  # said once, by rank 0
    assert "find_unused_parameters" not in out  # nothing frozen: no extra traversal
    model = tmp_path / "two" / "model"
    assert (model / "weights.pt").exists() and (model / "training_images.json").exists()
    assert [r["epoch"] for r in _epochs(tmp_path / "two")] == ["0", "1", "2"]

    resumed = _run([*cmd[:-1], "4", "--out", str(tmp_path / "two"), "--resume",
                    "--devices", "2"], tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert [r["epoch"] for r in _epochs(tmp_path / "two")] == ["0", "1", "2", "3"]
    assert "goes on in" not in resumed.stdout + resumed.stderr
    info = json.loads((model / "deepscope_model.json").read_text())
    assert info["training"]["processes"] == [2, 2]

    one = _run([*cmd[:-1], "5", "--out", str(tmp_path / "two"), "--resume"], tmp_path)
    assert one.returncode == 0, one.stderr
    assert "this run was trained in 2 process(es) and goes on in 1" in one.stdout + one.stderr
    info = json.loads((model / "deepscope_model.json").read_text())
    assert info["training"]["processes"] == [2, 2, 1]


def test_torchrun_starts_the_processes_and_frozen_layers_are_allowed(tmp_path, data):
    from deepscope.interfaces.cli import main

    images, cfg = data
    assert main(["train", "n2v", "--images", str(images), "--out", str(tmp_path / "start"),
                 "--config", str(cfg)]) == 0  # fmt: skip
    torchrun = Path(sys.executable).with_name("torchrun")
    _write_targets(images)
    result = _run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "deepscope", "train",
         "care", "--images", str(images), "--targets", str(images.parent / "targets"),
         "--out", str(tmp_path / "care"), "--config", str(_care_config(tmp_path, cfg)),
         "--from", str(tmp_path / "start" / "model"), "--freeze-encoder", "1"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "training in 2 processes (2 per computer)" in out
    assert out.count("Model: ") == 1 and (tmp_path / "care" / "model" / "weights.pt").exists()


def _write_targets(images: Path) -> None:
    for i, name in enumerate("abc"):
        write_tif(images.parent / "targets" / f"{name}.tif", synthetic_pair((64, 64), seed=i)[1])


def _care_config(tmp_path: Path, cfg: Path) -> Path:
    data = yaml.safe_load(cfg.read_text())
    data["task"] = "care"
    path = tmp_path / "care.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_process_counts_are_read_from_torchrun_and_slurm(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                 "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_NNODES",
                 "SLURM_NTASKS_PER_NODE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched_processes() is None and distributed.is_main_process()
    assert distributed.process_layout(None, None, gpus=0) == (1, 1)
    with pytest.raises(DeepscopeError, match="more GPUs than this computer has"):
        distributed.process_layout(4, None, gpus=2)
    with pytest.raises(DeepscopeError, match="srun"):
        distributed.process_layout(None, 2, gpus=0)
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task SLURM job is an ordinary command
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert distributed.launched_processes() is None
    monkeypatch.setenv("SLURM_NTASKS", "8")  # srun: 4 tasks on each of 2 computers
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4(x2)")
    monkeypatch.setenv("SLURM_PROCID", "5")
    assert distributed.launched_processes() == (4, 2) and not distributed.is_main_process()
    assert distributed.process_layout(None, None, gpus=4) == (4, 2)
    with pytest.raises(DeepscopeError, match="leave out --devices and --nodes"):
        distributed.process_layout(2, None, gpus=4)
    for name in ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_NNODES", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # torchrun --nproc_per_node 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert distributed.launched_processes() == (2, 1) and distributed.is_main_process()
    monkeypatch.setenv("RANK", "1")
    assert not distributed.is_main_process()


def test_each_process_draws_its_own_patches():
    from types import SimpleNamespace

    from deepscope.config import DataConfig
    from deepscope.data.patches import RandomPatches
    from deepscope.engine.callbacks import DistinctPatchesPerProcess

    images = [np.random.default_rng(0).random((1, 64, 64)).astype(np.float32)]

    def patches(rank: int) -> np.ndarray:
        ds = RandomPatches(images, None, [16, 16], 4, DataConfig(), seed=3, augment=True)
        trainer = SimpleNamespace(
            world_size=2, global_rank=rank, train_dataloader=SimpleNamespace(dataset=ds)
        )
        DistinctPatchesPerProcess().on_train_start(trainer, None)
        return np.stack([ds[i]["input"].numpy() for i in range(4)])

    alone = RandomPatches(images, None, [16, 16], 4, DataConfig(), seed=3, augment=True)
    first = np.stack([alone[i]["input"].numpy() for i in range(4)])
    np.testing.assert_array_equal(patches(0), first)  # rank 0: the seed's own patches
    assert not np.array_equal(patches(1), first)


def test_too_few_patches_per_process_is_refused_before_anything_is_written(tmp_path, data, capsys):
    from deepscope.interfaces.cli import main

    images, cfg = data
    run = tmp_path / "run"
    code = main(["train", "n2v", "--images", str(images), "--out", str(run), "--config", str(cfg),
                 "--devices", "2", "--batch-size", "16"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "each of the 2 processes gets 8 of the 16 patches" in err
    assert "--patches-per-epoch to at least 32" in err and not run.exists()
