"""A small, generic builder for self-contained HTML reports.

The report is plain HTML with a little inline CSS: no JavaScript and no external
resources, so it opens offline and can be e-mailed as a single file. Figures are
embedded as base64 PNG data URIs and, optionally, also saved as PNG files.

Used by the quality-control steps of every task (restoration, segmentation,
classification).
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from deepscope.data.io import atomic_write_bytes, atomic_write_text
from deepscope.errors import DeepscopeError, OutputError

__all__ = ["HtmlReport", "check_report_folder", "format_value", "safe_filename"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ccc; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
p.lead { font-size: 1.15em; background: #eef5ee; border-left: 5px solid #4a9a4a;
         padding: .6em 1em; }
p.warning { font-size: 1.15em; background: #fbeeee; border-left: 5px solid #c0392b;
            padding: .6em 1em; }
p.note { color: #555; font-size: .92em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .9em; }
caption { caption-side: top; text-align: left; font-weight: bold; padding: .3em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #444; font-size: .92em; margin-top: .3em; }
footer { margin-top: 3em; color: #777; font-size: .85em; }
"""


@runtime_checkable
class _SavesFigure(Protocol):
    """Anything with matplotlib's ``savefig`` (a ``matplotlib.figure.Figure``)."""

    def savefig(self, fname: Any, **kwargs: Any) -> None: ...


def format_value(value: Any, float_format: str = "{:.4g}") -> str:
    """Format one table cell as text.

    Parameters
    ----------
    value
        The cell value. Floats use ``float_format``; NaN and None become "–",
        infinities "∞"/"−∞", booleans "yes"/"no".
    float_format
        A ``str.format`` pattern for finite floats.

    Returns
    -------
    str
        Plain (not yet HTML-escaped) text.
    """
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        value = float(value)
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return float_format.format(value)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _rows_from(rows: Iterable[Mapping[str, Any]] | Any) -> list[Mapping[str, Any]]:
    """Turn a list of dicts or a DataFrame-like object into a list of mappings."""
    if hasattr(rows, "to_dict") and not isinstance(rows, Mapping):
        return list(rows.to_dict(orient="records"))
    if isinstance(rows, Mapping):
        raise TypeError("add_table expects a list of row dicts; use add_key_values for a dict")
    return list(rows)


def safe_filename(name: str) -> str:
    """Return ``name`` reduced to characters that are safe in a file name on any OS."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "figure"


class HtmlReport:
    """Build a self-contained HTML report step by step.

    Parameters
    ----------
    title
        Shown as the page title and the top heading.
    figures_dir
        If given, every figure added from a matplotlib figure is also saved there as a
        PNG file (written atomically). The HTML never links to it: figures are embedded.
    max_png_colors
        Matplotlib figures are saved at :attr:`DPI` and made compact: grey figures as
        8-bit grey PNGs and figures with at most 256 colours as palette PNGs, both
        lossless. Figures with more colours (several colour maps) are reduced to this
        many colours, which is invisible in plots and colour maps but several times
        smaller. None keeps every colour.

    Examples
    --------
    >>> report = HtmlReport("Quality control", figures_dir="qc/figures")
    >>> report.add_paragraph("The model beats the baseline.", css_class="lead")
    >>> report.add_table([{"image": "a.tif", "psnr": 31.2}], caption="Per image")
    >>> report.write("qc/report.html")  # doctest: +SKIP
    """

    PARAGRAPH_CLASSES = ("lead", "warning", "note")
    DPI = 100
    """Resolution (pixels per inch) at which matplotlib figures are saved."""

    def __init__(
        self,
        title: str,
        figures_dir: str | Path | None = None,
        *,
        max_png_colors: int | None = 256,
    ) -> None:
        if max_png_colors is not None and not 2 <= max_png_colors <= 256:
            raise ValueError(f"max_png_colors must be 2..256 or None, got {max_png_colors}")
        self.title = title
        self.figures_dir = Path(figures_dir) if figures_dir is not None else None
        self.max_png_colors = max_png_colors
        self._parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        self._figure_names: set[str] = set()

    def add_heading(self, text: str, level: int = 2) -> None:
        """Add a section heading.

        Parameters
        ----------
        text
            Heading text (escaped).
        level
            HTML heading level, 1 to 6.
        """
        if not 1 <= level <= 6:
            raise ValueError(f"heading level must be 1..6, got {level}")
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def add_paragraph(self, text: str, css_class: str | None = None) -> None:
        """Add a paragraph of plain text.

        Parameters
        ----------
        text
            Paragraph text (escaped; line breaks are kept).
        css_class
            Optional style: ``"lead"`` (highlighted summary), ``"warning"`` (highlighted
            problem) or ``"note"`` (small print).
        """
        if css_class is not None and css_class not in self.PARAGRAPH_CLASSES:
            raise ValueError(f"css_class must be one of {self.PARAGRAPH_CLASSES}")
        attr = f' class="{css_class}"' if css_class else ""
        body = html.escape(text).replace("\n", "<br>")
        self._parts.append(f"<p{attr}>{body}</p>")

    def add_list(self, items: Sequence[str]) -> None:
        """Add a bulleted list of plain-text items.

        Parameters
        ----------
        items
            One string per bullet (escaped).
        """
        lis = "".join(f"<li>{html.escape(item)}</li>" for item in items)
        self._parts.append(f"<ul>{lis}</ul>")

    def add_table(
        self,
        rows: Iterable[Mapping[str, Any]] | Any,
        caption: str | None = None,
        *,
        float_format: str = "{:.4g}",
    ) -> None:
        """Add a table with one row per mapping.

        Parameters
        ----------
        rows
            A list of dicts (column name → value) or a DataFrame-like object with
            ``to_dict(orient="records")``. Columns are the union of the keys, in
            order of first appearance; missing cells are shown as "–".
        caption
            Optional table caption.
        float_format
            ``str.format`` pattern for floats (see :func:`format_value`).
        """
        records = _rows_from(rows)
        columns: list[str] = list(dict.fromkeys(key for row in records for key in row))
        head = "".join(f"<th>{html.escape(str(col))}</th>" for col in columns)
        body = "".join(
            "<tr>" + "".join(_cell(row.get(col), float_format) for col in columns) + "</tr>"
            for row in records
        )
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self._parts.append(
            f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )

    def add_key_values(self, mapping: Mapping[str, Any], caption: str | None = None) -> None:
        """Add a two-column table (key | value), e.g. model information.

        Parameters
        ----------
        mapping
            Keys and values to show; values are formatted with :func:`format_value`.
        caption
            Optional table caption.
        """
        self.add_table([{"item": str(k), "value": v} for k, v in mapping.items()], caption)

    def add_figure(self, figure: Any, caption: str, filename: str | None = None) -> Path | None:
        """Embed a figure as a base64 PNG, with a caption.

        Parameters
        ----------
        figure
            A matplotlib ``Figure`` (anything with ``savefig``) or the path of an
            existing PNG file.
        caption
            Text under the figure (escaped); also used as the image's alt text.
        filename
            File name (``.png``) under ``figures_dir`` for a matplotlib figure;
            derived from the caption if not given, made unique within the report.

        Returns
        -------
        Path or None
            Where the PNG was saved, or None when nothing was written (a PNG path
            was given, or the report has no ``figures_dir``).
        """
        saved: Path | None = None
        if isinstance(figure, (str, Path)):
            png = _read_png(Path(figure))
        elif isinstance(figure, _SavesFigure):
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=self.DPI)
            png = _compact_png(buffer.getvalue(), self.max_png_colors)
            if self.figures_dir is not None:
                saved = self.figures_dir / self._unique_name(filename or caption[:40])
                atomic_write_bytes(saved, png)
        else:
            raise TypeError(f"add_figure expects a matplotlib Figure or a PNG path, got {figure!r}")
        data = base64.b64encode(png).decode("ascii")
        alt = html.escape(caption, quote=True)
        self._parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        return saved

    def _unique_name(self, stem: str) -> str:
        stem = safe_filename(stem.removesuffix(".png"))
        name, n = f"{stem}.png", 1
        while name in self._figure_names:
            n += 1
            name = f"{stem}_{n}.png"
        self._figure_names.add(name)
        return name

    def to_html(self) -> str:
        """Return the complete HTML document as a string."""
        stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        footer = f"<footer>Generated by deepscope {_version()} on {html.escape(stamp)}.</footer>"
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(self._parts)
            + f"\n{footer}\n</body>\n</html>\n"
        )

    def write(self, path: str | Path) -> Path:
        """Write the report atomically and return its path.

        Parameters
        ----------
        path
            Destination ``.html`` file; parent folders are created.

        Returns
        -------
        Path
            The written file.
        """
        path = Path(path)
        if path.is_dir():
            raise OutputError(
                "This is a folder, not a file name for the report.",
                path,
                "Give a path ending in .html.",
            )
        atomic_write_text(path, self.to_html())
        return path


#: What a quality-control step writes at the top of its folder (``figures/`` beside them).
REPORT_FILES = ("report.html", "summary.json", "metrics.csv")


def check_report_folder(
    out_dir: str | Path, sources: Sequence[str | Path], *, overwrite: bool = False
) -> None:
    """Refuse a report folder that is a data folder, a file, or holds an earlier report.

    Called before any scoring, so nothing is computed for a folder that will be refused.
    With ``overwrite``, the earlier report's files are replaced as the new ones are
    written (each atomically) and its figure files are removed first, so figures of
    images that are no longer scored do not stay behind.

    Parameters
    ----------
    out_dir
        The folder for ``report.html``, ``summary.json``, ``metrics.csv`` and ``figures/``.
    sources
        The folders (or files) the report is made from: images, targets, masks, tracks.
    overwrite
        Replace an earlier report in ``out_dir``.

    Raises
    ------
    OutputError
        When ``out_dir`` is one of ``sources`` (or the folder of a source file), is a file,
        or holds an earlier report and ``overwrite`` is not set.
    """
    out = Path(out_dir)
    resolved = out.resolve()
    for source in sources:
        src = Path(source).resolve()
        if resolved in (src, src.parent if src.is_file() else src):
            raise OutputError(
                "the report folder is a folder of the data being scored; the report "
                "would mix with your images",
                out,
                "choose a new, separate folder, e.g. --out qc/",
            )
    if out.exists() and not out.is_dir():
        raise OutputError("the report location is a file, not a folder", out, "choose a folder")
    earlier = [name for name in REPORT_FILES if (out / name).exists()]
    if not earlier:
        return
    if not overwrite:
        raise OutputError(
            f"this folder holds an earlier report ({', '.join(earlier)})",
            out,
            "choose another folder, or add --overwrite to replace that report",
        )
    figures = out / "figures"
    if figures.is_dir():
        for png in figures.glob("*.png"):
            png.unlink()


def insert_caution(path: str | Path, text: str) -> Path:
    """Put a warning paragraph right under the title of a written report (atomically).

    For findings made outside the code that built the report (e.g. quality control
    noticing that its images were training images).
    """
    path = Path(path)
    page = path.read_text()
    paragraph = f'<p class="warning">{html.escape(text)}</p>'
    head, sep, rest = page.partition("</h1>")
    atomic_write_text(path, head + sep + "\n" + paragraph + rest if sep else paragraph + page)
    return path


def _cell(value: Any, float_format: str) -> str:
    cls = ' class="num"' if _is_number(value) else ""
    return f"<td{cls}>{html.escape(format_value(value, float_format))}</td>"


def _compact_png(png: bytes, max_colors: int | None) -> bytes:
    """Re-encode an opaque RGBA PNG as grey, palette or (lossy) quantised palette PNG.

    Returns the input unchanged if it has transparency or the result is not smaller.
    """
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        if image.mode not in ("RGB", "RGBA"):
            return png
        pixels = np.asarray(image)
    if pixels.shape[-1] == 4:
        if not np.all(pixels[..., 3] == 255):
            return png
        pixels = pixels[..., :3]
    if np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(
        pixels[..., 1], pixels[..., 2]
    ):
        compact = Image.fromarray(np.ascontiguousarray(pixels[..., 0]))
    else:
        rgb = pixels.astype(np.uint32)
        keys, index = np.unique(
            rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2], return_inverse=True
        )
        if len(keys) <= 256:  # an exact palette
            compact = Image.fromarray(index.reshape(pixels.shape[:2]).astype(np.uint8))
            palette = np.stack([keys >> 16, keys >> 8 & 255, keys & 255], axis=-1)
            compact.putpalette(palette.astype(np.uint8).ravel().tolist())  # "L" → "P"
        elif max_colors is not None:
            compact = Image.fromarray(np.ascontiguousarray(pixels)).quantize(
                max_colors, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE
            )
        else:
            compact = Image.fromarray(np.ascontiguousarray(pixels))
    buffer = io.BytesIO()
    compact.save(buffer, format="PNG")
    return buffer.getvalue() if buffer.tell() < len(png) else png


def _read_png(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DeepscopeError(
            f"Cannot read the figure file ({exc}).",
            path,
            "Check that the file exists and is readable.",
        ) from exc
    if not data.startswith(b"\x89PNG"):
        raise DeepscopeError("The figure file is not a PNG image.", path, "Save figures as PNG.")
    return data


def _version() -> str:
    try:
        return version("deepscope")
    except PackageNotFoundError:
        return "(unknown version)"
