"""The guided local web app (``deepscope app``): a thin layer over the workflow API.

Modules: :mod:`~deepscope.app.server` (FastAPI app), :mod:`~deepscope.app.jobs` (worker
processes and the SQLite job table), :mod:`~deepscope.app.worker` (what a worker runs),
:mod:`~deepscope.app.paths` (confinement to the allowed folders),
:mod:`~deepscope.app.forms` (settings forms from the pydantic configs),
:mod:`~deepscope.app.runs` (the runs page, from the run folders),
:mod:`~deepscope.app.thumbs` and :mod:`~deepscope.app.examples` (pictures).
"""
