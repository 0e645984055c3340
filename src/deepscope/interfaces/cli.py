"""The ``deepscope`` command line: turns options into a config and calls the workflow.

Every command explains itself with ``--help``; every error names the file and what to do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from deepscope import __version__
from deepscope.errors import DeepscopeError

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
        "--resume", action="store_true", help="continue an interrupted training in the --out folder"
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
        "runs/n2v1/model) with the same network size, or a shipped model by name "
        "(stardist: nuclei); works for any task",
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
        default=512,
        help="large images are processed in tiles of this size (default 512)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace results from an earlier run")
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
        required=True,
        help="folder of ground-truth images (or masks) with the same file names",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the report")
    p.add_argument("--tile", type=int, default=512, help="tile size for large images")

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
    return parser


def _config_from_args(args: argparse.Namespace) -> Any:
    from deepscope.config import config_from_dict, load_config, merge_overrides

    base: dict[str, Any] = {"task": args.task}
    if getattr(args, "config", None):
        base = load_config(args.config).model_dump(mode="json")
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
    overrides.update(_stardist_overrides(args))
    config = config_from_dict(merge_overrides(base, overrides))
    if getattr(args, "freeze_encoder", None) == -1:  # given without a number
        config = config_from_dict(
            merge_overrides(
                config.model_dump(mode="json"),
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


def _bar(desc: str):  # noqa: ANN202
    from tqdm.auto import tqdm

    state: dict[str, Any] = {}

    def update(name: str, done: float, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit="image", file=sys.stderr)
        bar = state["bar"]
        bar.n = round(done, 2)
        bar.set_postfix_str(str(name)[-30:])
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def cmd_validate(args: argparse.Namespace) -> int:
    """Run the data check and print its findings."""
    from deepscope.data.validation import validate_dataset
    from deepscope.tasks import get_task

    config = _config_from_args(args)
    task = get_task(args.task)(config)
    report = validate_dataset(
        args.task,
        config,
        args.images,
        args.targets,
        extra_checks=task.extra_checks,
    )
    print(report.format())
    for line in getattr(task, "data_summary", list)():
        print(f"note    {line}")
    return 0 if report.ok else 1


def cmd_train(args: argparse.Namespace) -> int:
    """Train and say where the model is."""
    from deepscope.workflow.training import train

    config = _config_from_args(args)
    result = train(config, args.images, args.out, args.targets, resume=args.resume)
    print(
        f"\nTraining {result.stopped_because} after {result.minutes:.1f} min "
        f"({result.epochs_trained} epochs)."
    )
    print(f"Model: {result.model_dir}")
    print(f"Next: deepscope predict {result.model_dir} --input IMAGES --out RESULTS")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Apply a model to a file or folder."""
    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.predict import TileSettings, predict_files
    from deepscope.workflow.pretrained import resolve_model

    model = load_model_folder(resolve_model(args.model))
    for opt, key in [("prob_threshold", "prob_threshold"), ("nms_threshold", "nms_threshold")]:
        value = getattr(args, opt, None)
        if value is not None:
            if model.config.task != "stardist":
                raise DeepscopeError(
                    f"--{opt.replace('_', '-')} is for stardist models, not {model.config.task}",
                    fix=f"leave out --{opt.replace('_', '-')}",
                )
            if not 0 < value < 1:
                raise DeepscopeError(
                    f"--{opt.replace('_', '-')} {value} must be between 0 and 1",
                    fix="give e.g. 0.5",
                )
            setattr(model.config.stardist, key, value)
            setattr(model.task, key, value)
    for opt, key in [("instances", "predict_instances"), ("probabilities", "save_probabilities")]:
        if getattr(args, opt, False):
            if model.config.task != "semantic":
                raise DeepscopeError(
                    f"--{opt} is for semantic segmentation models, not {model.config.task}",
                    fix=f"leave out --{opt}",
                )
            setattr(model.config.semantic, key, True)
    written = predict_files(
        model,
        args.input,
        args.out,
        axes=args.axes,
        tiles=TileSettings(tile=args.tile),
        overwrite=args.overwrite,
        progress=_bar("predicting"),
    )
    print(f"{len(written)} result(s) written to {args.out} (see provenance.json there).")
    return 0


def cmd_qc(args: argparse.Namespace) -> int:
    """Quality control with an HTML report."""
    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.predict import TileSettings
    from deepscope.workflow.pretrained import resolve_model
    from deepscope.workflow.qc import run_qc

    model = load_model_folder(resolve_model(args.model))
    summary = run_qc(
        model,
        args.images,
        args.targets,
        args.out,
        tiles=TileSettings(tile=args.tile),
        progress=_progress_stages(),
    )
    if "by_threshold" in summary:
        from deepscope.workflow.qc_instance import summary_text

        print(summary_text(summary))
    elif "mean_iou" in summary:
        _print_segmentation_summary(summary)
    else:
        _print_restoration_summary(summary)
    print(f"Report: {Path(args.out) / 'report.html'}")
    return 0


def _progress_stages():  # noqa: ANN202
    bars: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = _bar(f"QC {stage}")
        bars[stage](stage, done, total)

    return update


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


def _print_restoration_summary(summary: dict) -> None:
    def row(name: str, key: str) -> str:
        m = summary.get(key, {})
        psnr = m.get("psnr_matched", m.get("psnr"))
        ssim = m.get("ssim_matched", m.get("ssim"))
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


COMMANDS = {
    "validate": cmd_validate,
    "train": cmd_train,
    "predict": cmd_predict,
    "qc": cmd_qc,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``deepscope`` command."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except DeepscopeError as err:
        print(f"\nError: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nInterrupted. A training continues where it stopped with --resume.", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
