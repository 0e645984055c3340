"""StarDist prediction speed: deepscope (PyTorch) vs the ``stardist`` package (TensorFlow).

Issue 4 asks: prediction including NMS on a 1024×1024 image with ~1000 nuclei at least
2× faster than the ``stardist`` package with its TF model, on this CPU.

The test image (``make-image``): a 1024×1024 mosaic of the fluorescence image
``4f949bd8…`` of ``../shared/data/nuclei2d`` (390×239 px, 98 nuclei, grey) repeated
3×5 times and cropped to 1024×1024 (no rescaling, so the nuclei keep their real size;
the ground-truth count of the mosaic is written next to it, about 1000 nuclei).

What is timed (median of ``--repeats`` runs after one warm-up run, same thread count for
both, ``--threads``, default 2):

``deepscope``
    the full prediction of a deepscope StarDist model folder (default: the shipped
    ``nuclei`` model; ``--model`` for another): percentile normalisation, the network
    (tiles of 1024, i.e. one tile here), probability/distance maps, NMS and label
    rendering (``predict_raw`` + ``task.instances``). It also saves its probability and
    distance maps on the grid (``deepscope_maps.npz``) and its candidate count.
``stardist-tf`` (run with the separate TF venv, never the project's)
    ``StarDist2D`` built with the config of ``2D_versatile_fluo`` (32 rays, grid 2×2,
    default U-Net: depth 3, 32 base filters, 128 feature channels; 1 input channel) with
    *random* weights, because the pretrained weights cannot be downloaded here. Timed:
    (a) ``model.predict_instances`` end to end, with the probability threshold set to
    the quantile of its own probability map that gives the same number of NMS candidates
    as deepscope had (random weights give probabilities near 0.5 everywhere; the NMS time
    depends on the number of candidates and their polygon sizes, which random distances
    do not reproduce — so also:) (b) the network alone (``keras_model.predict``) and
    (c) the package's own NMS + rendering (``stardist.nms.non_maximum_suppression`` +
    ``polygons_to_label``, what ``predict_instances`` runs) on *deepscope's* maps, i.e.
    exactly the same candidates. The fair total for the TF package is (b) + (c).

Run everything with one command from the project root::

    benchmarks/stardist_speed.sh

Steps by hand: ``.venv/bin/python benchmarks/stardist_speed.py make-image``,
``.venv/bin/python benchmarks/stardist_speed.py deepscope``,
``/work/stardist-tf-venv/bin/python benchmarks/stardist_speed.py tf``,
``.venv/bin/python benchmarks/stardist_speed.py report``. Results:
``benchmarks/out/stardist_speed/*.json``. This file imports neither deepscope nor
TensorFlow at the top, so both venvs can run it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DEEPSCOPE_DATA", ROOT / ".." / "shared" / "data")) / "nuclei2d"
OUT = ROOT / "benchmarks" / "out" / "stardist_speed"
SOURCE = "4f949bd8d914bbfa06f40d6a0e2b5b75c38bf53dbcbafc48c97f105bee4f8fac"
SIZE = 1024


def _source_name() -> str:
    matches = sorted((DATA / "images").glob(f"{SOURCE[:10]}*.png"))
    if not matches:
        raise SystemExit(f"{DATA / 'images'}: no image {SOURCE[:10]}… (see the docstring)")
    return matches[0].stem


def make_image() -> None:
    """Write the 1024×1024 mosaic and its ground-truth labels."""
    import imageio.v3 as iio
    import tifffile

    name = _source_name()
    grey = np.asarray(iio.imread(DATA / "images" / f"{name}.png"))[..., 0]
    labels = tifffile.imread(DATA / "masks" / f"{name}.tif").astype(np.int32)
    h, w = grey.shape
    reps = (-(-SIZE // h), -(-SIZE // w))
    img = np.tile(grey, reps)[:SIZE, :SIZE]
    lab = np.zeros((reps[0] * h, reps[1] * w), np.int32)
    n = int(labels.max())
    for i in range(reps[0]):
        for j in range(reps[1]):
            k = i * reps[1] + j
            lab[i * h : (i + 1) * h, j * w : (j + 1) * w] = np.where(labels > 0, labels + k * n, 0)
    lab = lab[:SIZE, :SIZE]
    OUT.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(OUT / "mosaic.tif", img)
    tifffile.imwrite(OUT / "mosaic_labels.tif", lab, compression="zlib")
    count = len(np.unique(lab)) - 1
    info = {"source": name, "tiles": reps, "shape": img.shape, "true_nuclei": count}
    (OUT / "mosaic.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


def _median_time(fn, repeats: int) -> tuple[float, list[float], object]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def run_deepscope(model_name: str, repeats: int, threads: int) -> None:
    """Time deepscope's prediction (normalise, network, NMS, labels) on the mosaic."""
    import tifffile
    import torch

    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.predict import TileSettings, predict_raw

    torch.set_num_threads(threads)
    try:
        from deepscope.workflow.pretrained import resolve_model

        folder = resolve_model(model_name)
    except ImportError:
        folder = Path(model_name)
    model = load_model_folder(folder)
    task = model.task
    image = tifffile.imread(OUT / "mosaic.tif").astype(np.float32)[None]
    tiles = TileSettings(tile=SIZE)

    def predict():
        raw = predict_raw(model, image, tiles)
        return raw, task.instances(raw)

    seconds, times, (raw, labels) = _median_time(predict, repeats)
    # the parts, once each, to see where the time goes
    t0 = time.perf_counter()
    raw = predict_raw(model, image, tiles)
    t_net = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels = task.instances(raw)
    t_nms = time.perf_counter() - t0
    prob, dist = task.grid_maps(raw)
    p_thr, n_thr = task.thresholds()
    candidates = int(np.count_nonzero(prob > p_thr))
    np.savez_compressed(
        OUT / "deepscope_maps.npz", prob=prob, dist=dist, prob_thresh=p_thr, nms_thresh=n_thr
    )
    truth = tifffile.imread(OUT / "mosaic_labels.tif")
    from stardist.matching import matching

    m = matching(truth, labels.astype(np.int32), thresh=0.5)
    result = {
        "model": str(folder),
        "parameters": int(sum(p.numel() for p in model.network.parameters())),
        "threads": threads,
        "seconds_median": round(seconds, 3),
        "seconds_all": [round(t, 3) for t in times],
        "seconds_network_incl_normalisation": round(t_net, 3),
        "seconds_nms_and_labels": round(t_nms, 3),
        "prob_thresh": p_thr,
        "nms_thresh": n_thr,
        "candidates": candidates,
        "objects": int(len(np.unique(labels)) - 1),
        "f1_at_0.5_vs_mosaic_truth": round(float(m.f1), 4),
        "load_1min": os.getloadavg()[0],
    }
    (OUT / "deepscope.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def run_tf(repeats: int, threads: int) -> None:
    """Time the stardist package (TF) with a random-weight 2D_versatile_fluo-like model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import tifffile
    from csbdeep.utils import normalize
    from stardist.geometry import polygons_to_label
    from stardist.models import Config2D, StarDist2D
    from stardist.nms import non_maximum_suppression

    tf.keras.utils.set_random_seed(0)
    config = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1)
    model = StarDist2D(config, name="random_versatile_fluo_like", basedir=None)
    image = normalize(tifffile.imread(OUT / "mosaic.tif").astype(np.float32), 1, 99.8)
    ds = np.load(OUT / "deepscope_maps.npz")
    target_candidates = int(np.count_nonzero(ds["prob"] > float(ds["prob_thresh"])))

    # (b) the network alone
    x = image[None, ..., None]
    t_net, net_times, outputs = _median_time(
        lambda: model.keras_model.predict(x, verbose=0), repeats
    )
    prob = np.asarray(outputs[0])[0, ..., 0]
    # a probability threshold giving deepscope's number of candidates
    p_sorted = np.sort(prob.ravel())[::-1]
    p_thr = float(p_sorted[min(target_candidates, p_sorted.size) - 1])

    # (a) end to end
    t_e2e, e2e_times, (labels, details) = _median_time(
        lambda: model.predict_instances(
            image, prob_thresh=p_thr, nms_thresh=float(ds["nms_thresh"]), show_tile_progress=False
        ),
        repeats,
    )

    # (c) the package's NMS + rendering on deepscope's maps
    dist_last = np.ascontiguousarray(np.moveaxis(ds["dist"], 0, -1), dtype=np.float32)
    ds_prob = np.ascontiguousarray(ds["prob"], dtype=np.float32)

    def nms():
        points, scores, dists = non_maximum_suppression(
            dist_last,
            ds_prob,
            grid=(2, 2),
            prob_thresh=float(ds["prob_thresh"]),
            nms_thresh=float(ds["nms_thresh"]),
        )
        return polygons_to_label(dists, points, shape=image.shape, prob=scores)

    t_nms, nms_times, lab_c = _median_time(nms, repeats)
    result = {
        "tensorflow": tf.__version__,
        "parameters": int(model.keras_model.count_params()),
        "threads": threads,
        "network_seconds_median": round(t_net, 3),
        "network_seconds_all": [round(t, 3) for t in net_times],
        "end_to_end_seconds_median": round(t_e2e, 3),
        "end_to_end_seconds_all": [round(t, 3) for t in e2e_times],
        "end_to_end_prob_thresh": p_thr,
        "end_to_end_candidates": int(np.count_nonzero(prob > p_thr)),
        "end_to_end_objects": int(len(details["points"])),
        "nms_on_deepscope_maps_seconds_median": round(t_nms, 3),
        "nms_on_deepscope_maps_objects": int(len(np.unique(lab_c)) - 1),
        "fair_total_seconds": round(t_net + t_nms, 3),
        "load_1min": os.getloadavg()[0],
    }
    (OUT / "stardist_tf.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def report() -> None:
    """Print the comparison from the two JSON files."""
    ds = json.loads((OUT / "deepscope.json").read_text())
    tf = json.loads((OUT / "stardist_tf.json").read_text())
    mosaic = json.loads((OUT / "mosaic.json").read_text())
    ratio = tf["fair_total_seconds"] / ds["seconds_median"]
    summary = {
        "image": f"{mosaic['shape']} mosaic, {mosaic['true_nuclei']} true nuclei",
        "deepscope_seconds": ds["seconds_median"],
        "deepscope_objects": ds["objects"],
        "stardist_tf_network_plus_nms_seconds": tf["fair_total_seconds"],
        "stardist_tf_end_to_end_seconds": tf["end_to_end_seconds_median"],
        "speedup_vs_tf_fair_total": round(ratio, 2),
        "speedup_vs_tf_end_to_end": round(
            tf["end_to_end_seconds_median"] / ds["seconds_median"], 2
        ),
        "target_2x_met": ratio >= 2,
        "load_1min": [ds["load_1min"], tf["load_1min"]],
    }
    (OUT / "comparison.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


def main() -> None:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("step", choices=["make-image", "deepscope", "tf", "report"])
    p.add_argument("--model", default="nuclei", help="deepscope model folder or shipped name")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if a.step == "make-image":
        make_image()
    elif a.step == "deepscope":
        run_deepscope(a.model, a.repeats, a.threads)
    elif a.step == "tf":
        run_tf(a.repeats, a.threads)
    else:
        report()


if __name__ == "__main__":
    main()
