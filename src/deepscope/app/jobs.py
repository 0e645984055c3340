"""Jobs of the web app: each runs in its own detached worker process; state in SQLite.

A job is one training, quality control or batch prediction. The server never computes
one itself: it records the job as ``queued`` in ``jobs.sqlite`` beside the run folders
and starts a worker (``python -m deepscope.app.worker``) in a new session, so closing
the browser tab or stopping the server does not end it. A worker first imports the
heavy libraries, then claims the oldest queued job, runs it and exits. The server keeps
one spare worker started ahead, so a job begins at once instead of after the import.
The worker writes progress, a heartbeat every few seconds and the outcome into the
table. A running job whose heartbeat stopped without an outcome was interrupted (the
computer restarted, the process was killed): a training can then be resumed.

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
STALE_S = 30.0  # seconds without a heartbeat after which a running job counts as interrupted
FINAL = ("done", "failed", "stopped")
ACTIVE = ("queued", "running")

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
        """Record a new job (status ``queued``) and return its id."""
        with closing(self._connect()) as db, db:
            cur = db.execute(
                "INSERT INTO jobs (kind, run, spec, status, created, heartbeat) "
                "VALUES (?, ?, ?, 'queued', ?, ?)",
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

    def claim(self, pid: int) -> dict[str, Any] | None:
        """Give the oldest queued job to worker ``pid`` (atomically); None if none waits."""
        with closing(self._connect()) as db:
            db.isolation_level = None
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1"
                ).fetchone()
                if row is not None:
                    db.execute(
                        "UPDATE jobs SET status = 'running', pid = ?, heartbeat = ? WHERE id = ?",
                        (pid, time.time(), row["id"]),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self.get(int(row["id"])) if row is not None else None

    def _as_dict(self, row: sqlite3.Row) -> dict[str, Any]:
        job = dict(row)
        job["spec"] = json.loads(job["spec"])
        job["progress"] = json.loads(job["progress"]) if job["progress"] else None
        job["status"] = self._status(job)
        return job

    def _status(self, job: dict[str, Any]) -> str:
        """``queued``, ``running`` while its worker lives, its outcome, or ``interrupted``."""
        if job["status"] in (*FINAL, "queued"):
            return job["status"]
        proc = self._procs.get(job["pid"] or -1)
        if proc is not None and proc.poll() is not None:
            return "interrupted"  # ended without writing an outcome
        if time.time() - (job["heartbeat"] or job["created"]) > STALE_S:
            return "interrupted"
        return "running"

    # ----------------------------------------------------------------- workers

    def spawn_worker(self, log_dir: Path) -> None:
        """Start a detached worker; it claims the oldest queued job (now or when one comes).

        Its output goes to ``log_dir/worker-<pid>.log``.
        """
        log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        tmp_log = log_dir / f"worker-starting-{time.time_ns()}.log"
        with tmp_log.open("ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "deepscope.app.worker",
                    str(self.path),
                    "--server-pid",
                    str(os.getpid()),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the server, Ctrl+C and the browser
                env=env,
            )
        tmp_log.rename(log_dir / f"worker-{proc.pid}.log")
        self._procs[proc.pid] = proc

    def idle_workers(self) -> list[int]:
        """Pids of workers started here that are alive and hold no job."""
        busy = {j["pid"] for j in self._running_rows()}
        return [pid for pid, p in self._procs.items() if p.poll() is None and pid not in busy]

    def _running_rows(self) -> list[dict[str, Any]]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT id, pid FROM jobs WHERE status = 'running'").fetchall()
        return [dict(r) for r in rows]

    def stop_idle_workers(self) -> None:
        """End the spare workers started here (when the server stops); jobs keep running."""
        for pid in self.idle_workers():
            self._procs[pid].terminate()
            try:
                self._procs[pid].wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._procs[pid].kill()

    def terminate(self, job_id: int) -> bool:
        """End the worker of a running job (prediction, QC); True if one was signalled."""
        job = self.get(job_id)
        if job is None or job["status"] != "running" or not job["pid"]:
            return False
        if not _is_our_worker(int(job["pid"])):
            return False
        try:
            os.kill(int(job["pid"]), 15)
        except OSError:
            return False
        self.update(job_id, status="stopped", finished=time.time(), message="stopped on request")
        return True


def _is_our_worker(pid: int) -> bool:
    """Whether process ``pid`` is a deepscope worker (guards against reused pids)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.parent.joinpath("self").exists():
        return True  # no /proc (not Linux): trust the recorded pid
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return b"deepscope.app.worker" in args
