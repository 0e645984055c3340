"""The ``deepscope`` command line: turns options into a config and calls the workflow.

Every command explains itself with ``--help``; every error names the file and what to do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from deepscope import __version__
from deepscope.errors import DeepscopeError
from deepscope.interfaces.progress import progress_bar

EPILOG = "Documentation: README.md. Every command has --help."


def _add_targets_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--targets",
        "--masks",
        dest="targets",
        type=Path,
        help="folder of target images or masks (paired tasks), same file names as the images",
    )


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("how to read your images")
    g.add_argument(
        "--axes",
        help="axes of your files if deepscope guesses wrong, one letter per "
        "dimension: e.g. YX (2D), ZYX (Z-stack), CYX (2D, several channels)",
    )
    g.add_argument(
        "--3d",
        dest="three_d",
        action="store_true",
        help="your images are Z-stacks: train a 3D network",
    )
    g.add_argument(
        "--patch-size",
        type=int,
        nargs="+",
        metavar="N",
        help="size of the training pieces in pixels (Y X, or Z Y X with --3d); "
        "default 64 64 (2D) or 16 64 64 (3D); must divide by 4",
    )


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training length and settings")
    g.add_argument("--epochs", type=int, help="how many rounds of training (default 100)")
    g.add_argument(
        "--max-minutes",
        type=float,
        help="stop after this many minutes and keep the best model so far",
    )
    g.add_argument(
        "--config",
        type=Path,
        help="a YAML settings file (as written in a run "
        "folder's config.yaml); options given here override it",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the training in the --out folder, with the task, data and settings "
        "it was started with (only --epochs and --max-minutes can change; other settings "
        "given are refused, each named)",
    )
    g.add_argument("--batch-size", type=int, help="patches per training step (default 64)")
    g.add_argument("--patches-per-epoch", type=int, help="patches per round (default 2048)")
    g.add_argument("--learning-rate", type=float, help="step size of the optimiser (default 4e-4)")
    g.add_argument(
        "--checkpoint-every",
        type=int,
        help="keep a copy of the model every N epochs to compare later (default 5)",
    )
    g.add_argument("--seed", type=int, help="random seed, for repeatable trainings")
    g.add_argument(
        "--precision",
        choices=["auto", "32", "bf16"],
        help="number format: auto uses fast bfloat16 where the processor supports it",
    )
    g.add_argument(
        "--devices",
        type=int,
        metavar="N",
        help="train on N GPUs of this computer together (one process each, Lightning's "
        "DDP; every process takes --batch-size patches per step); under torchrun or SLURM "
        "(srun) the processes started there are used and this can be left out",
    )
    g.add_argument(
        "--nodes",
        type=int,
        metavar="N",
        help="number of computers, only to check it: a training on several computers is "
        "started with srun (SLURM) or torchrun on each, which tell deepscope the numbers",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``deepscope`` command."""
    parser = argparse.ArgumentParser(
        prog="deepscope",
        description="Train, check and apply deep-learning models on your microscopy images.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"deepscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "validate",
        help="check your images before training",
        description="Check a folder of images for every problem that would "
        "spoil a training, and say how to fix each one. Nothing is changed.",
    )
    p.add_argument("task", help="what you want to do, e.g. n2v (denoising)")
    p.add_argument("--images", type=Path, required=True, help="folder of input images")
    _add_targets_option(p)
    _add_data_options(p)
    p.add_argument("--config", type=Path, help="a YAML settings file")
    _add_semantic_options(p)
    _add_classify_options(p, train=False)
    _add_stardist_options(p)

    p = sub.add_parser(
        "train",
        help="train a model on your images",
        description="Train a model. The data is checked first. Progress and the "
        "remaining time are shown after each round; the best model is kept in "
        "OUT/model. Press Ctrl+C to stop; continue later with --resume.",
    )
    p.add_argument("task", help="what to train, e.g. n2v (Noise2Void denoising)")
    p.add_argument("--images", type=Path, required=True, help="folder of training images")
    _add_targets_option(p)
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="new folder for this training run (the model goes to OUT/model)",
    )
    p.add_argument(
        "--variant",
        choices=["n2v", "n2v2"],
        help="n2v: classic Noise2Void; n2v2: avoids checkerboard artefacts",
    )
    p.add_argument(
        "--loss",
        choices=["l1", "l2"],
        help="care, n2n, labelfree: l1 (mean absolute error) or l2 (mean squared "
        "error); defaults: care l1, n2n and labelfree l2",
    )
    p.add_argument(
        "--probabilistic",
        action="store_true",
        help="care: also predict how uncertain each pixel is; predict then writes "
        "NAME_uncertainty.tif (the expected error) beside each result",
    )
    _add_semantic_options(p)
    _add_classify_options(p, train=True)
    _add_stardist_options(p)
    _add_data_options(p)
    _add_train_options(p)
    g = p.add_argument_group("start from a trained model (transfer learning)")
    g.add_argument(
        "--from",
        dest="start_from",
        type=Path,
        metavar="MODEL",
        help="start from the weights of an earlier deepscope model folder (e.g. "
        "runs/n2v1/model) or a shipped model by name (stardist: nuclei); works for any "
        "task: a StarDist model starts the other tasks from its U-Net, and they a StarDist "
        "training (layers that do not fit start new and are listed). Network settings you "
        "do not give (depth, channels, 2D/3D, StarDist rays and grid) are taken from that "
        "model",
    )
    g.add_argument(
        "--freeze-encoder",
        nargs="?",
        type=int,
        const=-1,
        metavar="EPOCHS",
        help="with --from: keep the first half of the network (the encoder) fixed "
        "for EPOCHS epochs (default: a fifth of the epochs), then train all of it",
    )

    p = sub.add_parser(
        "predict",
        help="apply a trained model to images",
        description="Apply a model to one image or a folder of images. Results "
        "get the input's name (as TIFF) in the output folder, with a "
        "provenance.json saying which model made them. Inputs are never changed.",
    )
    p.add_argument(
        "model",
        type=Path,
        help="the model folder (e.g. runs/n2v1/model), or a shipped model by name: nuclei "
        "(StarDist, fluorescent nuclei)",
    )
    p.add_argument("--input", type=Path, required=True, help="an image file or a folder of images")
    p.add_argument(
        "--out", type=Path, required=True, help="folder for the results (not the input folder)"
    )
    p.add_argument("--axes", help="axes of your files if deepscope guesses wrong (e.g. ZYX)")
    p.add_argument(
        "--tile",
        type=int,
        help="large images are processed in tiles of this size in Y and X (default 1024 for "
        "2D images, 512 for 3D)",
    )
    p.add_argument(
        "--memory-limit",
        type=float,
        metavar="GIB",
        help="images whose prediction would need more memory than this (in GiB; default: a "
        "quarter of this computer's memory) are read, predicted and written block by block, "
        "so images larger than memory work (restoration, class maps and 2D StarDist)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace results from an earlier run")
    p.add_argument(
        "--resume",
        action="store_true",
        help="go on with an interrupted prediction into the same --out: images whose "
        "results provenance.json there lists (same model, options and image content) are "
        "not predicted again",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="share the images out among N worker processes on this computer (Dask), each "
        "with its share of the cores: for computers with many cores and many images; a "
        "single process already uses every core, and starting the workers takes seconds",
    )
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="share the images out among the workers of a running Dask scheduler, e.g. "
        "tcp://10.0.0.5:8786 (a cluster started with dask-jobqueue or 'dask scheduler' + "
        "'dask worker'); workers must see the model folder and images at the same paths",
    )
    p.add_argument(
        "--instances",
        action="store_true",
        help="semantic: also write NAME_instances.tif, one number per object (for "
        "measurements and tracking)",
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="semantic: also write NAME_probabilities.tif, each class's probability per pixel",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: predict each image 8 times (flipped and turned by 90 "
        "degrees) and average; 8 times slower, usually a little cleaner (denoising, "
        "restoration, semantic and 2D StarDist models; classifiers over the flips and "
        "turns they were trained with)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="StarDist and semantic models: run the network in 8-bit integers, 1.4-2 "
        "times faster on CPUs with AVX-512 VNNI, ~1.8 times on CPUs with AVX2 only; every "
        "value is rounded to 8 bits, so results can differ slightly (check with "
        "'deepscope qc --int8')",
    )
    p.add_argument(
        "--engine",
        choices=["pytorch", "onnx"],
        default="pytorch",
        help="what runs the network: pytorch (default) or onnx (ONNX Runtime, in float32; "
        "the network is converted and checked first). On CPUs with bfloat16, PyTorch "
        "predicts in bfloat16, so the two differ by up to ~2%% of the output range; with "
        "a model trained with training.precision '32' they agree within 1e-4. "
        "provenance.json records which was used",
    )
    p.add_argument(
        "--prob-threshold",
        type=float,
        metavar="P",
        help="stardist: keep objects more probable than P (0-1; default: the value tuned "
        "after training); lower finds more objects",
    )
    p.add_argument(
        "--nms-threshold",
        type=float,
        metavar="T",
        help="stardist: of two objects overlapping more than T (0-1), keep the more probable "
        "(default: the tuned value); higher keeps more touching objects",
    )

    p = sub.add_parser(
        "qc",
        help="measure how good a model is on images with known answers",
        description="Quality control: apply the model to held-out images, compare "
        "with the targets (e.g. clean images), and write an HTML report with "
        "metrics, error maps and loss curves.",
    )
    p.add_argument("model", type=Path, help="the model folder, or a shipped model's name")
    p.add_argument("--images", type=Path, required=True, help="folder of input images")
    p.add_argument(
        "--targets",
        "--masks",
        dest="targets",
        type=Path,
        help="folder of ground-truth images (or masks) with the same file names "
        "(not for classify: the classes come from the --images folders, CSV or .npz)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the report")
    p.add_argument(
        "--tile",
        type=int,
        help="tile size in Y and X for large images (default 1024 for 2D, 512 for 3D)",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="score the model's predictions averaged over 8 flips and turns of each image "
        "(as 'predict --tta'; 8 times slower)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="score the model run in 8-bit integers (as 'predict --int8'; StarDist and "
        "semantic models)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier report in --out (without it, a folder with a report is refused)",
    )

    _add_tracking_commands(sub)
    _add_export_commands(sub)

    p = sub.add_parser(
        "demo",
        help="run the whole workflow on built-in sample images",
        description="Check, train (about two minutes), apply and quality-control "
        "a Noise2Void model on sample images shipped with deepscope.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("deepscope-demo"),
        help="folder for the demo results (default ./deepscope-demo)",
    )
    p.add_argument("--max-minutes", type=float, default=2.0, help="training time (default 2)")
    _add_app_parser(sub)
    return parser


TRACK_EPILOG = """Automatic linking settings (when an option is left out):
  max distance       = max(0.8 x median object diameter, 2 x the 90th percentile of the
                       distance from each object to the nearest object of the previous frame)
  gap frames         = 2 (an object missed in up to 2 frames keeps its track)
  division distance  = max distance (a new object this close to another is its daughter)
  drift correction   = on (a shift of the whole field between frames is removed first)
Links prefer objects that overlap: the cost of a link is the squared distance times
(1 - the shared area as a fraction of the smaller object), squared.
The values used are printed and saved in OUT/settings.json and the report."""


def _add_tracking_commands(sub: Any) -> None:
    p = sub.add_parser(
        "track",
        help="follow cells through a time-lapse (tracks, divisions, lineages)",
        description="Link the objects of a time-lapse into tracks with divisions (LAP "
        "linking as in TrackMate). Give label images (--labels), or a movie and a "
        "segmentation model (--input with --model) to segment every frame first. Writes "
        "Cell Tracking Challenge masks and res_track.txt (OUT/ctc), tracks.csv, a TrackMate "
        "file (tracks.xml) and report.html with pictures. Inputs are never changed.",
        epilog=TRACK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--input",
        type=Path,
        help="the movie (T,Y,X or T,Z,Y,X: TIFF, OME-TIFF, OME-Zarr, or a folder with one "
        "image per time point); with --labels it gives intensities and the report background",
    )
    p.add_argument(
        "--model",
        type=Path,
        help="segmentation model folder that separates "
        "objects (e.g. runs/seg1/model, or the shipped 'nuclei'), to segment --input",
    )
    p.add_argument(
        "--labels",
        type=Path,
        help="label images to link instead: a stack "
        "or a folder with one label image per time point (e.g. CTC masks)",
    )
    p.add_argument("--out", type=Path, required=True, help="new folder for the tracks")
    p.add_argument(
        "--axes",
        help="axes of your files if deepscope guesses wrong, e.g. TZYX "
        "(for a folder of frames: the axes of one frame, e.g. ZYX)",
    )
    g = p.add_argument_group("linking (defaults derived from your data; see below)")
    g.add_argument(
        "--max-distance",
        type=float,
        metavar="PIXELS",
        help="largest move of an object between two frames, in pixels",
    )
    g.add_argument(
        "--gap-frames",
        type=int,
        metavar="N",
        help="an object may be missing in up to N frames and keep its track "
        "(0: no gap closing; default 2)",
    )
    g.add_argument(
        "--division-distance",
        type=float,
        metavar="PIXELS",
        help="a new object at most this far from another is taken as its "
        "daughter (default: the max distance)",
    )
    g.add_argument(
        "--no-divisions",
        action="store_true",
        help="objects do not divide: a new object always starts a new track",
    )
    g.add_argument(
        "--no-drift-correction",
        action="store_true",
        help="do not measure and remove shifts of the whole field between frames "
        "(stage jumps, drift) before linking",
    )
    p.add_argument(
        "--tile",
        type=int,
        help="with --model: tile size in Y and X for large frames (default 1024 for 2D, "
        "512 for 3D)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="with --model: segment in 8-bit integers (as 'predict --int8'; faster, results "
        "can differ slightly)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")

    p = sub.add_parser(
        "qc-track",
        help="score tracks against Cell Tracking Challenge ground truth",
        description="Compare a tracking result (a 'deepscope track' output folder or any "
        "CTC result folder) with CTC ground truth: TRA, DET, SEG (when SEG masks exist) "
        "and division precision/recall/F1, computed with traccuracy. Writes OUT/summary.json "
        "and OUT/report.html.",
    )
    p.add_argument("tracks", type=Path, help="the tracking result folder (e.g. tracks/)")
    p.add_argument(
        "--gt",
        type=Path,
        required=True,
        help="ground-truth TRA folder: man_track*.tif and man_track.txt (e.g. 01_GT/TRA)",
    )
    p.add_argument(
        "--seg-gt",
        type=Path,
        help="ground-truth SEG folder of full-frame masks "
        "(default: a SEG folder beside --gt, if there is one)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for summary.json and the report")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier report in --out (without it, a folder with a report is refused)",
    )


def cmd_track(args: argparse.Namespace) -> int:
    """Track objects through a time-lapse."""
    from deepscope.tracking.run import track

    if args.model is not None and args.input is None:
        raise DeepscopeError("--model needs the movie to segment", fix="add --input movie.tif")
    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = progress_bar(stage, "frames")
        bars[stage]("", done, total)

    from deepscope.workflow.pretrained import resolve_model

    result = track(
        args.out,
        labels=args.labels,
        movie=args.input,
        model=resolve_model(args.model) if args.model is not None else None,
        axes=args.axes,
        max_distance=args.max_distance,
        gap_frames=args.gap_frames,
        divisions=not args.no_divisions,
        division_distance=args.division_distance,
        drift_correction=not args.no_drift_correction,
        overwrite=args.overwrite,
        tile=args.tile,
        int8=args.int8,
        progress=progress,
    )
    print(
        f"Tracks written to {result.out_dir} in {result.seconds:.0f} s "
        "(ctc/, tracks.csv, tracks.xml, report.html)."
    )
    print(f"Next, with ground truth: deepscope qc-track {result.out_dir} --gt GT/TRA --out qc/")
    return 0


def cmd_qc_track(args: argparse.Namespace) -> int:
    """Score tracks against CTC ground truth."""
    from deepscope.tracking.qc_track import run_qc_track

    summary = run_qc_track(
        args.tracks,
        args.gt,
        args.out,
        args.seg_gt,
        progress=lambda msg: print(f"  {msg}", file=sys.stderr),
        overwrite=args.overwrite,
    )

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    print("Tracking quality (1 is perfect):")
    for key in ("TRA", "DET", "LNK", "SEG", "division_precision", "division_recall", "division_f1"):
        print(f"  {key:<20} {fmt(summary[key])}")
    print(f"Summary: {Path(args.out) / 'summary.json'}; report: {Path(args.out) / 'report.html'}")
    return 0


def _add_export_commands(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="share a model: BioImage.IO package (Fiji, ilastik, napari), ONNX or TorchScript",
        description="Export a trained model. 'bioimageio' writes a .zip package that "
        "deepImageJ (Fiji), ilastik and napari open, checked with the community's own "
        "checker; 'onnx' and 'torchscript' write the network alone (NAME.onnx / NAME.pt) "
        "with NAME.onnx.json (or NAME.pt.json) saying how to normalise its input. Nothing is "
        "uploaded.",
    )
    p.add_argument(
        "model", type=Path, help="the model folder (e.g. runs/care1/model), or a shipped name"
    )
    p.add_argument(
        "--format",
        choices=["bioimageio", "onnx", "torchscript"],
        default="bioimageio",
        help="bioimageio (default), onnx or torchscript",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="file to write: NAME.zip, NAME.onnx or NAME.pt"
    )
    p.add_argument(
        "--authors",
        nargs="+",
        metavar="NAME",
        help="bioimageio: who trained the model, e.g. --authors 'Ada Lovelace' 'Alan Turing'",
    )
    p.add_argument(
        "--license",
        help="bioimageio: SPDX licence identifier of the model, e.g. CC-BY-4.0 or MIT",
    )
    p.add_argument("--name", help="bioimageio: name of the model (default from the folder)")
    p.add_argument(
        "--sample",
        type=Path,
        help="bioimageio: an image like the training images, for the test image and the "
        "cover picture (default: a synthetic image)",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="bioimageio: skip the final bioimageio.core test of the package (faster)",
    )

    p = sub.add_parser(
        "import",
        help="turn a BioImage.IO package exported by deepscope into a model folder",
        description="Import a BioImage.IO model package (.zip or folder) as a deepscope "
        "model folder that predict, qc and --from use. Packages exported by deepscope "
        "are supported (state dict, TorchScript or ONNX weights); nothing is downloaded.",
    )
    p.add_argument("package", type=Path, help="the BioImage.IO package (.zip) or its folder")
    p.add_argument("--out", type=Path, required=True, help="new folder for the model")
    p.add_argument(
        "--weights",
        choices=["pytorch_state_dict", "torchscript", "onnx"],
        help="which weights of the package to use (default: the state dict if present)",
    )


def cmd_export(args: argparse.Namespace) -> int:
    """Export a model folder (through the Python API's ``export_model``)."""
    from deepscope.interfaces import api

    api.export_model(
        args.model,
        args.out,
        format=args.format,
        authors=args.authors,
        license=args.license,
        name=args.name,
        sample=args.sample,
        check=not args.no_check,
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import a BioImage.IO package (through the Python API's ``import_model``)."""
    from deepscope.interfaces import api

    out = api.import_model(args.package, args.out, weights=args.weights)
    print(f"Next: deepscope predict {out} --input IMAGES --out RESULTS")
    return 0


def _add_app_parser(sub: Any) -> None:
    p = sub.add_parser(
        "app",
        help="open the guided web page (train, check and apply without commands)",
        description="Start the local web app and open it in your browser. It walks you "
        "through choosing a task and data, settings, training (live), quality control and "
        "applying the model. Only the folders given with --data-root can be browsed. "
        "Trainings keep running if you close the page or stop the server.",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on (default 127.0.0.1: this computer only); any other "
        "address prints an access token that visitors need",
    )
    p.add_argument("--port", type=int, default=8765, help="port to serve on (default 8765)")
    p.add_argument(
        "--data-root",
        dest="data_roots",
        type=Path,
        action="append",
        metavar="DIR",
        help="a folder the app may read images from (repeat for several; default: the "
        "current folder)",
    )
    p.add_argument(
        "--runs",
        type=Path,
        default=Path("deepscope-runs"),
        help="folder for the training runs and their results (default ./deepscope-runs)",
    )
    p.add_argument(
        "--no-browser", action="store_true", help="do not open a browser window at start"
    )


def _config_from_args(args: argparse.Namespace) -> Any:
    from deepscope.config import config_from_dict, load_config, merge_overrides

    base: dict[str, Any] = {"task": args.task}
    if getattr(args, "config", None):
        # exclude_unset: what the file leaves out stays unset (--from may fill it in)
        base = load_config(args.config).model_dump(mode="json", exclude_unset=True)
        if base["task"] != args.task:
            raise DeepscopeError(
                f"the config file is for task '{base['task']}', not '{args.task}'",
                args.config,
                "use a config of the same task",
            )
    dims = 3 if getattr(args, "three_d", False) else None
    overrides: dict[str, Any] = {
        "data.axes": getattr(args, "axes", None),
        "data.spatial_dims": dims,
        "data.patch_size": getattr(args, "patch_size", None)
        or ([16, 64, 64] if dims == 3 else None),
    }
    for opt, key in [
        ("epochs", "training.epochs"),
        ("max_minutes", "training.max_minutes"),
        ("batch_size", "training.batch_size"),
        ("patches_per_epoch", "training.patches_per_epoch"),
        ("learning_rate", "training.learning_rate"),
        ("checkpoint_every", "training.checkpoint_every"),
        ("seed", "training.seed"),
        ("precision", "training.precision"),
        ("variant", "n2v.variant"),
    ]:
        overrides[key] = getattr(args, opt, None)
    overrides.update(_restoration_overrides(args))
    overrides.update(_semantic_overrides(args))
    overrides.update(_classify_overrides(args))
    overrides.update(_stardist_overrides(args))
    config = config_from_dict(merge_overrides(base, overrides))
    bare_freeze = getattr(args, "freeze_encoder", None) == -1  # given without a number
    if bare_freeze and not getattr(args, "resume", False):  # resumed: the run's own value
        config = config_from_dict(
            merge_overrides(
                # exclude_unset: settings left unset stay unset (--from may fill them in)
                config.model_dump(mode="json", exclude_unset=True),
                {"training.freeze_encoder_epochs": max(1, config.training.epochs // 5)},
            )
        )
    return config


def _restoration_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return the settings of --loss, --probabilistic, --from and --freeze-encoder."""
    out: dict[str, Any] = {}
    if getattr(args, "loss", None):
        if args.task not in ("care", "n2n", "labelfree"):
            raise DeepscopeError(
                f"--loss is a setting of the care, n2n and labelfree tasks, not of {args.task}",
                fix="leave out --loss",
            )
        out[f"{args.task}.loss"] = args.loss
    if getattr(args, "probabilistic", False):
        if args.task != "care":
            raise DeepscopeError(
                f"--probabilistic is a setting of the care task, not of {args.task}",
                fix="leave out --probabilistic",
            )
        out["care.probabilistic"] = True
    if getattr(args, "start_from", None):
        from deepscope.workflow.pretrained import resolve_model

        out["training.start_from"] = str(resolve_model(args.start_from).resolve())
    freeze = getattr(args, "freeze_encoder", None)
    if freeze is not None and freeze != -1:
        out["training.freeze_encoder_epochs"] = freeze
    return out


def _add_semantic_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("segmentation (task semantic)")
    g.add_argument(
        "--classes",
        type=int,
        metavar="N",
        help="number of classes in the masks, background included (default 2: "
        "object/background; masks with 0 and 255 are read as 0 and 1)",
    )
    g.add_argument(
        "--boundary",
        action="store_true",
        help="the masks give each object its own number: learn background, boundary and "
        "interior to separate touching cells",
    )


def _semantic_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return the settings of --classes and --boundary (semantic task only)."""
    out: dict[str, Any] = {}
    for opt, key in [("classes", "semantic.classes"), ("boundary", "semantic.mode")]:
        value = getattr(args, opt, None)
        if value is None or value is False:
            continue
        if args.task != "semantic":
            raise DeepscopeError(
                f"--{opt} is a setting of the semantic task, not of {args.task}",
                fix=f"leave out --{opt}",
            )
        out[key] = "boundary" if opt == "boundary" else value
    return out


def _add_stardist_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("instance segmentation (task stardist)")
    g.add_argument(
        "--rays",
        type=int,
        metavar="N",
        help="number of directions describing each object's outline (default 32 in 2D, "
        "96 in 3D); more for very irregular shapes",
    )
    g.add_argument(
        "--grid",
        type=int,
        nargs="+",
        metavar="G",
        help="predict on a grid G times coarser than the image, faster (default 2, or "
        "1 2 2 with --3d); 1 for very small objects",
    )
    g.add_argument(
        "--anisotropy",
        type=float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="3D: voxel size ratio, e.g. 4 1 1 when Z steps are 4 times the pixel size",
    )


def _stardist_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return the settings of --rays, --grid and --anisotropy (stardist task only)."""
    out: dict[str, Any] = {}
    dims = 3 if getattr(args, "three_d", False) else 2
    for opt, key in [
        ("rays", "stardist.n_rays"),
        ("grid", "stardist.grid"),
        ("anisotropy", "stardist.anisotropy"),
    ]:
        value = getattr(args, opt, None)
        if value is None:
            continue
        if args.task != "stardist":
            raise DeepscopeError(
                f"--{opt} is a setting of the stardist task, not of {args.task}",
                fix=f"leave out --{opt}",
            )
        if opt == "grid" and len(value) == 1:
            value = [1, value[0], value[0]] if dims == 3 else [value[0]] * 2
        out[key] = value
    return out


def _add_classify_options(p: argparse.ArgumentParser, train: bool) -> None:
    g = p.add_argument_group(
        "classification (task classify: --images is a folder with one sub-folder per "
        "class, a CSV of file,label, or an .npz of images and labels)"
    )
    g.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("Y", "X"),
        help="size every image is brought to before the network (default 64 64)",
    )
    if not train:
        return
    g.add_argument(
        "--backbone",
        choices=["small", "resnet18", "unet_encoder"],
        help="network: small (VGG-style, few weights, the default), resnet18 "
        "(ResNet-18-like), unet_encoder (the encoder of a deepscope U-Net; chosen by "
        "itself with --from a U-Net model)",
    )
    g.add_argument(
        "--freeze",
        type=int,
        metavar="N",
        help="with --from: keep the first N blocks fixed for a fifth of the epochs, then "
        "fine-tune them at a tenth of the learning rate",
    )


def _classify_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return the settings of --image-size, --backbone and --freeze (classify only)."""
    out: dict[str, Any] = {}
    for opt, key in [
        ("image_size", "classify.image_size"),
        ("backbone", "model.architecture"),
        ("freeze", "classify.freeze_blocks"),
    ]:
        value = getattr(args, opt, None)
        if value is None:
            continue
        if args.task != "classify":
            raise DeepscopeError(
                f"--{opt.replace('_', '-')} is a setting of the classify task, not of {args.task}",
                fix=f"leave out --{opt.replace('_', '-')}",
            )
        out[key] = list(value) if opt == "image_size" else value
    return out


def cmd_validate(args: argparse.Namespace) -> int:
    """Run the data check and print its findings."""
    from deepscope.tasks import get_task

    config = _config_from_args(args)
    task = get_task(args.task)(config)
    report = task.check_training_data(args.images, args.targets)
    print(report.format())
    for line in getattr(task, "data_summary", list)():
        print(f"note    {line}")
    return 0 if report.ok else 1


def cmd_train(args: argparse.Namespace) -> int:
    """Train and say where the model is."""
    from deepscope.workflow.training import train

    config = _config_from_args(args)
    result = train(
        config,
        args.images,
        args.out,
        args.targets,
        resume=args.resume,
        devices=args.devices,
        nodes=args.nodes,
    )
    if result.model_dir is None:  # another process of a multi-process training
        return 0
    print(
        f"\nTraining {result.stopped_because} after {result.minutes:.1f} min "
        f"({result.epochs_trained} epochs)."
    )
    print(f"Model: {result.model_dir}")
    print(f"Next: deepscope predict {result.model_dir} --input IMAGES --out RESULTS")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Apply a model to a file or folder (through the Python API's ``predict``)."""
    from deepscope.interfaces import api

    written = api.predict(
        args.model,
        args.input,
        args.out,
        axes=args.axes,
        tta=args.tta,
        int8=args.int8,
        tile=args.tile,
        memory_limit_gib=args.memory_limit,
        overwrite=args.overwrite,
        prob_threshold=getattr(args, "prob_threshold", None),
        nms_threshold=getattr(args, "nms_threshold", None),
        instances=bool(getattr(args, "instances", False)),
        probabilities=bool(getattr(args, "probabilities", False)),
        engine=getattr(args, "engine", "pytorch"),
        workers=args.workers,
        scheduler=args.scheduler,
        resume=args.resume,
    )
    if len(written) == 1 and written[0].suffix == ".csv":  # a classifier's table
        print(f"Predictions written to {written[0]} (one row per image).")
    else:
        print(f"{len(written)} result(s) written to {args.out} (see provenance.json there).")
    return 0


def cmd_qc(args: argparse.Namespace) -> int:
    """Quality control with an HTML report (through the Python API's ``evaluate``)."""
    from deepscope.interfaces import api

    summary = api.evaluate(
        args.model,
        args.images,
        args.out,
        args.targets,
        tta=args.tta,
        int8=args.int8,
        tile=args.tile,
        overwrite=args.overwrite,
    )
    if "macro_f1" in summary:
        _print_classify_summary(summary)
    elif "by_threshold" in summary:
        from deepscope.workflow.qc_instance import summary_text

        print(summary_text(summary))
    elif "mean_iou" in summary:
        _print_segmentation_summary(summary)
    else:
        _print_restoration_summary(summary)
    if summary.get("caution"):
        print(f"Caution: {summary['caution']}")
    print(f"Report: {Path(args.out) / 'report.html'}")
    return 0


def _print_classify_summary(summary: dict) -> None:
    print(f"Quality control on {summary['images']} labelled images:")
    print(f"  accuracy {summary['accuracy']:.3f}   macro F1 {summary['macro_f1']:.3f}")
    for name, m in summary["per_class"].items():
        print(
            f"  {name:<22} precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
            f"F1 {m['f1']:.3f}  ({m['support']} images)"
        )
    print(f"  calibration error (ECE) {summary['ece']:.3f}")
    print(f"  {summary['overfitting']['message']}")


def _print_segmentation_summary(summary: dict) -> None:
    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    print("Quality control (all QC pixels together):")
    for name in summary["iou"]:
        print(f"  {name:<22} IoU {fmt(summary['iou'][name])}   Dice {fmt(summary['dice'][name])}")
    print(f"  {'mean':<22} IoU {fmt(summary['mean_iou'])}   Dice {fmt(summary['mean_dice'])}")
    print(
        f"  pixel accuracy {fmt(summary['pixel_accuracy'])}   adapted Rand error "
        f"{fmt(summary.get('adapted_rand_error'))} (0 is perfect)"
    )
    threshold = summary.get("threshold")
    if threshold:
        print(f"  best probability threshold {threshold['best']:.2f} (stored in the model)")
        if threshold.get("note"):
            print(f"  caution: {threshold['note']}")


def _print_restoration_summary(summary: dict) -> None:
    def row(name: str, key: str) -> str:
        m = summary.get(key, {})
        psnr = m.get("psnr_matched", m.get("psnr"))
        ssim = m.get("ssim_matched", m.get("ssim"))
        if psnr is None:  # infinite: no difference at all (summary.json stores null)
            return f"  {name:<22} identical to the targets (check that they are not the same files)"
        return f"  {name:<22} PSNR {psnr:6.2f} dB   SSIM {ssim:.3f}"

    print("Quality control (mean over images, brightness matched to the target):")
    for name, key in [
        ("noisy input", "input"),
        ("best Gaussian filter", "gaussian"),
        ("model", "model"),
    ]:
        if key in summary:
            print(row(name, key))
    pearson = summary.get("model", {}).get("pearson_r")
    if pearson is not None:
        print(f"  model Pearson correlation with the target: r = {pearson:.3f}")


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo workflow."""
    from deepscope.demo import run_demo

    run_demo(args.out, args.max_minutes)
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    """Serve the web app until Ctrl+C."""
    from deepscope.app.server import serve

    roots = args.data_roots or [Path.cwd()]
    for root in roots:
        if not root.is_dir():
            raise DeepscopeError(
                "this data folder does not exist", root, "give an existing folder to --data-root"
            )
    serve(args.host, args.port, roots, args.runs, open_browser=not args.no_browser)
    return 0


COMMANDS = {
    "validate": cmd_validate,
    "train": cmd_train,
    "predict": cmd_predict,
    "qc": cmd_qc,
    "demo": cmd_demo,
    "track": cmd_track,
    "qc-track": cmd_qc_track,
    "export": cmd_export,
    "import": cmd_import,
    "app": cmd_app,
}


@contextlib.contextmanager
def _command_line_words() -> Iterator[None]:
    """Errors keep naming the options (``--overwrite``) while a command runs the API."""
    from deepscope.interfaces import api

    token = api.COMMAND_LINE.set(True)
    try:
        yield
    finally:
        api.COMMAND_LINE.reset(token)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``deepscope`` command."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings(), _command_line_words():
            warnings.showwarning = _show_warning
            return COMMANDS[args.command](args)
    except DeepscopeError as err:
        print(f"\nError: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nInterrupted. {_after_interrupt(args)}", file=sys.stderr)
        return 130


_PACKAGE_FOLDER = str(Path(__file__).resolve().parents[1])


def _show_warning(  # noqa: PLR0913 (the signature of warnings.showwarning)
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Print deepscope's own warnings as a sentence (and its fix), others as Python does."""
    stream = file or sys.stderr
    if not str(Path(filename).resolve()).startswith(_PACKAGE_FOLDER):
        stream.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    fix = getattr(message, "fix", None)
    stream.write(f"Warning: {message}" + (f" → {fix}" if fix else "") + "\n")


def _after_interrupt(args: argparse.Namespace) -> str:
    """What an interrupted command leaves, and how to go on."""
    if args.command == "train":
        return f"The training continues where it stopped with --resume (same --out {args.out})."
    if args.command == "predict":
        return _after_interrupted_prediction(Path(args.out))
    return "Files written so far are complete: each is written whole or not at all."


def _after_interrupted_prediction(out: Path) -> str:
    """What an interrupted ``predict`` finished, read from its ``provenance.json``."""
    try:
        finished = len(json.loads((out / "provenance.json").read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        finished = 0
    if not finished:
        return f"No image was finished, so nothing was kept in {out}: run the same command again."
    images = "image was" if finished == 1 else "images were"
    return (
        f"{finished} {images} finished; their results are in {out} (listed in "
        "provenance.json), each file written whole or not at all. Add --resume to the same "
        "command to predict the rest."
    )


if __name__ == "__main__":
    sys.exit(main())
