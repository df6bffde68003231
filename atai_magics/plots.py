"""Pictures of machine-state results: a state timeline and a confusion matrix.

Needs matplotlib, which is an optional extra: ``pip install "atai_magics[plots]"``. Both
functions take what ``Job.results()`` returns (a pandas DataFrame, or a list of dicts) and the
ground truth, and return a matplotlib ``Figure``, which a notebook shows as an image::

    from atai_magics import plots

    results = job.results()                   # timestamp, Prediction
    plots.state_timeline(results, truth)      # truth: timestamp -> state
    plots.confusion_matrix(truth_labels, predicted_labels)

Figures are made with ``matplotlib.figure.Figure`` rather than pyplot, so nothing is drawn
twice, no global figure is left open, and any backend works (``Agg`` in tests). In a
notebook, run ``%matplotlib inline`` once if a returned figure shows as text.

Timestamps are matched between results and truth as text, or as numbers when both sides are
numeric (``"0.50"`` in a CSV matches ``0.5`` read by pandas). A timestamp is drawn where it
falls: numbers as numbers, ISO 8601 texts as dates, anything else in window order.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["confusion_counts", "confusion_matrix", "state_timeline"]

PREDICTION = "Prediction"
"""The class column of machine-state results."""
_COLORS = "tab10"
_WRONG = "#d62728"


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "atai_magics.plots needs matplotlib: pip install 'atai_magics[plots]'"
        ) from exc
    return matplotlib


def _new_axes(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    _matplotlib()
    from matplotlib.figure import Figure

    if ax is not None:
        figure = ax.get_figure()
        assert figure is not None
        return figure, ax  # type: ignore[return-value]  # a SubFigure is drawn into as well
    figure = Figure(figsize=size, layout="constrained")
    return figure, figure.add_subplot()


# --- reading the inputs -------------------------------------------------------------------


def _rows(table: Any) -> list[dict[str, Any]]:
    """A DataFrame or a sequence of mappings as a list of dicts."""
    if hasattr(table, "to_dict") and hasattr(table, "columns"):
        rows: list[dict[str, Any]] = table.to_dict("records")
        return rows
    return [dict(row) for row in table]


def _columns(table: Any, rows: list[dict[str, Any]]) -> list[str]:
    if hasattr(table, "columns"):
        return [str(c) for c in table.columns]
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _timestamp_column(table: Any, rows: list[dict[str, Any]], given: str | None) -> str:
    if given is not None:
        return given
    attrs = getattr(table, "attrs", None)
    if isinstance(attrs, Mapping) and isinstance(attrs.get("timestamp_column"), str):
        return str(attrs["timestamp_column"])
    others = [c for c in _columns(table, rows) if c not in (PREDICTION, "file_id")]
    if len(others) != 1:
        raise ValueError(
            f"cannot tell which column holds the timestamps among {others}: pass timestamp_column="
        )
    return others[0]


def _key(value: Any) -> Any:
    """How timestamps are matched: as numbers when they are numbers, else as text."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def _truth_lookup(
    truth: Any, timestamp_column: str, truth_column: str | None, n_rows: int
) -> tuple[dict[Any, Any] | None, list[Any] | None]:
    """(timestamp key -> state) for keyed truth, or a list of states aligned with the rows."""
    if hasattr(truth, "columns"):  # a DataFrame: timestamp column + state column
        column = truth_column or "state"
        if column not in truth.columns:
            raise ValueError(f"the truth has no column {column!r}: pass truth_column=")
        if timestamp_column in truth.columns:
            stamps = list(truth[timestamp_column])
        else:
            stamps = list(truth.index)
        return {_key(t): s for t, s in zip(stamps, truth[column], strict=True)}, None
    if hasattr(truth, "index") and hasattr(truth, "to_dict"):  # a Series indexed by timestamp
        return {_key(t): s for t, s in truth.to_dict().items()}, None
    if isinstance(truth, Mapping):
        return {_key(t): s for t, s in truth.items()}, None
    states = list(truth)
    if len(states) != n_rows:
        raise ValueError(f"the truth has {len(states)} states for {n_rows} predictions")
    return None, states


def _positions(stamps: list[Any]) -> tuple[list[Any], str]:
    """Where each window is drawn on the x axis, and the axis label."""
    keys = [_key(t) for t in stamps]
    if keys and all(isinstance(k, float) for k in keys):
        return keys, "time"
    try:
        dates = [t if isinstance(t, datetime) else datetime.fromisoformat(str(t)) for t in stamps]
    except ValueError:
        return list(range(len(stamps))), "window"
    return dates, "time"


def _states(*sequences: Iterable[Any], given: Sequence[Any] | None = None) -> list[Any]:
    if given is not None:
        return list(given)
    found: set[Any] = set()
    for sequence in sequences:
        found.update(s for s in sequence if s is not None)
    return sorted(found, key=str)


def _spans(positions: list[Any]) -> list[tuple[Any, Any]]:
    """(start, width) of each window's slot: up to the next window's position (the last one
    gets the median spacing)."""
    if not positions:
        return []
    widths = [b - a for a, b in itertools.pairwise(positions)]
    positive = sorted(w for w in widths if w > w * 0)
    if positive:
        last = positive[len(positive) // 2]
    elif isinstance(positions[0], datetime):
        last = timedelta(seconds=1)
    else:
        last = 1
    return list(zip(positions, [*widths, last], strict=True))


def _runs(labels: list[Any], spans: list[tuple[Any, Any]]) -> dict[Any, list[tuple[Any, Any]]]:
    """Per state, the (start, width) of each run of consecutive windows in that state."""
    runs: dict[Any, list[tuple[Any, Any]]] = {}
    i = 0
    while i < len(labels):
        j = i
        while j + 1 < len(labels) and labels[j + 1] == labels[i]:
            j += 1
        start = spans[i][0]
        end = spans[j][0] + spans[j][1]
        runs.setdefault(labels[i], []).append((start, end - start))
        i = j + 1
    return runs


# --- the timeline -------------------------------------------------------------------------


def state_timeline(
    results: Any,
    truth: Any = None,
    *,
    timestamp_column: str | None = None,
    prediction_column: str = PREDICTION,
    truth_column: str | None = None,
    states: Sequence[Any] | None = None,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """The predicted state of every window against time, above the true state.

    ``results``: what ``Job.results()`` returns (the timestamp column is found from
    ``attrs["timestamp_column"]``, else as the one column besides ``Prediction``). ``truth``
    (optional): a DataFrame with the timestamp column and ``truth_column`` (default
    ``state``), a Series or mapping from timestamp to state, or a list of states, one per
    window. Lanes, top to bottom: truth, predicted, and a red mark for every window the two
    disagree on; the title gives the accuracy. ``states`` fixes the order (and colours) of
    the states. Returns the ``Figure`` (drawn into ``ax`` when one is given).
    """
    rows = _rows(results)
    column = _timestamp_column(results, rows, timestamp_column)
    stamps = [row[column] for row in rows]
    predicted = [row[prediction_column] for row in rows]
    true: list[Any] | None = None
    if truth is not None:
        lookup, aligned = _truth_lookup(truth, column, truth_column, len(rows))
        true = aligned if lookup is None else [lookup.get(_key(t)) for t in stamps]
    labels = _states(predicted, true or [], given=states)

    figure, ax = _new_axes(ax, (11, 2.6 if true is not None else 1.8))
    positions, xlabel = _positions(stamps)
    spans = _spans(positions)
    colors = _matplotlib().colormaps[_COLORS]
    color = {state: colors(i % colors.N) for i, state in enumerate(labels)}
    lanes: list[tuple[str, list[Any]]] = [("predicted", predicted)]
    if true is not None:
        lanes.insert(0, ("truth", true))
    height = 0.8
    ticks = []
    for lane, (name, values) in enumerate(reversed(lanes), start=1 if true is not None else 0):
        y = lane
        ticks.append((y + height / 2, name))
        for state, segments in _runs(values, spans).items():
            if state is None:
                continue
            ax.broken_barh(segments, (y, height), facecolors=color.get(state, "#7f7f7f"))
    summary = ""
    if true is not None:
        wrong = [None if p == t else "wrong" for p, t in zip(predicted, true, strict=True)]
        marks = _runs(wrong, spans).get("wrong", [])
        ax.broken_barh(marks, (0.35, 0.3), facecolors=_WRONG)
        ticks.insert(0, (0.5, "wrong"))
        scored = [(p, t) for p, t in zip(predicted, true, strict=True) if t is not None]
        if scored:
            hits = sum(p == t for p, t in scored)
            summary = f"accuracy {hits / len(scored):.1%} over {len(scored):,} windows"
    ax.set_yticks([y for y, _ in ticks], [name for _, name in ticks])
    ax.set_ylim(0.2 if true is not None else -0.1, len(lanes) + (1 if true is not None else 0))
    if spans:
        ax.set_xlim(spans[0][0], spans[-1][0] + spans[-1][1])
    ax.set_xlabel(xlabel if xlabel == "window" else column)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)
    handles = [_patch(color[state], str(state)) for state in labels]
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.35 if true is not None else -0.6),
        ncols=min(len(handles), 8) or 1,
        frameon=False,
    )
    ax.set_title(" · ".join(p for p in (title or "State timeline", summary) if p), loc="left")
    return figure


def _patch(color: Any, label: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(facecolor=color, label=label)


# --- the confusion matrix -----------------------------------------------------------------


def confusion_counts(
    truth: Iterable[Any], predicted: Iterable[Any], labels: Sequence[Any] | None = None
) -> tuple[list[Any], list[list[int]]]:
    """(labels, counts) with ``counts[i][j]`` = windows of true ``labels[i]`` predicted as
    ``labels[j]``. Without ``labels``: every label seen, sorted. Pairs whose truth is None
    (no truth for that window) are left out."""
    pairs = [(t, p) for t, p in zip(truth, predicted, strict=True) if t is not None]
    names = _states([t for t, _ in pairs], [p for _, p in pairs], given=labels)
    index = {name: i for i, name in enumerate(names)}
    counts = [[0] * len(names) for _ in names]
    for (t, p), n in Counter(pairs).items():
        if t in index and p in index:
            counts[index[t]][index[p]] += n
    return names, counts


def confusion_matrix(
    truth: Iterable[Any],
    predicted: Iterable[Any],
    labels: Sequence[Any] | None = None,
    *,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """A confusion matrix: rows are the true states, columns the predicted ones.

    Each cell shows the share of its row (the colour) and the count of windows; the title
    gives the accuracy. ``labels`` fixes the order of the states. Returns the ``Figure``.
    """
    names, counts = confusion_counts(truth, predicted, labels)
    figure, ax = _new_axes(ax, (1.6 + 0.9 * len(names), 1.2 + 0.8 * len(names)))
    if not names:
        ax.set_axis_off()
        ax.set_title(f"{title or 'Confusion matrix'} · no windows", loc="left")
        return figure
    shares = [[c / (sum(row) or 1) for c in row] for row in counts]
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            share = shares[i][j]
            ax.text(
                j,
                i,
                f"{share:.0%}\n{count:,}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if share > 0.6 else "black",
            )
    ax.set_xticks(range(len(names)), [str(n) for n in names], rotation=30, ha="right")
    ax.set_yticks(range(len(names)), [str(n) for n in names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = sum(map(sum, counts))
    hits = sum(counts[i][i] for i in range(len(names)))
    summary = f"accuracy {hits / total:.1%}" if total else "no windows"
    ax.set_title(" · ".join(p for p in (title or "Confusion matrix", summary) if p), loc="left")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true state")
    return figure
