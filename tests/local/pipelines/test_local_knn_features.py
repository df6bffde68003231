"""The numeric core: window encoder, standardiser and k-NN, checked against naive references."""

from __future__ import annotations

import numpy as np
import pytest

from atai_magics.local.pipelines.base import PipelineFailure
from atai_magics.local.pipelines.features import (
    Standardizer,
    embed,
    embed_rows,
    features_per_channel,
    window_starts,
    windows_view,
)
from atai_magics.local.pipelines.knn import KnnClassifier


def naive_knn(
    index: np.ndarray, labels: list[str], q: np.ndarray, k: int, metric: str, weights: str
) -> str:
    """Straight-line reference: one query, Python loops, same tie rules."""
    dists: list[float] = []
    for row in index:
        if metric == "euclidean":
            d = float(np.sqrt(((row - q) ** 2).sum()))
        elif metric == "manhattan":
            d = float(np.abs(row - q).sum())
        else:
            d = 1.0 - float(row @ q / (np.linalg.norm(row) * np.linalg.norm(q)))
        dists.append(max(d, 0.0))
    order = sorted(range(len(index)), key=lambda i: (dists[i], i))[:k]
    votes: dict[str, float] = {}
    exact = [i for i in order if dists[i] == 0.0]
    for i in order:
        if weights == "uniform":
            w = 1.0
        elif exact:
            w = 1.0 if i in exact else 0.0
        else:
            w = 1.0 / dists[i]
        votes[labels[i]] = votes.get(labels[i], 0.0) + w
    best = max(votes.values())
    return sorted(c for c, v in votes.items() if v == best)[0]


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "manhattan"])
@pytest.mark.parametrize("weights", ["uniform", "distance"])
@pytest.mark.parametrize("k", [3, 5, 8])
def test_knn_matches_naive_reference(metric: str, weights: str, k: int) -> None:
    rng = np.random.default_rng(11)
    index = rng.standard_normal((60, 6))
    labels = [["b", "a", "c"][i % 3] for i in range(60)]
    queries = rng.standard_normal((40, 6))
    knn = KnnClassifier(index, labels, n_neighbors=k, metric=metric, weights=weights)
    expected = [naive_knn(index, labels, q, k, metric, weights) for q in queries]
    assert knn.predict(queries) == expected


def test_knn_blocks_do_not_change_predictions(monkeypatch: pytest.MonkeyPatch) -> None:
    import atai_magics.local.pipelines.knn as knn_module

    rng = np.random.default_rng(3)
    index, queries = rng.standard_normal((50, 4)), rng.standard_normal((97, 4))
    labels = [str(i % 4) for i in range(50)]
    for metric in ("euclidean", "manhattan"):
        whole = KnnClassifier(index, labels, n_neighbors=5, metric=metric).predict(queries)
        monkeypatch.setattr(knn_module, "_BLOCK_ELEMENTS", 120)
        small = KnnClassifier(index, labels, n_neighbors=5, metric=metric).predict(queries)
        monkeypatch.undo()
        assert small == whole


def test_vote_ties_go_to_first_class_name() -> None:
    index = np.array([[0.0], [1.0], [-1.0], [2.0], [-2.0], [3.0]])
    labels = ["zeta", "zeta", "alpha", "alpha", "mid", "mid"]
    knn = KnnClassifier(index, labels, n_neighbors=4, metric="euclidean")
    # neighbours of 0.5: 0, 1, -1, 2 -> zeta, zeta, alpha, alpha: a 2-2 tie
    assert knn.predict(np.array([[0.5]])) == ["alpha"]


def test_distance_weights_give_exact_matches_all_the_weight() -> None:
    index = np.array([[0.0], [1e-6], [2e-6], [5.0]])  # two "near" ones, almost exact
    labels = ["far", "near", "near", "far"]
    knn = KnnClassifier(index, labels, n_neighbors=3, weights="distance")
    assert knn.predict(np.array([[0.0]])) == ["far"]
    uniform = KnnClassifier(index, labels, n_neighbors=3, weights="uniform")
    assert uniform.predict(np.array([[0.0]])) == ["near"]


def test_knn_rejects_more_neighbours_than_samples() -> None:
    with pytest.raises(
        PipelineFailure, match=r"^n_neighbors must be <= number of samples in index$"
    ):
        KnnClassifier(np.zeros((4, 2)), ["a"] * 4, n_neighbors=5)


def test_embedding_features_are_what_they_claim() -> None:
    t = np.arange(64, dtype=float)
    ramp = 2.0 * t + 3.0
    tone = np.sin(2 * np.pi * 30 * t / 64)  # energy in the top band
    windows = np.stack([ramp, tone])[None, :, :]  # one window, two channels
    f = embed(windows).reshape(2, features_per_channel(64))
    assert f[0, 0] == pytest.approx(ramp.mean())
    assert f[0, 1] == pytest.approx(ramp.std())
    assert (f[0, 2], f[0, 3]) == (pytest.approx(3.0), pytest.approx(129.0))
    assert f[0, 4] == pytest.approx(2.0)
    bands = f[1, 5:]
    assert len(bands) == 4
    assert int(np.argmax(bands)) == 3
    assert bands[:3] == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)


def test_tiny_windows_still_embed() -> None:
    values = np.arange(10, dtype=float).reshape(5, 2)
    out = np.concatenate(list(embed_rows(values, 2, 1)))
    assert out.shape == (4, 2 * features_per_channel(2))
    assert np.isfinite(out).all()
    assert list(embed_rows(values, 6, 1)) == []


@pytest.mark.parametrize(
    ("rows", "window", "step"), [(100, 10, 3), (64, 64, 1), (63, 64, 1), (9, 2, 7)]
)
def test_window_count_formula(rows: int, window: int, step: int) -> None:
    values = np.zeros((rows, 1))
    expected = (rows - window) // step + 1 if rows >= window else 0
    assert window_starts(rows, window, step) == expected
    if rows >= window:
        assert windows_view(values, window, step).shape == (expected, 1, window)


def test_standardizer_zscores_and_normalises() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, size=(200, 4))
    x[:, 2] = 7.0  # constant feature must not divide by zero
    z = Standardizer.fit(x, l2_normalize=False).transform(x)
    assert z.mean(axis=0) == pytest.approx(np.zeros(4), abs=1e-9)
    assert z[:, [0, 1, 3]].std(axis=0) == pytest.approx(np.ones(3))
    unit = Standardizer.fit(x, l2_normalize=True).transform(x)
    assert np.linalg.norm(unit, axis=1) == pytest.approx(np.ones(200))
