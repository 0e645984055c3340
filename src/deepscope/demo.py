"""``deepscope demo``: the whole Noise2Void workflow on sample images shipped with deepscope."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from deepscope.config import config_from_dict
from deepscope.data.validation import validate_dataset
from deepscope.errors import DeepscopeError
from deepscope.workflow.model_folder import load_model_folder
from deepscope.workflow.predict import TileSettings, predict_files
from deepscope.workflow.qc import run_qc
from deepscope.workflow.training import train


def demo_data_dir() -> Path:
    """Folder of the shipped sample images (see ATTRIBUTION.txt there)."""
    return Path(str(resources.files("deepscope") / "demo_data"))


def demo_config(max_minutes: float) -> dict:
    """Settings for a short but useful demo training on 2 CPU cores."""
    return {
        "task": "n2v",
        "data": {"patch_size": [64, 64]},
        "training": {
            "epochs": 200,
            "max_minutes": max_minutes,
            "patches_per_epoch": 512,
            "batch_size": 64,
            # 2.5x the usual rate: a 2-minute training is only 60-130 steps. On a CPU
            # without bf16 (the fewest steps) 4e-4 reached 24.7-25.9 dB in three runs,
            # 1e-3 26.0-27.0 dB in four (benchmarks/RESULTS.md, session 12)
            "learning_rate": 1e-3,
            "checkpoint_every": 5,
        },
    }


def run_demo(out: Path, max_minutes: float = 2.0) -> Path:
    """Validate, train, predict and quality-control on the demo images; return the report."""
    data = demo_data_dir()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / "run").exists():
            raise DeepscopeError(
                "the demo folder exists and is not an earlier demo",
                out,
                "give another folder with --out",
            )
        shutil.rmtree(out)  # an earlier demo's results, written by deepscope itself
    config = config_from_dict(demo_config(max_minutes))
    step = "[{}/4] {}".format
    print(step(1, "Checking the sample images ..."))
    report = validate_dataset("n2v", config, data / "noisy")
    print(report.format())
    print(step(2, f"Training Noise2Void for up to {max_minutes:g} minutes ..."))
    result = train(config, data / "noisy", out / "run")
    model = load_model_folder(result.model_dir)
    # Test-time augmentation (the mean over the 8 flips and quarter turns): 8 times the
    # work, a few seconds here; +0.67 dB on the demo's QC images (benchmarks/RESULTS.md).
    tiles = TileSettings(tta=True)
    print(step(3, "Denoising the sample images (averaged over 8 flips and turns) ..."))
    predict_files(model, data / "noisy", out / "denoised", tiles=tiles)
    print(step(4, "Quality control against high-SNR images of the same fields ..."))
    summary = run_qc(model, data / "qc_noisy", data / "qc_clean", out / "qc", tiles=tiles)
    m, g, i = summary["model"], summary["gaussian"], summary["input"]
    print(
        f"\nPSNR (brightness-matched): noisy input {i['psnr_matched']:.2f} dB, "
        f"best Gaussian filter {g['psnr_matched']:.2f} dB, Noise2Void {m['psnr_matched']:.2f} dB"
    )
    if m["psnr_matched"] < g["psnr_matched"]:
        print(
            "A Gaussian filter is still better on these few images after 2 minutes of "
            "training: these widefield images are smooth, which favours it. Trained 15 "
            "minutes on 36 such fields (on a CPU with bfloat16), Noise2Void was 0.5 dB "
            "better than the best Gaussian (benchmarks/RESULTS.md); train longer on your "
            "own images with 'deepscope train n2v'."
        )
    print(f"Denoised images: {out / 'denoised'}")
    print(f"Model folder:    {result.model_dir}")
    print(f"QC report:       {out / 'qc' / 'report.html'}  (open it in a web browser)")
    return out / "qc" / "report.html"
