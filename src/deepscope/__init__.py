"""deepscope: train, check and apply deep-learning models on your own microscopy images.

From Python, the steps of the command line are functions of this package (see
:mod:`deepscope.interfaces.api`): ``deepscope.validate``, ``train``, ``load_model``,
``predict``, ``predict_image`` (and ``predict_image_outputs``), ``evaluate`` (quality
control), ``export_model``, ``import_model`` and ``track``. They are imported on first
use, so ``import deepscope`` stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: The public Python API, defined in :mod:`deepscope.interfaces.api`.
__all__ = [
    "evaluate",
    "export_model",
    "import_model",
    "load_model",
    "make_config",
    "predict",
    "predict_image",
    "predict_image_outputs",
    "track",
    "train",
    "validate",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from deepscope.interfaces import api

        return getattr(api, name)
    raise AttributeError(f"module 'deepscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
