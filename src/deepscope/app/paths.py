"""Confine every path the web app touches to the folders the user allowed.

The app may read from the data roots given at start (``--data-root``) and read and write
in the runs folder (``--runs``). Any path from a request is checked here first: no
``..`` parts, no NUL bytes, and after resolving symbolic links it must still lie inside
an allowed folder, so a link that points elsewhere is refused too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from deepscope.data.io import is_image_path
from deepscope.errors import DeepscopeError

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


class PathRefused(DeepscopeError):
    """A path outside the allowed folders (or otherwise unsafe) was asked for."""


@dataclass
class Roots:
    """The folders the app may use.

    Attributes
    ----------
    data
        Folders the user allowed to browse and read (resolved, absolute).
    runs
        The folder that holds the app's run folders (read and write).
    """

    data: list[Path]
    runs: Path
    _all: list[Path] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.data = [Path(p).expanduser().resolve() for p in self.data]
        self.runs = Path(self.runs).expanduser().resolve()
        self._all = [*self.data, self.runs]

    @property
    def all(self) -> list[Path]:
        """Data roots and the runs folder."""
        return list(self._all)

    def confine(self, text: str | Path, *, must_exist: bool = True) -> Path:
        """Return the resolved path of ``text`` if it lies inside an allowed folder.

        Parameters
        ----------
        text
            An absolute path, or one relative to the first data root.
        must_exist
            Refuse paths that do not exist.

        Raises
        ------
        PathRefused
            For ``..`` parts, NUL bytes, symbolic links leading outside, or paths
            outside every allowed folder.
        """
        raw = str(text)
        if not raw or "\x00" in raw:
            raise PathRefused("an empty or malformed path was given", fix="choose a folder")
        candidate = Path(raw).expanduser()
        if ".." in candidate.parts:
            raise PathRefused(
                "paths with '..' are not accepted",
                raw,
                "choose the folder with the file browser",
            )
        if not candidate.is_absolute():
            candidate = (self.data[0] if self.data else self.runs) / candidate
        resolved = candidate.resolve()
        if not any(resolved == r or resolved.is_relative_to(r) for r in self._all):
            raise PathRefused(
                "this path is outside the folders the app may use",
                raw,
                "start 'deepscope app --data-root FOLDER' with the folder that holds your data",
            )
        if must_exist and not resolved.exists():
            raise PathRefused("this file or folder does not exist", raw, "check the path")
        return resolved

    def inside_runs(self, path: Path) -> bool:
        """Whether ``path`` (resolved) lies inside the runs folder."""
        path = Path(path).resolve()
        return path == self.runs or path.is_relative_to(self.runs)

    def run_dir(self, name: str, *, must_exist: bool = True) -> Path:
        """The folder of the run called ``name`` (a plain name, no slashes).

        Raises
        ------
        PathRefused
            For names with other characters than letters, digits, ``.``, ``_``, ``-``,
            run folders that are symbolic links, or missing runs when ``must_exist``.
        """
        if not RUN_NAME.match(name or ""):
            raise PathRefused(
                f"{name!r} is not a valid run name",
                fix="use letters, digits, '.', '_' and '-' only (at most 80), starting "
                "with a letter or digit",
            )
        path = self.runs / name
        if path.is_symlink():
            raise PathRefused("run folders may not be symbolic links", path)
        if must_exist and not path.is_dir():
            raise PathRefused("there is no run of this name", path, "pick a run from the list")
        return path

    def file_in(self, base: Path, relative: str) -> Path:
        """Return ``base/relative`` if it is an existing file that stays inside ``base``."""
        if "\x00" in relative or ".." in Path(relative).parts or Path(relative).is_absolute():
            raise PathRefused("this file path is not accepted", relative)
        path = (base / relative).resolve()
        if not path.is_relative_to(base.resolve()) or not path.is_file():
            raise PathRefused("no such file in this folder", relative)
        return path


def list_folder(folder: Path) -> dict:
    """Describe the entries of ``folder`` for the file browser (hidden entries skipped).

    Returns
    -------
    dict
        ``folders`` (name, path, image count) and ``images`` (name, path), sorted by name;
        OME-Zarr folders count as images.
    """
    folders, images = [], []
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name.lower())
    except OSError as err:
        raise DeepscopeError(
            f"this folder cannot be read ({err.strerror})", folder, "check its permissions"
        ) from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if is_image_path(entry) and (entry.is_file() or entry.is_dir()):
            images.append({"name": entry.name, "path": str(entry)})
        elif entry.is_dir():
            try:
                count = sum(
                    1 for p in entry.iterdir() if is_image_path(p) and not p.name.startswith(".")
                )
            except OSError:
                count = 0
            folders.append({"name": entry.name, "path": str(entry), "images": count})
    return {"folders": folders, "images": images}
