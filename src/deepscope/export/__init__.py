"""Share and reuse models: BioImage.IO packages, ONNX and TorchScript files, import.

- :func:`export_model` — ``deepscope export MODEL --format bioimageio|onnx|torchscript``
- :func:`import_model` — ``deepscope import PACKAGE.zip --out FOLDER``
- :mod:`deepscope.export.descriptions` — the per-task entries the exporter reads
- :mod:`deepscope.export.onnx_engine` — prediction through ONNX Runtime
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from deepscope.errors import DeepscopeError

FORMATS = ("bioimageio", "onnx", "torchscript")


def export_model(
    model_folder: str | Path,
    fmt: str,
    out: str | Path,
    *,
    authors: Sequence[str] | None = None,
    license: str | None = None,
    name: str | None = None,
    sample: str | Path | None = None,
    check: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Export a deepscope model folder in ``fmt`` (one of :data:`FORMATS`) to ``out``.

    ``authors``, ``license``, ``name``, ``sample`` and ``check`` apply to BioImage.IO
    packages (see :func:`deepscope.export.bioimageio.export_bioimageio`); given for
    another format they are refused.

    Raises
    ------
    DeepscopeError
        When ``fmt`` is not one of :data:`FORMATS`, or a BioImage.IO setting is given
        for another format.
    """
    if fmt not in FORMATS:  # checked before anything is read
        raise DeepscopeError(
            f"unknown export format '{fmt}'", fix=f"use one of {', '.join(FORMATS)}"
        )
    if fmt != "bioimageio":
        given = [
            key
            for key, value in (
                ("authors", authors),
                ("license", license),
                ("name", name),
                ("sample", sample),
                ("no check", not check),
            )
            if value
        ]
        if given:
            raise DeepscopeError(
                f"{', '.join(given)}: only for BioImage.IO packages (--format bioimageio), "
                f"not for {fmt}",
                fix=f"leave out {', '.join(given)}",
            )
    if fmt == "bioimageio":
        from deepscope.export.bioimageio import export_bioimageio

        return export_bioimageio(
            model_folder,
            out,
            authors=authors,
            license=license,
            name=name,
            sample=sample,
            check=check,
            log=log,
        )
    if fmt in ("onnx", "torchscript"):
        from deepscope.export.network_files import export_network

        return export_network(model_folder, fmt, out, log=log)
    raise AssertionError(fmt)  # every name of FORMATS is handled above


def import_model(
    source: str | Path,
    out: str | Path,
    *,
    weights_format: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Import a BioImage.IO package as a deepscope model folder (see ``importer``)."""
    from deepscope.export.importer import import_bioimageio

    return import_bioimageio(source, out, weights_format=weights_format, log=log)


__all__ = ["FORMATS", "export_model", "import_model"]
