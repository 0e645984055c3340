"""The ``deepscope track`` workflow: (segment →) measure → link → export → report.

Output folder::

    tracks/
      ctc/mask000.tif …, ctc/res_track.txt   Cell Tracking Challenge result (track ids)
      tracks.csv                             one row per object and frame
      tracks.xml                             TrackMate file (Fiji › Plugins › Tracking)
      settings.json                          linking settings (given or automatic), inputs
      report.html, figures/*.png             tracks, lineage trees, speed and displacement
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from deepscope import __version__
from deepscope.errors import DeepscopeError, OutputError
from deepscope.tracking import export, figures
from deepscope.tracking.defaults import LinkSettings, derive_settings
from deepscope.tracking.io import Movie, read_label_movie, read_movie
from deepscope.tracking.linking import Tracks, link_objects, relabel
from deepscope.tracking.measure import measure_objects, spacing

Progress = Callable[[str, int, int], None]
RESULT_NAMES = ("ctc", "tracks.csv", "tracks.xml", "settings.json", "report.html")


@dataclass
class TrackResult:
    """What ``deepscope track`` made."""

    out_dir: Path
    tracks: Tracks
    settings: LinkSettings
    n_frames: int
    seconds: float


def _check_out_dir(out_dir: Path, inputs: list[Path], overwrite: bool) -> None:
    out = out_dir.resolve()
    for p in inputs:
        p = p.resolve()
        if out == p or out == p.parent or (p.is_dir() and out.is_relative_to(p)):
            raise OutputError(
                "the output folder is (or is inside) an input; results could mix with or "
                "overwrite your data",
                out_dir,
                "choose a new, separate output folder (e.g. --out tracks/)",
            )
    existing = [n for n in RESULT_NAMES if (out_dir / n).exists()]
    if existing and not overwrite:
        raise OutputError(
            f"this folder already holds tracking results ({', '.join(existing)})",
            out_dir,
            "choose another output folder, or add --overwrite to replace them",
        )


def _check_same_size(labels: Movie, movie: Movie) -> None:
    spatial = movie.data.shape[-movie.spatial_dims :]
    if labels.data.shape != (movie.n_frames, *spatial):
        raise DeepscopeError(
            f"the label images have shape {labels.data.shape} ({labels.axes}) but the movie "
            f"{(movie.n_frames, *spatial)} ({movie.axes})",
            labels.source,
            "give the labels and the movie of the same time-lapse (same frames and size)",
        )


def track(
    out_dir: str | Path,
    *,
    labels: str | Path | None = None,
    movie: str | Path | None = None,
    model: str | Path | None = None,
    axes: str | None = None,
    max_distance: float | None = None,
    gap_frames: int | None = None,
    divisions: bool = True,
    division_distance: float | None = None,
    drift_correction: bool = True,
    overwrite: bool = False,
    tile: int | None = None,
    int8: bool = False,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
) -> TrackResult:
    """Track the objects of a time-lapse and write every output.

    Parameters
    ----------
    out_dir
        New folder for the results.
    labels
        Label movie (stack or folder of label frames). Give this, or ``movie`` with ``model``.
    movie
        The raw movie: segmented with ``model``, or, with ``labels``, used for mean
        intensities and as the background of the pictures.
    model
        A trained instance-segmentation model folder.
    axes
        Axes of the files if they do not say them.
    max_distance, gap_frames, divisions, division_distance, drift_correction
        Linking settings; None derives them from the data (see
        :mod:`deepscope.tracking.defaults`).
    overwrite
        Replace earlier results in ``out_dir``.
    tile
        Tile size in Y and X for segmenting large frames (None: the default of
        :class:`~deepscope.workflow.predict.TileSettings`).
    int8
        Segment with the model's network in 8-bit integers (``predict --int8``).
    progress
        Called with (stage, done, total).
    log
        Receives one line per step.

    Returns
    -------
    TrackResult
    """
    start = time.monotonic()
    out_dir = Path(out_dir)
    if labels is None and (movie is None or model is None):
        raise DeepscopeError(
            "nothing to track: give label images (--labels), or a movie and a "
            "segmentation model (--input with --model)",
            fix="e.g. deepscope track --labels masks/ --out tracks/",
        )
    if labels is not None and model is not None:
        raise DeepscopeError(
            "--labels and --model were both given; the labels would be made twice",
            fix="leave out --model to track the given labels, or --labels to segment the movie",
        )
    inputs = [Path(p) for p in (labels, movie, model) if p is not None]
    _check_out_dir(out_dir, inputs, overwrite)

    raw = read_movie(movie, axes) if movie is not None else None
    if raw is not None and raw.note:
        log(f"note: {raw.note}")
    if model is not None:
        from deepscope.tracking.segment import segment_movie
        from deepscope.workflow.int8_models import require_int8
        from deepscope.workflow.model_folder import load_model_folder
        from deepscope.workflow.predict import TileSettings

        trained = load_model_folder(model)
        if int8:
            require_int8(trained, "--int8: ")
        log(f"segmenting {raw.n_frames} frames with the {trained.config.task} model {model}")
        seg = segment_movie(
            trained,
            raw,
            (lambda d, n: progress("segmenting", d, n)) if progress else None,
            TileSettings(tile=tile, int8=int8),
        )
        lab = Movie(seg, raw.axes.replace("C", ""), raw.source, raw.frame_names, raw.metadata)
    else:
        lab = read_label_movie(labels, None if raw is not None else axes)
        if lab.note:
            log(f"note: {lab.note}")
        if raw is not None:
            _check_same_size(lab, raw)
    log(f"{lab.n_frames} frames of {lab.data.shape[1:]} ({lab.axes})")
    if lab.n_frames < 2:
        raise DeepscopeError(
            "there is only one time point, so there is nothing to link",
            lab.source,
            "give a movie with two or more time points (or the right --axes)",
        )

    intensity = raw.intensity() if raw is not None else None
    objects = measure_objects(
        lab.data, intensity, (lambda d, n: progress("measuring", d, n)) if progress else None
    )
    if objects.empty:
        raise DeepscopeError(
            "no object was found in any frame",
            lab.source,
            "check the segmentation (or the model) on a few frames first",
        )
    settings = derive_settings(
        objects,
        spacing=spacing(lab),
        max_distance=max_distance,
        gap_frames=gap_frames,
        divisions=divisions,
        division_distance=division_distance,
        drift_correction=drift_correction,
    )
    for line in settings.describe():
        log(f"  {line}")
    log(f"linking {len(objects)} objects")
    tracks = link_objects(objects, settings, lab.data)
    log(f"{len(tracks.lineage)} tracks, {tracks.n_divisions} divisions")

    if progress:
        progress("writing", 0, 1)
    track_labels = relabel(lab.data, tracks.objects)
    export.write_ctc(out_dir / "ctc", track_labels, tracks)
    export.write_tracks_csv(out_dir / "tracks.csv", tracks)
    sizes = lab.metadata.get("pixel_size") or {}
    export.write_trackmate_xml(
        out_dir / "tracks.xml",
        tracks,
        shape=lab.data.shape,
        pixel_size=sizes or None,
        unit=str(lab.metadata.get("unit") or "pixel") if sizes else "pixel",
        image_path=raw.source if raw is not None and raw.source.is_file() else None,
    )
    seconds = time.monotonic() - start
    record = {
        "deepscope_version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "labels": str(Path(labels).resolve()) if labels else None,
        "movie": str(Path(movie).resolve()) if movie else None,
        "model": str(Path(model).resolve()) if model else None,
        "frames": lab.n_frames,
        "objects": len(objects),
        "tracks": len(tracks.lineage),
        "divisions": tracks.n_divisions,
        "linking": settings.to_dict(),
        "drift_px": tracks.drift.tolist() if tracks.drift is not None else None,
        "seconds": round(seconds, 1),
    }
    from deepscope.data.io import atomic_write_text

    atomic_write_text(out_dir / "settings.json", json.dumps(record, indent=2))
    write_report(
        out_dir, tracks, settings, intensity if intensity is not None else lab.data > 0, record
    )
    if progress:
        progress("writing", 1, 1)
    return TrackResult(out_dir, tracks, settings, lab.n_frames, seconds)


def write_report(
    out_dir: Path, tracks: Tracks, settings: LinkSettings, background: np.ndarray, record: dict
) -> Path:
    """Write ``report.html`` with the pictures (also saved under ``figures/``)."""
    import matplotlib.pyplot as plt

    from deepscope.workflow.report import HtmlReport

    report = HtmlReport("Tracking", figures_dir=out_dir / "figures")
    lengths = tracks.lineage["end"] - tracks.lineage["start"] + 1
    report.add_paragraph(
        f"{record['objects']} objects in {record['frames']} frames were linked into "
        f"{record['tracks']} tracks with {record['divisions']} divisions "
        f"(median track length {int(np.median(lengths)) if len(lengths) else 0} frames).",
        css_class="lead",
    )
    report.add_heading("Linking settings")
    report.add_list(settings.describe())
    report.add_paragraph(
        "A track here is a piece of a lineage without division or gap (Cell Tracking "
        "Challenge convention): a division ends the mother's track and starts one per "
        "daughter. Change a setting with --max-distance, --gap-frames, --division-distance "
        "or --no-divisions.",
        css_class="note",
    )
    report.add_heading("Pictures")
    for make, caption, name in [
        (
            lambda: figures.tracks_over_projection(tracks, background),
            "Tracks over the maximum projection of the movie",
            "tracks.png",
        ),
        (lambda: figures.lineage_tree(tracks), "Lineage trees", "lineage.png"),
        (
            lambda: figures.speed_and_displacement(tracks, settings.spacing),
            "Speed and displacement along tracks",
            "speed_displacement.png",
        ),
    ]:
        fig = make()
        report.add_figure(fig, caption, name)
        plt.close(fig)
    report.add_heading("Files")
    report.add_list(
        [
            "ctc/mask*.tif + ctc/res_track.txt: Cell Tracking Challenge result "
            "(for deepscope qc-track)",
            "tracks.csv: one row per object and frame (track_id, frame, position, area, "
            "mean_intensity, parent_id, lineage_id)",
            "tracks.xml: open in Fiji with Plugins > Tracking > Load a TrackMate file",
            "settings.json: settings and inputs of this run",
        ]
    )
    return report.write(out_dir / "report.html")
