"""The local web app: a FastAPI server over the same workflow API as the command line.

``create_app`` builds the application; ``deepscope app`` serves it with uvicorn. The
server itself computes nothing long: trainings, quality control and batch predictions
run in worker processes (:mod:`deepscope.app.jobs`). Every path a request names is
confined to the allowed folders (:mod:`deepscope.app.paths`). Errors come back as JSON
``{"error": ..., "path": ..., "fix": ..., "message": ...}`` in plain words, never as a
traceback; the token, Host and Origin checks are in :mod:`deepscope.app.security`.
The JSON API is described at ``/openapi.json`` (and browsable at ``/docs``).
"""

from __future__ import annotations

import mimetypes
import shutil
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from deepscope import __version__
from deepscope.app import forms, runs, thumbs
from deepscope.app.jobs import ACTIVE, JobStore
from deepscope.app.paths import PathRefused, Roots, list_folder
from deepscope.app.security import (
    LOOPBACK,
    install_error_handlers,
    install_guards,
    new_token,
)
from deepscope.errors import ConfigError, DeepscopeError

# ------------------------------------------------------------------------ bodies


class ConfigRequest(BaseModel):
    """A task and the form's settings (dotted keys such as ``training.epochs``)."""

    task: str
    settings: dict[str, Any] = Field(default_factory=dict)


class ValidateRequest(ConfigRequest):
    """A data check: the folders to check with the task's settings."""

    images: str
    targets: str | None = None


class TrainRequest(ValidateRequest):
    """A new training run; ``name`` defaults to the task and the date."""

    name: str | None = None


class ResumeRequest(BaseModel):
    """Continue an interrupted training; only its length may change."""

    epochs: int | None = Field(None, ge=1)
    max_minutes: float | None = Field(None, gt=0)


class QcRequest(BaseModel):
    """Held-out images and their targets (or masks), paired by file name."""

    images: str
    targets: str


class ApplyRequest(BaseModel):
    """A folder (or image) to predict; results go to the run's ``apply/`` folder."""

    input: str
    axes: str | None = None
    tta: bool = False
    int8: bool = False


class ExportRequest(BaseModel):
    """Who made the model and under which licence, for its BioImage.IO package."""

    authors: list[str] = Field(default_factory=list)
    license: str = ""
    name: str | None = None


class CheckpointRequest(BaseModel):
    """The kept checkpoint to use as the model (``best`` for the training's choice)."""

    checkpoint: str


# ------------------------------------------------------------------------ the app


def create_app(
    data_roots: list[Path],
    runs_dir: Path,
    *,
    token: str | None = None,
    allowed_hosts: set[str] | None = None,
    start_worker: Callable[[JobStore], None] | None = None,
) -> FastAPI:
    """Build the web app.

    Parameters
    ----------
    data_roots
        Folders the user allows the app to browse and read.
    runs_dir
        Folder of the run folders (created if missing); holds ``jobs.sqlite``.
    token
        When given, every request must carry it (header ``X-Deepscope-Token``, the
        cookie set by opening ``/?token=...``); needed when serving beyond this computer.
    allowed_hosts
        Host names the server answers to (None: any); protects a loopback server from
        web pages that rebind their DNS name to 127.0.0.1.
    start_worker
        Called with the job store after each job is queued, to start the worker that
        will run it; by default a detached process (tests may run jobs in a thread).
        The default also keeps one spare worker started ahead while the server runs.
    """
    runs_dir = Path(runs_dir).expanduser()
    runs_dir.mkdir(parents=True, exist_ok=True)
    roots = Roots(list(data_roots), runs_dir)
    store = JobStore(roots.runs)
    spare = start_worker is None
    if start_worker is None:

        def start_worker(s: JobStore) -> None:
            s.spawn_worker(roots.runs / ".logs")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if spare:
            start_worker(store)  # imports the libraries while the user chooses data
        yield
        store.stop_idle_workers()  # running jobs continue

    app = FastAPI(
        lifespan=lifespan,
        title="deepscope",
        version=__version__,
        description="Train, check and apply deep-learning models on microscopy images. "
        "Paths must lie inside the data roots or the runs folder.",
    )
    app.state.roots, app.state.store, app.state.start_worker = roots, store, start_worker
    install_error_handlers(app)
    install_guards(app, token, allowed_hosts)
    static = Path(str(resources.files("deepscope.app") / "static"))
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(static / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        """Version, allowed data roots and the runs folder."""
        return {
            "version": __version__,
            "data_roots": [str(p) for p in roots.data],
            "runs": str(roots.runs),
        }

    # -------------------------------------------------------------- tasks & settings

    @app.get("/api/tasks")
    def tasks() -> list[dict[str, Any]]:
        """Every task: title, what it is for and what data it needs."""
        return forms.task_summaries()

    @app.get("/api/tasks/{task}/form")
    def task_form(task: str) -> dict[str, Any]:
        """The task's settings as a form: sections, fields, defaults, explanations."""
        return forms.task_form(task)

    @app.get("/api/tasks/{task}/example.png", response_class=Response)
    def task_example(task: str) -> Response:
        """An example picture of the task: what goes in (left) and comes out (right)."""
        from deepscope.app.examples import example_png

        try:
            data = example_png(task)
        except KeyError as err:
            raise ConfigError(str(err.args[0]), fix="choose one of the listed tasks") from None
        return Response(data, media_type="image/png")

    @app.post("/api/config")
    def check_config(body: ConfigRequest) -> dict[str, Any]:
        """Validate settings with the task's config; return the full config and its YAML."""
        config = _config(body, roots)
        return {"config": config.model_dump(mode="json"), "yaml": config.to_yaml()}

    # -------------------------------------------------------------- data

    @app.get("/api/browse")
    def browse(path: str | None = None) -> dict[str, Any]:
        """Sub-folders and images of a folder; without ``path`` the allowed roots."""
        if not path:
            return {
                "path": None,
                "parent": None,
                "folders": [
                    {"name": str(p), "path": str(p), "images": None}
                    for p in [*roots.data, roots.runs]
                ],
                "images": [],
            }
        folder = roots.confine(path)
        if not folder.is_dir():
            raise PathRefused("this is not a folder", path, "choose a folder")
        parent = folder.parent if folder not in roots.all else None
        return {
            "path": str(folder),
            "parent": str(parent) if parent else None,
            **list_folder(folder),
        }

    @app.get("/api/thumb", response_class=Response)
    def thumb(
        path: str,
        size: int = Query(192, ge=16, le=1024),
        projection: str = Query("middle", pattern="^(middle|max)$"),
        labels: str | None = None,
        as_labels: bool = False,
    ) -> Response:
        """PNG picture of an image (percentile contrast, middle slice or max projection).

        ``labels`` (a mask) is drawn as a coloured overlay.
        """
        image = roots.confine(path)
        mask = roots.confine(labels) if labels else None
        data = thumbs.thumbnail(
            image, size=size, projection=projection, labels=mask, as_labels=as_labels
        )
        return Response(data, media_type="image/png", headers={"Cache-Control": "no-cache"})

    @app.post("/api/validate")
    def validate(body: ValidateRequest) -> dict[str, Any]:
        """Check the data as ``deepscope validate`` does: every finding with its fix."""
        from deepscope.data.validation import validate_dataset
        from deepscope.tasks import get_task

        config = _config(body, roots)
        images = roots.confine(body.images)
        targets = roots.confine(body.targets) if body.targets else None
        task = get_task(body.task)(config)
        report = validate_dataset(
            body.task, config, images, targets, extra_checks=task.extra_checks
        )
        out = report.to_dict()
        out["notes"] = list(getattr(task, "data_summary", list)())
        return out

    # -------------------------------------------------------------- runs

    @app.get("/api/runs")
    def list_runs() -> list[dict[str, Any]]:
        """Every run with task, data, date, status and key metric, newest first."""
        return runs.list_runs(roots.runs, store)

    @app.get("/api/models")
    def models() -> list[dict[str, Any]]:
        """Trained model folders in the runs folder (to start a new training from)."""
        out = []
        for row in runs.list_runs(roots.runs, store):
            model = roots.runs / row["name"] / "model"
            if (model / "deepscope_model.json").is_file():
                out.append({"run": row["name"], "task": row["task"], "path": str(model)})
        return out

    @app.post("/api/runs")
    def start_training(body: TrainRequest) -> dict[str, Any]:
        """Start a training in a worker process; returns the run name and job id."""
        from deepscope.tasks import get_task

        config = _config(body, roots)
        images = roots.confine(body.images)
        targets = roots.confine(body.targets) if body.targets else None
        if get_task(body.task).needs_targets and targets is None:
            raise ConfigError(
                f"the {body.task} task learns from pairs: choose the folder of targets",
                fix="choose the targets (or masks) folder in the data step",
            )
        name = body.name or _new_run_name(roots.runs, body.task)
        run_dir = roots.run_dir(name, must_exist=False)
        if run_dir.exists() or store.for_run(name):
            raise DeepscopeError(
                "a run of this name exists already", run_dir, "choose another name"
            )
        spec = {
            "run_dir": str(run_dir),
            "config": config.model_dump(mode="json"),
            "images": str(images),
            "targets": str(targets) if targets else None,
            "resume": False,
        }
        job = _launch(app, "train", name, spec)
        return {"run": name, "job": job}

    @app.get("/api/runs/{name}")
    def run_detail(name: str) -> dict[str, Any]:
        """A run: status, config, loss history, checkpoints, jobs, QC and results."""
        run_dir = roots.run_dir(name, must_exist=False)
        if not run_dir.is_dir() and not store.for_run(name):
            raise PathRefused("there is no run of this name", run_dir, "pick one from the list")
        return runs.run_detail(run_dir, store)

    @app.delete("/api/runs/{name}")
    def delete_run(name: str, confirm: str = "") -> dict[str, Any]:
        """Delete a run folder and its jobs; ``confirm`` must repeat the run's name."""
        run_dir = roots.run_dir(name, must_exist=False)
        if confirm != name:
            raise DeepscopeError(
                "deleting a run needs confirmation",
                run_dir,
                "send confirm=<the run's name> (the page asks you to type it)",
            )
        if any(j["status"] in ACTIVE for j in store.for_run(name)):
            raise DeepscopeError(
                "this run has a job running", run_dir, "stop it first, then delete the run"
            )
        if run_dir.is_dir():
            shutil.rmtree(run_dir)
        store.forget_run(name)
        return {"deleted": name}

    @app.post("/api/runs/{name}/stop")
    def stop(name: str) -> dict[str, Any]:
        """Stop the run's job.

        A training stops after the current step and keeps the best model (the STOP
        file); a QC or prediction job is ended.
        """
        run_dir = roots.run_dir(name)
        stopped = []
        for job in store.for_run(name):
            if job["status"] == "queued":  # not started yet: cancel it
                store.update(job["id"], status="stopped", message="cancelled before it started")
                stopped.append(job["id"])
            if job["status"] != "running":
                continue
            if job["kind"] == "train":
                (run_dir / "STOP").touch()
                stopped.append(job["id"])
            elif store.terminate(job["id"]):
                stopped.append(job["id"])
        if not stopped:
            raise DeepscopeError("nothing is running in this run", run_dir)
        return {"stopping": stopped}

    @app.post("/api/runs/{name}/resume")
    def resume(name: str, body: ResumeRequest) -> dict[str, Any]:
        """Continue an interrupted training from its last checkpoint (train --resume)."""
        run_dir = roots.run_dir(name)
        summary = runs.run_summary(run_dir, store)
        if summary["status"] in runs.ACTIVE_WORDS.values():
            raise DeepscopeError("this run is busy", run_dir, "wait for its job to end")
        config = runs.run_config(run_dir)
        if config is None:
            raise DeepscopeError(
                "this run has no saved settings to resume from (config.yaml)",
                run_dir,
                "start a new training instead",
            )
        if body.epochs:
            config["training"]["epochs"] = body.epochs
        if body.max_minutes:
            config["training"]["max_minutes"] = body.max_minutes
        images = roots.confine(summary["images"] or "")
        targets = roots.confine(summary["targets"]) if summary["targets"] else None
        spec = {
            "run_dir": str(run_dir),
            "config": config,
            "images": str(images),
            "targets": str(targets) if targets else None,
            "resume": True,
        }
        return {"run": name, "job": _launch(app, "train", name, spec)}

    @app.post("/api/runs/{name}/qc")
    def quality_control(name: str, body: QcRequest) -> dict[str, Any]:
        """Run quality control on held-out pairs; the report goes to the run's qc/."""
        run_dir = roots.run_dir(name)
        model = _model_dir(run_dir)
        _not_busy(store, name, run_dir)
        spec = {
            "model": str(model),
            "images": str(roots.confine(body.images)),
            "targets": str(roots.confine(body.targets)),
            "out": str(run_dir / "qc"),
        }
        return {"run": name, "job": _launch(app, "qc", name, spec)}

    @app.post("/api/runs/{name}/apply")
    def apply(name: str, body: ApplyRequest) -> dict[str, Any]:
        """Apply the model to a folder (or image); results go to the run's apply/ folder."""
        run_dir = roots.run_dir(name)
        model = _model_dir(run_dir)
        _not_busy(store, name, run_dir)
        if body.int8 and not runs.model_int8_ok(model):
            raise DeepscopeError(
                "8-bit prediction is available for StarDist and semantic segmentation "
                "models on this computer's CPU only",
                fix="untick the 8-bit option",
            )
        source = roots.confine(body.input)
        base = run_dir / "apply"
        stem = source.name.split(".")[0] or "images"
        out, n = base / stem, 1
        while out.exists():
            n += 1
            out = base / f"{stem}-{n}"
        spec = {
            "model": str(model),
            "input": str(source),
            "out": str(out),
            "axes": body.axes,
            "tta": body.tta,
            "int8": body.int8,
        }
        return {"run": name, "job": _launch(app, "predict", name, spec), "out": str(out)}

    @app.post("/api/runs/{name}/export")
    def export(name: str, body: ExportRequest) -> dict[str, Any]:
        """Export the model as a BioImage.IO package into the run's export/ folder."""
        run_dir = roots.run_dir(name)
        model = _model_dir(run_dir)
        _not_busy(store, name, run_dir)
        authors = [a.strip() for a in body.authors if a.strip()]
        if not authors:
            raise ConfigError(
                "a BioImage.IO model needs the names of the people who made it",
                fix="type at least one author's name",
            )
        license_id = _spdx_license(body.license)
        out = run_dir / "export" / f"{name}-bioimageio.zip"
        for stale in out.parent.glob(".deepscope-export-*"):  # left by a stopped export
            shutil.rmtree(stale, ignore_errors=True)
        n = 1
        while out.exists():
            n += 1
            out = out.with_name(f"{name}-bioimageio-{n}.zip")
        samples = _training_samples(roots, runs.run_summary(run_dir, store)["images"])
        spec = {
            "model": str(model),
            "out": str(out),
            "authors": authors,
            "license": license_id,
            "name": (body.name or "").strip() or None,
            "samples": [str(s) for s in samples],
        }
        return {"run": name, "job": _launch(app, "export", name, spec), "out": str(out)}

    @app.post("/api/runs/{name}/checkpoint")
    def keep_checkpoint(name: str, body: CheckpointRequest) -> dict[str, Any]:
        """Make a kept checkpoint the model's weights (``best`` returns to the default)."""
        from deepscope.workflow.model_folder import use_checkpoint

        run_dir = roots.run_dir(name)
        _not_busy(store, name, run_dir)
        info = use_checkpoint(_model_dir(run_dir), body.checkpoint)
        return {"weights_from": info["weights_from"]}

    @app.get("/api/runs/{name}/files/{relative:path}", response_class=FileResponse)
    def run_file(name: str, relative: str) -> FileResponse:
        """A file of the run folder (QC report, preview), never one outside it."""
        run_dir = roots.run_dir(name)
        path = roots.file_in(run_dir, relative)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})

    @app.get("/api/runs/{name}/model.zip", response_class=FileResponse)
    def download_model(name: str) -> FileResponse:
        """The run's model folder as a zip file (to share or archive)."""
        run_dir = roots.run_dir(name)
        model = _model_dir(run_dir)
        handle, tmp = tempfile.mkstemp(suffix=".zip")
        with open(handle, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(model.rglob("*")):
                if p.is_file() and not p.is_symlink():
                    zf.write(p, Path(f"{name}-model") / p.relative_to(model))
        return FileResponse(
            tmp,
            media_type="application/zip",
            filename=f"{name}-model.zip",
            background=BackgroundTask(Path(tmp).unlink, missing_ok=True),
        )

    @app.get("/api/jobs/{job_id}")
    def job(job_id: int) -> dict[str, Any]:
        """A job: kind, status (running, done, stopped, failed, interrupted), progress."""
        found = store.get(job_id)
        if found is None:
            raise DeepscopeError(f"there is no job {job_id}", fix="reload the page")
        return found

    return app


# ------------------------------------------------------------------------ helpers


def _config(body: ConfigRequest, roots: Roots) -> Any:
    """Validate the settings; a start_from model must lie in the allowed folders."""
    settings = dict(body.settings)
    start = settings.get("training.start_from")
    if start:
        settings["training.start_from"] = str(roots.confine(start))
    return forms.config_from_settings(body.task, settings)


def _training_samples(roots: Roots, images: str | None) -> list[Path]:
    """The run's first training images, when their folder still lies in the allowed folders."""
    if not images:
        return []
    try:
        return runs.sample_images(roots.confine(images))
    except PathRefused:
        return []


def _spdx_license(given: str) -> str:
    """``given`` as an SPDX licence identifier (as BioImage.IO requires), or a clear error."""
    from bioimageio.spec.model.v0_5 import LicenseId

    text = given.strip()
    try:
        return str(LicenseId(text))
    except ValueError:
        raise ConfigError(
            f"{text!r} is not an SPDX licence identifier" if text else "choose a licence",
            fix="choose one of the listed licences (e.g. CC-BY-4.0), or type an SPDX "
            "identifier from spdx.org/licenses",
        ) from None


def _new_run_name(runs_dir: Path, task: str) -> str:
    base = f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, n = base, 1
    while (runs_dir / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _model_dir(run_dir: Path) -> Path:
    model = run_dir / "model"
    if not (model / "deepscope_model.json").is_file():
        raise DeepscopeError(
            "this run has no trained model yet",
            run_dir,
            "wait for the training to finish (or resume it)",
        )
    return model


def _not_busy(store: JobStore, name: str, run_dir: Path) -> None:
    if any(j["status"] in ACTIVE for j in store.for_run(name)):
        raise DeepscopeError("a job of this run is still running", run_dir, "wait for it to end")


def _launch(app: FastAPI, kind: str, run: str, spec: dict[str, Any]) -> int:
    """Queue a job and start a worker (which replaces the spare that takes the job)."""
    job_id = app.state.store.create(kind, run, spec)
    app.state.start_worker(app.state.store)
    return job_id


def serve(
    host: str,
    port: int,
    data_roots: list[Path],
    runs_dir: Path,
    *,
    open_browser: bool = True,
) -> None:
    """Run the app with uvicorn until Ctrl+C; jobs keep running after it stops.

    Outside loopback a token is generated and printed with the address to open.
    """
    import threading
    import webbrowser

    import uvicorn

    loopback = host in LOOPBACK
    token = None if loopback else new_token()
    allowed = LOOPBACK if loopback else None
    app = create_app(data_roots, runs_dir, token=token, allowed_hosts=allowed)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"deepscope app: open {url}", flush=True)
    if token:
        print(
            "This server is reachable from other computers; only people with the address "
            "above (it holds the access token) can use it.",
            flush=True,
        )
    print(f"Data folders: {', '.join(str(p) for p in app.state.roots.data)}", flush=True)
    print(f"Runs folder:  {app.state.roots.runs}", flush=True)
    print("Stop the server with Ctrl+C (running trainings continue).", flush=True)
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")
