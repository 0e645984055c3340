"""Pictures of tracks: tracks over a projection, lineage trees, speed and displacement."""

from __future__ import annotations

import numpy as np
import pandas as pd

from deepscope.tracking.linking import Tracks


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tracks_over_projection(tracks: Tracks, background: np.ndarray):  # noqa: ANN201
    """Tracks drawn over the maximum projection of the movie (over time and depth).

    Each track is a line coloured by lineage; daughters are joined to their mother.
    """
    plt = _plt()
    proj = np.asarray(background, dtype=np.float32)
    while proj.ndim > 2:
        proj = proj.max(axis=0)
    lo, hi = np.percentile(proj, (1, 99.8)) if proj.size else (0, 1)
    fig, ax = plt.subplots(figsize=(7, 7 * proj.shape[0] / max(proj.shape[1], 1)))
    ax.imshow(proj, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
    cmap = plt.get_cmap("tab20")
    obj = tracks.objects
    ends = {}
    for track, group in obj.groupby("track"):
        g = group.sort_values("frame")
        colour = cmap(int(g["lineage"].iloc[0]) % 20)
        ax.plot(g["x"], g["y"], "-", color=colour, lw=1.2)
        ends[int(track)] = (g.iloc[0], g.iloc[-1], colour)
    for r in tracks.lineage.itertuples():
        if r.parent and r.parent in ends and r.track in ends:
            a, b = ends[r.parent][1], ends[r.track][0]
            ax.plot(
                [a["x"], b["x"]],
                [a["y"], b["y"]],
                ":" if not r.division else "-",
                color=ends[r.track][2],
                lw=1.2,
            )
    mothers = tracks.lineage.loc[tracks.lineage["division"], "parent"].unique()
    for m in mothers:
        if m in ends:
            last = ends[m][1]
            ax.plot(last["x"], last["y"], "o", mfc="none", mec="yellow", ms=6)
    ax.set_axis_off()
    ax.set_title(f"{obj['track'].nunique()} tracks, {len(mothers)} divisions (yellow circles)")
    fig.tight_layout()
    return fig


def lineage_tree(tracks: Tracks, max_trees: int = 12):  # noqa: ANN201
    """Family trees (time to the right) of the largest lineages."""
    plt = _plt()
    lin = tracks.lineage
    tree_of = tracks.objects.groupby("track")["lineage"].first()
    sizes = tracks.objects.groupby("lineage").size().sort_values(ascending=False)
    chosen = list(sizes.index[:max_trees])
    children: dict[int, list[int]] = {}
    for r in lin.itertuples():
        if r.parent:
            children.setdefault(int(r.parent), []).append(int(r.track))
    info = lin.set_index("track")
    y_of: dict[int, float] = {}
    next_leaf = [0.0]

    def place(t: int) -> float:
        kids = children.get(t, [])
        y = float(np.mean([place(k) for k in kids])) if kids else next_leaf[0]
        if not kids:
            next_leaf[0] += 1
        y_of[t] = y
        return y

    fig, ax = plt.subplots(figsize=(8, 4.5))
    cmap = plt.get_cmap("tab20")
    for tree in chosen:
        roots = [int(t) for t, g in tree_of.items() if g == tree and not info.at[t, "parent"]]
        for root in roots:
            place(root)
        next_leaf[0] += 0.8
    for t, y in y_of.items():
        colour = cmap(int(tree_of[t]) % 20)
        ax.plot([info.at[t, "start"], info.at[t, "end"]], [y, y], "-", color=colour, lw=2)
        for k in children.get(t, []):
            style = "-" if info.at[k, "division"] else ":"
            ax.plot(
                [info.at[t, "end"], info.at[k, "start"]], [y, y_of[k]], style, color=colour, lw=1
            )
    ax.set_xlabel("frame")
    ax.set_yticks([])
    shown = len(chosen)
    ax.set_title(f"Lineage trees ({shown} largest of {sizes.size}; dotted: gap closed)")
    fig.tight_layout()
    return fig


def _positions(tracks: Tracks, obj: pd.DataFrame, spacing: tuple[float, ...]) -> np.ndarray:
    """Centroids with the drift of the whole field removed, scaled by the pixel spacing."""
    cols = [c for c in ("z", "y", "x") if c in obj.columns]
    xyz = obj[cols].to_numpy(float)
    if tracks.drift is not None:
        xyz = xyz - tracks.drift[obj["frame"].to_numpy()]
    return xyz * np.asarray(spacing)


def step_table(tracks: Tracks, spacing: tuple[float, ...] = (1.0, 1.0)) -> pd.DataFrame:
    """Frame-to-frame steps along tracks: ``track``, ``frame``, ``step`` (pixels).

    Drift of the whole field (stage jumps) is removed first, so steps are the objects' own.
    """
    obj = tracks.objects.sort_values(["track", "frame"])
    xyz = _positions(tracks, obj, spacing)
    same = obj["track"].to_numpy()[1:] == obj["track"].to_numpy()[:-1]
    dt = np.diff(obj["frame"].to_numpy())
    step = np.linalg.norm(np.diff(xyz, axis=0), axis=1) / np.maximum(dt, 1)
    return pd.DataFrame(
        {
            "track": obj["track"].to_numpy()[1:][same],
            "frame": obj["frame"].to_numpy()[1:][same],
            "step": step[same],
        }
    )


def speed_and_displacement(tracks: Tracks, spacing: tuple[float, ...] = (1.0, 1.0)):  # noqa: ANN201
    """Speed histogram and net displacement from the first position against time.

    Drift of the whole field is removed first (see :func:`step_table`).
    """
    plt = _plt()
    steps = step_table(tracks, spacing)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    if len(steps):
        a.hist(steps["step"], bins=30, color="#4a7ab0")
        a.axvline(
            steps["step"].median(), color="k", ls="--", label=f"median {steps['step'].median():.2f}"
        )
        a.legend()
    a.set_xlabel("speed (pixels per frame)")
    a.set_ylabel("steps")
    a.set_title("Speed along tracks")
    obj = tracks.objects.sort_values(["track", "frame"])
    for _, g in obj.groupby("track"):
        if len(g) < 2:
            continue
        xyz = _positions(tracks, g, spacing)
        disp = np.linalg.norm(xyz - xyz[0], axis=1)
        b.plot(g["frame"] - g["frame"].iloc[0], disp, "-", color="#4a7ab0", alpha=0.3, lw=0.8)
    b.set_xlabel("frames since the track started")
    b.set_ylabel("net displacement (pixels)")
    b.set_title("Displacement from the start of each track")
    fig.tight_layout()
    return fig
