"""Training throughput of CAREamics' Noise2Void on the W2S noisy images (peer comparison).

Run with a *separate* Python environment that has CAREamics installed (it is not a
deepscope dependency), for example:

    /work/careamics-venv/bin/python benchmarks/careamics_throughput.py --epochs 4

Install (outside the repo; torch first so that nothing pulls a CUDA build):
    python3 -m venv /work/careamics-venv
    /work/careamics-venv/bin/pip install torch==2.13.0
    /work/careamics-venv/bin/pip install --no-deps careamics==0.3.5
    # then careamics' other requirements by hand, with torch==2.13.0 pinned and without
    # torchvision (it pins torchvision<=0.26, i.e. another torch); torchvision 0.28.0 is
    # installed with --no-deps. Its PyPI wheel is CUDA-linked, so its C++ ops do not
    # load beside CPU torch and `import torchvision` fails on "torchvision::nms does not
    # exist" unless the nms/qnms op schemas are defined first (done in that venv by a
    # small .pth hook). CAREamics' N2V path uses no torchvision op.

Uses only CAREamics' public API (``create_advanced_n2v_config`` + ``CAREamist.train``)
with the network size of deepscope's benchmark: U-Net depth 2, 32 initial channels,
64x64 patches, batch size 64. Throughput is measured with a Lightning callback from the
start of each training epoch to the end of its last training batch (data loading and
N2V masking included, validation excluded); the first ``--warmup-epochs`` are dropped.

Prints one JSON line. See compare_throughput.sh for the side-by-side with deepscope.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
import warnings


def _allocator_env() -> dict[str, str]:
    return {
        k: v for k, v in sorted(os.environ.items()) if k == "LD_PRELOAD" or k.startswith("MALLOC_")
    }


def _conv_macs_per_patch(model, patch: int) -> float:
    """Forward multiply-accumulates of all Conv layers for one 1-channel patch."""
    import torch

    total = [0]

    def hook(mod, _inp, out):
        total[0] += out.numel() * mod.weight[0].numel()

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))
    ]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, patch, patch))
    model.train(was_training)
    for h in handles:
        h.remove()
    return float(total[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/work/shared/data/denoise_w2s/noisy")
    p.add_argument("--n-images", type=int, default=8, help="number of 512x512 TIFFs to train on")
    p.add_argument("--epochs", type=int, default=4, help="total epochs, warm-up included")
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=8, help="batches per epoch (limit_train_batches)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument(
        "--precision",
        default="default",
        help="'default' (CAREamics/Lightning default, 32-true) or a Lightning precision "
        "string passed through trainer_params, e.g. 'bf16-mixed'",
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=-1,
        help="dataloader workers; -1 keeps CAREamics' default (min(cpus-1, 4) on Linux)",
    )
    p.add_argument(
        "--no-augment", action="store_true", help="disable CAREamics' default flips/rot90"
    )
    p.add_argument("--seed", type=int, default=1, help="CAREamics requires seed > 0")
    a = p.parse_args()

    warnings.filterwarnings("ignore")
    import careamics
    import lightning
    import numpy as np
    import tifffile
    import torch
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config
    from lightning.pytorch import Callback

    files = sorted(glob.glob(os.path.join(a.data, "*.tif")))[: a.n_images]
    if not files:
        sys.exit(f"no .tif files in {a.data}")
    shape = tifffile.imread(files[0]).shape

    class EpochTimer(Callback):
        """Per training epoch: seconds from epoch start to the end of its last batch."""

        def __init__(self) -> None:
            self.epochs: list[tuple[float, int]] = []  # (seconds, patches)

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._t0 = time.perf_counter()
            self._t_last = self._t0
            self._n = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._n += int(batch[0].data.shape[0])
            self._t_last = time.perf_counter()

        def on_validation_start(self, trainer, pl_module) -> None:
            # validation runs after the last training batch of the epoch, before
            # on_train_epoch_end; record the training part only.
            if getattr(self, "_n", 0):
                self._record()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if getattr(self, "_n", 0):
                self._record()

        def _record(self) -> None:
            self.epochs.append((self._t_last - self._t0, self._n))
            self._n = 0

    trainer_params: dict = {"enable_model_summary": False}
    if a.precision != "default":
        trainer_params["precision"] = a.precision

    config = create_advanced_n2v_config(
        experiment_name="throughput",
        data_type="tiff",
        axes="YX" if len(shape) == 2 else "SYX",
        patch_size=[a.patch, a.patch],
        batch_size=a.batch,
        num_epochs=a.epochs,
        num_steps=a.steps,
        augmentations=[] if a.no_augment else None,
        num_workers=a.num_workers,
        model_params={"depth": a.depth, "num_channels_init": a.channels},
        trainer_params=trainer_params,
        seed=a.seed,
    )

    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as work_dir:
        engine = CAREamist(config, work_dir=work_dir, callbacks=[timer], enable_progress_bar=False)
        macs = _conv_macs_per_patch(engine.model.model, a.patch)
        n_params = sum(p.numel() for p in engine.model.model.parameters())
        t0 = time.perf_counter()
        engine.train(train_data=files)
        wall = time.perf_counter() - t0
        precision_used = str(engine.trainer.precision)
        num_workers = config.data_config.train_dataloader_params.get(
            "num_workers", config.data_config.num_workers
        )

    timed = timer.epochs[a.warmup_epochs :]
    if not timed:
        sys.exit(f"only {len(timer.epochs)} epoch(s) ran; need more than --warmup-epochs")
    secs = sum(s for s, _ in timed)
    patches = sum(n for _, n in timed)
    rate = patches / secs
    out = {
        "tool": "careamics",
        "patches_per_s": round(rate, 2),
        "gmac_per_s_fwd": round(rate * macs / 1e9, 2),
        "n_epochs": len(timed),
        "warmup_epochs": a.warmup_epochs,
        "patches_per_epoch": timed[0][1],
        "per_epoch_patches_per_s": [round(n / s, 2) for s, n in timed],
        "precision": precision_used,
        "batch": a.batch,
        "patch": a.patch,
        "unet_depth": a.depth,
        "unet_channels": a.channels,
        "model_params": n_params,
        "fwd_mmac_per_patch": round(macs / 1e6, 1),
        "n_images": len(files),
        "num_workers": num_workers,
        "torch_threads": torch.get_num_threads(),
        "augmentations": not a.no_augment,
        "total_fit_wall_s": round(wall, 1),
        "careamics": careamics.__version__,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "numpy": np.__version__,
        "allocator_env": _allocator_env() or "glibc default (no LD_PRELOAD / MALLOC_*)",
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
