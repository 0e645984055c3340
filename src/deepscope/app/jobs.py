"""Jobs of the web app: each runs in its own detached worker process; state in SQLite.

A job is one training, quality control or batch prediction. The server only starts a
worker (``python -m deepscope.app.worker``) in a new session, so closing the browser tab
or stopping the server does not end it, and records it in ``jobs.sqlite`` beside the run
folders. The worker writes its progress, a heartbeat every few seconds and its outcome
into the same table. A job whose heartbeat stopped without an outcome was interrupted
(the computer restarted, the process was killed): a training can then be resumed.

The run folders stay the source of truth (config, metrics.csv, checkpoints, model/): the
table only adds what is running now. Deleting it loses nothing; the runs page is built
from the folders.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

DB_NAME = "jobs.sqlite"
HEARTBEAT_S = 2.0
STALE_S = 15.0
FINAL = ("done", "failed", "stopped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    run TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    pid INTEGER,
    created REAL NOT NULL,
    heartbeat REAL,
    finished REAL,
    progress TEXT,
    message TEXT
)
"""


class JobStore:
    """The job table in ``runs/jobs.sqlite``.

    Parameters
    ----------
    runs
        The runs folder; the database file lives beside the run folders.
    """

    def __init__(self, runs: Path):
        self.path = Path(runs) / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._procs: dict[int, subprocess.Popen] = {}
        with closing(self._connect()) as db, db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        return db

    # ----------------------------------------------------------------- writing

    def create(self, kind: str, run: str, spec: dict[str, Any]) -> int:
        """Record a new job (status ``starting``) and return its id."""
        with closing(self._connect()) as db, db:
            cur = db.execute(
                "INSERT INTO jobs (kind, run, spec, status, created, heartbeat) "
                "VALUES (?, ?, ?, 'starting', ?, ?)",
                (kind, run, json.dumps(spec), time.time(), time.time()),
            )
            return int(cur.lastrowid)

    def update(self, job_id: int, **fields: Any) -> None:
        """Set columns of a job (``progress`` may be a dict)."""
        if "progress" in fields and not isinstance(fields["progress"], str | None):
            fields["progress"] = json.dumps(fields["progress"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with closing(self._connect()) as db, db:
            db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def heartbeat(self, job_id: int) -> None:
        """Say that the worker of ``job_id`` is alive."""
        self.update(job_id, heartbeat=time.time())

    # ----------------------------------------------------------------- reading

    def get(self, job_id: int) -> dict[str, Any] | None:
        """The job as a dict with its current ``status`` (see :meth:`_status`), or None."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._as_dict(row) if row else None

    def for_run(self, run: str) -> list[dict[str, Any]]:
        """All jobs of a run, newest first."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM jobs WHERE run = ? ORDER BY id DESC", (run,))
            return [self._as_dict(r) for r in rows.fetchall()]

    def all_runs(self) -> list[dict[str, Any]]:
        """The newest job of every run named in the table."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE id IN (SELECT MAX(id) FROM jobs GROUP BY run)"
            ).fetchall()
        return [self._as_dict(r) for r in rows]

    def forget_run(self, run: str) -> None:
        """Remove every job of ``run`` from the table."""
        with closing(self._connect()) as db, db:
            db.execute("DELETE FROM jobs WHERE run = ?", (run,))

    def active(self) -> list[dict[str, Any]]:
        """Jobs that are starting or running now."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE status IN ('starting', 'running') ORDER BY id"
            ).fetchall()
        return [j for j in (self._as_dict(r) for r in rows) if j["status"] == "running"]

    def _as_dict(self, row: sqlite3.Row) -> dict[str, Any]:
        job = dict(row)
        job["spec"] = json.loads(job["spec"])
        job["progress"] = json.loads(job["progress"]) if job["progress"] else None
        job["status"] = self._status(job)
        return job

    def _status(self, job: dict[str, Any]) -> str:
        """``running`` while the worker lives, its outcome after, else ``interrupted``."""
        if job["status"] in FINAL:
            return job["status"]
        proc = self._procs.get(job["id"])
        if proc is not None and proc.poll() is not None:
            return "interrupted"  # ended without writing an outcome
        if time.time() - (job["heartbeat"] or job["created"]) > STALE_S:
            return "interrupted"
        return "running"

    # ----------------------------------------------------------------- workers

    def launch(self, job_id: int, log_path: Path) -> None:
        """Start the worker of ``job_id`` as a detached process writing to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "deepscope.app.worker", str(self.path), str(job_id)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the server and the browser
                env=env,
            )
        self._procs[job_id] = proc
        self.update(job_id, pid=proc.pid)

    def terminate(self, job_id: int) -> bool:
        """End the worker of a running job (prediction, QC); True if one was signalled."""
        job = self.get(job_id)
        if job is None or job["status"] != "running" or not job["pid"]:
            return False
        if not _is_our_worker(int(job["pid"]), job_id):
            return False
        try:
            os.kill(int(job["pid"]), 15)
        except OSError:
            return False
        self.update(job_id, status="stopped", finished=time.time(), message="stopped on request")
        return True


def _is_our_worker(pid: int, job_id: int) -> bool:
    """Whether process ``pid`` is the worker of ``job_id`` (guards against reused pids)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.parent.joinpath("self").exists():
        return True  # no /proc (not Linux): trust the recorded pid
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return b"deepscope.app.worker" in args and str(job_id).encode() in args
