"""atai_magics.plots (on matplotlib's Agg backend), and how Job.results() merges output parts:
out of order, both historical machine-state header orders, parts rewritten by a retry,
several inputs. Outputs are served by a stub client, so no backend is needed."""

from __future__ import annotations

import io
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
import pytest

from atai_magics import plots
from atai_magics.api import models as m
from atai_magics.api._operations import target_path
from atai_magics.jobs import Job

matplotlib.use("Agg")

STATES = ["idle", "running"]


def _results(stamps: list[str], predicted: list[str], column: str = "timestamp") -> pd.DataFrame:
    frame = pd.DataFrame({column: stamps, "Prediction": predicted})
    frame.attrs["timestamp_column"] = column
    return frame


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _lanes(figure: Any) -> dict[str, list[tuple[float, float, tuple[float, ...]]]]:
    """(start, width, colour) of every bar, per lane name (the y tick label at its height)."""
    ax = figure.axes[0]
    names = {
        round(t, 2): label.get_text()
        for t, label in zip(ax.get_yticks(), ax.get_yticklabels(), strict=True)
    }
    lanes: dict[str, list[tuple[float, float, tuple[float, ...]]]] = {}
    for collection in ax.collections:
        colours = collection.get_facecolors()
        for i, path in enumerate(collection.get_paths()):
            xs, ys = path.vertices[:, 0], path.vertices[:, 1]
            middle = round((ys.min() + ys.max()) / 2, 2)
            colour = tuple(colours[i % len(colours)])
            lanes.setdefault(names[middle], []).append(
                (float(xs.min()), float(xs.max() - xs.min()), colour)
            )
    return {k: sorted(v) for k, v in lanes.items()}


# --- state_timeline ---------------------------------------------------------------------------


def test_timeline_matches_text_timestamps_with_numeric_truth() -> None:
    stamps = ["0.50", "1.00", "1.50", "2.00", "2.50"]
    results = _results(stamps, ["idle", "idle", "running", "idle", "running"])
    truth = pd.DataFrame(
        {"timestamp": [0.5, 1.0, 1.5, 2.0, 2.5], "state": ["idle"] * 2 + ["running"] * 3}
    )

    figure = plots.state_timeline(results, truth, states=STATES)

    ax = figure.axes[0]
    assert ax.get_title(loc="left") == "State timeline · accuracy 80.0% over 5 windows"
    lanes = _lanes(figure)
    assert [(s, w) for s, w, _ in lanes["truth"]] == [(0.5, 1.0), (1.5, 1.5)]
    assert [(s, w) for s, w, _ in lanes["predicted"]] == [
        (0.5, 1.0),
        (1.5, 0.5),
        (2.0, 0.5),
        (2.5, 0.5),
    ]
    assert [(s, w) for s, w, _ in lanes["wrong"]] == [(2.0, 0.5)]  # the one miss
    idle, running = (lanes["truth"][0][2], lanes["truth"][1][2])
    assert idle != running and lanes["predicted"][2][2] == idle  # one colour per state
    legend = ax.get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == STATES
    assert ax.get_xlim() == (0.5, 3.0)
    assert _png(figure).startswith(b"\x89PNG")


def test_timeline_accepts_records_mappings_and_aligned_lists() -> None:
    records = [{"TimePoint": "10", "Prediction": "a"}, {"TimePoint": "20", "Prediction": "b"}]
    keyed = plots.state_timeline(records, {10: "a", 20: "a"})
    aligned = plots.state_timeline(records, ["a", "a"], title="run 7")
    series = plots.state_timeline(records, pd.Series(["a", "a"], index=["10", "20"]))
    for figure in (keyed, aligned, series):
        assert figure.axes[0].get_xlabel() == "TimePoint"
        assert "accuracy 50.0% over 2 windows" in figure.axes[0].get_title(loc="left")
    assert aligned.axes[0].get_title(loc="left").startswith("run 7 · ")

    alone = plots.state_timeline(records)  # no truth: the predicted lane only
    assert set(_lanes(alone)) == {"predicted"}
    assert alone.axes[0].get_title(loc="left") == "State timeline"


def test_timeline_places_dates_and_opaque_stamps() -> None:
    start = datetime(2026, 4, 1, 12, 0, tzinfo=timezone.utc)
    stamps = [(start + timedelta(seconds=s)).isoformat() for s in (0, 10, 20)]
    figure = plots.state_timeline(_results(stamps, ["a", "a", "b"]), ["a", "b", "b"])
    assert figure.axes[0].get_xlabel() == "timestamp"
    _png(figure)

    opaque = plots.state_timeline(_results(["w-a", "w-b", "w-c"], ["a", "b", "b"]))
    assert opaque.axes[0].get_xlabel() == "window"
    assert [(s, w) for s, w, _ in _lanes(opaque)["predicted"]] == [(0.0, 1.0), (1.0, 2.0)]


def test_timeline_truth_missing_for_some_windows_is_left_out_of_the_score() -> None:
    results = _results(["1", "2", "3"], ["a", "b", "b"])
    figure = plots.state_timeline(results, {"1": "a", "2": "a"})
    assert "accuracy 50.0% over 2 windows" in figure.axes[0].get_title(loc="left")


def test_timeline_errors_say_what_to_pass() -> None:
    ambiguous = pd.DataFrame({"t": ["1"], "u": ["2"], "Prediction": ["a"]})
    with pytest.raises(ValueError, match="timestamp_column="):
        plots.state_timeline(ambiguous)
    assert plots.state_timeline(ambiguous, timestamp_column="t").axes[0].get_xlabel() == "t"
    with pytest.raises(ValueError, match="truth_column="):
        plots.state_timeline(
            _results(["1"], ["a"]), pd.DataFrame({"timestamp": ["1"], "label": ["a"]})
        )
    with pytest.raises(ValueError, match="2 states for 1 predictions"):
        plots.state_timeline(_results(["1"], ["a"]), ["a", "b"])


def test_timeline_draws_into_given_axes() -> None:
    from matplotlib.figure import Figure

    figure = Figure()
    top, bottom = figure.subplots(2)
    assert plots.state_timeline(_results(["1", "2"], ["a", "b"]), ax=bottom) is figure
    assert bottom.collections and not top.collections


# --- confusion matrix -----------------------------------------------------------------------


def test_confusion_counts() -> None:
    truth = ["a", "a", "b", "b", "b", None]
    predicted = ["a", "b", "b", "b", "c", "a"]
    assert plots.confusion_counts(truth, predicted) == (
        ["a", "b", "c"],
        [[1, 1, 0], [0, 2, 1], [0, 0, 0]],
    )
    labels, counts = plots.confusion_counts(truth, predicted, labels=["b", "a"])
    assert labels == ["b", "a"] and counts == [[2, 0], [1, 1]]  # "c" is not counted


def test_confusion_matrix_figure() -> None:
    figure = plots.confusion_matrix(["a", "a", "b", "b"], ["a", "b", "b", "b"], labels=["a", "b"])
    ax = figure.axes[0]
    assert ax.get_title(loc="left") == "Confusion matrix · accuracy 75.0%"
    assert [t.get_text() for t in ax.texts] == ["50%\n1", "50%\n1", "0%\n0", "100%\n2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
    shares = ax.images[0].get_array()
    assert shares is not None and shares.tolist() == [[0.5, 0.5], [0.0, 1.0]]
    _png(figure)
    assert "no windows" in plots.confusion_matrix([], []).axes[0].get_title(loc="left")


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"atai_magics\[plots\]"):
        plots.confusion_matrix(["a"], ["a"])


# --- Job.results(): merging output parts ---------------------------------------------------


class StubClient:
    """Serves outputs (listed in the order given) and their bytes, like Client does."""

    base_url = "http://127.0.0.1:1/v0.5"

    def __init__(self, outputs: list[tuple[m.Output, str]]) -> None:
        self.outputs = outputs

    def iter_outputs(self, job_id: str, **_: Any) -> list[m.Output]:
        return [o for o, _ in self.outputs]

    def download_output(self, output: m.Output, dest: str | Path) -> Path:
        target = target_path(dest, output.data.filename)
        target.write_text(dict((o.id, body) for o, body in self.outputs)[output.id])
        return target


T0 = datetime(2026, 4, 1, tzinfo=timezone.utc)


def _out(oid: str, name: str, *, input_id: str | None = "inp_a", file_id: str | None = "a.csv",
         minute: int = 0) -> m.Output:  # fmt: skip
    return m.Output(
        id=oid,
        input_id=input_id,
        input_file_id=file_id,
        created_at=T0 + timedelta(minutes=minute),
        data=m.DataRef(ref=f"/x/{oid}", filename=name),
    )


def _job(outputs: list[tuple[m.Output, str]]) -> Job:
    return Job(m.JobRecord(id="job_x", status=m.JobStatus.COMPLETED), StubClient(outputs))  # type: ignore[arg-type]


def test_results_merge_parts_in_order_whatever_the_listing(tmp_path: Path) -> None:
    parts = [
        (_out("o3", "pred_a_part_10.csv"), "DATE_TIME,Prediction\nt5,x\n"),
        (_out("o1", "pred_a_part_2.csv"), "DATE_TIME,Prediction\nt3,y\nt4,y\n"),
        (_out("o2", "pred_a_part_0.csv"), "DATE_TIME,Prediction\nt1,x\nt2,x\n"),
    ]
    frame = _job(parts).results(tmp_path)
    assert list(frame.columns) == ["DATE_TIME", "Prediction"]
    assert list(frame.DATE_TIME) == ["t1", "t2", "t3", "t4", "t5"]
    assert frame.attrs["timestamp_column"] == "DATE_TIME"


def test_results_key_both_historical_header_orders_by_timestamp(tmp_path: Path) -> None:
    old = _job([(_out("o1", "pred_a_part_0.csv"), "Prediction,TimePoint\nidle,0.5\nrunning,1.0\n")])
    frame = old.results(tmp_path / "old")
    assert list(frame.columns) == ["TimePoint", "Prediction"]  # the timestamp first
    assert frame.to_dict("records") == [
        {"TimePoint": "0.5", "Prediction": "idle"},
        {"TimePoint": "1.0", "Prediction": "running"},
    ]  # timestamps stay the text the pipeline wrote
    assert frame.attrs["timestamp_column"] == "TimePoint"

    mixed = _job(
        [
            (_out("o1", "pred_a_part_0.csv"), "ts,Prediction\n1,a\n"),
            (_out("o2", "pred_a_part_1.csv"), "Prediction,ts\nb,2\n"),
        ]
    )
    assert mixed.results(tmp_path / "mixed").to_dict("records") == [
        {"ts": "1", "Prediction": "a"},
        {"ts": "2", "Prediction": "b"},
    ]


def test_results_take_a_retried_attempts_parts_once(tmp_path: Path) -> None:
    first = "ts,Prediction\n1,old\n2,old\n"
    parts = [
        (_out("o1", "pred_a_part_0.csv", minute=0), first),  # attempt 1, cancelled after part 0
        (_out("o2", "pred_a_part_0.csv", minute=5), "ts,Prediction\n1,new\n2,new\n"),  # attempt 2
        (_out("o3", "pred_a_part_1.csv", minute=6), "ts,Prediction\n3,new\n"),
    ]
    frame = _job(list(reversed(parts))).results(tmp_path)
    assert frame.to_dict("records") == [
        {"ts": "1", "Prediction": "new"},
        {"ts": "2", "Prediction": "new"},
        {"ts": "3", "Prediction": "new"},
    ]


def test_download_saves_the_files_results_merge(tmp_path: Path) -> None:
    parts = [
        (_out("o1", "pred_a_part_0.csv", minute=0), "ts,Prediction\n1,old\n"),  # attempt 1
        (_out("o2", "pred_a_part_0.csv", minute=5), "ts,Prediction\n1,new\n"),  # attempt 2
        (_out("o3", "pred_a_part_0.csv", input_id="inp_b", file_id="a.txt"), "ts,Prediction\n"),
    ]
    paths = _job(parts).download(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "pred_a_part_0.csv",
        "o3/pred_a_part_0.csv",  # the second input's file of the same name, kept apart
    ]
    assert paths[0].read_text() == "ts,Prediction\n1,new\n"


def test_results_of_several_inputs_say_which_file(tmp_path: Path) -> None:
    parts = [
        (
            _out("o1", "pred_x_part_1.csv", input_id="inp_b", file_id="x.txt"),
            "ts,Prediction\n3,q\n",
        ),
        (
            _out("o2", "pred_x_part_0.csv", input_id="inp_a", file_id="x.csv"),
            "ts,Prediction\n1,p\n",
        ),
        (
            _out("o3", "pred_x_part_0.csv", input_id="inp_b", file_id="x.txt"),
            "ts,Prediction\n1,q\n",
        ),
    ]
    frame = _job(parts).results(tmp_path)
    assert frame.to_dict("records") == [  # inputs in submission order; same names kept apart
        {"file_id": "x.csv", "ts": "1", "Prediction": "p"},
        {"file_id": "x.txt", "ts": "1", "Prediction": "q"},
        {"file_id": "x.txt", "ts": "3", "Prediction": "q"},
    ]
    assert frame.attrs["timestamp_column"] == "ts"


def test_results_of_several_jsonl_inputs_say_which_file(tmp_path: Path) -> None:
    # activity-detection: line_index counts lines within each input file (reference §9.2)
    parts = [
        (
            _out("o2", "pred_b_part_0.jsonl", input_id="inp_b", file_id="b.jsonl"),
            '{"line_index": 0, "prediction": "z"}\n',
        ),
        (
            _out("o1", "pred_a_part_0.jsonl", input_id="inp_a", file_id="a.jsonl"),
            '{"line_index": 0, "prediction": "x"}\n'
            '{"line_index": 1, "prediction": null, "error": "parse error"}\n',
        ),
    ]
    frame = _job(parts).results(tmp_path / "two")
    assert list(frame.columns) == ["file_id", "line_index", "prediction", "error"]
    assert frame[["file_id", "line_index"]].to_dict("records") == [
        {"file_id": "a.jsonl", "line_index": 0},
        {"file_id": "a.jsonl", "line_index": 1},
        {"file_id": "b.jsonl", "line_index": 0},
    ]
    assert list(frame.prediction.isna()) == [False, True, False]
    one = _job(parts[1:]).results(tmp_path / "one")  # one input: no file_id column
    assert list(one.columns) == ["line_index", "prediction", "error"]


def test_results_without_input_ids_never_interleave_inputs(tmp_path: Path) -> None:
    parts = [
        (_out("o1", "pred_b_part_0.csv", input_id=None, file_id=None), "ts,Prediction\n1,b0\n"),
        (_out("o2", "pred_a_part_1.csv", input_id=None, file_id=None), "ts,Prediction\n2,a1\n"),
        (_out("o3", "pred_b_part_1.csv", input_id=None, file_id=None), "ts,Prediction\n2,b1\n"),
        (_out("o4", "pred_a_part_0.csv", input_id=None, file_id=None), "ts,Prediction\n1,a0\n"),
    ]
    frame = _job(parts).results(tmp_path)
    assert list(frame.Prediction) == ["a0", "a1", "b0", "b1"]
    assert list(frame.file_id) == ["pred_a", "pred_a", "pred_b", "pred_b"]


def test_results_of_other_files_and_without_pandas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = [
        (
            _out("o1", "out_part_0.jsonl"),
            '{"line_index": 0, "text": "a"}\n\n{"line_index": 1, "text": "b"}\n',
        ),
        (_out("o2", "summary.csv", minute=1), "x,y,z\n1,2,3\n"),
        (_out("o3", "notes.txt", minute=2), "hello"),
    ]
    monkeypatch.setitem(sys.modules, "pandas", None)
    records = _job(parts).results(tmp_path)
    assert records == [  # files without a part number first, by creation time
        {"x": "1", "y": "2", "z": "3"},
        {"output": "notes.txt", "text": "hello"},
        {"line_index": 0, "text": "a"},
        {"line_index": 1, "text": "b"},
    ]
