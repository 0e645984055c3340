"""The worker process of web-app jobs: ``python -m deepscope.app.worker DB``.

It claims the oldest queued job from the job table (see :mod:`deepscope.app.jobs`),
calls the same workflow functions as the command line (train, run_qc, predict_files,
export_bioimageio),
writes progress and a heartbeat into the table, and records the outcome: ``done``,
``stopped`` or ``failed`` with the error in plain words.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.app import thumbs
from deepscope.app.jobs import HEARTBEAT_S, JobStore
from deepscope.errors import DeepscopeError

PREVIEW_FILE = "preview.png"
PREVIEW_CROP = 256  # pixels (Y, X) of the preview image
PREVIEW_MIN_S = 15.0  # at most one preview per this many seconds during training


class _Throttled:
    """Write progress to the job table at most every ``every`` seconds (and at the end)."""

    def __init__(self, store: JobStore, job_id: int, every: float = 0.5):
        self.store, self.job_id, self.every = store, job_id, every
        self._last = 0.0

    def __call__(self, progress: dict[str, Any], force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            self.store.update(self.job_id, progress=progress)


def _heartbeat(store: JobStore, job_id: int, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            store.heartbeat(job_id)
        except Exception:  # noqa: BLE001  a busy database must not end the job
            pass


# ------------------------------------------------------------------------- preview


def preview_picture(model: Any, image_path: Path) -> np.ndarray:
    """Input and prediction of the centre of one image, side by side (uint8 RGB).

    ``model`` is a :class:`~deepscope.workflow.model_folder.TrainedModel`; tasks whose
    targets are labels (``normalize_targets`` False) are drawn as coloured overlays.
    """
    from deepscope.data.axes import to_channel_first
    from deepscope.data.io import read_image
    from deepscope.workflow.predict import predict_array

    img = read_image(image_path, axes=model.config.data.axes)
    dims = model.config.data.spatial_dims
    cf = to_channel_first(img.data, img.axes, dims, path=image_path).astype(np.float32)
    crop = []
    for n in cf.shape[1:]:
        size = min(n, PREVIEW_CROP) if n > 8 else n
        start = (n - size) // 2
        crop.append(slice(start, start + size))
    cf = cf[(slice(None), *crop)]
    result = predict_array(model, cf)
    axes = "CZYX" if dims == 3 else "CYX"
    plane_in = thumbs.to_plane(cf, axes)
    plane_out = thumbs.to_plane(result, axes)
    if not model.task.normalize_targets:
        right = thumbs.overlay(plane_in, plane_out)
    else:
        right = thumbs.stretch(plane_out)
    return thumbs.side_by_side([thumbs.stretch(plane_in), right])


def _model_from_checkpoint(run_dir: Path) -> Any | None:
    """A TrainedModel from the run's newest ``last.ckpt``, or None before the first one."""
    from deepscope.config import load_config
    from deepscope.data.normalize import PercentileNormalizer
    from deepscope.engine import trainer as engine
    from deepscope.tasks import get_task
    from deepscope.workflow.model_folder import TrainedModel
    from deepscope.workflow.training import _network_state

    ckpt = run_dir / "checkpoints" / engine.LAST
    norm_path = run_dir / "normalization.json"
    if not ckpt.exists() or not norm_path.exists():
        return None
    config = load_config(run_dir / "config.yaml")
    task = get_task(config.task)(config)
    state = _network_state(engine.load_checkpoint_state(ckpt))
    first = next(k for k in state if k.endswith("weight") and state[k].ndim >= 3)
    in_channels = int(state[first].shape[1])
    network = task.build_model(in_channels)
    network.load_state_dict(state)
    network.eval()
    norm = json.loads(norm_path.read_text())
    return TrainedModel(
        folder=run_dir,
        config=config,
        task=task,
        network=network,
        normalizer=PercentileNormalizer.from_dict(norm["input"]),
        target_normalizer=PercentileNormalizer.from_dict(norm["target"])
        if "target" in norm
        else None,
        info={
            "in_channels": in_channels,
            "out_channels": task.out_channels(in_channels),
            "divisibility": 2**config.model.depth,
        },
    )


def write_preview(run_dir: Path, image_path: Path, model: Any | None = None) -> bool:
    """Write ``run_dir/preview.png`` from ``model`` (else the newest checkpoint).

    Returns False (and writes nothing) when there is no checkpoint yet. Never raises:
    a failed preview must not end a training.
    """
    from deepscope.data.io import atomic_write_bytes

    try:
        model = model or _model_from_checkpoint(run_dir)
        if model is None:
            return False
        picture = preview_picture(model, image_path)
        atomic_write_bytes(run_dir / PREVIEW_FILE, thumbs.png(picture))
        return True
    except Exception as err:  # noqa: BLE001
        print(f"preview not made: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return False


# ------------------------------------------------------------------------- runners


def run_train(store: JobStore, job_id: int, spec: dict[str, Any]) -> str:
    """Train (or resume) as the command line does; return how it ended."""
    from deepscope.config import config_from_dict
    from deepscope.data.io import list_images
    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.training import train

    run_dir = Path(spec["run_dir"])
    images = Path(spec["images"])
    targets = Path(spec["targets"]) if spec.get("targets") else None
    config = config_from_dict(spec["config"])
    report = _Throttled(store, job_id, every=0.0)
    pictures = list_images(images)
    preview_image = pictures[-1] if pictures else None
    state = {"last_preview": 0.0}

    def listener(epoch: dict[str, Any]) -> None:
        clean = {
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in epoch.items()
        }
        report({"stage": "training", **clean})
        if preview_image and time.monotonic() - state["last_preview"] >= PREVIEW_MIN_S:
            if write_preview(run_dir, preview_image):
                state["last_preview"] = time.monotonic()

    result = train(
        config,
        images,
        run_dir,
        targets,
        resume=bool(spec.get("resume")),
        listener=listener,
        show_bar=False,
    )
    if preview_image:
        write_preview(run_dir, preview_image, load_model_folder(result.model_dir))
    report(
        {
            "stage": "finished",
            "epoch": result.epochs_trained,
            "max_epochs": config.training.epochs,
            "eta_s": 0,
        },
        force=True,
    )
    return result.stopped_because


def run_qc_job(store: JobStore, job_id: int, spec: dict[str, Any]) -> str:
    """Quality control into ``run/qc`` (built aside, then swapped into place)."""
    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.qc import run_qc

    model = load_model_folder(spec["model"])
    out = Path(spec["out"])
    tmp = out.with_name(f".{out.name}.partial-{job_id}")
    shutil.rmtree(tmp, ignore_errors=True)
    report = _Throttled(store, job_id)

    def progress(stage: str, done: float, total: int) -> None:
        report({"stage": stage, "done": done, "total": total})

    summary = run_qc(model, Path(spec["images"]), Path(spec["targets"]), tmp, progress=progress)
    old = out.with_name(f".{out.name}.old-{job_id}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    report({"stage": "finished", "summary": _jsonable(summary)}, force=True)
    return "quality control finished"


def run_predict(store: JobStore, job_id: int, spec: dict[str, Any]) -> str:
    """Batch prediction of a folder into the job's output folder."""
    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.predict import TileSettings, predict_files

    model = load_model_folder(spec["model"])
    report = _Throttled(store, job_id)

    def progress(name: str, done: float, total: int) -> None:
        report({"stage": "predicting", "name": str(name), "done": done, "total": total})

    written = predict_files(
        model,
        Path(spec["input"]),
        Path(spec["out"]),
        axes=spec.get("axes"),
        tiles=TileSettings(tta=bool(spec.get("tta")), int8=bool(spec.get("int8"))),
        progress=progress,
    )
    report({"stage": "finished", "done": len(written), "total": len(written)}, force=True)
    return f"{len(written)} result(s) written"


def run_export(store: JobStore, job_id: int, spec: dict[str, Any]) -> str:
    """A BioImage.IO package of the model, checked with ``bioimageio.core.test_model``.

    The first of the run's training images (``spec["samples"]``) that can be the
    package's test image and cover is; one the model finds nothing in (an empty result,
    which BioImage.IO refuses) or that cannot be used (too small, other channels) is
    passed over with a note. When none can, a synthetic image is used; when the model
    finds nothing in any, the export fails with what to do in the app's words.
    """
    from deepscope.export.bioimageio import EmptyTestOutput, export_bioimageio

    report = _Throttled(store, job_id, every=0.0)
    notes: list[str] = []

    def log(message: str) -> None:
        print(message, flush=True)
        report({"stage": message.rstrip(" .")})

    def export(sample: str | None) -> Path:
        return export_bioimageio(
            spec["model"],
            spec["out"],
            authors=spec["authors"],
            license=spec["license"],
            name=spec.get("name"),
            sample=sample,
            log=log,
        )

    samples = spec.get("samples") or ([spec["sample"]] if spec.get("sample") else [])
    out, empty, passed = None, [], []
    for sample in samples:
        try:
            out = export(sample)
            break
        except EmptyTestOutput:
            empty.append(Path(sample).name)
        except DeepscopeError as err:
            if err.path is None or Path(err.path) != Path(sample):
                raise
            passed.append(f"{Path(sample).name} ({err.problem})")
    if out is None and empty:
        raise DeepscopeError(
            f"the model's result is empty (e.g. no object found) for each training image "
            f"tried ({', '.join(empty)}), and a BioImage.IO package needs a test image "
            "with a real result",
            spec["model"],
            "check the model on the quality-control page (it may need more training), or "
            "export from the command line with 'deepscope export MODEL --sample IMAGE' and "
            "an image it finds objects in",
        )
    if out is None:
        if passed:
            notes.append(
                f"the training image(s) {'; '.join(passed)} could not be the test image; "
                "a synthetic image was used"
            )
            log(notes[-1])
        try:
            out = export(None)
        except EmptyTestOutput:
            raise DeepscopeError(
                "the model's result for a synthetic test image is empty, and a BioImage.IO "
                "package needs a test image with a real result",
                spec["model"],
                "export from the command line with 'deepscope export MODEL --sample IMAGE' "
                "and one of your images",
            ) from None
    elif passed or empty:
        skipped = passed + [f"{n} (nothing found in it)" for n in empty]
        notes.append(f"passed over as test image: {'; '.join(skipped)}")
        log(notes[-1])
    report({"stage": "finished", "file": out.name, "notes": notes}, force=True)
    return f"BioImage.IO package written: {out.name}" + "".join(f"; {n}" for n in notes)


RUNNERS: dict[str, Callable[[JobStore, int, dict[str, Any]], str]] = {
    "train": run_train,
    "qc": run_qc_job,
    "predict": run_predict,
    "export": run_export,
}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_job(store: JobStore, job: dict[str, Any]) -> int:
    """Run a claimed job to its end, with a heartbeat, and record the outcome."""
    job_id = int(job["id"])
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(store, job_id, stop), daemon=True)
    beat.start()
    try:
        message = RUNNERS[job["kind"]](store, job_id, job["spec"])
        status = "stopped" if message == "stopped on request" else "done"
        store.update(job_id, status=status, message=message, finished=time.time())
        return 0
    except DeepscopeError as err:
        store.update(job_id, status="failed", message=str(err), finished=time.time())
        print(f"Error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001  shown to the user in words; details in the log
        traceback.print_exc()
        store.update(
            job_id,
            status="failed",
            message=f"unexpected error ({type(err).__name__}: {err}); the worker log in the "
            "runs folder's .logs has the details",
            finished=time.time(),
        )
        return 1
    finally:
        stop.set()


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    """Import the libraries, wait for a queued job, run it, exit.

    A spare worker gives up when the server that started it is gone or after
    ``--idle-minutes`` without a job.
    """
    parser = argparse.ArgumentParser(prog="python -m deepscope.app.worker")
    parser.add_argument("db", type=Path, help="the job table (runs/jobs.sqlite)")
    parser.add_argument("--server-pid", type=int, help="stop waiting when it has ended")
    parser.add_argument("--idle-minutes", type=float, default=30.0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    # The slow imports happen before a job is claimed, so the job starts at once.
    import deepscope.workflow.predict  # noqa: F401
    import deepscope.workflow.qc  # noqa: F401
    import deepscope.workflow.training  # noqa: F401

    store = JobStore(args.db.parent)
    deadline = time.monotonic() + args.idle_minutes * 60
    print(f"worker {os.getpid()} ready", flush=True)
    while True:
        job = store.claim(os.getpid())
        if job is not None:
            print(f"worker {os.getpid()}: job {job['id']} ({job['kind']}, run {job['run']})")
            return run_job(store, job)
        if not _alive(args.server_pid) or time.monotonic() > deadline:
            return 0
        time.sleep(0.3)


if __name__ == "__main__":
    sys.exit(main())
