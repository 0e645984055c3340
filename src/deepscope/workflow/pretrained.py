"""Named pretrained models shipped inside the package (e.g. ``nuclei``).

Wherever a model folder is expected (``deepscope predict MODEL``, ``qc MODEL``,
``train --from MODEL``), a name such as ``nuclei`` stands for the model folder of that
name under ``deepscope/pretrained/``. A folder that exists at the given path always wins,
so a user's own folder called ``nuclei`` is never shadowed.
"""

from __future__ import annotations

from pathlib import Path

from deepscope.workflow.model_folder import INFO_FILE

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"


def available_pretrained() -> list[str]:
    """Names of the shipped pretrained models."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / INFO_FILE).is_file())


def resolve_model(model: str | Path) -> Path:
    """The model folder meant by ``model``: an existing path, else a shipped model's name.

    Parameters
    ----------
    model
        A model folder path, or the name of a shipped model (see
        :func:`available_pretrained`).

    Returns
    -------
    Path
        The folder to load; unknown names are returned unchanged, so that loading them
        gives the usual "model folder not found" error (which lists the shipped names).
    """
    path = Path(model)
    if path.exists():
        return path
    name = str(model)
    if name in available_pretrained():
        return PRETRAINED_DIR / name
    return path
