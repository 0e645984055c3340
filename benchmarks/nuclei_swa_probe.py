"""Probe: weight averaging (SWA) of the shipped nuclei model's run, judged on validation.

The 60-minute run that became the shipped ``nuclei`` model (``nuclei_dsb.py``, output
``benchmarks/out/nuclei_dsb_60min_pat40``) kept a checkpoint every 20 epochs. Averaging
the weights of the last 5 or 10 (epochs 280-360 or 180-360; the learning rate was
constant until epoch 349), then re-estimating batch-norm statistics on 150 batches of
4 random 160x160 training patches, is scored the way training chooses thresholds: best
mean F1 over IoU 0.3-0.7 on the run's 5 validation images (never the test images).

Usage (from the project root)::

    PYTHONPATH=src .venv/bin/python benchmarks/nuclei_swa_probe.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

RUN = Path(__file__).parent / "out" / "nuclei_dsb_60min_pat40" / "work"
AVERAGES = {
    "last 5 (epochs 280-360)": [f"epoch_{e:04d}" for e in range(280, 361, 20)],
    "last 10 (epochs 180-360)": [f"epoch_{e:04d}" for e in range(180, 361, 20)],
}


def average(names: list[str]) -> dict[str, torch.Tensor]:
    """The mean of the kept checkpoints ``names`` (float tensors; others from the first)."""
    folder = RUN / "run" / "model" / "checkpoints"
    states = [torch.load(folder / f"{n}.pt", map_location="cpu", weights_only=True) for n in names]
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = (sum(s[key].float() for s in states) / len(states)).to(first.dtype)
        else:
            out[key] = first
    return out


def recalibrate(net: torch.nn.Module, images: list[np.ndarray], batches: int = 150) -> None:
    """Re-estimate batch-norm statistics on random flipped 160x160 patches of ``images``."""
    rng = np.random.default_rng(0)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over all batches
    net.train()
    with torch.no_grad():
        for _ in range(batches):
            batch = []
            for _ in range(4):
                a = images[rng.integers(len(images))]
                y = rng.integers(0, a.shape[1] - 159)
                x = rng.integers(0, a.shape[2] - 159)
                patch = a[:, y : y + 160, x : x + 160]
                if rng.random() < 0.5:
                    patch = patch[:, ::-1]
                if rng.random() < 0.5:
                    patch = patch[:, :, ::-1]
                batch.append(np.ascontiguousarray(patch))
            net(torch.from_numpy(np.stack(batch)).float())
    net.eval()


def main() -> None:
    """Score the shipped weights and the two averages on the validation images."""
    from deepscope.data.patches import split_train_val
    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.stardist_thresholds import optimize_thresholds
    from deepscope.workflow.training import load_images

    torch.set_num_threads(2)
    model = load_model_folder(RUN / "run" / "model")
    cfg = model.config
    paths = sorted((RUN / "train" / "images").glob("*.tif"))
    inputs, _ = load_images(paths, cfg.data.axes, 2)
    masks, _ = load_images([RUN / "train" / "masks" / p.name for p in paths], cfg.data.axes, 2)
    split = split_train_val(
        inputs, masks, cfg.data.val_fraction, cfg.data.patch_size, cfg.training.seed
    )
    print(split.how)
    train = [model.normalizer.normalize(a) for a in split.train_inputs]

    def score(m) -> tuple:
        r = optimize_thresholds(m, split.val_inputs, split.val_targets)
        return r["score"], r["prob_threshold"], r["nms_threshold"]

    print("shipped (best checkpoint): mean F1, prob, NMS =", score(model), flush=True)
    for label, names in AVERAGES.items():
        averaged = load_model_folder(RUN / "run" / "model")
        averaged.network.load_state_dict(average(names))
        recalibrate(averaged.network, train)
        print(f"{label}: mean F1, prob, NMS =", score(averaged), flush=True)


if __name__ == "__main__":
    main()
