"""Why raw PSNR misleads on the W2S 8-bit set: noisy and clean differ in brightness/contrast.

For every noisy/clean pair: the least-squares fit clean ≈ a·noisy + b, the share of
saturated pixels, and the PSNR of the noisy image and of the best Gaussian filter, raw
and after the affine match that deepscope's QC applies to every method alike.

Usage: .venv/bin/python benchmarks/w2s_intensity_check.py [--data ../shared/data/denoise_w2s]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from deepscope.data.io import list_images, read_image
from deepscope.workflow.qc_restoration import affine_match, restoration_metrics

HERE = Path(__file__).parent
SIGMAS = (0.75, 1.0, 1.5, 2.0, 2.5, 3.0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/denoise_w2s")
    a = p.parse_args()
    rows = []
    for f in list_images(a.data / "noisy"):
        n = read_image(f).data.astype(np.float64)
        c = read_image(a.data / "clean" / f.name).data.astype(np.float64)
        slope, offset = np.polyfit(n.ravel(), c.ravel(), 1)
        raw = restoration_metrics(n, c, data_range=255)
        gauss_raw = max(
            restoration_metrics(ndimage.gaussian_filter(n, s), c, data_range=255)["psnr"]
            for s in SIGMAS
        )
        gauss_matched = max(
            restoration_metrics(affine_match(ndimage.gaussian_filter(n, s), c), c, data_range=255)[
                "psnr"
            ]
            for s in SIGMAS
        )
        rows.append(
            {
                "image": f.name,
                "slope": slope,
                "offset": offset,
                "saturated_noisy_pct": 100 * float((n == 255).mean()),
                "saturated_clean_pct": 100 * float((c == 255).mean()),
                "psnr_noisy_raw": raw["psnr"],
                "psnr_noisy_matched": raw["psnr_matched"],
                "psnr_best_gaussian_raw": gauss_raw,
                "psnr_best_gaussian_matched": gauss_matched,
            }
        )
    keys = [k for k in rows[0] if k != "image"]
    summary = {
        k: {
            "mean": float(np.mean([r[k] for r in rows])),
            "min": float(np.min([r[k] for r in rows])),
            "max": float(np.max([r[k] for r in rows])),
        }
        for k in keys
    }
    print(json.dumps({"n_pairs": len(rows), "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
