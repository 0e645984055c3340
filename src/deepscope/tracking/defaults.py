"""Linking settings, with automatic defaults derived from the objects themselves.

The user may give any setting; what is not given is derived from the movie:

- **object size** ``d``: the median diameter of the objects (of the circle or sphere
  with the same area or volume);
- **displacement** ``s``: for every object, the distance to the nearest object of the
  previous frame; ``s`` is the 90th percentile. It is an upper estimate of how far
  objects move from one frame to the next (in a crowd it is bounded by the spacing).

Then

- ``max_distance`` = max(0.8 d, 2 s): an object may move at most this far (pixels)
  between two frames to stay the same track. A daughter cell's centre lies about a
  quarter of the mother's length from the mother's centre, well within it.
- ``gap_frames`` = 2: an object may be missed in up to 2 consecutive frames and its
  track still continues (gap closing), if it reappears within ``max_distance``.
- ``division_distance`` = ``max_distance``: a new object appearing this close to an
  existing one is its daughter (division). ``--no-divisions`` turns divisions off
  (a new object then starts a new track).
- drift correction on: a shift of the whole field between two frames (stage jump,
  drifting dish) is measured and removed before linking (``--no-drift-correction``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from deepscope.errors import DeepscopeError

DEFAULT_GAP_FRAMES = 2
_SIZE_FACTOR = 0.8
_DISPLACEMENT_FACTOR = 2.0
_DISPLACEMENT_PERCENTILE = 90


@dataclass
class LinkSettings:
    """Settings of the linking step (distances in pixels, of the X axis)."""

    max_distance: float
    gap_frames: int
    divisions: bool
    division_distance: float
    drift_correction: bool = True
    object_diameter: float | None = None
    displacement_p90: float | None = None
    spacing: tuple[float, ...] = (1.0, 1.0)
    automatic: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict (which ones were automatic included)."""
        d = asdict(self)
        d["spacing"] = list(self.spacing)
        d["automatic"] = list(self.automatic)
        return d

    def describe(self) -> list[str]:
        """One plain line per setting, saying where its value came from."""

        def origin(name: str) -> str:
            return "automatic" if name in self.automatic else "given"

        lines = []
        if self.object_diameter is not None:
            lines.append(
                f"objects: median diameter {self.object_diameter:.1f} px; 90% of objects "
                f"lie within {self.displacement_p90:.1f} px of an object of the previous frame"
            )
        lines.append(
            f"max distance {self.max_distance:.1f} px per frame ({origin('max_distance')})"
        )
        lines.append(
            f"gap closing over up to {self.gap_frames} missing frame(s) ({origin('gap_frames')})"
        )
        if self.divisions:
            lines.append(
                f"divisions: daughters within {self.division_distance:.1f} px of the "
                f"mother ({origin('division_distance')})"
            )
        else:
            lines.append("divisions: off")
        lines.append(
            "drift correction: "
            + (
                "on (a shift of the whole field between frames is removed before linking)"
                if self.drift_correction
                else "off"
            )
        )
        return lines


def nearest_displacements(objects: pd.DataFrame, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance from each object to the nearest object of the previous frame (pixels)."""
    from scipy.spatial import cKDTree

    cols = coordinate_columns(objects)
    scale = np.asarray(spacing, dtype=float)
    out = []
    frames = sorted(objects["frame"].unique())
    groups = {f: objects.loc[objects["frame"] == f, cols].to_numpy(float) * scale for f in frames}
    for prev, cur in zip(frames[:-1], frames[1:], strict=True):
        if cur != prev + 1 or len(groups[prev]) == 0:
            continue
        dist, _ = cKDTree(groups[prev]).query(groups[cur])
        out.append(dist)
    return np.concatenate(out) if out else np.zeros(0)


def coordinate_columns(objects: pd.DataFrame) -> list[str]:
    """The centroid columns of an objects table: ``[z,] y, x``."""
    return [c for c in ("z", "y", "x") if c in objects.columns]


def derive_settings(
    objects: pd.DataFrame,
    *,
    spacing: tuple[float, ...] | None = None,
    max_distance: float | None = None,
    gap_frames: int | None = None,
    divisions: bool = True,
    division_distance: float | None = None,
    drift_correction: bool = True,
) -> LinkSettings:
    """Fill in the settings not given, from object size and displacement statistics.

    Parameters
    ----------
    objects
        The table of :func:`deepscope.tracking.measure.measure_objects`.
    spacing
        Pixel spacing per spatial axis relative to X (see ``measure.spacing``);
        None for square (cubic) pixels.
    max_distance, gap_frames, division_distance
        Given values, or None for automatic ones (see the module documentation).
    divisions
        Whether objects may divide.
    drift_correction
        Whether a global shift of the whole field between frames is removed before linking.

    Raises
    ------
    DeepscopeError
        If a given value is impossible (negative distance or gap).
    """
    for name, value in (("max distance", max_distance), ("division distance", division_distance)):
        if value is not None and value <= 0:
            raise DeepscopeError(
                f"the {name} must be above 0 pixels, not {value}",
                fix=f"give a positive {name} in pixels, or leave it out",
            )
    if gap_frames is not None and gap_frames < 0:
        raise DeepscopeError(
            f"the gap must be 0 frames or more, not {gap_frames}",
            fix="give --gap-frames 0 (no gap closing) or more",
        )
    if spacing is None:
        spacing = (1.0,) * len(coordinate_columns(objects))
    automatic = []
    diameter = float(np.median(objects["diameter"])) if len(objects) else 1.0
    moves = nearest_displacements(objects, spacing)
    p90 = float(np.percentile(moves, _DISPLACEMENT_PERCENTILE)) if moves.size else diameter
    if max_distance is None:
        max_distance = max(_SIZE_FACTOR * diameter, _DISPLACEMENT_FACTOR * p90, 1.0)
        automatic.append("max_distance")
    if gap_frames is None:
        gap_frames = DEFAULT_GAP_FRAMES
        automatic.append("gap_frames")
    if division_distance is None:
        division_distance = max_distance
        automatic.append("division_distance")
    return LinkSettings(
        max_distance=float(max_distance),
        gap_frames=int(gap_frames),
        divisions=divisions,
        division_distance=float(division_distance),
        drift_correction=drift_correction,
        object_diameter=diameter,
        displacement_p90=p90,
        spacing=tuple(spacing),
        automatic=tuple(automatic),
    )
