"""Percentile normalisation whose statistics are stored with the model and reused."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

_MAX_SAMPLES = 4_000_000


@dataclass(frozen=True)
class PercentileNormalizer:
    """Map the ``low_pct`` percentile of each channel to 0 and ``high_pct`` to 1.

    The statistics are computed once on the training images (per channel, over all
    images) and saved in the model folder so that prediction uses exactly the same map.
    With ``per_image`` each image is instead mapped by its own percentiles (as StarDist
    does), which suits models applied to images of any brightness or bit depth (e.g. a
    shipped pretrained model); the stored statistics then serve only ``denormalize``.
    """

    low_pct: float
    high_pct: float
    low: tuple[float, ...]
    high: tuple[float, ...]
    per_image: bool = False

    @classmethod
    def fit(
        cls,
        images: Sequence[np.ndarray],
        low_pct: float = 1.0,
        high_pct: float = 99.8,
        per_image: bool = False,
    ) -> PercentileNormalizer:
        """Compute per-channel percentiles over channel-first images (C, *spatial)."""
        n_ch = images[0].shape[0]
        rng = np.random.default_rng(0)
        lows, highs = [], []
        for c in range(n_ch):
            values = np.concatenate([np.asarray(im[c], dtype=np.float32).ravel() for im in images])
            if values.size > _MAX_SAMPLES:
                values = rng.choice(values, _MAX_SAMPLES, replace=False)
            lo, hi = np.percentile(values, [low_pct, high_pct])
            if hi <= lo:  # constant channel: keep a unit scale rather than dividing by zero
                hi = lo + 1.0
            lows.append(float(lo))
            highs.append(float(hi))
        return cls(low_pct, high_pct, tuple(lows), tuple(highs), per_image)

    def _shape(self, values: tuple[float, ...], ndim: int) -> np.ndarray:
        return np.asarray(values, dtype=np.float32).reshape((-1,) + (1,) * (ndim - 1))

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """Channel-first image → float32 with the stored (or, per image, its own) statistics."""
        if self.per_image:
            own = PercentileNormalizer.fit([image], self.low_pct, self.high_pct)
            lo, hi = self._shape(own.low, image.ndim), self._shape(own.high, image.ndim)
            return ((np.asarray(image, dtype=np.float32) - lo) / (hi - lo)).astype(np.float32)
        lo, hi = self._shape(self.low, image.ndim), self._shape(self.high, image.ndim)
        return ((np.asarray(image, dtype=np.float32) - lo) / (hi - lo)).astype(np.float32)

    def denormalize(self, image: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`normalize` (float32)."""
        lo, hi = self._shape(self.low, image.ndim), self._shape(self.high, image.ndim)
        return (np.asarray(image, dtype=np.float32) * (hi - lo) + lo).astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-ready representation."""
        return {"method": "percentile", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> PercentileNormalizer:
        """Rebuild from :meth:`to_dict` output."""
        if d.get("method") != "percentile":
            raise ValueError(f"unknown normalisation method {d.get('method')!r}")
        return cls(
            d["low_pct"],
            d["high_pct"],
            tuple(d["low"]),
            tuple(d["high"]),
            bool(d.get("per_image", False)),
        )
