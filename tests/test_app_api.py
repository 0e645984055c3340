"""The web app's JSON API with FastAPI's TestClient: every endpoint, bad paths, symlink
escapes, bad settings, the access token, and a whole run (train → QC → apply → delete).

Jobs run in a thread of this process (``start_worker``), through the same worker code
as the detached worker processes; ``test_app_e2e.py`` covers the real processes.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient

from conftest import synthetic_pair, write_tif
from deepscope.app import worker
from deepscope.app.jobs import JobStore
from deepscope.app.security import LOOPBACK, TOKEN_HEADER
from deepscope.app.server import create_app
from deepscope.errors import DeepscopeError
from deepscope.tasks import available_tasks

TINY = {
    "data.patch_size": [32, 32],
    "model.depth": 1,
    "model.base_channels": 4,
    "training.epochs": 2,
    "training.patches_per_epoch": 16,
    "training.batch_size": 8,
    "training.val_patches": 8,
    "training.checkpoint_every": 1,
    "training.precision": "32",
    "training.seed": 0,
}


def inline_worker(store: JobStore) -> None:
    """Run the queued job in a thread of this process, as a worker process would."""

    def run() -> None:
        job = store.claim(os.getpid())
        if job is not None:
            worker.run_job(store, job)

    threading.Thread(target=run, daemon=True).start()


def wait_job(client: TestClient, job_id: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end: {job}")


def make_data(base: Path) -> tuple[Path, Path]:
    """A data root (noisy/, qc pairs, masks, a 3D stack, a bad file) and a folder outside."""
    data, outside = base / "data", base / "outside"
    for i, name in enumerate("abc"):
        write_tif(data / "noisy" / f"{name}.tif", synthetic_pair((64, 64), seed=i)[0])
    for i, name in enumerate("pq"):
        noisy, clean = synthetic_pair((64, 64), seed=100 + i)
        write_tif(data / "qc_noisy" / f"{name}.tif", noisy)
        write_tif(data / "qc_clean" / f"{name}.tif", clean)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 10:30] = 1
    write_tif(data / "masks" / "a.tif", mask)
    write_tif(data / "stacks" / "s.tif", synthetic_pair((8, 32, 32), seed=5)[0])
    (data / "empty").mkdir()
    (data / "notes").mkdir()
    (data / "notes" / "broken.tif").write_bytes(b"not a tiff")
    write_tif(outside / "secret.tif", synthetic_pair((64, 64), seed=9)[0])
    (data / "escape").symlink_to(outside, target_is_directory=True)
    (data / "noisy_link.tif").symlink_to(outside / "secret.tif")
    return data, outside


@pytest.fixture
def env(tmp_path: Path):
    data, outside = make_data(tmp_path)
    app = create_app([data], tmp_path / "runs", start_worker=inline_worker)
    with TestClient(app) as client:
        yield client, data, outside, tmp_path / "runs"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """One app with run ``r1`` trained, quality-controlled and applied (shared: read only)."""
    base = tmp_path_factory.mktemp("app")
    data, outside = make_data(base)
    app = create_app([data], base / "runs", start_worker=inline_worker)
    with TestClient(app) as client:
        r = client.post(
            "/api/runs",
            json={"task": "n2v", "images": str(data / "noisy"), "settings": TINY, "name": "r1"},
        )
        assert r.status_code == 200, r.text
        assert wait_job(client, r.json()["job"])["status"] == "done"
        r = client.post(
            "/api/runs/r1/qc",
            json={"images": str(data / "qc_noisy"), "targets": str(data / "qc_clean")},
        )
        assert wait_job(client, r.json()["job"])["status"] == "done"
        r = client.post("/api/runs/r1/apply", json={"input": str(data / "qc_noisy"), "tta": True})
        assert wait_job(client, r.json()["job"])["status"] == "done"
        yield client, data, outside, base / "runs"


def assert_words(response, status: int, *words: str) -> dict:
    """A plain-words error: status, message naming ``words``, no traceback."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "fix", "message"}
    assert "Traceback" not in response.text
    for word in words:
        assert word in body["message"], body["message"]
    return body


# ---------------------------------------------------------------- tasks and settings


def test_info_tasks_and_examples(env):
    client, data, _, runs = env
    info = client.get("/api/info").json()
    assert info["data_roots"] == [str(data.resolve())] and info["runs"] == str(runs.resolve())
    tasks = {t["name"]: t for t in client.get("/api/tasks").json()}
    assert sorted(tasks) == available_tasks()
    assert tasks["n2v"]["needs_targets"] is False
    assert tasks["semantic"]["targets_are_labels"] is True
    for name in tasks:
        r = client.get(f"/api/tasks/{name}/example.png")
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    assert_words(client.get("/api/tasks/nosuch/example.png"), 400, "unknown task")


@pytest.mark.parametrize("task", available_tasks())
def test_form_of_every_task_is_complete_and_its_defaults_valid(env, task):
    client = env[0]
    form = client.get(f"/api/tasks/{task}/form").json()
    fields = [f for s in form["sections"] for f in s["fields"]]
    keys = {f["key"] for f in fields}
    assert {"data.patch_size", "training.epochs", "model.depth"} <= keys
    assert all(f["description"] and not f["description"].startswith("(no") for f in fields), [
        f["key"] for f in fields if f["description"].startswith("(no")
    ]
    assert any(not f["advanced"] for f in fields) and any(f["advanced"] for f in fields)
    r = client.post("/api/config", json={"task": task, "settings": {}})
    assert r.status_code == 200, r.text
    assert r.json()["config"]["task"] == task and "training:" in r.json()["yaml"]
    for f in fields:  # the form's defaults are the config's
        section, name = f["key"].split(".")
        assert r.json()["config"][section][name] == f["default"], f["key"]


def test_bad_settings_are_explained(env):
    client = env[0]
    r = client.post("/api/config", json={"task": "n2v", "settings": {"data.patch_size": [30, 30]}})
    assert_words(r, 400, "divisible by 4")
    r = client.post("/api/config", json={"task": "n2v", "settings": {"training.epochs": 0}})
    assert_words(r, 400, "training.epochs")
    r = client.post("/api/config", json={"task": "n2v", "settings": {"training.nonsense": 1}})
    assert_words(r, 400, "nonsense")
    assert_words(client.post("/api/config", json={"task": "n2v", "settings": {"x": 1}}), 400)
    assert_words(client.post("/api/config", json={"task": "nosuch"}), 400, "unknown task")
    assert_words(client.post("/api/config", json={"settings": {}}), 422, "task")
    assert_words(client.get("/api/tasks/nosuch/form"), 400, "unknown task")


# ---------------------------------------------------------------- confinement


def test_browse_lists_roots_folders_and_images(env):
    client, data, _, runs = env
    top = client.get("/api/browse").json()
    assert [f["path"] for f in top["folders"]] == [str(data.resolve()), str(runs.resolve())]
    listing = client.get("/api/browse", params={"path": str(data)}).json()
    names = {f["name"]: f["images"] for f in listing["folders"]}
    assert names["noisy"] == 3 and names["qc_clean"] == 2
    assert listing["parent"] is None
    inner = client.get("/api/browse", params={"path": str(data / "noisy")}).json()
    assert [i["name"] for i in inner["images"]] == ["a.tif", "b.tif", "c.tif"]
    assert inner["parent"] == str(data.resolve())


@pytest.mark.parametrize(
    "bad, words",
    [
        ("{data}/noisy/../../outside", "'..'"),
        ("{outside}", "outside the folders"),
        ("/", "outside the folders"),
        ("{data}/escape", "outside the folders"),  # a symlink leading out
        ("{data}/nosuch", "does not exist"),
        ("{data}/noisy/a.tif", "not a folder"),
    ],
)
def test_browse_refuses_paths_outside_the_roots(env, bad, words):
    client, data, outside, _ = env
    path = bad.format(data=data, outside=outside)
    assert_words(client.get("/api/browse", params={"path": path}), 403, words)


def test_every_path_argument_is_confined(env):
    client, data, outside, _ = env
    secret = str(outside / "secret.tif")
    assert_words(client.get("/api/thumb", params={"path": secret}), 403, "outside")
    link = str(data / "noisy_link.tif")
    assert_words(client.get("/api/thumb", params={"path": link}), 403, "outside")
    r = client.get(
        "/api/thumb", params={"path": str(data / "noisy/a.tif"), "labels": str(data / "escape")}
    )
    assert_words(r, 403, "outside")
    body = {"task": "n2v", "images": str(outside), "settings": TINY}
    assert_words(client.post("/api/validate", json=body), 403, "outside")
    assert_words(client.post("/api/runs", json=body), 403, "outside")
    body = {"task": "n2v", "images": str(data / "noisy"), "settings": {"training.start_from": "/"}}
    assert_words(client.post("/api/config", json=body), 403, "outside")
    body = {"task": "n2v", "images": str(data / "noisy"), "name": "../evil"}
    assert_words(client.post("/api/runs", json=body), 403, "not a valid run name")
    assert client.get("/api/runs/.hidden").status_code == 403


# ---------------------------------------------------------------- pictures and data check


def test_thumbnails_of_2d_3d_masks_and_unreadable_files(env):
    client, data, _, _ = env

    def picture(**params):
        r = client.get("/api/thumb", params=params)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
        return _png(r.content)

    grey = picture(path=str(data / "noisy/a.tif"))  # 64x64: not resized
    assert grey.shape == (64, 64) and grey.max() == 255 and grey.min() == 0  # stretched
    assert picture(path=str(data / "noisy/a.tif"), size=48).shape == (48, 48)
    middle = picture(path=str(data / "stacks/s.tif"))
    mip = picture(path=str(data / "stacks/s.tif"), projection="max")
    assert middle.shape == mip.shape == (32, 32) and not np.array_equal(middle, mip)
    over = picture(path=str(data / "noisy/a.tif"), labels=str(data / "masks/a.tif"))
    assert over.ndim == 3 and over.shape[-1] == 3
    inside, outside_ = over[20, 20], over[50, 50]
    assert inside[0] != inside[1] or inside[1] != inside[2]  # coloured
    assert outside_[0] == outside_[1] == outside_[2]  # grey
    assert_words(client.get("/api/thumb", params={"path": str(data / "notes/broken.tif")}), 400)
    r = client.get("/api/thumb", params={"path": str(data / "noisy/a.tif"), "size": 5000})
    assert_words(r, 422, "size")


def _png(content: bytes) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(content)


def test_validate_lists_findings_with_fixes(env):
    client, data, _, _ = env
    ok = client.post(
        "/api/validate", json={"task": "n2v", "images": str(data / "noisy"), "settings": TINY}
    ).json()
    assert ok["ok"] and ok["verdict"] == "3 images ready for training" and len(ok["items"]) == 3
    empty = client.post("/api/validate", json={"task": "n2v", "images": str(data / "empty")})
    assert empty.status_code == 200 and not empty.json()["ok"]
    assert all(f["fix"] for f in empty.json()["findings"])
    paired = client.post("/api/validate", json={"task": "care", "images": str(data / "noisy")})
    assert any("targets" in f["problem"] for f in paired.json()["findings"])
    bad = client.post(
        "/api/validate",
        json={"task": "n2v", "images": str(data / "noisy"), "settings": {"data.patch_size": [6]}},
    )
    assert_words(bad, 400, "patch_size")


# ---------------------------------------------------------------- a whole run


def test_trained_run_shows_history_preview_qc_and_results(trained):
    client, data, _, runs = trained
    rows = client.get("/api/runs").json()
    assert [r["name"] for r in rows] == ["r1"]
    row = rows[0]
    assert row["task"] == "n2v" and row["status"] == "trained" and row["epochs_done"] == 2
    assert row["images"] == str(data.resolve() / "noisy")
    assert row["metric"]["name"] == "PSNR (QC)" and row["metric"]["unit"] == "dB"
    d = client.get("/api/runs/r1").json()
    assert [h["epoch"] for h in d["history"]] == [0, 1] and d["history"][0]["val_loss"] > 0
    assert d["preview"] and d["qc_report"] and d["qc_summary"]["model"]["psnr_matched"]
    assert "epoch_0001" in d["checkpoints"] and d["weights_from"] == "best"
    assert [j["kind"] for j in d["jobs"]] == ["predict", "qc", "train"]
    assert all(j["status"] == "done" for j in d["jobs"])
    assert d["jobs"][2]["progress"]["stage"] == "finished"
    (applied,) = d["applied"]
    assert [Path(f["output"]).name for f in applied["files"]] == ["p.tif", "q.tif"]
    assert Path(applied["path"]).parent == runs.resolve() / "r1" / "apply"
    assert d["tta_ok"]  # n2v predictions may be averaged over flips and turns, as asked
    assert not d["int8_ok"]  # 8-bit prediction is for 2D StarDist models
    r = client.post("/api/runs/r1/apply", json={"input": str(data / "qc_noisy"), "int8": True})
    assert_words(r, 400, "8-bit", "StarDist")
    provenance = json.loads((Path(applied["path"]) / "provenance.json").read_text())
    assert provenance["test_time_augmentation"] is True
    png = client.get("/api/runs/r1/files/preview.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    report = client.get("/api/runs/r1/files/qc/report.html")
    assert report.status_code == 200 and "PSNR" in report.text
    assert "text/html" in report.headers["content-type"]
    models = client.get("/api/models").json()
    assert models == [{"run": "r1", "task": "n2v", "path": str(runs.resolve() / "r1" / "model")}]
    thumb = client.get("/api/thumb", params={"path": applied["files"][0]["output"]})
    assert thumb.status_code == 200


def test_run_files_stay_inside_the_run(trained):
    client, *_ = trained
    for bad in ["../jobs.sqlite", "%2E%2E/jobs.sqlite", "/etc/passwd", "nosuch.txt", "qc"]:
        r = client.get(f"/api/runs/r1/files/{bad}")
        assert r.status_code in (403, 404), (bad, r.status_code)
        assert "Traceback" not in r.text
    assert_words(client.get("/api/runs/nosuch"), 403, "no run of this name")


def test_model_zip_holds_the_model_folder(trained):
    client, *_ = trained
    r = client.get("/api/runs/r1/model.zip")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert "r1-model/weights.pt" in names and "r1-model/config.yaml" in names


def test_start_from_a_model_and_duplicate_names(trained):
    client, data, _, runs = trained
    model = str(runs / "r1" / "model")
    body = {
        "task": "n2v",
        "images": str(data / "noisy"),
        "settings": {**TINY, "training.start_from": model, "training.freeze_encoder_epochs": 1},
    }
    r = client.post("/api/config", json=body)
    assert r.status_code == 200 and r.json()["config"]["training"]["start_from"] == str(
        Path(model).resolve()
    )
    assert_words(client.post("/api/runs", json={**body, "name": "r1"}), 400, "exists already")
    body = {"task": "care", "images": str(data / "noisy"), "settings": TINY}
    assert_words(client.post("/api/runs", json=body), 400, "targets")


def test_keep_another_checkpoint(env, trained):
    client, data, _, runs = env
    import shutil

    shutil.copytree(trained[3] / "r1", runs / "r2")
    r = client.post("/api/runs/r2/checkpoint", json={"checkpoint": "epoch_0001"})
    assert r.status_code == 200 and r.json()["weights_from"] == "epoch_0001"
    model = runs / "r2" / "model"
    assert (model / "weights.pt").read_bytes() == (model / "checkpoints/epoch_0001.pt").read_bytes()
    assert client.get("/api/runs/r2").json()["weights_from"] == "epoch_0001"
    r = client.post("/api/runs/r2/checkpoint", json={"checkpoint": "best"})
    assert r.json()["weights_from"] == "best"
    assert_words(client.post("/api/runs/r2/checkpoint", json={"checkpoint": "nope"}), 400, "nope")


def test_export_a_bioimageio_package_from_the_run_page(env, trained):
    client, data, _, runs = env
    import shutil

    shutil.copytree(trained[3] / "r1", runs / "ex")
    record = json.loads((runs / "ex" / "validation.json").read_text())
    record["summary"]["images_folder"] = str(data / "noisy")  # trained on this app's data
    (runs / "ex" / "validation.json").write_text(json.dumps(record))
    assert client.get("/api/runs/ex").json()["exports"] == []
    assert_words(client.post("/api/runs/ex/export", json={"license": "MIT"}), 400, "author")
    body = {"authors": ["  ", "Ada Lovelace"], "license": "free for all"}
    assert_words(client.post("/api/runs/ex/export", json=body), 400, "SPDX", "free for all")
    assert not (runs / "ex" / "export").exists()  # refused before any work
    body = {"authors": ["Ada Lovelace", " Alan Turing "], "license": "MIT", "name": "W2S N2V"}
    r = client.post("/api/runs/ex/export", json=body)
    assert r.status_code == 200, r.text
    job = wait_job(client, r.json()["job"], timeout=180)
    assert job["status"] == "done", job["message"]
    assert job["message"] == "BioImage.IO package written: ex-bioimageio.zip"
    (package,) = client.get("/api/runs/ex").json()["exports"]
    assert package["name"] == "ex-bioimageio.zip" and package["size_mb"] > 0
    download = client.get(f"/api/runs/ex/files/{package['file']}")
    assert download.status_code == 200
    with zipfile.ZipFile(io.BytesIO(download.content)) as zf:
        rdf = zf.read("rdf.yaml").decode()
        test_image = np.load(io.BytesIO(zf.read("test_input.npy")))
    assert "Ada Lovelace" in rdf and "Alan Turing" in rdf and "W2S N2V" in rdf
    assert "license: MIT" in rdf
    # The test image is the run's first training image (64 x 64: whole), not a synthetic one.
    first = tifffile.imread(data / "noisy" / "a.tif").astype(np.float32)
    np.testing.assert_array_equal(test_image[0, 0], first)
    again = client.post("/api/runs/ex/export", json=body)
    assert wait_job(client, again.json()["job"], timeout=180)["status"] == "done"
    names = [x["name"] for x in client.get("/api/runs/ex").json()["exports"]]
    assert names == ["ex-bioimageio-2.zip", "ex-bioimageio.zip"]  # never overwritten
    stale = runs / "ex" / "export" / ".deepscope-export-x"  # left by a stopped export
    stale.mkdir()
    assert len(client.get("/api/runs/ex").json()["exports"]) == 2  # never listed
    assert_words(client.post("/api/runs/ex/export", json={**body, "license": ""}), 400)
    assert stale.exists()  # a refused request changes nothing
    third = client.post("/api/runs/ex/export", json=body)
    assert wait_job(client, third.json()["job"], timeout=180)["status"] == "done"
    assert not stale.exists()
    assert_words(client.post("/api/runs/r9/export", json=body), 403)


def test_export_falls_back_to_a_synthetic_test_image(env, trained, tmp_path):
    client, data, _, runs = env
    store = client.app.state.store
    spec = {
        "model": str(trained[3] / "r1" / "model"),
        "out": str(tmp_path / "p.zip"),
        "authors": ["A B"],
        "license": "CC-BY-4.0",
        "name": None,
        "samples": [str(data / "notes" / "broken.tif")],
    }
    job_id = store.create("export", "r1", spec)
    message = worker.run_export(store, job_id, spec)
    assert message.startswith(
        "BioImage.IO package written: p.zip; the training image(s) broken.tif ("
    )
    assert "synthetic" in message and (tmp_path / "p.zip").is_file()
    assert store.get(job_id)["progress"]["notes"]


def test_export_passes_over_training_images_the_model_finds_nothing_in(
    env, trained, tmp_path, monkeypatch
):
    from deepscope.export import bioimageio

    client, data, _, runs = env
    store = client.app.state.store
    tried = []

    def fake_export(model, out, *, sample=None, **kwargs):
        tried.append(None if sample is None else Path(sample).name)
        if sample is None or Path(sample).name != "c.tif":
            raise bioimageio.EmptyTestOutput("the result is empty", model, "give --sample")
        Path(out).write_bytes(b"zip")
        return Path(out)

    monkeypatch.setattr(bioimageio, "export_bioimageio", fake_export)
    images = [str(data / "noisy" / n) for n in ("a.tif", "b.tif", "c.tif")]
    spec = {"model": str(trained[3] / "r1" / "model"), "out": str(tmp_path / "q.zip"),
            "authors": ["A B"], "license": "MIT", "name": None, "samples": images}  # fmt: skip
    message = worker.run_export(store, store.create("export", "r1", spec), spec)
    assert tried == ["a.tif", "b.tif", "c.tif"]
    assert "passed over as test image: a.tif (nothing found in it); b.tif" in message
    # nothing found in any: the app's words, not a command-line option alone
    spec = {**spec, "out": str(tmp_path / "r.zip"), "samples": images[:2]}
    with pytest.raises(DeepscopeError) as err:
        worker.run_export(store, store.create("export", "r1", spec), spec)
    assert "for each training image tried (a.tif, b.tif)" in err.value.problem
    assert "quality-control page" in err.value.fix and not (tmp_path / "r.zip").exists()


def test_interrupted_training_resumes_and_db_can_be_deleted(env, trained):
    client, data, _, runs = env
    import shutil

    shutil.copytree(trained[3] / "r1", runs / "r3", ignore=shutil.ignore_patterns("model"))
    record = json.loads((runs / "r3" / "validation.json").read_text())
    record["summary"]["images_folder"] = str(data / "noisy")  # trained on this app's data
    (runs / "r3" / "validation.json").write_text(json.dumps(record))
    row = next(r for r in client.get("/api/runs").json() if r["name"] == "r3")
    assert row["status"] == "interrupted" and row["epochs_done"] == 2
    assert_words(client.post("/api/runs/r3/qc", json={"images": "x", "targets": "y"}), 400)
    r = client.post("/api/runs/r3/resume", json={"epochs": 3})
    assert r.status_code == 200, r.text
    job = wait_job(client, r.json()["job"])
    assert job["status"] == "done", job["message"]
    d = client.get("/api/runs/r3").json()
    assert d["status"] == "trained" and d["epochs_done"] == 3
    # The database only adds liveness: without it the run is still listed the same.
    (runs / "jobs.sqlite").unlink()
    for extra in runs.glob("jobs.sqlite-*"):
        extra.unlink()
    fresh = create_app([data], runs, start_worker=inline_worker)
    with TestClient(fresh) as again:
        row = next(r for r in again.get("/api/runs").json() if r["name"] == "r3")
        assert row["status"] == "trained" and row["task"] == "n2v" and row["epochs_done"] == 3


def test_failed_job_reports_the_problem_in_words(env):
    client, data, _, _ = env
    r = client.post(
        "/api/runs", json={"task": "n2v", "images": str(data / "empty"), "settings": TINY}
    )
    job = wait_job(client, r.json()["job"])
    assert job["status"] == "failed" and "What to do" in job["message"]
    row = client.get(f"/api/runs/{r.json()['run']}").json()
    assert row["status"] == "failed" and "What to do" in row["status_words"]


def test_stop_writes_the_stop_file_and_stale_jobs_are_interrupted(env):
    client, data, _, runs = env
    store = client.app.state.store
    (runs / "busy").mkdir()
    job_id = store.create("train", "busy", {"run_dir": str(runs / "busy")})
    assert store.claim(pid=os.getpid())["id"] == job_id
    assert store.claim(pid=os.getpid()) is None  # one job, one worker
    assert client.get("/api/runs/busy").json()["status"] == "training"
    assert_words(client.delete("/api/runs/busy", params={"confirm": "busy"}), 400, "running")
    assert client.post("/api/runs/busy/stop").status_code == 200
    assert (runs / "busy" / "STOP").exists()
    store.update(job_id, heartbeat=time.time() - 60)
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "interrupted"
    assert_words(client.post("/api/runs/busy/stop"), 400, "nothing is running")
    assert_words(client.get("/api/jobs/12345"), 400, "no job 12345")


def test_delete_needs_the_name_typed(env, trained):
    client, data, _, runs = env
    import shutil

    shutil.copytree(trained[3] / "r1", runs / "old")
    assert_words(client.delete("/api/runs/old"), 400, "confirmation")
    assert_words(client.delete("/api/runs/old", params={"confirm": "other"}), 400)
    assert (runs / "old").is_dir()
    assert client.delete("/api/runs/old", params={"confirm": "old"}).json() == {"deleted": "old"}
    assert not (runs / "old").exists()


# ---------------------------------------------------------------- security and errors


def test_token_is_required_when_set(tmp_path):
    data, _ = make_data(tmp_path)
    app = create_app([data], tmp_path / "runs", token="s3cret", start_worker=inline_worker)
    with TestClient(app) as client:
        assert_words(client.get("/api/info"), 401, "access token")
        assert_words(client.get("/api/info", headers={TOKEN_HEADER: "wrong"}), 401)
        assert client.get("/api/info", headers={TOKEN_HEADER: "s3cret"}).status_code == 200
        r = client.get("/?token=s3cret", follow_redirects=False)
        assert r.status_code == 303 and "deepscope_token=s3cret" in r.headers["set-cookie"]
        assert client.get("/api/info").status_code == 200  # the cookie now


def test_host_and_origin_checks(tmp_path):
    data, _ = make_data(tmp_path)
    app = create_app([data], tmp_path / "runs", allowed_hosts=LOOPBACK, start_worker=inline_worker)
    with TestClient(app, base_url="http://127.0.0.1:8765") as good:
        assert good.get("/api/info").status_code == 200
        r = good.post(
            "/api/config", json={"task": "n2v"}, headers={"Origin": "http://evil.example"}
        )
        assert_words(r, 403, "other web sites")
        ok = good.post(
            "/api/config", json={"task": "n2v"}, headers={"Origin": "http://127.0.0.1:8765"}
        )
        assert ok.status_code == 200
    with TestClient(app, base_url="http://evil.example") as rebound:
        assert_words(rebound.get("/api/info"), 403, "not served")


def test_unexpected_errors_are_words_not_tracebacks(env, monkeypatch):
    client = env[0]
    from deepscope.app import forms

    def boom():
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(forms, "task_summaries", boom)
    quiet = TestClient(client.app, raise_server_exceptions=False)
    assert_words(quiet.get("/api/tasks"), 500, "unexpected error", "disk on fire")


def test_openapi_describes_every_endpoint(env):
    client = env[0]
    paths = set(client.get("/openapi.json").json()["paths"])
    for route in client.app.routes:
        path = re.sub(r":\w+}", "}", getattr(route, "path", ""))  # {x:path} -> {x}
        if path.startswith("/api/"):
            assert path in paths, path
    assert "/api/runs/{name}/qc" in paths and "/api/browse" in paths


def test_index_page_and_static_files(env):
    client = env[0]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../server.py").status_code == 404


def test_cli_app_refuses_a_missing_data_root(tmp_path, capsys):
    from deepscope.interfaces.cli import main

    code = main(["app", "--data-root", str(tmp_path / "nosuch"), "--no-browser"])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_job_table_records_and_reports(tmp_path):
    store = JobStore(tmp_path)
    job_id = store.create("qc", "r", {"a": 1})
    job = store.get(job_id)
    assert job["status"] == "queued" and job["spec"] == {"a": 1}
    store.update(job_id, status="running", progress={"stage": "x"}, heartbeat=time.time())
    assert store.get(job_id)["progress"] == {"stage": "x"}
    assert [j["id"] for j in store.for_run("r")] == [job_id]
    store.update(job_id, status="done", message="ok")
    assert store.get(job_id)["status"] == "done"
    store.forget_run("r")
    assert store.get(job_id) is None
    assert json.loads(json.dumps(store.all_runs())) == []


def test_workers_are_detached_from_the_server(tmp_path):
    """A worker leads its own session: Ctrl+C in the server's terminal does not reach it."""
    store = JobStore(tmp_path)
    store.spawn_worker(tmp_path / ".logs")
    (pid,) = store.idle_workers()
    try:
        assert os.getsid(pid) == pid != os.getsid(0)
        assert (tmp_path / ".logs" / f"worker-{pid}.log").exists()
    finally:
        store.stop_idle_workers()
    assert store.idle_workers() == []


@pytest.mark.slow
def test_a_training_outlives_the_server_that_started_it(tmp_path):
    """The 'server' process queues a job, starts a worker and exits; the job still ends."""
    import subprocess
    import sys

    from conftest import TINY_CONFIG

    for i, name in enumerate("abc"):
        write_tif(tmp_path / "noisy" / f"{name}.tif", synthetic_pair((64, 64), seed=i)[0])
    runs = tmp_path / "runs"
    store = JobStore(runs)
    spec = {
        "run_dir": str(runs / "r"),
        "config": TINY_CONFIG,
        "images": str(tmp_path / "noisy"),
        "targets": None,
    }
    job_id = store.create("train", "r", spec)
    server = (
        "import sys; from pathlib import Path; from deepscope.app.jobs import JobStore; "
        "JobStore(Path(sys.argv[1])).spawn_worker(Path(sys.argv[1]) / '.logs')"
    )
    subprocess.run([sys.executable, "-c", server, str(runs)], check=True)
    deadline = time.monotonic() + 300
    while store.get(job_id)["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.5)
    assert store.get(job_id)["status"] == "done", store.get(job_id)["message"]
    assert (runs / "r" / "model" / "weights.pt").exists()


def test_a_task_registered_later_appears_with_its_form(env):
    """The app is generic over the task registry: a new task needs no app changes."""
    from pydantic import Field

    from deepscope.config import TaskConfigBase, _Section
    from deepscope.tasks import base
    from deepscope.tasks.n2v import N2VTask

    class ToySettings(_Section):
        """Settings of the toy task."""

        strength: float = Field(0.5, ge=0, le=1, description="How strongly to do the toy thing.")

    class ToyConfig(TaskConfigBase):
        task: str = "toy"
        toy: ToySettings = Field(default_factory=ToySettings)

    class ToyTask(N2VTask):
        name, title, description = "toy", "Toy task", "Does a toy thing."
        config_class = ToyConfig

    base.register_task(ToyTask)
    try:
        client = env[0]
        assert "toy" in [t["name"] for t in client.get("/api/tasks").json()]
        form = client.get("/api/tasks/toy/form").json()
        assert form["sections"][0]["name"] == "toy"
        (field,) = form["sections"][0]["fields"]
        assert field["key"] == "toy.strength" and field["maximum"] == 1 and not field["advanced"]
        r = client.post("/api/config", json={"task": "toy", "settings": {"toy.strength": 2}})
        assert_words(r, 400, "toy.strength")
        assert client.get("/api/tasks/toy/example.png").status_code == 200
    finally:
        base._TASKS.pop("toy")


def test_channels_show_as_colours_and_time_series_as_first_frame():
    from deepscope.app.thumbs import to_plane

    cyx = np.stack([np.full((4, 5), v, np.float32) for v in (1, 2)])
    rgb = to_plane(cyx, "CYX")
    assert rgb.shape == (4, 5, 3) and (rgb[..., 2] == 0).all()  # 2 channels → red, green
    tzyx = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    assert np.array_equal(to_plane(tzyx, "TZYX"), tzyx[0, 1])
    assert np.array_equal(to_plane(tzyx, "TZYX", "max"), tzyx[0].max(axis=0))


@pytest.mark.parametrize("host, needs_token", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_serve_prints_a_token_only_beyond_this_computer(
    tmp_path, monkeypatch, capsys, host, needs_token
):
    import uvicorn

    from deepscope.app import server

    data, _ = make_data(tmp_path)
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    server.serve(host, 8765, [data], tmp_path / "runs", open_browser=False)
    out = capsys.readouterr().out
    assert seen["host"] == host and seen["port"] == 8765
    assert ("?token=" in out) == needs_token
    client = TestClient(seen["app"], base_url="http://127.0.0.1:8765")
    assert client.get("/api/info").status_code == (401 if needs_token else 200)
    if needs_token:
        token = out.split("?token=")[1].split()[0]
        assert client.get("/api/info", headers={TOKEN_HEADER: token}).status_code == 200
