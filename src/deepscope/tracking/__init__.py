"""Tracking through time-lapses: read label movies, link objects, export, measure quality.

Modules, each with one job:

- :mod:`~deepscope.tracking.io`: movies and label stacks (files, folders of frames, CTC folders).
- :mod:`~deepscope.tracking.segment`: segment a movie frame by frame with any instance model.
- :mod:`~deepscope.tracking.defaults`: linking parameters derived from the objects themselves.
- :mod:`~deepscope.tracking.linking`: LAP linking with gap closing and divisions (laptrack).
- :mod:`~deepscope.tracking.export`: CTC ``mask*.tif`` + ``res_track.txt``, tracks CSV,
  TrackMate XML.
- :mod:`~deepscope.tracking.figures`: pictures and the HTML report.
- :mod:`~deepscope.tracking.qc_track`: CTC TRA/DET/SEG and division scores (traccuracy).
- :mod:`~deepscope.tracking.run`: the ``deepscope track`` workflow.
"""
