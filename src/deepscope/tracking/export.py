"""Write tracking results: CTC masks + lineage, a tracks CSV, and a TrackMate XML file.

- ``ctc/mask000.tif`` … (``mask0000.tif`` for 1000 frames or more): every object carries
  its track number; ``ctc/res_track.txt``: one line ``L B E P`` per track (number, first
  and last frame, parent), the Cell Tracking Challenge result format read by the CTC
  evaluation tools, traccuracy and ``deepscope qc-track``.
- ``tracks.csv``: one row per object and frame: ``track_id, frame, [z,] y, x, area,
  mean_intensity, parent_id, lineage_id, input_label``.
- ``tracks.xml``: a TrackMate file (Fiji: Plugins › Tracking › Load a TrackMate file);
  spots with position, radius, area and mean intensity, edges along tracks and from
  mothers to daughters; one TrackMate track per family tree.

Every file is written atomically.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from deepscope.data.io import atomic_write_text, write_image
from deepscope.tracking.defaults import coordinate_columns
from deepscope.tracking.linking import Tracks

TRACKMATE_VERSION = "7.11.1"


def mask_name(frame: int, n_frames: int) -> str:
    """CTC mask file name of a frame: ``mask007.tif`` (4 digits from 1000 frames on)."""
    digits = 3 if n_frames <= 1000 else 4
    return f"mask{frame:0{digits}d}.tif"


def write_ctc(folder: Path, track_labels: np.ndarray, tracks: Tracks) -> Path:
    """Write CTC masks and ``res_track.txt`` into ``folder``; return the folder.

    Parameters
    ----------
    folder
        Output folder (created).
    track_labels
        Label movie ``(T, *spatial)`` whose values are track numbers.
    tracks
        The linking result (its lineage table becomes ``res_track.txt``).
    """
    folder = Path(folder)
    axes = "ZYX" if track_labels.ndim == 4 else "YX"
    n = track_labels.shape[0]
    names = {mask_name(t, n) for t in range(n)}
    for old in folder.glob("mask*.tif"):  # masks of an earlier, longer result
        if old.name not in names:
            old.unlink()
    for t in range(n):
        write_image(folder / mask_name(t, n), track_labels[t], axes, overwrite=True)
    lines = [f"{r.track} {r.start} {r.end} {r.parent}" for r in tracks.lineage.itertuples()]
    atomic_write_text(folder / "res_track.txt", "\n".join(lines) + ("\n" if lines else ""))
    return folder


def tracks_table(tracks: Tracks) -> pd.DataFrame:
    """The tracks CSV as a table (see the module documentation for its columns)."""
    obj = tracks.objects
    parent = dict(zip(tracks.lineage["track"], tracks.lineage["parent"], strict=True))
    cols = coordinate_columns(obj)
    table = pd.DataFrame(
        {
            "track_id": obj["track"].astype(int),
            "frame": obj["frame"].astype(int),
            **{c: obj[c].round(3) for c in cols},
            "area": obj["area"].astype(int),
            "mean_intensity": obj["mean_intensity"].round(4),
            "parent_id": obj["track"].map(parent).astype(int),
            "lineage_id": obj["lineage"].astype(int),
            "input_label": obj["label"].astype(int),
        }
    )
    return table.sort_values(["track_id", "frame"]).reset_index(drop=True)


def write_tracks_csv(path: Path, tracks: Tracks) -> Path:
    """Write ``tracks.csv`` atomically; return its path."""
    buffer = io.StringIO()
    tracks_table(tracks).to_csv(buffer, index=False)
    return atomic_write_text(path, buffer.getvalue())


def _edges(tracks: Tracks) -> list[tuple[int, int]]:
    """(source row, target row) of every link: along tracks and parent → child."""
    obj = tracks.objects.reset_index(drop=True)
    edges = []
    first, last = {}, {}
    for track, group in obj.groupby("track"):
        rows = group.sort_values("frame").index.to_list()
        edges += list(zip(rows[:-1], rows[1:], strict=True))
        first[int(track)], last[int(track)] = rows[0], rows[-1]
    for r in tracks.lineage.itertuples():
        if r.parent:
            edges.append((last[int(r.parent)], first[int(r.track)]))
    return edges


def _feature(parent: ET.Element, name: str, short: str, dimension: str, isint: bool) -> None:
    ET.SubElement(
        parent,
        "Feature",
        feature=name,
        name=name.replace("_", " ").capitalize(),
        shortname=short,
        dimension=dimension,
        isint="true" if isint else "false",
    )


def trackmate_xml(
    tracks: Tracks,
    *,
    shape: tuple[int, ...],
    pixel_size: dict[str, float] | None = None,
    unit: str = "pixel",
    image_path: Path | None = None,
) -> str:
    """Return a TrackMate XML document of the tracks.

    Parameters
    ----------
    tracks
        The linking result.
    shape
        Shape of the movie ``(T, *spatial)`` (written to the image settings).
    pixel_size
        Physical size per axis (``{"Z":…, "Y":…, "X":…}``); positions are written in
        these units. Pixels when None.
    unit
        Name of the spatial unit (``"micron"``, ``"pixel"``).
    image_path
        The movie, so that TrackMate can open it beside the tracks (optional).
    """
    obj = tracks.objects.reset_index(drop=True)
    ps = {a: float((pixel_size or {}).get(a) or 1.0) for a in "ZYX"}
    dims = len(shape) - 1
    root = ET.Element("TrackMate", version=TRACKMATE_VERSION)
    ET.SubElement(root, "Log").text = "Tracks made by deepscope (LAP linking with laptrack)."
    model = ET.SubElement(root, "Model", spatialunits=unit, timeunits="frame")
    decl = ET.SubElement(model, "FeatureDeclarations")
    spot_f = ET.SubElement(decl, "SpotFeatures")
    for name, short, dim, isint in [
        ("QUALITY", "Quality", "QUALITY", False),
        ("POSITION_X", "X", "POSITION", False),
        ("POSITION_Y", "Y", "POSITION", False),
        ("POSITION_Z", "Z", "POSITION", False),
        ("POSITION_T", "T", "TIME", False),
        ("FRAME", "Frame", "NONE", True),
        ("RADIUS", "R", "LENGTH", False),
        ("VISIBILITY", "Visible", "NONE", True),
        ("AREA", "Area", "AREA", False),
        ("MEAN_INTENSITY_CH1", "Mean ch1", "INTENSITY", False),
    ]:
        _feature(spot_f, name, short, dim, isint)
    edge_f = ET.SubElement(decl, "EdgeFeatures")
    for name, short, dim, isint in [
        ("SPOT_SOURCE_ID", "Source ID", "NONE", True),
        ("SPOT_TARGET_ID", "Target ID", "NONE", True),
        ("LINK_COST", "Cost", "COST", False),
    ]:
        _feature(edge_f, name, short, dim, isint)
    track_f = ET.SubElement(decl, "TrackFeatures")
    for name, short, dim, isint in [
        ("TRACK_ID", "Track ID", "NONE", True),
        ("TRACK_INDEX", "Index", "NONE", True),
        ("NUMBER_SPOTS", "N spots", "NONE", True),
        ("NUMBER_SPLITS", "N splits", "NONE", True),
    ]:
        _feature(track_f, name, short, dim, isint)

    spots = ET.SubElement(model, "AllSpots", nspots=str(len(obj)))
    voxel = ps["X"] * ps["Y"] * (ps["Z"] if dims == 3 else 1.0)
    for frame, group in obj.groupby("frame"):
        in_frame = ET.SubElement(spots, "SpotsInFrame", frame=str(int(frame)))
        for i, row in group.iterrows():
            z = row["z"] * ps["Z"] if dims == 3 else 0.0
            area = float(row["area"]) * voxel
            radius = (3 * area / (4 * np.pi)) ** (1 / 3) if dims == 3 else np.sqrt(area / np.pi)
            intensity = row["mean_intensity"]
            ET.SubElement(
                in_frame,
                "Spot",
                ID=str(i),
                name=f"track{int(row['track'])}_t{int(frame)}",
                POSITION_X=f"{row['x'] * ps['X']:.4f}",
                POSITION_Y=f"{row['y'] * ps['Y']:.4f}",
                POSITION_Z=f"{z:.4f}",
                POSITION_T=f"{float(frame):.1f}",
                FRAME=str(int(frame)),
                RADIUS=f"{radius:.4f}",
                QUALITY="1.0",
                VISIBILITY="1",
                AREA=f"{area:.4f}",
                MEAN_INTENSITY_CH1="NaN" if pd.isna(intensity) else f"{float(intensity):.4f}",
            )

    edges_by_tree: dict[int, list[tuple[int, int]]] = {}
    for s, t in _edges(tracks):
        edges_by_tree.setdefault(int(obj.at[s, "lineage"]), []).append((s, t))
    all_tracks = ET.SubElement(model, "AllTracks")
    tree_of_track = obj.groupby("track")["lineage"].first().to_dict()
    mothers = tracks.lineage.loc[tracks.lineage["division"], "parent"].unique()
    splits_per_tree: dict[int, int] = {}
    for mother in mothers:
        tree = int(tree_of_track[mother])
        splits_per_tree[tree] = splits_per_tree.get(tree, 0) + 1
    for tree, edges in sorted(edges_by_tree.items()):
        members = obj.index[obj["lineage"] == tree]
        element = ET.SubElement(
            all_tracks,
            "Track",
            name=f"Track_{tree}",
            TRACK_ID=str(tree),
            TRACK_INDEX=str(tree),
            NUMBER_SPOTS=str(len(members)),
            NUMBER_SPLITS=str(splits_per_tree.get(tree, 0)),
        )
        for s, t in edges:
            d = np.linalg.norm(
                [(obj.at[s, c] - obj.at[t, c]) * ps[c.upper()] for c in coordinate_columns(obj)]
            )
            ET.SubElement(
                element,
                "Edge",
                SPOT_SOURCE_ID=str(s),
                SPOT_TARGET_ID=str(t),
                LINK_COST=f"{d * d:.4f}",
            )
    filtered = ET.SubElement(model, "FilteredTracks")
    for tree in sorted(edges_by_tree):
        ET.SubElement(filtered, "TrackID", TRACK_ID=str(tree))

    settings = ET.SubElement(root, "Settings")
    spatial = shape[1:]
    ET.SubElement(
        settings,
        "ImageData",
        filename=image_path.name if image_path else "",
        folder=str(image_path.resolve().parent) + "/" if image_path else "",
        width=str(spatial[-1]),
        height=str(spatial[-2]),
        nslices=str(spatial[0] if dims == 3 else 1),
        nframes=str(shape[0]),
        pixelwidth=str(ps["X"]),
        pixelheight=str(ps["Y"]),
        voxeldepth=str(ps["Z"]),
        timeinterval="1.0",
    )
    ET.SubElement(
        settings,
        "BasicSettings",
        xstart="0",
        xend=str(spatial[-1] - 1),
        ystart="0",
        yend=str(spatial[-2] - 1),
        zstart="0",
        zend=str(spatial[0] - 1 if dims == 3 else 0),
        tstart="0",
        tend=str(shape[0] - 1),
    )
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def write_trackmate_xml(path: Path, tracks: Tracks, **kwargs) -> Path:  # noqa: ANN003
    """Write :func:`trackmate_xml` atomically; return the path."""
    return atomic_write_text(path, trackmate_xml(tracks, **kwargs))
