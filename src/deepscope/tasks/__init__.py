"""Task plugins. Each task registers itself; look one up with :func:`get_task`."""

from deepscope.tasks.base import Task, available_tasks, get_task, register_task

# Importing the task modules registers them.
from deepscope.tasks import n2v as _n2v  # noqa: E402,F401  isort: skip
from deepscope.tasks import restoration as _restoration  # noqa: E402,F401  isort: skip
from deepscope.tasks import semantic as _semantic  # noqa: E402,F401  isort: skip
from deepscope.tasks import classify as _classify  # noqa: E402,F401  isort: skip
from deepscope.tasks import stardist as _stardist  # noqa: E402,F401  isort: skip

__all__ = ["Task", "available_tasks", "get_task", "register_task"]
