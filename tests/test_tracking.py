"""Tracking: linking with gaps and divisions, drift, CTC/CSV/TrackMate export, qc-track, CLI.

Every movie here is a few tiny synthetic disks that move, divide, vanish for a frame and
reappear; the expected lineage is known exactly.
"""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from conftest import TINY_CONFIG, folder_digest, write_tif
from deepscope.engine.int8 import int8_supported
from deepscope.errors import DeepscopeError
from deepscope.interfaces.cli import main
from deepscope.tracking.defaults import derive_settings
from deepscope.tracking.drift import estimate_drift
from deepscope.tracking.export import trackmate_xml, write_ctc
from deepscope.tracking.io import read_label_movie
from deepscope.tracking.linking import link_objects, relabel
from deepscope.tracking.measure import measure_objects
from deepscope.tracking.qc_track import load_ctc, score_tracks

T = 8
DIVIDE_AT = 4  # first frame of the daughters
GAP_AT = 3  # frame in which cell B is missing


def _ball(shape: tuple[int, ...], centre: tuple[float, ...], r: float) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= r * r


def lineage_movie(three_d: bool = False, shift_at: int | None = None) -> tuple[np.ndarray, str]:
    """Labels (T, [Z,] Y, X) with CTC track ids, and the matching ``man_track.txt``.

    Track 1 (mother) moves right and divides into 2 and 3 at ``DIVIDE_AT``; track 4 moves
    down, is missing at ``GAP_AT`` and continues as 5 (parent 4, a gap, not a division);
    track 6 sits still. ``shift_at``: the whole field jumps by 14 px from that frame on.
    """
    spatial = (10, 48, 64) if three_d else (48, 64)
    out = np.zeros((T, *spatial), np.uint16)
    for t in range(T):
        jump = 14 if shift_at is not None and t >= shift_at else 0

        def at(y: float, x: float, jump: int = jump) -> tuple[float, ...]:
            return ((5,) if three_d else ()) + (y + jump, x + jump)

        if t < DIVIDE_AT:
            out[t][_ball(spatial, at(12, 8 + 2 * t), 4)] = 1
        else:
            out[t][_ball(spatial, at(7, 12 + 2 * t), 3)] = 2
            out[t][_ball(spatial, at(17, 12 + 2 * t), 3)] = 3
        if t != GAP_AT:
            out[t][_ball(spatial, at(24 + 1.5 * t, 44), 4)] = 4 if t < GAP_AT else 5
        out[t][_ball(spatial, at(8, 52), 3)] = 6
    text = (
        f"1 0 {DIVIDE_AT - 1} 0\n2 {DIVIDE_AT} {T - 1} 1\n3 {DIVIDE_AT} {T - 1} 1\n"
        f"4 0 {GAP_AT - 1} 0\n5 {GAP_AT + 1} {T - 1} 4\n6 0 {T - 1} 0\n"
    )
    return out, text


def write_gt(folder: Path, labels: np.ndarray, track_text: str) -> Path:
    for t, frame in enumerate(labels):
        write_tif(folder / f"man_track{t:03d}.tif", frame)
    (folder / "man_track.txt").write_text(track_text)
    return folder


def scrambled(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """The same objects with unrelated label numbers in every frame (what a segmenter gives)."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(labels)
    for t, frame in enumerate(labels):
        ids = np.unique(frame[frame > 0])
        new = rng.permutation(np.arange(10, 10 + len(ids)))
        for i, n in zip(ids, new, strict=True):
            out[t][frame == i] = n
    return out


def track_labels(labels: np.ndarray, **settings):  # noqa: ANN201
    objects = measure_objects(labels)
    return link_objects(objects, derive_settings(objects, **settings), labels)


def lineage_by_position(tracks) -> dict:  # noqa: ANN001
    """Parent/child structure in terms of the true ids (read from a reference movie)."""
    return {
        int(r.track): (int(r.start), int(r.end), int(r.parent), bool(r.division))
        for r in tracks.lineage.itertuples()
    }


# --------------------------------------------------------------------------- linking


@pytest.mark.parametrize("three_d", [False, True])
def test_linking_finds_the_division_and_closes_the_gap(three_d: bool) -> None:
    truth, _ = lineage_movie(three_d)
    tracks = track_labels(scrambled(truth))
    assert len(tracks.lineage) == 6
    assert tracks.n_divisions == 1
    # every result track is exactly one true track
    obj = tracks.objects
    true_id = [
        int(
            truth[r.frame][
                tuple(
                    int(round(getattr(r, a))) for a in (("z", "y", "x") if three_d else ("y", "x"))
                )
            ]
        )
        for r in obj.itertuples()
    ]
    obj = obj.assign(true=true_id)
    assert (obj.groupby("track")["true"].nunique() == 1).all()
    to_true = obj.groupby("track")["true"].first().to_dict()
    lin = {
        to_true[int(r.track)]: (r.start, r.end, to_true.get(int(r.parent), 0), r.division)
        for r in tracks.lineage.itertuples()
    }
    assert lin[1] == (0, DIVIDE_AT - 1, 0, False)
    assert lin[2] == (DIVIDE_AT, T - 1, 1, True) and lin[3] == (DIVIDE_AT, T - 1, 1, True)
    assert lin[5] == (GAP_AT + 1, T - 1, 4, False)  # gap closed: parent link, no division
    assert lin[6] == (0, T - 1, 0, False)


def test_without_divisions_or_gaps_tracks_start_anew() -> None:
    truth, _ = lineage_movie()
    tracks = track_labels(truth, divisions=False, gap_frames=0)
    assert tracks.n_divisions == 0
    assert (tracks.lineage["parent"] == 0).sum() >= 5


def test_automatic_settings_follow_object_size_and_given_values_are_kept() -> None:
    truth, _ = lineage_movie()
    objects = measure_objects(truth)
    auto = derive_settings(objects)
    assert set(auto.automatic) == {"max_distance", "gap_frames", "division_distance"}
    assert 0.8 * auto.object_diameter <= auto.max_distance < 4 * auto.object_diameter
    assert auto.gap_frames == 2
    given = derive_settings(objects, max_distance=5.0, gap_frames=1)
    assert (given.max_distance, given.gap_frames) == (5.0, 1)
    assert "max_distance" not in given.automatic
    assert any("given" in line for line in given.describe())
    with pytest.raises(DeepscopeError, match="max distance"):
        derive_settings(objects, max_distance=-1)


def test_drift_is_measured_and_removed() -> None:
    truth, _ = lineage_movie(shift_at=5)
    drift = estimate_drift(truth, measure_objects(truth))
    assert drift[4].tolist() == [0, 0]
    assert np.abs(drift[5] - [14, 14]).max() <= 2  # the jump, plus the cells' own motion
    tracks = track_labels(truth, max_distance=8.0)
    assert len(tracks.lineage) == 6  # the jump (20 px) broke no track
    from deepscope.tracking.figures import step_table

    assert step_table(tracks)["step"].max() < 6  # speeds are the cells' own, without the jump
    broken = track_labels(truth, max_distance=8.0, drift_correction=False)
    assert len(broken.lineage) > 6


# ---------------------------------------------------------------------------- export


def test_ctc_export_is_consistent_and_readable(tmp_path: Path) -> None:
    truth, _ = lineage_movie()
    labels = scrambled(truth)
    tracks = track_labels(labels)
    masks = relabel(labels, tracks.objects)
    folder = write_ctc(tmp_path / "ctc", masks, tracks)
    assert sorted(p.name for p in folder.glob("mask*.tif"))[0] == "mask000.tif"
    table = pd.read_csv(folder / "res_track.txt", sep=" ", header=None, names=list("LBEP"))
    stack = np.stack([tifffile.imread(folder / f"mask{t:03d}.tif") for t in range(T)])
    for r in table.itertuples():
        present = [t for t in range(T) if (stack[t] == r.L).any()]
        assert present == list(range(r.B, r.E + 1))
        if r.P:
            assert table.set_index("L").at[r.P, "E"] < r.B
    assert (table["P"] > 0).sum() == 3  # two daughters and one gap
    load_ctc(folder, "result")  # traccuracy's own format checks pass


def test_trackmate_xml_is_parseable_with_the_division(tmp_path: Path) -> None:
    truth, _ = lineage_movie()
    tracks = track_labels(truth)
    root = ET.fromstring(
        trackmate_xml(tracks, shape=truth.shape, pixel_size={"X": 0.5, "Y": 0.5}, unit="micron")
    )
    assert root.tag == "TrackMate"
    spots = {s.get("ID"): s for s in root.iter("Spot")}
    assert int(root.find("Model/AllSpots").get("nspots")) == len(spots) == len(tracks.objects)
    assert root.find("Model").get("spatialunits") == "micron"
    out_degree: dict[str, int] = {}
    for edge in root.iter("Edge"):
        a, b = spots[edge.get("SPOT_SOURCE_ID")], spots[edge.get("SPOT_TARGET_ID")]
        assert int(a.get("FRAME")) < int(b.get("FRAME"))
        out_degree[a.get("ID")] = out_degree.get(a.get("ID"), 0) + 1
    assert sorted(out_degree.values())[-1] == 2  # the mother's last spot
    assert len(root.findall("Model/AllTracks/Track")) == 3  # one per family tree
    x = [float(s.get("POSITION_X")) for s in spots.values()]
    assert max(x) < 64 * 0.5  # physical units
    assert root.find("Settings/ImageData").get("nframes") == str(T)


# -------------------------------------------------------------------------------- qc


def test_qc_scores_a_perfect_and_a_broken_result(tmp_path: Path) -> None:
    truth, text = lineage_movie()
    gt = write_gt(tmp_path / "GT" / "TRA", truth, text)
    labels = scrambled(truth)
    good = track_labels(labels)
    write_ctc(tmp_path / "good", relabel(labels, good.objects), good)
    perfect = score_tracks(tmp_path / "good", gt)
    assert perfect["TRA"] == pytest.approx(1.0) and perfect["DET"] == pytest.approx(1.0)
    assert perfect["division_f1"] == pytest.approx(1.0)
    assert perfect["SEG"] is None and "no SEG" in perfect["seg_note"]
    slices = tmp_path / "GT" / "SEG"  # 3D-style single-slice SEG found by itself: skipped
    write_tif(slices / "man_seg_000_004.tif", truth[0])
    assert score_tracks(tmp_path / "good", gt)["seg_note"].startswith("SEG not computed")
    bad = track_labels(labels, divisions=False, gap_frames=0)
    write_ctc(tmp_path / "bad", relabel(labels, bad.objects), bad)
    broken = score_tracks(tmp_path / "bad", gt, seg_gt=gt)
    assert broken["TRA"] < 0.99
    assert broken["division_recall"] == 0.0
    assert broken["SEG"] == pytest.approx(1.0)  # same outlines


# ------------------------------------------------------------------------------- CLI


def test_cli_track_and_qc_track(tmp_path: Path, capsys) -> None:
    truth, text = lineage_movie()
    gt = write_gt(tmp_path / "GT" / "TRA", truth, text)
    write_tif(tmp_path / "labels.tif", scrambled(truth))  # a TYX stack without metadata
    movie = (truth > 0).astype(np.uint16) * 500 + 100
    write_tif(tmp_path / "movie.tif", movie)
    before = folder_digest(tmp_path / "GT")
    out = tmp_path / "tracks"
    code = main(
        [
            "track",
            "--labels",
            str(tmp_path / "labels.tif"),
            "--input",
            str(tmp_path / "movie.tif"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    for name in (
        "ctc/res_track.txt",
        "ctc/mask007.tif",
        "tracks.csv",
        "tracks.xml",
        "settings.json",
        "report.html",
        "figures/lineage.png",
    ):
        assert (out / name).exists(), name
    table = pd.read_csv(out / "tracks.csv")
    assert {"track_id", "frame", "y", "x", "area", "mean_intensity", "parent_id"} <= set(table)
    assert table["mean_intensity"].iloc[0] == pytest.approx(600)
    assert json.loads((out / "settings.json").read_text())["divisions"] == 1
    assert main(["qc-track", str(out), "--gt", str(gt), "--out", str(tmp_path / "qc")]) == 0
    summary = json.loads((tmp_path / "qc" / "summary.json").read_text())
    assert {"TRA", "DET", "SEG", "division_f1", "division_precision", "division_recall"} <= set(
        summary
    )
    assert summary["TRA"] == pytest.approx(1.0)
    assert (tmp_path / "qc" / "report.html").exists()
    assert folder_digest(tmp_path / "GT") == before  # inputs untouched
    assert "TRA" in capsys.readouterr().out
    # a second run into the same folder is refused without --overwrite
    assert main(["track", "--labels", str(tmp_path / "labels.tif"), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_errors_name_the_file_and_the_fix(tmp_path: Path, capsys) -> None:
    movie = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)
    tifffile.imwrite(tmp_path / "raw.tif", movie, photometric="minisblack")
    assert main(["track", "--labels", str(tmp_path / "raw.tif"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "raw.tif" in err and "not label images" in err and "What to do" in err
    assert not (tmp_path / "o" / "tracks.csv").exists()
    assert main(["track", "--out", str(tmp_path / "o")]) == 2
    assert "--labels" in capsys.readouterr().err
    frames = tmp_path / "frames"
    write_tif(frames / "a.tif", np.ones((16, 16), np.uint16))
    assert main(["track", "--labels", str(frames), "--out", str(frames)]) == 2
    assert "input" in capsys.readouterr().err
    assert main(["track", "--labels", str(frames), "--out", str(tmp_path / "one")]) == 2
    assert "only one time point" in capsys.readouterr().err
    assert main(["qc-track", str(tmp_path), "--gt", str(frames), "--out", str(tmp_path / "q")]) == 2
    assert "_track.txt" in capsys.readouterr().err


def test_a_raw_8_bit_movie_given_as_labels_is_refused(tmp_path: Path) -> None:
    truth, _ = lineage_movie()
    rng = np.random.default_rng(2)
    raw = np.clip(np.where(truth > 0, 180, 40) + rng.normal(0, 20, truth.shape), 0, 255)
    tifffile.imwrite(tmp_path / "raw8.tif", raw.astype(np.uint8))  # whole numbers, no zeros
    with pytest.raises(DeepscopeError, match="do not look like label images"):
        read_label_movie(tmp_path / "raw8.tif", axes="TYX")
    pieces = truth.copy()
    pieces[:, :, 30] = 0  # an object drawn in two pieces is still a label image
    tifffile.imwrite(tmp_path / "labels.tif", pieces)
    assert read_label_movie(tmp_path / "labels.tif", axes="TYX").data.max() == truth.max()


def test_label_folder_of_frames_is_read_in_name_order(tmp_path: Path) -> None:
    truth, _ = lineage_movie(three_d=True)
    for t, frame in enumerate(truth):
        write_tif(tmp_path / "f" / f"t{t:03d}.tif", frame)
    movie = read_label_movie(tmp_path / "f", axes="ZYX")
    assert movie.axes == "TZYX" and movie.data.shape == truth.shape
    assert np.array_equal(movie.data, truth)


def test_track_with_a_segmentation_model(tmp_path: Path) -> None:
    from deepscope.config import config_from_dict
    from deepscope.workflow.training import train

    truth, _ = lineage_movie()
    movie = np.where(truth > 0, 900, 100).astype(np.uint16)
    movie = movie + np.random.default_rng(1).integers(0, 40, movie.shape).astype(np.uint16)
    for t in (0, 5):
        write_tif(tmp_path / "images" / f"f{t}.tif", movie[t])
        write_tif(tmp_path / "masks" / f"f{t}.tif", (truth[t] > 0).astype(np.uint8))
    data = copy.deepcopy(TINY_CONFIG)
    data["task"] = "semantic"
    data["training"]["epochs"] = 3
    run = train(
        config_from_dict(data),
        tmp_path / "images",
        tmp_path / "run",
        tmp_path / "masks",
        show_bar=False,
        log=lambda _m: None,
    )
    write_tif(tmp_path / "movie.tif", movie)
    out = tmp_path / "tracks"
    code = main(
        [
            "track",
            "--input",
            str(tmp_path / "movie.tif"),
            "--model",
            str(run.model_dir),
            "--out",
            str(out),
        ]
    )
    assert code == 0  # seeded: the tiny model finds objects
    record = json.loads((out / "settings.json").read_text())
    assert record["model"] == str(run.model_dir.resolve()) and record["frames"] == T
    assert tifffile.imread(out / "ctc" / "mask007.tif").shape == truth.shape[1:]
    # segmented in 8-bit integers: the same model, as 'predict --int8'
    fast = tmp_path / "tracks8"
    args = ["track", "--input", str(tmp_path / "movie.tif"), "--model", str(run.model_dir)]
    if not int8_supported():  # no exact 8-bit convolution here: refused, nothing written
        assert main([*args, "--out", str(fast), "--int8"]) == 2
        assert not fast.exists()
        return
    assert main([*args, "--out", str(fast), "--int8"]) == 0
    masks = [tifffile.imread(d / "ctc" / "mask007.tif") > 0 for d in (out, fast)]
    assert (masks[0] == masks[1]).mean() > 0.97


def test_a_model_without_instances_is_refused() -> None:
    from types import SimpleNamespace

    from deepscope.tracking.io import Movie
    from deepscope.tracking.segment import check_instance_model

    model = SimpleNamespace(task=object(), config=SimpleNamespace(task="n2v"), folder=Path("m"))
    movie = Movie(np.zeros((2, 8, 8)), "TYX", Path("movie.tif"), ["a", "b"])
    with pytest.raises(DeepscopeError, match="does not separate objects"):
        check_instance_model(model, movie)
