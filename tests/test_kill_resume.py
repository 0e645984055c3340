"""A training killed with SIGKILL (power cut, cluster pre-emption) continues with --resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from deepscope.workflow.model_folder import load_model_folder

# Two fresh Python processes (about 7 s of imports each): 17 s on a quiet machine, so
# not marked slow; it is the only test of a real SIGKILL.
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def _epochs(metrics):
    if not metrics.exists():
        return []
    with metrics.open(newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def _deepscope(*args):
    return [sys.executable, "-m", "deepscope", *map(str, args)]


def test_kill_9_mid_training_then_resume(tmp_path, noisy_dir, tiny_config_file):
    run = tmp_path / "run"
    metrics = run / "metrics.csv"
    common = ["--images", noisy_dir, "--out", run, "--config", tiny_config_file]
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(
        _deepscope("train", "n2v", *common, "--epochs", 50), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while len(_epochs(metrics)) < 2:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no 2 epochs within 120 s"
            time.sleep(0.02)
        time.sleep(0.1)  # into the next epoch
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "model").exists(), "killed before the end: no model yet"
    done = _epochs(metrics)
    assert done == list(range(len(done)))
    target = len(done) + 2

    resumed = subprocess.run(
        _deepscope("train", "n2v", *common, "--resume", "--epochs", target),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from last.ckpt" in resumed.stdout
    assert f"finished all {target} epochs" in resumed.stdout
    # Every epoch is there once; at most the interrupted one was trained again.
    assert _epochs(metrics) == list(range(target))
    partial = [p.name for p in run.rglob("*") if p.name.endswith(".partial")]
    assert partial == []
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert [n for n in ckpts if n.startswith("epoch_")] == [
        f"epoch_{e:04d}.ckpt" for e in range(1, target + 1)
    ]
    model = load_model_folder(run / "model")
    assert model.info["training"]["epochs_trained"] == target
