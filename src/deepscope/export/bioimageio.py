"""Export a deepscope model folder as a BioImage.IO model package (spec 0.5).

The package (a ``.zip``) holds:

- weights in three formats: ``pytorch_state_dict`` (the original; the architecture as a
  source file that needs only PyTorch, see :mod:`deepscope.export.architecture`), and
  ``torchscript`` and ``onnx`` converted from it (fp32, checked against PyTorch);
- pre-processing in the spec's own operations: the stored normalisation as a fixed
  ``scale_linear`` per channel (gain ``1/(high-low)``, offset ``-low/(high-low)``),
  which reproduces deepscope's ``(x - low) / (high - low)`` exactly;
- post-processing from the task's export entry (:mod:`deepscope.export.descriptions`);
- a test input and the output deepscope computes for it (``.npy``): the community's
  checker (``bioimageio.core.test_model``) runs every weight format through the spec's
  operations and compares, which proves that the operations reproduce deepscope;
- a cover image (input | output), a README from the model card, QC metrics when
  ``deepscope qc`` was run, method citations, authors and licence, and the training
  history (``history.csv``, attached, for the loss curves of QC reports);
- the full deepscope config and normalisation under ``config.deepscope``, and the model
  folder's tuned settings (``thresholds.json``; ``int8_calibration.json`` when it was
  made for these weights), attached, from which ``deepscope import`` rebuilds the model
  folder.

Every threshold in the package (StarDist's ``stardist_postprocessing``, the test output,
the README) is the one ``deepscope predict`` uses: the model folder's tuned settings are
applied before anything is computed.

Nothing here uses the network: no field holds a URL (validation would fetch it).
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepscope import __version__
from deepscope.data.axes import to_channel_first
from deepscope.errors import DeepscopeError, OutputError
from deepscope.export.architecture import load_standalone, standalone_source
from deepscope.export.descriptions import TaskExport, exportable_tasks, get_export
from deepscope.export.onnx_export import OPSET, export_onnx
from deepscope.export.torchscript import export_torchscript
from deepscope.workflow.model_folder import TrainedModel, load_model_folder
from deepscope.workflow.predict import TUNED_SETTINGS_FILE, apply_tuned_settings

#: Largest side (Y, X) of the test image, and depth (Z) of a 3D one.
TEST_SIDE = 256
TEST_DEPTH = 16
_NAME_CHARS = set(string.ascii_letters + string.digits + "_+- ()")
SPACE_AXES = {2: ("y", "x"), 3: ("z", "y", "x")}


class EmptyTestOutput(DeepscopeError):
    """The model's result for the package's test image is the same value everywhere."""


def export_bioimageio(
    model_folder: str | Path,
    out: str | Path,
    *,
    authors: Sequence[str] | None,
    license: str | None,
    name: str | None = None,
    sample: str | Path | None = None,
    check: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Write ``model_folder`` as a BioImage.IO package ``out`` (``.zip``).

    Parameters
    ----------
    model_folder
        A deepscope model folder (``runs/<name>/model``).
    out
        The package file to write (``.zip``); refused if it exists.
    authors
        Names of the people who trained the model (at least one).
    license
        SPDX licence identifier, e.g. ``CC-BY-4.0`` or ``MIT``.
    name
        Name of the model; default from the folder and task.
    sample
        An image like the training images; its centre becomes the test input and the
        cover. Without it, a synthetic image in the training intensity range is used.
    check
        Run ``bioimageio.core.test_model`` on the package (every weight format).
    log
        Receives progress messages.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    DeepscopeError
        Missing authors or licence, a task that cannot be exported, an existing ``out``,
        or a package that fails the BioImage.IO checks.
    """
    out = Path(out)
    if not authors:
        raise DeepscopeError(
            "a BioImage.IO model needs its authors", fix="add --authors 'First Last' [...]"
        )
    if not license:
        raise DeepscopeError(
            "a BioImage.IO model needs a licence",
            fix="add --license with an SPDX identifier, e.g. --license CC-BY-4.0 or MIT",
        )
    if out.exists():
        raise OutputError(
            "the output file already exists", out, "choose another name or delete it first"
        )
    if out.suffix.lower() != ".zip":
        raise OutputError("a BioImage.IO package is a .zip file", out, "give --out NAME.zip")
    model = load_model_folder(model_folder)
    require_state_dict(model)
    entry = get_export(model.config.task)
    if entry is None:
        raise DeepscopeError(
            f"models of the task '{model.config.task}' cannot be exported to BioImage.IO yet "
            f"(exportable: {', '.join(exportable_tasks())})",
            model_folder,
            "export with --format onnx or torchscript instead",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".deepscope-export-", dir=out.parent) as tmp:
        work = Path(tmp)
        descr = build_description(
            model,
            entry,
            work,
            checked=check,
            authors=authors,
            license=license,
            name=name,
            sample=sample,
            log=log,
        )
        from bioimageio.spec import save_bioimageio_package

        partial = work / "package.zip"
        log("writing the package ...")
        save_bioimageio_package(descr, output_path=partial)
        if check:
            check_package(partial, log=log)
        os.replace(partial, out)
    log(f"BioImage.IO package written: {out}")
    return out


def require_state_dict(model: TrainedModel) -> None:
    """Refuse models imported with TorchScript or ONNX weights only (nothing to convert)."""
    if "network" in model.info:
        fmt = model.info["network"]["format"]
        raise DeepscopeError(
            f"this model was imported with {fmt} weights only; deepscope exports from a "
            "PyTorch state dict",
            model.folder,
            "share the original package, or import it again with its state dict (the "
            "default of 'deepscope import') and export that folder",
        )


def check_package(package: Path, log: Callable[[str], None] = print) -> None:
    """Run the community checker on ``package``; raise a DeepscopeError if it fails."""
    from bioimageio.core import test_model

    log("checking the package with bioimageio.core.test_model (every weight format) ...")
    summary = test_model(package)
    if summary.status != "passed":
        failed = [
            f"{d.name}: {e.msg}"
            for d in summary.details
            if d.status == "failed"
            for e in (d.errors or [])
        ]
        raise DeepscopeError(
            "the exported package failed the BioImage.IO checks:\n  "
            + "\n  ".join(failed[:8] or [summary.status]),
            package,
            "report this as a deepscope bug, with the model folder",
        )
    log("the package passed bioimageio.core.test_model")


# ------------------------------------------------------------------------ building


def build_description(
    model: TrainedModel,
    entry: TaskExport,
    work: Path,
    *,
    authors: Sequence[str],
    license: str,
    name: str | None,
    sample: str | Path | None,
    log: Callable[[str], None],
    checked: bool = True,
):  # noqa: ANN201
    """Write every file of the package into ``work`` and return its ``ModelDescr``.

    The model's task first gets the model folder's tuned settings (``thresholds.json``),
    as for ``deepscope predict``, so the package's thresholds, test output and README
    are the ones deepscope predicts with.
    """
    from bioimageio.spec.model import v0_5 as spec
    from pydantic import ValidationError

    apply_tuned_settings(model)
    dims = model.config.data.spatial_dims
    x = test_input(model, sample, entry)  # (1, C, *spatial), raw intensities
    raw = raw_output(model, x)
    y = entry.expected_output(model, raw[0])[None]
    if not np.any(y != y.flat[0]):  # BioImage.IO refuses a constant test output
        raise EmptyTestOutput(
            "the model's result for the package's test image is empty (the same value "
            "everywhere, e.g. no object found), and a BioImage.IO package needs a test "
            "image the model gives a real result for",
            model.folder,
            "give --sample with one of your images (one with objects, for a segmentation "
            "model)" + ("" if sample is None else ", another than " + Path(sample).name),
        )
    np.save(work / "test_input.npy", x.astype(np.float32))
    out_dtype = entry.output_dtype(model) if callable(entry.output_dtype) else entry.output_dtype
    np.save(work / "test_output.npy", y.astype(out_dtype))
    write_cover(model, x[0], y[0], work / "cover.png")

    kwargs = {**model.task.model_kwargs(model.in_channels), **entry.network_kwargs}
    network = _export_network(model, kwargs)
    src, callable_name = standalone_source(network)
    (work / "architecture.py").write_text(src)
    _check_standalone(model, network, kwargs, src, callable_name, x)
    shutil.copyfile(model.folder / "weights.pt", work / "weights.pt")
    example = model.normalizer.normalize(x[0])[None]
    log("converting the weights to TorchScript ...")
    ts_diff = export_torchscript(network, example, work / "weights_torchscript.pt")
    log("converting the weights to ONNX ...")
    onnx_diff = export_onnx(network, example, work / "weights.onnx")
    (work / "README.md").write_text(documentation(model, entry, ts_diff, onnx_diff, checked))
    attachments = []
    for file in ("history.csv", *tuned_settings_files(model)):
        # history: the loss curves QC reports show; the others: what import restores
        if (model.folder / file).is_file():
            shutil.copyfile(model.folder / file, work / file)
            attachments.append(spec.FileDescr(source=work / file))

    div = int(model.info["divisibility"])
    space = SPACE_AXES[dims]
    in_names = [f"channel{c}" for c in range(model.in_channels)]
    inputs = spec.InputTensorDescr(
        id=spec.TensorId("input"),
        description="raw image (any intensity type, read as float32)",
        axes=[
            spec.BatchAxis(),
            spec.ChannelAxis(channel_names=[spec.Identifier(n) for n in in_names]),
            *[
                spec.SpaceInputAxis(
                    id=spec.AxisId(a),
                    size=spec.ParameterizedSize(min=div, step=div)
                    if entry.fixed_input_size is None
                    else n,
                )
                for a, n in zip(space, x.shape[2:], strict=True)
            ],
        ],
        test_tensor=spec.FileDescr(source=work / "test_input.npy"),
        data=spec.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[_input_normalization(model)],
    )
    outputs = spec.OutputTensorDescr(
        id=spec.TensorId("output"),
        description=entry.output_description,
        axes=entry.output_axes(model)
        if entry.output_axes is not None
        else [
            spec.BatchAxis(),
            spec.ChannelAxis(
                channel_names=[spec.Identifier(n) for n in entry.channel_names(model)]
            ),
            *[
                spec.SpaceOutputAxis(
                    id=spec.AxisId(a),
                    size=spec.SizeReference(
                        tensor_id=spec.TensorId("input"), axis_id=spec.AxisId(a)
                    ),
                )
                for a in space
            ],
        ],
        test_tensor=spec.FileDescr(source=work / "test_output.npy"),
        data=spec.IntervalOrRatioDataDescr(type=out_dtype),
        postprocessing=entry.postprocessing(model),
    )
    pytorch_version = spec.Version(torch.__version__.split("+")[0])
    weights = spec.WeightsDescr(
        pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
            source=work / "weights.pt",
            architecture=spec.ArchitectureFromFileDescr(
                source=work / "architecture.py", callable=callable_name, kwargs=kwargs
            ),
            pytorch_version=pytorch_version,
        ),
        torchscript=spec.TorchscriptWeightsDescr(
            source=work / "weights_torchscript.pt",
            pytorch_version=pytorch_version,
            parent="pytorch_state_dict",
            comment="traced from the state dict by deepscope (fp32)",
        ),
        onnx=spec.OnnxWeightsDescr(
            source=work / "weights.onnx",
            opset_version=OPSET,
            parent="pytorch_state_dict",
            comment="exported from the state dict by deepscope (fp32)",
        ),
    )
    try:
        author_list = [spec.Author(name=a) for a in authors]
    except ValidationError as err:
        raise DeepscopeError(
            f"an author name is not accepted: {err.errors()[0]['msg']}",
            fix="give names like --authors 'Ada Lovelace' (no slashes)",
        ) from None
    try:
        return spec.ModelDescr(
            name=_model_name(model, name),
            description=model.task.description[:1024],
            authors=author_list,
            cite=[spec.CiteEntry(text=c.text, doi=spec.Doi(c.doi)) for c in entry.citations(model)],
            license=license,
            tags=["deepscope", f"{dims}d", *entry.tags],
            documentation=spec.FileDescr(source=work / "README.md"),
            covers=[spec.FileDescr(source=work / "cover.png")],
            attachments=attachments,
            inputs=[inputs],
            outputs=[outputs],
            weights=weights,
            config=spec.Config(
                bioimageio=spec.BioimageioConfig(
                    reproducibility_tolerance=[spec.ReproducibilityTolerance()]
                ),
                deepscope=deepscope_record(model),
            ),
        )
    except ValidationError as err:
        license_errors = [e for e in err.errors() if e["loc"] and e["loc"][0] == "license"]
        if license_errors:
            raise DeepscopeError(
                f"the licence {license!r} is not an SPDX licence identifier",
                fix="give --license with an SPDX identifier, e.g. CC-BY-4.0, MIT, BSD-3-Clause",
            ) from None
        raise


def tuned_settings_files(model: TrainedModel) -> list[str]:
    """The model folder's files of settings made after training that the package carries.

    ``thresholds.json`` (e.g. StarDist's probability and NMS thresholds, a semantic
    model's foreground or seed threshold), and the 8-bit calibration
    (``int8_calibration.json``) when it was made for the folder's current weights: the
    package holds those weights byte for byte, so the calibration stays valid after
    ``deepscope import``.
    """
    from deepscope.engine.int8 import CALIBRATION_FILE
    from deepscope.workflow.int8_models import int8_calibration_of

    files = [TUNED_SETTINGS_FILE]
    if int8_calibration_of(model) is not None:
        files.append(CALIBRATION_FILE)
    return [f for f in files if (model.folder / f).is_file()]


def deepscope_record(model: TrainedModel) -> dict[str, Any]:
    """What ``deepscope import`` needs to rebuild the model folder exactly."""
    norm = json.loads((model.folder / "normalization.json").read_text())
    info = {k: v for k, v in model.info.items() if k != "training"}
    return {
        "deepscope_version": __version__,
        "config": model.config.model_dump(mode="json"),
        "normalization": norm,
        "info": info,
        "training": model.info.get("training", {}),
    }


def _model_name(model: TrainedModel, name: str | None) -> str:
    if name is None:
        run = model.folder.resolve().parent.name if model.folder.name == "model" else ""
        name = f"deepscope {model.config.task} {run or model.folder.name}"
    bad = sorted({ch for ch in name if ch not in _NAME_CHARS})
    if bad:
        raise DeepscopeError(
            f"the model name {name!r} has characters BioImage.IO does not allow: {''.join(bad)}",
            fix="give --name with letters, digits, spaces and _+-() only",
        )
    if len(name) < 5:
        raise DeepscopeError(f"the model name {name!r} is too short", fix="give a longer --name")
    return name[:128]


def _input_normalization(model: TrainedModel):  # noqa: ANN202
    """The input normalisation as a spec operation.

    Fixed statistics of the training set: ``scale_linear``. Per-image percentiles
    (StarDist's default): ``scale_range`` over the space axes of each sample and channel.
    """
    from bioimageio.spec.model import v0_5 as spec

    norm = model.normalizer
    if norm.per_image:
        space = SPACE_AXES[model.config.data.spatial_dims]
        return spec.ScaleRangeDescr(
            kwargs=spec.ScaleRangeKwargs(
                axes=[spec.AxisId(a) for a in space],
                min_percentile=norm.low_pct,
                max_percentile=norm.high_pct,
            )
        )
    lo = np.asarray(model.normalizer.low, dtype=np.float64)
    hi = np.asarray(model.normalizer.high, dtype=np.float64)
    gain = (1.0 / (hi - lo)).tolist()
    offset = (-lo / (hi - lo)).tolist()
    return spec.ScaleLinearDescr(
        kwargs=spec.ScaleLinearAlongAxisKwargs(
            axis=spec.AxisId("channel"), gain=gain, offset=offset
        )
    )


def _export_network(model: TrainedModel, kwargs: dict[str, Any]) -> torch.nn.Module:
    """The network as exported: fp32, eval mode, built with the package's ``kwargs``."""
    network = model.network.float().eval()
    if kwargs == model.task.model_kwargs(model.in_channels):
        return network
    exported = type(network)(**kwargs)
    exported.load_state_dict(network.state_dict())
    return exported.eval()


def _check_standalone(
    model: TrainedModel,
    network: torch.nn.Module,
    kwargs: dict[str, Any],
    src: str,
    callable_name: str,
    x: np.ndarray,
) -> None:
    """Build the network from the shipped source and check that it gives the same output."""
    module = load_standalone(src, callable_name)
    net = getattr(module, callable_name)(**kwargs)
    net.load_state_dict(model.network.state_dict())
    net.eval()
    example = torch.from_numpy(model.normalizer.normalize(x[0])[None])
    with torch.no_grad():
        same = torch.allclose(net(example), network(example), rtol=0, atol=1e-6)
    if not same:
        raise DeepscopeError(
            "the architecture file written for the package does not reproduce the network",
            fix="report this as a deepscope bug",
        )


# ------------------------------------------------------------------- test tensors


def test_input(
    model: TrainedModel, sample: str | Path | None, entry: TaskExport | None = None
) -> np.ndarray:
    """The test input (1, C, *spatial) in raw intensities, float32.

    The centre of ``sample`` (at most 256 pixels a side, 16 planes), cut to the
    network's divisibility; without a sample, smooth random blobs spanning the training
    images' intensity range (low to high percentile of each channel). Networks with a
    fixed input size (``entry.fixed_input_size``) get the sample brought to that size
    (``entry.fit_input``), or blobs of that size.
    """
    dims = model.config.data.spatial_dims
    div = int(model.info["divisibility"])
    fixed = entry.fixed_input_size(model) if entry and entry.fixed_input_size else None
    if sample is not None:
        from deepscope.data.io import read_image

        img = read_image(Path(sample), axes=model.config.data.axes)
        cf = to_channel_first(img.data, img.axes, dims, path=Path(sample))
        if cf.shape[0] != model.in_channels:
            raise DeepscopeError(
                f"the sample image has {cf.shape[0]} channel(s), the model {model.in_channels}",
                sample,
                "give an image like the training images (--sample)",
            )
        if fixed is not None and entry is not None and entry.fit_input is not None:
            return np.ascontiguousarray(entry.fit_input(model, cf), dtype=np.float32)[None]
        limits = (TEST_SIDE, TEST_SIDE) if dims == 2 else (TEST_DEPTH, TEST_SIDE, TEST_SIDE)
        slices = [slice(None)]
        for n, limit in zip(cf.shape[1:], limits, strict=True):
            size = min(n, limit) // div * div
            if size < div:
                raise DeepscopeError(
                    f"the sample image is too small ({cf.shape[1:]}); every side must be at "
                    f"least {div} pixels",
                    sample,
                    "give a larger image (--sample) or leave --sample out",
                )
            start = (n - size) // 2
            slices.append(slice(start, start + size))
        return np.ascontiguousarray(cf[tuple(slices)], dtype=np.float32)[None]
    from scipy import ndimage

    shape = (64, 64) if dims == 2 else (TEST_DEPTH, 64, 64)
    shape = tuple(max(div, s // div * div) for s in shape) if fixed is None else fixed
    rng = np.random.default_rng(0)
    channels = []
    for lo, hi in zip(model.normalizer.low, model.normalizer.high, strict=True):
        blobs = ndimage.gaussian_filter(rng.random(shape), sigma=3.0)
        blobs = (blobs - blobs.min()) / max(float(np.ptp(blobs)), 1e-9)
        noise = rng.normal(0.0, 0.05, shape)
        channels.append(lo + (hi - lo) * (blobs + noise))
    return np.stack(channels).astype(np.float32)[None]


def raw_output(model: TrainedModel, x: np.ndarray) -> np.ndarray:
    """The network's raw output for raw input ``x`` (1, C, *spatial), fp32, one pass."""
    normalized = model.normalizer.normalize(x[0])[None]
    with torch.no_grad():
        return model.network.float().eval()(torch.from_numpy(normalized)).numpy()


# --------------------------------------------------------------- cover and README


def _to_uint8(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [1.0, 99.8])
    return (np.clip((image - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)


def _middle(image_cf: np.ndarray) -> np.ndarray:
    """First channel, middle plane: a 2D picture (Y, X)."""
    plane = image_cf[0]
    return plane[plane.shape[0] // 2] if plane.ndim == 3 else plane


def write_cover(model: TrainedModel, x_cf: np.ndarray, y_cf: np.ndarray, path: Path) -> None:
    """Input | output side by side as a PNG (class map in colours for segmentation)."""
    import imageio.v3 as iio

    left = np.repeat(_to_uint8(_middle(x_cf))[..., None], 3, axis=-1)
    if y_cf.ndim == 1:  # class probabilities: one bar per class, the most probable dark
        h, n = left.shape[0], len(y_cf)
        width = max(4, left.shape[1] // max(n, 1))
        right = np.full((h, width * n, 3), 255, np.uint8)
        for k, p in enumerate(y_cf):
            top = h - int(round(float(p) * (h - 1)))
            colour = (0, 114, 178) if k == int(np.argmax(y_cf)) else (160, 160, 160)
            right[top:, k * width + 1 : (k + 1) * width - 1] = colour
    elif model.task.qc_kind == "segmentation":
        classes = _middle(np.argmax(y_cf, axis=0)[None])
        palette = np.array(
            [
                [0, 0, 0],
                [230, 159, 0],
                [86, 180, 233],
                [0, 158, 115],
                [240, 228, 66],
                [0, 114, 178],
                [213, 94, 0],
                [204, 121, 167],
            ],
            dtype=np.uint8,
        )
        right = palette[classes % len(palette)]
    elif model.task.qc_kind == "instance" and not np.issubdtype(y_cf.dtype, np.integer):
        # 3D StarDist maps (z, y, x, 1 + rays) on the grid: the object probability,
        # each grid point repeated to the pixels it covers
        prob = 1.0 / (1.0 + np.exp(-_middle(np.moveaxis(y_cf, -1, 0))))
        for axis, g in enumerate(model.task.grid[-2:]):
            prob = np.repeat(prob, g, axis=axis)
        prob = prob[: left.shape[0], : left.shape[1]]
        right = np.repeat((prob * 255).astype(np.uint8)[..., None], 3, axis=-1)
    elif model.task.qc_kind == "instance":  # labels: one colour per object
        labels = _middle(y_cf)
        colours = np.random.default_rng(0).integers(60, 256, (int(labels.max()) + 1, 3))
        colours[0] = 0
        right = colours[labels].astype(np.uint8)
    else:
        right = np.repeat(_to_uint8(_middle(y_cf))[..., None], 3, axis=-1)
    gap = np.full((left.shape[0], max(2, left.shape[1] // 64), 3), 255, np.uint8)
    picture = np.concatenate([left, gap, right], axis=1)
    factor = max(1, 256 // picture.shape[0])  # small test images: enlarge, pixels kept sharp
    picture = np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)
    iio.imwrite(path, picture)


def documentation(
    model: TrainedModel, entry: TaskExport, ts_diff: float, onnx_diff: float, checked: bool
) -> str:
    """The package README: model card, processing, validation (QC), citations."""
    card = (
        (model.folder / "MODEL_CARD.md").read_text()
        if (model.folder / "MODEL_CARD.md").exists()
        else f"# {model.task.title} model\n\n{model.task.description}\n"
    )
    card = card.replace(
        "`deepscope predict <this folder> --input <images> --out <results>`",
        "In deepscope: `deepscope import <this package>.zip --out model/` then "
        "`deepscope predict model/ --input <images> --out <results>`. Elsewhere: any "
        "BioImage.IO consumer (deepImageJ in Fiji, ilastik, the napari BioImage.IO "
        "plugin, `bioimageio predict`) runs it from this package.",
    ).replace("Quality control results are added below by `deepscope qc` when it is run.\n", "")
    lines = [card.rstrip(), "", "## Pre- and post-processing", "", entry.notes(model), ""]
    lines += ["## Validation", ""]
    qc_path = model.folder / "qc_summary.json"
    if qc_path.exists():
        lines += ["Quality control by `deepscope qc` on held-out images:", ""]
        lines += _qc_lines(json.loads(qc_path.read_text()))
    else:
        lines += [
            "No quality control was run on this model before export (`deepscope qc`). "
            "Check it on held-out images with known results before trusting it.",
        ]
    lines += [
        "",
        "The exported TorchScript and ONNX weights reproduce the PyTorch network to "
        f"{ts_diff:.1e} and {onnx_diff:.1e} of the output range (fp32; checked by deepscope "
        "at export, allowed 1e-4)"
        + (
            ", and the package passed `bioimageio.core.test_model` before it was written."
            if checked
            else "; the package was not checked with `bioimageio.core.test_model` at export."
        ),
        "",
        "## Citations",
        "",
        *[f"- {c.text} doi:{c.doi}" for c in entry.citations(model)],
        "",
    ]
    return "\n".join(lines)


def _qc_lines(summary: dict[str, Any]) -> list[str]:
    out = []
    if "mean_iou" in summary:
        for key in ("mean_iou", "mean_dice", "pixel_accuracy", "adapted_rand_error"):
            if summary.get(key) is not None:
                out.append(f"- {key.replace('_', ' ')}: {summary[key]:.3f}")
        return out
    for part in ("input", "gaussian", "model"):
        metrics = summary.get(part)
        if isinstance(metrics, dict):
            shown = ", ".join(
                f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, (int, float))
            )
            out.append(f"- {part}: {shown}")
    return out or [f"- {json.dumps(summary)[:500]}"]
