"""Segment every frame of a movie with a trained instance model.

Any model whose task can turn its prediction into instance labels works: the contract
is ``labels = model.task.instances(predict_raw(model, frame_cf))`` (the semantic U-Net
today, StarDist when it is added).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from deepscope.errors import DeepscopeError
from deepscope.tracking.io import Movie
from deepscope.workflow.model_folder import TrainedModel


def check_instance_model(model: TrainedModel, movie: Movie) -> None:
    """Refuse a model that cannot make instance labels, or does not fit the movie."""
    if not callable(getattr(model.task, "instances", None)):
        raise DeepscopeError(
            f"this is a '{model.config.task}' model, which does not separate objects "
            "(no instance labels), so it cannot be used for tracking",
            model.folder,
            "use a segmentation model that gives one label per object (e.g. a 'semantic' "
            "model trained with --boundary, or a StarDist model), or give label images "
            "with --labels",
        )
    dims = model.config.data.spatial_dims
    if dims != movie.spatial_dims:
        raise DeepscopeError(
            f"the model is {dims}D but the movie's frames are {movie.spatial_dims}D "
            f"(axes {movie.axes})",
            movie.source,
            "use a model trained on frames like these, or give the right axes with --axes",
        )


def segment_movie(
    model: TrainedModel,
    movie: Movie,
    progress: Callable[[int, int], None] | None = None,
    tiles=None,  # noqa: ANN001  (TileSettings)
) -> np.ndarray:
    """Instance labels of every frame, ``(T, *spatial)`` int32.

    Parameters
    ----------
    model
        A loaded model folder whose task has ``instances``.
    movie
        The movie (channels as the model expects).
    progress
        Called with (frames done, frames) after each frame.
    tiles
        Tile settings for large frames (``deepscope.workflow.predict.TileSettings``).
    """
    from deepscope.workflow.predict import predict_raw

    check_instance_model(model, movie)
    out = np.zeros((movie.n_frames, *movie.data.shape[-movie.spatial_dims :]), dtype=np.int32)
    grid = model.task.reads_grid_output
    for t in range(movie.n_frames):
        raw = predict_raw(model, movie.frame_channel_first(t), tiles, grid=grid)
        out[t] = model.task.instances(raw)
        if progress:
            progress(t + 1, movie.n_frames)
    return out
