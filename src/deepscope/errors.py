"""Errors that a person can act on: every one names the file and says what to do."""

from __future__ import annotations

from pathlib import Path


class DeepscopeError(Exception):
    """An error caused by the user's input or environment, with a fix.

    Parameters
    ----------
    problem
        What is wrong, in plain words.
    path
        The file or folder concerned, if any.
    fix
        What the user should do about it.
    """

    def __init__(self, problem: str, path: str | Path | None = None, fix: str | None = None):
        self.problem = problem
        self.path = Path(path) if path is not None else None
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(f"{self.path}: ")
        parts.append(self.problem)
        if self.fix:
            parts.append(f"\n  What to do: {self.fix}")
        return "".join(parts)

    def __reduce__(self):  # noqa: ANN204
        # Rebuilt with its parts when it crosses processes (a Dask worker's error).
        return (_rebuild, (type(self), self.problem, self.path, self.fix))


def _rebuild(
    cls: type[DeepscopeError], problem: str, path: Path | None, fix: str | None
) -> DeepscopeError:
    """Rebuild a pickled error with its parts, whatever its class's ``__init__`` takes."""
    err = DeepscopeError.__new__(cls)
    DeepscopeError.__init__(err, problem, path, fix)
    return err


class ImageReadError(DeepscopeError):
    """An image file could not be read or is not usable."""


class ConfigError(DeepscopeError):
    """A configuration file or option is invalid."""


class ModelFolderError(DeepscopeError):
    """A model folder is missing, incomplete or of an unsupported format version."""


class OutputError(DeepscopeError):
    """An output location cannot be written safely."""
