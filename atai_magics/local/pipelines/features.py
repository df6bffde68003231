"""A small, fast, deterministic window encoder: the local stand-in for an Omega embedding.

Each window of shape (channels, window_size) becomes a fixed vector of per-channel summary
statistics and spectral band energies. It is not a learned model, but it separates the kinds
of machine states users classify (levels, variability, trends, vibration frequencies) well
enough to rehearse a job, and it runs at tens of thousands of windows per second on one core.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

FloatArray = npt.NDArray[np.float64]

N_BANDS = 4


def window_starts(n_rows: int, window_size: int, step_size: int) -> int:
    """How many windows a file of ``n_rows`` yields: (rows - window) // step + 1, or 0."""
    if n_rows < window_size:
        return 0
    return (n_rows - window_size) // step_size + 1


def windows_view(values: FloatArray, window_size: int, step_size: int) -> FloatArray:
    """A zero-copy (n_windows, channels, window_size) view over rows of shape (rows, channels)."""
    view: FloatArray = sliding_window_view(values, window_size, axis=0)[::step_size]
    return view


def _band_edges(window_size: int) -> npt.NDArray[np.intp]:
    """Start indices of the spectral bands over the non-DC rfft bins (fewer for tiny windows)."""
    n_bins = window_size // 2  # rfft bins excluding DC
    n_bands = max(1, min(N_BANDS, n_bins))
    edges = np.linspace(0, n_bins, n_bands + 1).astype(np.intp)[:-1]
    return np.unique(edges)


def features_per_channel(window_size: int) -> int:
    return 5 + len(_band_edges(window_size))


def embed(windows: FloatArray) -> FloatArray:
    """Encode windows (n, channels, window_size) into features (n, channels * F), vectorised."""
    n, channels, width = windows.shape
    x = np.ascontiguousarray(windows, dtype=np.float64)
    mean = x.mean(axis=-1)
    centred = x - mean[..., None]
    std = np.sqrt(np.einsum("ncw,ncw->nc", centred, centred) / width)
    t = np.arange(width, dtype=np.float64) - (width - 1) / 2.0
    slope = centred @ (t / float(t @ t))
    power = np.abs(np.fft.rfft(centred, axis=-1)[..., 1:]) ** 2 / width
    bands = np.log1p(np.add.reduceat(power, _band_edges(width), axis=-1))
    stats = np.stack([mean, std, x.min(axis=-1), x.max(axis=-1), slope], axis=-1)
    out = np.concatenate([stats, bands], axis=-1)
    return out.reshape(n, channels * out.shape[-1])


def embed_rows(
    values: FloatArray, window_size: int, step_size: int, chunk: int = 4096
) -> Iterator[FloatArray]:
    """Embed all windows of a block of rows, ``chunk`` windows at a time to bound memory."""
    if values.shape[0] < window_size:
        return
    view = windows_view(values, window_size, step_size)
    for start in range(0, view.shape[0], chunk):
        yield embed(view[start : start + chunk])


@dataclass(frozen=True)
class Standardizer:
    """Per-feature z-scoring fitted on the n-shot embeddings, optional L2 normalisation."""

    mean: FloatArray
    scale: FloatArray
    l2_normalize: bool

    @classmethod
    def fit(cls, embeddings: FloatArray, l2_normalize: bool) -> Standardizer:
        mean = embeddings.mean(axis=0)
        scale = embeddings.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        return cls(mean, scale, l2_normalize)

    def transform(self, embeddings: FloatArray) -> FloatArray:
        z: FloatArray = (embeddings - self.mean) / self.scale
        if self.l2_normalize:
            norms = np.linalg.norm(z, axis=1, keepdims=True)
            z = z / np.where(norms > 1e-12, norms, 1.0)
        return z
