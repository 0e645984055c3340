"""StarDist prediction speed: deepscope (PyTorch) vs the ``stardist`` package (TensorFlow).

Issue 4 asks: prediction including NMS on a 1024×1024 image with ~1000 nuclei at least
2× faster than the ``stardist`` package with its TF model, on this CPU.

The test image (``make-image``): a 1024×1024 mosaic of the fluorescence image
``4f949bd8…`` of ``../shared/data/nuclei2d`` (390×239 px, 98 nuclei, grey) repeated
3×5 times and cropped to 1024×1024 (no rescaling, so the nuclei keep their real size;
the ground-truth count of the mosaic is written next to it, about 1000 nuclei).

What is timed (median of ``--repeats`` runs after one warm-up run, same thread count for
both, ``--threads``, default 2). Both sides run the *same* NMS code (``stardist.nms``:
deepscope uses the package's geometry/NMS), whose time depends on the number of
candidates and their polygon sizes. To compare like with like without the pretrained TF
weights (they cannot be downloaded here), the NMS of both is timed on the same
**reference maps**: what a perfect model would predict on the mosaic (probability =
``stardist.edt_prob`` of the true labels, distances = ``star_dist`` of the true labels,
2x2 grid; prob threshold 0.5, NMS threshold 0.4; about 12,600 candidates → ~1,100 nuclei).

``deepscope`` (project venv)
    (b) normalisation + network + de-normalisation (``predict_raw``, with the default
    tiling of ``deepscope predict`` and, like it, the maps kept at the network's grid;
    with ``--int8`` the network in 8-bit integers, as ``deepscope predict --int8``) of a
    deepscope StarDist model folder: ``--model nuclei`` (the shipped model, default), a
    folder, or ``random`` (random weights with the ``nuclei_dsb.py`` architecture: U-Net
    depth 3, 16 base channels, 128 feature channels, 32 rays, grid 2 — network time does
    not depend on the weights); (c)
    ``instances_from_maps`` (NMS + label rendering) on the reference maps; with a
    trained model also end to end on its own maps.
``stardist-tf`` (the separate TF venv, never the project's)
    ``StarDist2D`` with the config of ``2D_versatile_fluo`` (32 rays, grid 2×2, default
    U-Net: depth 3, 32 base filters, 128 feature channels; 1 input channel) and random
    weights: (b) ``keras_model.predict`` on the normalised image; (c) the package's NMS +
    ``polygons_to_label`` (what ``predict_instances`` runs) on the reference maps; and,
    for reference only, ``predict_instances`` end to end with random weights (its
    probability threshold set to give as many candidates as the reference maps; random
    distances make tiny polygons, so this NMS time is not representative).

The comparison is (b) + (c) on each side (``comparison.json``).

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
    # The maps a perfect model would predict (object probability = normalised distance to
    # the background, distances of the true objects), on the 2x2 grid: the NMS input of
    # both sides, so that NMS is timed on realistic, identical candidates.
    from stardist import edt_prob
    from stardist.geometry import star_dist

    np.savez_compressed(
        OUT / "reference_maps.npz",
        prob=edt_prob(lab)[::2, ::2].astype(np.float32),
        dist=np.moveaxis(star_dist(lab, 32, grid=(2, 2)), -1, 0).astype(np.float32),
        prob_thresh=0.5,
        nms_thresh=0.4,
    )
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


def random_model_folder(
    config_dict: dict, folder: Path, image_max: float = 1.0, input_axes: str = "YX"
) -> Path:
    """A deepscope model folder with random weights (for timing only), written to ``folder``.

    ``config_dict`` is a deepscope config (task, model, …); the normalisation maps
    0..``image_max`` to 0..1; ``input_axes`` are the axes of its images (``ZYX`` in 3D).
    """
    import torch

    from deepscope.config import config_from_dict
    from deepscope.data.normalize import PercentileNormalizer
    from deepscope.tasks import get_task
    from deepscope.workflow.model_folder import save_model_folder

    config = config_from_dict(config_dict)
    torch.manual_seed(0)
    weights = get_task(config.task)(config).build_model(1).state_dict()
    norm = PercentileNormalizer.fit([np.linspace(0, image_max, 100, dtype=np.float32)[None]])
    save_model_folder(
        folder,
        config=config,
        weights=weights,
        in_channels=1,
        input_axes=input_axes,
        normalizer=norm,
    )
    return folder


def _random_model_folder() -> Path:
    """A StarDist model folder with random weights (network timing only)."""
    return random_model_folder(
        {
            "task": "stardist",
            "model": {"depth": 3, "base_channels": 16},
            "stardist": {"n_rays": 32, "grid": [2, 2]},
        },
        OUT / "random_model",
    )


def run_deepscope(
    model_name: str, repeats: int, threads: int, end_to_end: bool, int8: bool = False
) -> None:
    """Time deepscope on the mosaic: network, NMS on the reference maps, end to end.

    ``int8``: the network in 8-bit integers (``deepscope predict --int8``).
    """
    import tifffile
    import torch

    from deepscope.tasks.stardist import instances_from_maps, nms_threads
    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.predict import TileSettings, predict_raw

    torch.set_num_threads(threads)
    if model_name == "random":
        folder = _random_model_folder()
    else:
        from deepscope.workflow.pretrained import resolve_model

        folder = resolve_model(model_name)
    model = load_model_folder(folder)
    task = model.task
    image = tifffile.imread(OUT / "mosaic.tif").astype(np.float32)[None]
    tiles = TileSettings(int8=int8)  # what `deepscope predict [--int8]` uses
    grid = model.task.reads_grid_output  # as `deepscope predict`: maps kept at the grid
    # (b) normalisation + network (+ de-normalisation), default tiling
    t_net, net_times, raw = _median_time(
        lambda: predict_raw(model, image, tiles, grid=grid), repeats
    )
    # (c) NMS + label rendering on the reference maps, deepscope's code path
    # Read once: an NpzFile reads (and copies) an array from disk at every ref["..."],
    # which cost ~40 ms per call inside the timed function until 2026-11-29.
    ref = dict(np.load(OUT / "reference_maps.npz"))
    # Laid out as deepscope's prediction hands them to the NMS for an image in one tile:
    # one (Y, X, 1 + rays) array (the network's channels-last output), probability and
    # distances as views of it (checked by the assertion). The TF side gets its
    # channels-last copy the same way, made before its timing.
    maps = np.ascontiguousarray(np.concatenate([ref["prob"][None], ref["dist"]]).transpose(1, 2, 0))
    prob_view, dist_view = maps[..., 0], np.moveaxis(maps[..., 1:], -1, 0)
    assert raw.strides[0] == raw.itemsize, "the network's maps are no longer channels-last"
    chosen: list[int] = []  # OpenMP threads the NMS decides on (see nms_threads)

    def nms():
        chosen.append(nms_threads())
        return instances_from_maps(
            prob_view,
            dist_view,
            image.shape[1:],
            (2, 2),
            float(ref["prob_thresh"]),
            float(ref["nms_thresh"]),
        )[0]

    t_nms, nms_times, labels = _median_time(nms, repeats)
    result = {
        "model": str(folder),
        "parameters": int(sum(p.numel() for p in model.network.parameters())),
        "threads": threads,
        "int8": int8,
        "network_seconds_median": round(t_net, 3),
        "network_seconds_all": [round(t, 3) for t in net_times],
        "nms_on_reference_maps_seconds_median": round(t_nms, 3),
        "nms_openmp_threads_chosen": chosen,
        "nms_on_reference_maps_candidates": int(
            np.count_nonzero(ref["prob"] > float(ref["prob_thresh"]))
        ),
        "nms_on_reference_maps_objects": int(len(np.unique(labels)) - 1),
        "fair_total_seconds": round(t_net + t_nms, 3),
        "load_1min": os.getloadavg()[0],
    }
    if end_to_end:  # the model's own maps and thresholds (meaningful for a trained model)
        t_e2e, e2e_times, e2e_labels = _median_time(
            lambda: task.instances(predict_raw(model, image, tiles, grid=grid)), repeats
        )
        truth = tifffile.imread(OUT / "mosaic_labels.tif")
        from stardist.matching import matching

        m = matching(truth, e2e_labels.astype(np.int32), thresh=0.5)
        result.update(
            {
                "end_to_end_seconds_median": round(t_e2e, 3),
                "end_to_end_objects": int(len(np.unique(e2e_labels)) - 1),
                "end_to_end_f1_at_0.5_vs_mosaic_truth": round(float(m.f1), 4),
                "thresholds": list(task.thresholds()),
            }
        )
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
    ds = np.load(OUT / "reference_maps.npz")
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

    # (c) the package's NMS + rendering on the reference maps
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
        "nms_on_reference_maps_seconds_median": round(t_nms, 3),
        "nms_on_reference_maps_objects": int(len(np.unique(lab_c)) - 1),
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
    ratio = tf["fair_total_seconds"] / ds["fair_total_seconds"]
    summary = {
        "image": f"{mosaic['shape']} mosaic, {mosaic['true_nuclei']} true nuclei",
        "deepscope_int8": ds.get("int8", False),
        "deepscope_network_seconds": ds["network_seconds_median"],
        "deepscope_nms_seconds": ds["nms_on_reference_maps_seconds_median"],
        "stardist_tf_network_seconds": tf["network_seconds_median"],
        "stardist_tf_nms_seconds": tf["nms_on_reference_maps_seconds_median"],
        "speedup_network_plus_nms": round(ratio, 2),
        "target_2x_met": ratio >= 2,
        "parameters": {"deepscope": ds["parameters"], "stardist_tf": tf["parameters"]},
        "load_1min": [ds["load_1min"], tf["load_1min"]],
    }
    if "end_to_end_seconds_median" in ds:
        summary["deepscope_end_to_end_seconds"] = ds["end_to_end_seconds_median"]
    (OUT / "comparison.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


def main() -> None:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("step", choices=["make-image", "deepscope", "tf", "report"])
    p.add_argument(
        "--model",
        default="nuclei",
        help="deepscope model folder, shipped name, or 'random' (random weights, timing only)",
    )
    p.add_argument("--no-end-to-end", action="store_true", help="skip the model's own NMS")
    p.add_argument("--int8", action="store_true", help="deepscope: predict --int8")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if a.step == "make-image":
        make_image()
    elif a.step == "deepscope":
        run_deepscope(
            a.model, a.repeats, a.threads, not a.no_end_to_end and a.model != "random", a.int8
        )
    elif a.step == "tf":
        run_tf(a.repeats, a.threads)
    else:
        report()


if __name__ == "__main__":
    main()
