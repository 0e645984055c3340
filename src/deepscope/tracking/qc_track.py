"""Score tracks against Cell Tracking Challenge ground truth, with traccuracy.

- **TRA**, **DET** (and LNK): the CTC measures (AOGM-based, 1 is perfect), from
  traccuracy's ``CTCMatcher`` (a result object matches a reference object that it
  covers for more than half) and ``CTCMetrics``.
- **SEG**: the CTC segmentation measure, the mean Jaccard index (IoU) of every reference
  object of the SEG ground truth with the result object covering more than half of it
  (0 when there is none). Needs full-frame SEG masks (``man_seg000.tif`` …); computed
  only when such a folder is found or given.
- **Divisions**: precision, recall and F1 of the mother cells, from traccuracy's
  ``DivisionMetrics`` on a one-to-one IoU ≥ 0.5 matching; exact frame and, as a
  tolerant variant, within one frame.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.data.io import atomic_write_text, list_images, read_image
from deepscope.errors import DeepscopeError

_CTC_FIX = (
    "give a Cell Tracking Challenge folder: one label image per frame (e.g. "
    "man_track000.tif …, or mask000.tif …) and its lineage file (man_track.txt or "
    "res_track.txt) in the same folder"
)


def find_result_folder(path: Path) -> Path:
    """The CTC folder of a tracking result: ``path/ctc`` of ``deepscope track``, or ``path``."""
    path = Path(path)
    if (path / "ctc" / "res_track.txt").is_file():
        return path / "ctc"
    return path


def _track_file(folder: Path) -> Path:
    found = sorted(folder.glob("*_track.txt"))
    if not folder.is_dir():
        raise DeepscopeError("this folder does not exist", folder, _CTC_FIX)
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise DeepscopeError(
            f"{what} lineage file (*_track.txt) found in this folder", folder, _CTC_FIX
        )
    return found[0]


def load_ctc(folder: Path, name: str):  # noqa: ANN201
    """Load a CTC folder as a ``traccuracy.TrackingGraph`` (clear errors if it is not one)."""
    from traccuracy.loaders import load_ctc_data

    folder = Path(folder)
    track_file = _track_file(folder)
    list_images(folder)  # a clear error when there are no images
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_ctc_data(str(folder), str(track_file), name=name, run_checks=True)
    except (ValueError, FileNotFoundError) as err:
        raise DeepscopeError(
            f"this is not a consistent Cell Tracking Challenge folder ({err})", folder, _CTC_FIX
        ) from None


def seg_score(seg_folder: Path, result: np.ndarray) -> tuple[float, int]:
    """CTC SEG of a result label movie against full-frame ``man_seg*.tif`` masks.

    Returns
    -------
    tuple
        (SEG, number of reference objects).
    """
    from traccuracy.matchers import get_labels_with_overlap

    scores: list[float] = []
    for path in list_images(seg_folder):
        digits = re.findall(r"\d+", path.stem)
        if len(digits) != 1:
            raise DeepscopeError(
                "SEG masks of single slices of 3D frames (man_seg_T_Z.tif) are not supported",
                path,
                "give full-frame SEG masks (man_seg000.tif …) or leave out --seg-gt",
            )
        t = int(digits[0])
        if t >= len(result):
            raise DeepscopeError(
                f"this SEG mask is of frame {t}, but the result has {len(result)} frames",
                path,
                "give the SEG folder of this movie",
            )
        gt = read_image(path).data.squeeze()
        if gt.shape != result[t].shape:
            raise DeepscopeError(
                f"this SEG mask has shape {gt.shape}, the result frames {result[t].shape}",
                path,
                "give the SEG folder of this movie",
            )
        gt = gt.astype(np.int64)
        res = np.asarray(result[t], np.int64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "boxes not provided": regionprops is used
            iogt = {(g, r): v for g, r, v in get_labels_with_overlap(gt, res, overlap="iogt")}
            iou = {(g, r): v for g, r, v in get_labels_with_overlap(gt, res, overlap="iou")}
        best: dict[int, float] = {int(g): 0.0 for g in np.unique(gt) if g}
        for (g, r), v in iogt.items():
            if v > 0.5:
                best[int(g)] = float(iou[(g, r)])
        scores += list(best.values())
    return (float(np.mean(scores)) if scores else float("nan")), len(scores)


def _division_scores(gt, pred) -> dict[str, Any]:  # noqa: ANN001
    from traccuracy import run_metrics
    from traccuracy.matchers import IOUMatcher
    from traccuracy.metrics import DivisionMetrics

    gt.clear_annotations()
    pred.clear_annotations()
    results, _ = run_metrics(
        gt, pred, IOUMatcher(iou_threshold=0.5, one_to_one=True), [DivisionMetrics(1)]
    )
    return results[0]["results"]


def score_tracks(
    result: Path,
    gt: Path,
    seg_gt: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compute TRA, DET, LNK, SEG and division scores of a tracking result.

    Parameters
    ----------
    result
        A ``deepscope track`` output folder, or any CTC result folder (masks + res_track.txt).
    gt
        The CTC ground-truth TRA folder (``man_track*.tif`` + ``man_track.txt``).
    seg_gt
        Folder of full-frame SEG masks; default: a ``SEG`` folder beside ``gt``, if any.
    progress
        Called with the name of each step.

    Returns
    -------
    dict
        ``TRA``, ``DET``, ``LNK``, ``SEG`` (None without SEG masks), ``division_precision``,
        ``division_recall``, ``division_f1`` (exact frame), the same within one frame
        (``*_tolerant``) and the error counts.
    """
    from traccuracy import run_metrics
    from traccuracy.matchers import CTCMatcher
    from traccuracy.metrics import CTCMetrics

    say = progress or (lambda _msg: None)
    logging.getLogger("traccuracy").setLevel(logging.ERROR)
    result = find_result_folder(result)
    say("reading the ground truth")
    gt_graph = load_ctc(gt, "ground truth")
    say("reading the result")
    pred_graph = load_ctc(result, "result")
    if gt_graph.segmentation.shape != pred_graph.segmentation.shape:
        raise DeepscopeError(
            f"the result has frames of shape {pred_graph.segmentation.shape} but the ground "
            f"truth {gt_graph.segmentation.shape}",
            result,
            "compare a result with the ground truth of the same movie (same frames and size)",
        )
    say("matching objects and scoring tracks (CTC TRA/DET)")
    ctc, _ = run_metrics(gt_graph, pred_graph, CTCMatcher(), [CTCMetrics()])
    c = ctc[0]["results"]
    say("scoring divisions")
    div = _division_scores(gt_graph, pred_graph)
    exact, tolerant = div.get("Frame Buffer 0", {}), div.get("Frame Buffer 1", {})
    seg_folder = Path(seg_gt) if seg_gt else Path(gt).parent / "SEG"
    seg, n_seg, seg_note = None, 0, "no SEG masks found beside the ground truth (--seg-gt)"
    if seg_gt is not None or seg_folder.is_dir():
        say("scoring the segmentation (CTC SEG)")
        try:
            seg, n_seg = seg_score(seg_folder, pred_graph.segmentation)
            seg_note = f"SEG masks: {seg_folder.resolve()}"
        except DeepscopeError as err:
            if seg_gt is not None:
                raise
            seg_note = f"SEG not computed: {err.problem}"  # found by itself: skip, say why

    def num(v: Any) -> float | None:
        return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)

    return {
        "TRA": num(c["TRA"]),
        "DET": num(c["DET"]),
        "LNK": num(c.get("LNK")),
        "SEG": num(seg),
        "division_precision": num(exact.get("Division Precision")),
        "division_recall": num(exact.get("Division Recall")),
        "division_f1": num(exact.get("Division F1")),
        "division_precision_tolerant": num(tolerant.get("Division Precision")),
        "division_recall_tolerant": num(tolerant.get("Division Recall")),
        "division_f1_tolerant": num(tolerant.get("Division F1")),
        "counts": {
            "gt_objects": gt_graph.graph.number_of_nodes(),
            "result_objects": pred_graph.graph.number_of_nodes(),
            "gt_divisions": int(exact.get("Total GT Divisions", 0)),
            "result_divisions": len(pred_graph.get_divisions()),
            "seg_reference_objects": n_seg,
            **{
                k: c[k]
                for k in ("fp_nodes", "fn_nodes", "ns_nodes", "fp_edges", "fn_edges", "ws_edges")
                if k in c
            },
        },
        "result": str(result.resolve()),
        "ground_truth": str(Path(gt).resolve()),
        "seg_note": seg_note,
    }


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` atomically."""
    return atomic_write_text(Path(out_dir) / "summary.json", json.dumps(summary, indent=2))


def run_qc_track(
    result: Path,
    gt: Path,
    out_dir: Path,
    seg_gt: Path | None = None,
    progress: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score a tracking result and write ``summary.json`` and ``report.html`` to ``out_dir``.

    ``summary.json`` holds ``{"TRA": …, "DET": …, "SEG": …, "division_f1": …}`` plus
    division precision/recall, LNK, the tolerant division scores and error counts. An
    ``out_dir`` with an earlier report is refused unless ``overwrite`` is set.
    """
    from deepscope.workflow.report import HtmlReport, check_report_folder

    out_dir = Path(out_dir)
    sources = [Path(result), find_result_folder(result), Path(gt)]
    check_report_folder(out_dir, sources + ([Path(seg_gt)] if seg_gt else []), overwrite=overwrite)
    summary = score_tracks(result, gt, seg_gt, progress)
    write_summary(out_dir, summary)
    report = HtmlReport("Tracking quality control")
    report.add_paragraph(
        f"TRA {_fmt(summary['TRA'])}, DET {_fmt(summary['DET'])}, SEG {_fmt(summary['SEG'])}, "
        f"division F1 {_fmt(summary['division_f1'])} (1 is perfect for all).",
        css_class="lead",
    )
    report.add_table(
        [
            {
                "measure": "TRA",
                "value": summary["TRA"],
                "meaning": "tracking: objects and links, weighted as in the CTC (AOGM)",
            },
            {"measure": "DET", "value": summary["DET"], "meaning": "detection of the objects"},
            {"measure": "LNK", "value": summary["LNK"], "meaning": "links between frames only"},
            {
                "measure": "SEG",
                "value": summary["SEG"],
                "meaning": "mean IoU with the reference outlines (needs SEG masks)",
            },
            {
                "measure": "division precision",
                "value": summary["division_precision"],
                "meaning": "found divisions that are real (same frame)",
            },
            {
                "measure": "division recall",
                "value": summary["division_recall"],
                "meaning": "real divisions that were found (same frame)",
            },
            {"measure": "division F1", "value": summary["division_f1"], "meaning": "both together"},
            {
                "measure": "division F1 (±1 frame)",
                "value": summary["division_f1_tolerant"],
                "meaning": "divisions found one frame early or late count as found",
            },
        ],
        caption="Scores",
    )
    report.add_key_values(summary["counts"], caption="Counts and errors")
    if summary["SEG"] is None:
        report.add_paragraph(summary["seg_note"], css_class="note")
    report.add_paragraph(
        f"Result: {summary['result']}. Ground truth: {summary['ground_truth']}."
        " Metrics computed with traccuracy.",
        css_class="note",
    )
    report.write(out_dir / "report.html")
    return summary


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
