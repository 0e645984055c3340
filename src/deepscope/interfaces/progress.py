"""Progress for people: a live bar on a terminal, plain lines in a log file."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

#: Without a terminal (a log file, a cluster job), progress is plain lines: the first
#: and the last, one per finished image (or frame) when the last line is this many
#: seconds old, and one at least this often within a long image.
LOG_LINE_GAP_S = (2.0, 30.0)


def log_lines(desc: str, unit: str):  # noqa: ANN202
    """Progress as plain lines, for logs: a live bar would write hundreds of updates."""
    state = {"start": time.monotonic(), "last": -math.inf, "whole": -1}

    def update(name: str, done: float, total: int) -> None:
        now = time.monotonic()
        whole = int(done)
        since = now - state["last"]
        gap = LOG_LINE_GAP_S[0] if whole != state["whole"] else LOG_LINE_GAP_S[1]
        if since < gap and state["whole"] >= 0 and done < total:
            return
        state.update(last=now, whole=whole)
        elapsed = now - state["start"]
        left = elapsed * (total - done) / done if done > 0 else None
        eta = f", about {duration(left)} left" if left is not None and done < total else ""
        where = f"{name}; " if name else ""
        print(
            f"{desc}: {round(done, 2):g}/{total} {unit} ({where}{duration(elapsed)} elapsed{eta})",
            file=sys.stderr,
            flush=True,
        )

    return update


def duration(seconds: float) -> str:
    """Say a number of seconds in words: ``42 s``, ``3 min 05 s``."""
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def progress_bar(desc: str, unit: str = "images"):  # noqa: ANN202
    """A progress bar on a terminal, plain lines in a log (see :func:`log_lines`)."""
    if not sys.stderr.isatty():
        return log_lines(desc, unit)
    from tqdm.auto import tqdm

    state: dict[str, Any] = {}

    def update(name: str, done: float, total: int) -> None:
        if "bar" not in state:
            # Progress comes in parts of an image (tiles): shown as 0.5/1, 12/40; the
            # time left is from the smoothed rate, which a first part done within
            # milliseconds of the start would otherwise show as thousands per second.
            state["bar"] = tqdm(
                total=total,
                desc=desc,
                file=sys.stderr,
                bar_format="{l_bar}{bar}| {n:g}/{total_fmt} "
                + unit
                + " [{elapsed}<{remaining}{postfix}]",
            )
        bar = state["bar"]
        bar.set_postfix_str(str(name)[-30:], refresh=False)
        step = round(done, 2) - bar.n
        if step > 0:
            bar.update(step)
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def stage_bars():  # noqa: ANN202
    """One progress bar per stage of a long job (QC: images, checkpoints, figures)."""
    bars: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            # checkpoints, Gaussian baseline, figures: counted in steps, not images
            unit = "images" if stage in ("images", "scoring", "classifying") else "steps"
            bars[stage] = progress_bar(f"QC {stage}", unit)
        bars[stage](stage, done, total)

    return update
