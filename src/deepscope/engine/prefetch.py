"""Batches prepared in a background thread while the network trains on the previous one.

Cutting and augmenting patches, and for some tasks computing their training targets
(StarDist's ray distances), is CPU work that does not need the network. Done in the
training loop it adds to every step; done here, one or two batches ahead in a thread,
it overlaps with the network's forward and backward pass, which run in PyTorch's own
threads and release Python's lock. A thread rather than DataLoader worker processes:
nothing is copied or pickled, the patch sampler's random numbers are drawn in the same
order as without it (one thread draws them all), and nothing is forked after PyTorch and
OpenMP have started their threads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_POLL_SECONDS = 0.1


class PrefetchLoader:
    """Iterate ``loader`` in a background thread, passing each batch through ``prepare``.

    Parameters
    ----------
    loader
        The batches (e.g. a ``torch.utils.data.DataLoader``); its length, if it has one,
        is this object's length.
    prepare
        Called on each batch in the background thread; returns the batch to yield.
    ahead
        How many prepared batches may wait (memory: ``ahead`` + 1 batches besides the one
        in training).

    Notes
    -----
    An error raised while preparing a batch is raised again by the iteration, in the
    training thread. Stopping the iteration early (e.g. at the time budget) stops the
    thread within a fraction of a second.
    """

    def __init__(
        self, loader: Iterable, prepare: Callable[[Any], Any] | None = None, ahead: int = 2
    ):
        if ahead < 1:
            raise ValueError("ahead must be at least 1")
        self.loader = loader
        self.prepare = prepare or (lambda batch: batch)
        self.ahead = ahead

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    @property
    def dataset(self) -> Any:
        """The wrapped loader's dataset (read by batch-norm recalibration)."""
        return self.loader.dataset  # type: ignore[attr-defined]

    @property
    def batch_size(self) -> int | None:
        """The wrapped loader's batch size."""
        return getattr(self.loader, "batch_size", None)

    def __iter__(self) -> Iterator[Any]:
        slots: queue.Queue = queue.Queue(maxsize=self.ahead)
        stop = threading.Event()

        def offer(item: tuple[str, Any]) -> bool:
            while not stop.is_set():
                try:
                    slots.put(item, timeout=_POLL_SECONDS)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for batch in self.loader:
                    if not offer(("batch", self.prepare(batch))):
                        return
                offer(("end", None))
            except BaseException as error:  # handed to the training thread
                offer(("error", error))

        thread = threading.Thread(target=work, name="deepscope-batches", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = slots.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()
            thread.join(timeout=10 * _POLL_SECONDS)
