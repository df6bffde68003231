"""Brute-force k-nearest-neighbours classification, vectorised and chunked.

Behaviour follows scikit-learn's KNeighborsClassifier, which the platform's MSC classifier
is configured like: metrics euclidean / cosine / manhattan, weights uniform / distance
(exact matches take all the weight), and vote ties go to the class that sorts first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .base import PipelineFailure

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

METRICS = ("euclidean", "cosine", "manhattan")
WEIGHTS = ("uniform", "distance")

# Upper bound on the floats held by one distance block (~32 MB for float64).
_BLOCK_ELEMENTS = 4_000_000


class KnnClassifier:
    """An index of labelled embeddings that predicts a class label per query row."""

    def __init__(
        self,
        embeddings: FloatArray,
        labels: Sequence[str],
        *,
        n_neighbors: int,
        metric: str = "euclidean",
        weights: str = "uniform",
    ) -> None:
        if metric not in METRICS:
            raise PipelineFailure(f"Unknown metric {metric!r}; expected one of {list(METRICS)}")
        if weights not in WEIGHTS:
            raise PipelineFailure(f"Unknown weights {weights!r}; expected one of {list(WEIGHTS)}")
        if n_neighbors < 1:
            raise PipelineFailure(f"Expected n_neighbors > 0. Got {n_neighbors}")
        if n_neighbors > embeddings.shape[0]:
            raise PipelineFailure("n_neighbors must be <= number of samples in index")
        self.classes: list[str] = sorted(set(labels))
        lookup = {c: i for i, c in enumerate(self.classes)}
        self._codes: IntArray = np.array([lookup[c] for c in labels], dtype=np.intp)
        self.k = n_neighbors
        self.metric = metric
        self.weights = weights
        self._index = np.ascontiguousarray(embeddings, dtype=np.float64)
        if metric == "cosine":
            self._index = _unit_rows(self._index)
        self._sq_norms = np.einsum("ij,ij->i", self._index, self._index)

    def predict(self, queries: FloatArray) -> list[str]:
        """Class label per query row."""
        codes = self.predict_codes(queries)
        names = np.array(self.classes, dtype=object)
        result: list[str] = names[codes].tolist()
        return result

    def predict_codes(self, queries: FloatArray) -> IntArray:
        """Index into `classes` per query row; queries are processed in memory-bounded blocks."""
        n_index, dim = self._index.shape
        per_row = n_index * (dim if self.metric == "manhattan" else 1)
        block = max(1, _BLOCK_ELEMENTS // max(per_row, 1))
        out = np.empty(queries.shape[0], dtype=np.intp)
        for start in range(0, queries.shape[0], block):
            q = queries[start : start + block]
            out[start : start + block] = self._vote(*self._neighbours(q))
        return out

    def _distances(self, q: FloatArray) -> FloatArray:
        """Full (queries, index) distance matrix for one block, in the configured metric.

        Euclidean distances are returned squared (same ranking, cheaper); `_neighbours`
        takes the root of just the k selected ones.
        """
        if self.metric == "euclidean":
            d2: FloatArray = self._sq_norms[None, :] - 2.0 * (q @ self._index.T)
            d2 += np.einsum("ij,ij->i", q, q)[:, None]
            np.maximum(d2, 0.0, out=d2)
            return d2
        if self.metric == "cosine":
            sim: FloatArray = _unit_rows(q) @ self._index.T
            cos: FloatArray = np.maximum(1.0 - sim, 0.0)
            return cos
        l1: FloatArray = np.abs(q[:, None, :] - self._index[None, :, :]).sum(axis=-1)
        return l1

    def _neighbours(self, q: FloatArray) -> tuple[FloatArray, IntArray]:
        """Distances and index positions of the k nearest rows, nearest first."""
        d = self._distances(q)
        k = self.k
        if k < d.shape[1]:
            idx = np.argpartition(d, k - 1, axis=1)[:, :k]
        else:
            idx = np.broadcast_to(np.arange(d.shape[1]), d.shape).copy()
        near = np.take_along_axis(d, idx, axis=1)
        # Order by (distance, index position) so equal distances resolve the same way always.
        order = np.lexsort((idx, near), axis=1)
        idx = np.take_along_axis(idx, order, axis=1)
        near = np.take_along_axis(near, order, axis=1)
        if self.metric == "euclidean":
            near = np.sqrt(near)
        return near, idx

    def _vote(self, dist: FloatArray, idx: IntArray) -> IntArray:
        labels = self._codes[idx]
        if self.weights == "uniform":
            w = np.ones_like(dist)
        else:
            exact = dist <= 0.0
            with np.errstate(divide="ignore"):
                w = np.where(exact.any(axis=1, keepdims=True), exact * 1.0, 1.0 / dist)
        votes = np.zeros((labels.shape[0], len(self.classes)), dtype=np.float64)
        rows = np.arange(labels.shape[0])
        for j in range(labels.shape[1]):  # k columns; rows are unique within one column
            votes[rows, labels[:, j]] += w[:, j]
        # argmax returns the first maximum: ties go to the alphabetically first class.
        result: IntArray = votes.argmax(axis=1)
        return result


def _unit_rows(x: FloatArray) -> FloatArray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit: FloatArray = x / np.where(norms > 0.0, norms, 1.0)
    return unit
