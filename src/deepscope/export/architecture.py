"""The network's source code as a file that runs without deepscope installed.

A BioImage.IO ``pytorch_state_dict`` entry names a Python file shipped in the package and
a callable in it (``architecture.source`` / ``architecture.callable``), so that any
consumer (bioimageio.core, ilastik, napari plugins) can rebuild the network with only
PyTorch. The deepscope architecture modules depend on deepscope only for registering
themselves; those lines are left out here and the result is checked by running it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from torch import nn

from deepscope.errors import DeepscopeError

_HEADER = (
    "# Network architecture exported by deepscope (source of {module}).\n"
    "# Needs only PyTorch. Build it with {callable}(**kwargs), kwargs as in bioimageio.yaml.\n"
)


def standalone_source(network: nn.Module) -> tuple[str, str]:
    """Return (source text, class name) of ``network``'s class without deepscope imports.

    Architecture modules that build on another one (StarDist's network on the U-Net) get
    that module's source inlined before their own, with the import line removed.

    Raises
    ------
    DeepscopeError
        When the module needs more of deepscope than its registration and other
        architecture modules (it cannot be shipped as one file).
    """
    cls = type(network)
    module = inspect.getmodule(cls)
    if module is None or module.__file__ is None:
        raise DeepscopeError(f"the source of the network class {cls.__name__} is not available")
    body = _inlined_lines(module.__name__, cls.__name__, set())
    header = _HEADER.format(module=module.__name__, callable=cls.__name__)
    return header + "from __future__ import annotations\n\n" + "\n".join(body) + "\n", cls.__name__


def _inlined_lines(module_name: str, class_name: str, seen: set[str]) -> list[str]:
    """Source lines of ``module_name`` with deepscope architecture imports inlined."""
    seen.add(module_name)
    module = importlib.import_module(module_name)
    assert module.__file__ is not None
    kept: list[str] = []
    inlined: list[str] = []
    for line in Path(module.__file__).read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("from __future__"):
            continue
        if stripped.startswith(("from deepscope", "import deepscope")) and "register" in line:
            continue
        if stripped.startswith("@register_model("):
            continue
        if "deepscope" in stripped and stripped.startswith(("from ", "import ")):
            words = stripped.split()
            source = words[1] if words[0] == "from" else ""
            if source.startswith("deepscope.engine.models.") and " as " not in stripped:
                if source not in seen:
                    inlined += _inlined_lines(source, class_name, seen)
                continue
            raise DeepscopeError(
                f"the network {class_name} imports other deepscope modules "
                f"({stripped!r}) and cannot be exported as a single source file",
                module.__file__,
                "export with --format torchscript or onnx instead",
            )
        kept.append(line)
    return inlined + kept


def load_standalone(source: str, name: str) -> ModuleType:
    """Import ``source`` as a fresh module (to check that it runs on its own)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(f"_deepscope_export_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        finally:
            sys.modules.pop(spec.name, None)
    return module
