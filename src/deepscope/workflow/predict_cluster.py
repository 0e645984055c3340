"""Predict a folder of images on several processes or computers with Dask.

The files are shared out among the workers of a ``dask.distributed`` cluster: a local one
of ``workers`` processes started here, or any running scheduler (e.g. one started by
``dask-jobqueue`` on a SLURM cluster, or ``dask scheduler`` + ``dask worker`` by hand).
Each worker loads the model folder once and predicts whole files with exactly the code
of a prediction on one computer (:func:`deepscope.workflow.predict.predict_file`),
writing each result atomically; this process collects the files' records into
``provenance.json`` as they finish, in input order.

Workers need the same paths as this process (a shared file system): they read the model
folder and the images and write the results themselves; nothing but file names and
records crosses the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepscope.data.io import atomic_write_text
from deepscope.engine import performance
from deepscope.errors import DeepscopeError

if TYPE_CHECKING:
    from deepscope.workflow.model_folder import TrainedModel
    from deepscope.workflow.predict import TileSettings


@dataclass(frozen=True)
class ClusterSettings:
    """Where the files of one prediction are predicted.

    Exactly one of ``workers`` and ``scheduler`` is given.
    """

    #: Start a local cluster of this many worker processes (the cores are split among them).
    workers: int | None = None
    #: Address of a running ``dask.distributed`` scheduler, e.g. ``tcp://10.0.0.5:8786``.
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if (self.workers is None) == (self.scheduler is None):
            raise DeepscopeError(
                "give either a number of local worker processes or a scheduler address",
                fix="use --workers N or --scheduler ADDRESS, not both",
            )
        if self.workers is not None and self.workers < 1:
            raise DeepscopeError(
                f"--workers {self.workers} must be at least 1", fix="give e.g. --workers 2"
            )


#: Seconds to wait for a scheduler given by its address.
SCHEDULER_TIMEOUT_S = 30


def connect(settings: ClusterSettings):  # noqa: ANN201
    """Return a connected ``dask.distributed.Client`` (give it to :func:`close`).

    Raises
    ------
    DeepscopeError
        When the scheduler cannot be reached.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - a dependency of deepscope
        raise DeepscopeError(
            "Dask's 'distributed' package is not installed",
            fix="pip install distributed (it comes with deepscope's set-up)",
        ) from None
    if settings.scheduler is not None:
        try:
            return Client(settings.scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, ValueError, MemoryError) as err:  # bad address, or not a scheduler
            raise DeepscopeError(
                f"cannot reach the Dask scheduler at {settings.scheduler} ({err})",
                fix="check the address (dask scheduler prints it) and that it is running",
            ) from None
    try:
        with _ctrl_c_for_this_process_only():
            cluster = LocalCluster(
                n_workers=settings.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=40,  # logging.ERROR: the workers' chatter is not the user's
            )
    except RuntimeError as err:  # e.g. a script without a __main__ guard (spawned workers)
        raise DeepscopeError(
            f"the {settings.workers} local worker processes did not start ({err})",
            fix="in a Python script, call deepscope.predict(..., workers=N) inside "
            "'if __name__ == \"__main__\":' (worker processes re-import the script); "
            "or leave out --workers",
        ) from None
    client = Client(cluster)
    client._deepscope_cluster = cluster  # closed with the client
    return client


@contextlib.contextmanager
def _ctrl_c_for_this_process_only() -> Iterator[None]:
    """Start worker processes inside this block that never see Ctrl-C.

    A terminal sends Ctrl-C (SIGINT) to every process of the command, so each local
    worker would stop with a KeyboardInterrupt traceback of its own, printed over this
    process's message; this process alone should stop, finish its record and close the
    cluster. SIGINT is ignored here while the workers start: an ignored signal stays
    ignored in the processes started meanwhile (through fork and exec, and Python and
    asyncio leave it so). A Ctrl-C pressed in these seconds is lost. Outside the main
    thread (where signals cannot be handled) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def close(client: Any) -> None:
    """Close a client of :func:`connect`, and the local cluster it started."""
    cluster = getattr(client, "_deepscope_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


#: Models loaded in this (worker) process, by folder and prediction options.
_LOADED: dict[tuple[str, str, float], TrainedModel] = {}


def _worker_model(folder: str, options: dict[str, Any]) -> TrainedModel:
    """The model folder as configured for this prediction, loaded once per process."""
    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.predict_options import PredictOptions, configure_model

    weights = Path(folder) / "weights.pt"
    stamp = weights.stat().st_mtime if weights.exists() else 0.0
    key = (folder, json.dumps(options, sort_keys=True), stamp)
    if key not in _LOADED:
        _LOADED.clear()  # one model per worker at a time
        model = load_model_folder(folder)
        _LOADED[key] = configure_model(model, PredictOptions(**options))
    return _LOADED[key]


def predict_on_worker(
    folder: str,
    options: dict[str, Any],
    src: str,
    dst: str,
    axes: str | None,
    tiles: TileSettings | None,
    overwrite: bool,
    threads: int | None,
) -> dict[str, Any]:
    """Predict one file on a Dask worker; return its provenance record."""
    import torch

    from deepscope.workflow.predict import predict_file

    if threads is None:
        threads = int(os.environ.get("DEEPSCOPE_NUM_THREADS", 0)) or _threads_here()
    torch.set_num_threads(threads)
    model = _worker_model(folder, options)
    return predict_file(model, Path(src), Path(dst), axes, tiles, overwrite)


def _threads_here() -> int:
    """Return the share of its computer's cores for this worker (each Dask thread runs a file)."""
    try:
        from distributed import get_worker

        per_worker = max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        per_worker = 1
    return max(1, performance.available_cores() // per_worker)


def _move_into_place(staged: Path, out_dir: Path, overwrite: bool) -> None:
    """Move a finished file's results from its staging folder into ``out_dir``.

    Each is renamed (atomic on one file system); with ``overwrite`` an earlier result
    of the same name (file or OME-Zarr folder) is replaced.
    """
    if not staged.is_dir():  # nothing was written for this file
        return
    for item in sorted(staged.iterdir()):
        target = out_dir / item.name
        if target.exists() and overwrite:
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
        os.replace(item, target)
    staged.rmdir()


#: Seconds a stopped prediction waits for the files its workers are predicting: a
#: worker cannot be stopped within a file, and its results must not land after the
#: staging folder is removed.
FINISH_RUNNING_S = 60


def _let_running_finish(client: Any, futures: dict[Any, int]) -> None:
    """Cancel the files not started and wait (a while at most) for those being predicted."""
    from distributed import wait

    try:
        busy = {key for keys in client.processing().values() for key in keys}
    except Exception:  # noqa: BLE001  (the scheduler may be gone already)
        busy = set()
    running = [f for f in futures if f.key in busy and not f.done()]
    client.cancel([f for f in futures if f not in running and not f.done()])
    deadline = time.monotonic() + FINISH_RUNNING_S
    try:
        while running and time.monotonic() < deadline:
            wait(running, timeout=0.5, return_when="FIRST_COMPLETED")
            busy = {key for keys in client.processing().values() for key in keys}
            # done, or its worker is gone (e.g. stopped by the same Ctrl-C): not waited for
            running = [f for f in running if not f.done() and f.key in busy]
    except (KeyboardInterrupt, TimeoutError, OSError):
        pass
    client.cancel(running)


def predict_on_cluster(
    client: Any,
    settings: ClusterSettings,
    model: TrainedModel,
    inputs: Sequence[Path],
    targets: Sequence[Path],
    axes: str | None,
    tiles: TileSettings | None,
    overwrite: bool,
    record: dict[str, Any],
    out_dir: Path,
    progress: Callable[[str, int, int], None] | None = None,
    entries: list[dict[str, Any] | None] | None = None,
) -> list[Path]:
    """Predict ``inputs`` into ``targets`` on ``client``'s cluster; write ``provenance.json``.

    ``record`` is the provenance record without its files; each file's entry is added
    when that file is done (in input order) and its results are moved into ``out_dir``,
    so an interrupted prediction leaves exactly the results its record lists. A file
    that fails stops the prediction with that file's error; results already recorded
    stay. ``entries`` holds the records of inputs done earlier (``--resume``), None for
    the others, which are the ones predicted.
    """
    import dataclasses

    from distributed import as_completed
    from distributed.client import FutureCancelledError as CancelledError

    from deepscope.workflow import large_images
    from deepscope.workflow.predict import TileSettings

    tiles = tiles or TileSettings()
    threads = None
    if settings.workers is not None:
        threads = max(1, performance.available_cores() // settings.workers)
        if tiles.memory_limit is None:  # the workers share this computer's memory
            limit = large_images.default_memory_limit() // settings.workers
            tiles = dataclasses.replace(tiles, memory_limit=limit)
    options = dict(model.prediction_options)
    folder = str(model.folder.resolve())
    record["cluster"] = (
        {"local_workers": settings.workers}
        if settings.workers is not None
        else {"scheduler": settings.scheduler}
    )
    if entries is None:
        entries = [None] * len(inputs)
    run = uuid.uuid4().hex[:8]
    # Workers write each file's results into a staging folder of their own; they are
    # moved into place when this process records them, so every result in the output
    # folder is listed in provenance.json, even after an interruption.
    # Absolute paths: a worker's working folder may be another than this process's.
    staging = Path(out_dir).resolve() / f".deepscope-pending-{run}"
    for stale in Path(out_dir).glob(".deepscope-pending-*"):  # left by a lost prediction
        shutil.rmtree(stale, ignore_errors=True)
    futures: dict[Any, int] = {}
    try:
        futures = {
            client.submit(
                predict_on_worker,
                folder,
                options,
                str(Path(src).resolve()),
                str(staging / str(i) / dst.name),
                axes,
                tiles,
                overwrite,
                threads,
                key=f"deepscope-predict-{run}-{i}",
                pure=False,
            ): i
            for i, (src, dst) in enumerate(zip(inputs, targets, strict=True))
            if entries[i] is None
        }
        if progress:
            progress(inputs[0].name, len(inputs) - len(futures), len(inputs))
        for done, future in enumerate(as_completed(futures), start=len(inputs) - len(futures) + 1):
            i = futures[future]
            try:
                entry = future.result()
            except CancelledError:  # the scheduler went away (or cancelled the work)
                raise DeepscopeError(
                    f"the Dask scheduler stopped the prediction after {done - 1} of "
                    f"{len(inputs)} images (connection lost or work cancelled)",
                    out_dir,
                    "the finished results are kept and listed in provenance.json; run the "
                    "same command again with --resume for the rest",
                ) from None
            _move_into_place(staging / str(i), out_dir, overwrite)
            entries[i] = entry
            record["files"] = [e for e in entries if e is not None]
            atomic_write_text(out_dir / "provenance.json", json.dumps(record, indent=2))
            if progress:
                progress(inputs[i].name, done, len(inputs))
    finally:  # a file failed, or Ctrl-C: what was not recorded is not kept
        if any(not f.done() for f in futures):
            _let_running_finish(client, futures)
        close(client)
        shutil.rmtree(staging, ignore_errors=True)
    return list(targets)
