"""Create the fixed train/test split of ``../shared/data/nuclei2d`` (issue 4).

The split is stratified by image kind, decided from the pixels:

* ``fluorescence`` -- grey image (all colour channels equal) on a dark background;
* ``brightfield``  -- grey image on a bright background, or a colour image with low
  saturation (median HSV saturation < 0.2: light, mostly unstained tissue/cells);
* ``he``           -- colour image with median saturation >= 0.2 (pink/purple H&E stain).

About 25 % of each kind (rounded, at least one image) goes to the test part, chosen
with a fixed seed. The result is written to ``benchmarks/nuclei_split.json``; it is
committed so that the shipped model and the benchmark use the same split. Re-run with::

    .venv/bin/python benchmarks/nuclei_split.py

(it prints whether the recomputed split equals the committed one).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from skimage.color import rgb2hsv

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nuclei2d"
SPLIT_FILE = Path(__file__).resolve().parent / "nuclei_split.json"
SEED = 20261122
TEST_SHARE = 0.25


def image_kind(rgb: np.ndarray) -> str:
    """Classify an RGB(A) image as ``fluorescence``, ``brightfield`` or ``he``.

    Parameters
    ----------
    rgb : numpy.ndarray
        Image of shape (H, W) or (H, W, C) with C >= 3 (alpha ignored).

    Returns
    -------
    str
        The image kind.
    """
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    rgb = rgb[..., :3]
    grey = rgb.astype(np.float32).mean(-1)
    colour_spread = float(np.abs(rgb[..., 0].astype(np.float32) - rgb[..., 1]).mean())
    colour_spread += float(np.abs(rgb[..., 1].astype(np.float32) - rgb[..., 2]).mean())
    if colour_spread < 1.0:
        # Grey: fluorescence has a dark background (the median pixel is background).
        dark_background = np.median(grey) < 0.5 * max(float(grey.max()), 1.0)
        return "fluorescence" if dark_background else "brightfield"
    saturation = float(np.median(rgb2hsv(rgb)[..., 1]))
    return "he" if saturation >= 0.2 else "brightfield"


def make_split(data: Path = DATA, seed: int = SEED, test_share: float = TEST_SHARE) -> dict:
    """Compute the stratified split of the ``nuclei2d`` folder.

    Parameters
    ----------
    data : pathlib.Path
        The ``nuclei2d`` folder (``images/*.png``, ``masks/*.tif``).
    seed : int
        Seed of the random choice of test images.
    test_share : float
        Share of each kind that goes to the test part.

    Returns
    -------
    dict
        ``{"seed", "test_share", "kinds": {stem: kind}, "train": [...], "test": [...]}``
        with image stems (file names without extension), sorted.
    """
    stems = sorted(p.stem for p in (data / "images").glob("*.png"))
    kinds = {s: image_kind(iio.imread(data / "images" / f"{s}.png")) for s in stems}
    rng = np.random.default_rng(seed)
    test: list[str] = []
    for kind in sorted(set(kinds.values())):
        members = sorted(s for s in stems if kinds[s] == kind)
        n_test = max(1, int(round(test_share * len(members))))
        test += [str(s) for s in rng.choice(members, size=n_test, replace=False)]
    train = sorted(s for s in stems if s not in test)
    return {
        "dataset": "shared/data/nuclei2d (DSB2018 stage-1 test, BBBC038)",
        "rule": "kind from pixels (see benchmarks/nuclei_split.py); ~25% of each kind to test",
        "seed": seed,
        "test_share": test_share,
        "counts": {
            k: {
                "train": sum(1 for s in train if kinds[s] == k),
                "test": sum(1 for s in test if kinds[s] == k),
            }
            for k in sorted(set(kinds.values()))
        },
        "kinds": kinds,
        "train": train,
        "test": sorted(test),
    }


def load_split(path: Path = SPLIT_FILE) -> dict:
    """Read the committed split file."""
    return json.loads(Path(path).read_text())


def main() -> None:
    """Recompute the split; write it if missing or if ``--write`` is given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--write", action="store_true", help="overwrite nuclei_split.json")
    args = parser.parse_args()
    split = make_split(args.data)
    if args.write or not SPLIT_FILE.exists():
        SPLIT_FILE.write_text(json.dumps(split, indent=1) + "\n")
        print(f"wrote {SPLIT_FILE}")
    else:
        same = load_split()["test"] == split["test"]
        print("committed split reproduced" if same else "DIFFERENT from the committed split")
    print(json.dumps(split["counts"]))


if __name__ == "__main__":
    main()
