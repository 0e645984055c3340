"""What the runs page shows, read from the run folders (the job table only adds liveness).

A run folder written by ``deepscope train`` (from the app or the command line) holds
``config.yaml``, ``validation.json`` (which data it was trained on), ``metrics.csv``,
``checkpoints/`` and, once finished, ``model/``; the app adds ``preview.png``, ``qc/``
(the quality-control report), ``apply/`` (batch predictions) and ``export/`` (BioImage.IO
packages).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from deepscope.app.jobs import ACTIVE, JobStore
from deepscope.engine.callbacks import read_history

ACTIVE_WORDS = {
    "train": "training",
    "qc": "checking quality",
    "predict": "applying",
    "export": "exporting",
}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def run_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's saved config as a dict, or None when it has none (yet)."""
    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def key_metric(run_dir: Path, history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The number that says most about the run: its QC score, else its best validation loss."""
    qc = _read_json(run_dir / "model" / "qc_summary.json")
    if qc:
        if _number(qc.get("mean_iou")) is not None:
            return {"name": "mean IoU (QC)", "value": _number(qc["mean_iou"]), "unit": ""}
        model = qc.get("model")
        if isinstance(model, dict) and _number(model.get("psnr_matched")) is not None:
            return {"name": "PSNR (QC)", "value": _number(model["psnr_matched"]), "unit": "dB"}
    losses = [v for v in (_number(r.get("val_loss")) for r in history) if v is not None]
    if losses:
        return {"name": "best validation loss", "value": min(losses), "unit": ""}
    return None


def run_status(run_dir: Path, jobs: list[dict[str, Any]]) -> tuple[str, str]:
    """``(status, words)``: what the run is doing or how it ended.

    Statuses: ``training``, ``checking quality``, ``applying`` (a job is running),
    ``trained``, ``interrupted`` (checkpoints but no model: resume it), ``failed``,
    ``empty``.
    """
    for job in jobs:
        if job["status"] in ACTIVE:
            return ACTIVE_WORDS.get(job["kind"], "running"), "a job is running"
    last_train = next((j for j in jobs if j["kind"] == "train"), None)
    if (run_dir / "model" / "deepscope_model.json").exists():
        if last_train and last_train["status"] == "failed":
            return "trained", f"the last resumed training failed: {last_train['message']}"
        return "trained", (last_train or {}).get("message") or "the model is ready"
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("*.ckpt")):
        why = "training stopped before the end"
        if last_train and last_train["status"] == "failed":
            why = last_train["message"] or why
        return "interrupted", why
    if last_train and last_train["status"] == "failed":
        return "failed", last_train["message"] or "the training failed"
    if last_train and last_train["status"] == "interrupted":
        return "interrupted", "the training ended before its first epoch"
    return "empty", "nothing trained yet"


def run_summary(run_dir: Path, store: JobStore) -> dict[str, Any]:
    """One line of the runs page."""
    jobs = store.for_run(run_dir.name)
    config = run_config(run_dir) or {}
    validation = _read_json(run_dir / "validation.json") or {}
    summary = validation.get("summary", {})
    spec = next((j["spec"] for j in jobs if j["kind"] == "train"), {})
    history = read_history(run_dir / "metrics.csv")
    status, words = run_status(run_dir, jobs)
    created = None
    for probe in (run_dir / "config.yaml", run_dir):
        if probe.exists():
            created = datetime.fromtimestamp(probe.stat().st_mtime, timezone.utc)
            break
    if created is None and jobs:
        created = datetime.fromtimestamp(jobs[-1]["created"], timezone.utc)
    return {
        "name": run_dir.name,
        "task": config.get("task") or spec.get("config", {}).get("task"),
        "images": summary.get("images_folder") or spec.get("images"),
        "targets": summary.get("targets_folder") or spec.get("targets"),
        "date": created.isoformat(timespec="seconds") if created else None,
        "status": status,
        "status_words": words,
        "epochs_done": len(history),
        "epochs": (config.get("training") or {}).get("epochs"),
        "metric": key_metric(run_dir, history),
    }


def run_detail(run_dir: Path, store: JobStore) -> dict[str, Any]:
    """Everything the run page shows."""
    out = run_summary(run_dir, store)
    jobs = store.for_run(run_dir.name)
    history = read_history(run_dir / "metrics.csv")
    model = run_dir / "model"
    info = _read_json(model / "deepscope_model.json")
    out.update(
        {
            "config": run_config(run_dir),
            "history": [
                {k: _number(v) if k != "epoch" else int(v) for k, v in row.items()}
                for row in history
            ],
            "jobs": jobs,
            "model": info,
            "checkpoints": sorted(p.stem for p in (model / "checkpoints").glob("*.pt")),
            "weights_from": (info or {}).get("weights_from", "best"),
            "preview": (run_dir / "preview.png").is_file(),
            "qc_report": (run_dir / "qc" / "report.html").is_file(),
            "qc_summary": _read_json(model / "qc_summary.json"),
            "applied": applied_folders(run_dir),
            "exports": exported_packages(run_dir),
            "tta_ok": _tta_ok(out["task"], info, run_config(run_dir)),
            "int8_ok": int8_ok(out["task"], info),
        }
    )
    return out


def _tta_ok(
    task: str | None, info: dict[str, Any] | None, config: dict[str, Any] | None = None
) -> bool:
    """Whether predictions of this run's model may be averaged over flips and turns.

    ``info`` is the model's ``deepscope_model.json`` (its ``spatial_dims``: 3D StarDist
    models cannot be turned); without it, the task decides alone, with the run's saved
    ``config`` (see ``Task.tta_allowed``).
    """
    from deepscope.tasks import get_task

    if not task:
        return False
    try:
        cls = get_task(task)
    except KeyError:  # an unknown task name in a foreign run folder
        return False
    dims = (info or {}).get("spatial_dims")
    allowed = cls.tta_allowed(config or {})
    return allowed and (dims is None or dims in cls.tta_dims)


def int8_ok(task: str | None, info: dict[str, Any] | None) -> bool:
    """Whether this run's model may predict in 8-bit integers (segmentation, this CPU)."""
    from deepscope.engine.int8 import int8_supported
    from deepscope.tasks import get_task

    try:
        allowed = bool(task) and get_task(task).int8_ok
    except KeyError:  # an unknown task name in a foreign run folder
        return False
    return allowed and int8_supported()


def model_int8_ok(model_dir: Path) -> bool:
    """:func:`int8_ok` for a model folder (its ``deepscope_model.json``)."""
    info = _read_json(model_dir / "deepscope_model.json") or {}
    return int8_ok(info.get("task"), info)


def applied_folders(run_dir: Path) -> list[dict[str, Any]]:
    """The batch predictions made with this run's model (``apply/*``), newest first."""
    out = []
    base = run_dir / "apply"
    if not base.is_dir():
        return out
    for folder in sorted(base.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        record = _read_json(folder / "provenance.json")
        if not folder.is_dir() or record is None:
            continue
        out.append(
            {
                "name": folder.name,
                "path": str(folder),
                "files": [
                    {"input": f["input"], "output": str(folder / f["output"])}
                    for f in record.get("files", [])
                ],
            }
        )
    return out


def exported_packages(run_dir: Path) -> list[dict[str, Any]]:
    """The BioImage.IO packages made of this run's model (``export/*.zip``), newest first.

    Half-written packages (hidden working folders) are never listed.
    """
    base = run_dir / "export"
    if not base.is_dir():
        return []
    found = [p for p in base.glob("*.zip") if p.is_file() and not p.name.startswith(".")]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [
        {
            "name": p.name,
            "file": f"export/{p.name}",
            "size_mb": round(p.stat().st_size / 2**20, 2),
            "date": datetime.fromtimestamp(p.stat().st_mtime, timezone.utc).isoformat(
                timespec="seconds"
            ),
        }
        for p in found
    ]


def sample_images(images: Path, limit: int = 8) -> list[Path]:
    """Up to ``limit`` training images of ``images`` (or of its class sub-folders).

    The first that works becomes the test image and cover of an exported package; empty
    when the training data is not a folder of images (a CSV or ``.npz`` of
    classification data).
    """
    from deepscope.data.io import list_images
    from deepscope.errors import DeepscopeError

    if not images.is_dir():
        return []
    candidates = [images] + sorted(
        p for p in images.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    found: list[Path] = []
    for folder in candidates:
        try:
            found += list_images(folder)[: limit - len(found)]
        except DeepscopeError:
            continue
        if len(found) >= limit:
            break
    return found


def list_runs(runs: Path, store: JobStore) -> list[dict[str, Any]]:
    """Every run: the folders in ``runs`` and runs known only from the job table, newest first."""
    names = {
        p.name
        for p in runs.iterdir()
        if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
    }
    names |= {j["run"] for j in store.all_runs()}
    rows = [run_summary(runs / n, store) for n in names]
    return sorted(rows, key=lambda r: r["date"] or "", reverse=True)
