"""The card's view-model in every state, and its text and HTML forms (no front end)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from atai_magics.api import models as m
from atai_magics.ui.view import CardView, backend_label, format_duration, format_size
from atai_magics.watch import Snapshot

NOW = datetime(2026, 11, 29, 10, 5, 0, tzinfo=timezone.utc)
JOB_ID = "job_01kb0000000000000000000000"


def _snap(status: str, *, failed_events: int = 0, **extra: Any) -> Snapshot:
    record = m.JobRecord.model_validate(
        {
            "id": JOB_ID,
            "name": "pump-states",
            "pipeline_key": "machine-state-classification",
            "pipeline_version": "1.2.0",
            "status": status,
            "created_at": "2026-11-29T10:00:00Z",
            **extra,
        }
    )
    events = tuple(
        m.Event.model_validate(e)
        for e in (
            {
                "level": "INFO",
                "event_type": "running_job",
                "message": "Running job",
                "created_at": "2026-11-29T10:01:00Z",
            },
            {
                "level": "FAILED",
                "event_type": "inference.failed",
                "message": "bad <csv>",
                "created_at": "2026-11-29T10:02:00Z",
            },
        )
    )
    progress = m.ProgressEntry.model_validate(
        {
            "kind": "inference",
            "step": 3,
            "message": "Processing input 3 of 10",
            "metrics": {"percent_complete": 30},
        }
    )
    outputs = tuple(
        m.Output.model_validate(
            {
                "id": f"out_{i}",
                "data": {"ref": "x", "filename": f"part_{i}.csv", "num_bytes": 1500 * i},
            }
        )
        for i in range(1, 3)
    )
    return Snapshot(record, events, 2, failed_events, progress, outputs, 2)


PENDING = _snap("PENDING", queue_position=3, queue_depth=5)
RUNNING = _snap(
    "RUNNING",
    started_at="2026-11-29T10:00:30Z",
    input_progress={"completed": 3, "failed": 1, "processing": 2, "pending": 4},
)
COMPLETED = _snap(
    "COMPLETED",
    started_at="2026-11-29T10:00:30Z",
    completed_at="2026-11-29T10:02:35Z",
    input_progress={"completed": 10},
)
WITH_FAILURES = _snap(
    "COMPLETED",
    failed_events=1,
    started_at="2026-11-29T10:00:30Z",
    completed_at="2026-11-29T10:02:35Z",
    input_progress={"completed": 9, "failed": 1},
)
FAILED = _snap(
    "FAILED",
    failed_at="2026-11-29T10:01:00Z",
    error={
        "code": "BackoffLimitExceeded",
        "message": "Job has reached the specified backoff limit",
    },
)


@pytest.mark.parametrize(
    ("snap", "phrase", "tone", "cancel", "retry"),
    [
        (PENDING, "pending, position 3 of 5", "queued", True, False),
        (_snap("ADMITTED"), "admitted", "queued", True, False),
        (RUNNING, "running", "running", True, False),
        (
            _snap("PREEMPTED", queue_position=1, queue_depth=1),
            "preempted, position 1 of 1",
            "warn",
            True,
            False,
        ),
        (COMPLETED, "completed", "ok", False, False),
        (WITH_FAILURES, "completed with failures", "warn", False, False),
        (FAILED, "failed", "error", False, True),
        (
            _snap("CANCELLED", cancelled_at="2026-11-29T10:03:00Z"),
            "cancelled",
            "muted",
            False,
            True,
        ),
        (_snap("ARCHIVED"), "archived", "muted", False, False),  # a status not known yet
    ],
)
def test_every_state(snap: Snapshot, phrase: str, tone: str, cancel: bool, retry: bool) -> None:
    view = CardView.of(snap, "LOCAL", NOW)
    assert (view.phrase, view.tone, view.can_cancel, view.can_retry) == (
        phrase,
        tone,
        cancel,
        retry,
    )
    text = view.text()
    assert text.splitlines()[0] == (
        f"Job 'pump-states' (machine-state-classification@1.2.0) on LOCAL: {phrase}"
    )
    assert text.splitlines()[1] == JOB_ID  # on its own line, for sanitizers
    assert phrase in view.html() and JOB_ID in view.html()


def test_queued_shows_the_position_and_no_end() -> None:
    view = CardView.of(PENDING, "LOCAL", NOW)
    assert view.queue == "position 3 of 5"
    assert view.ended is None and view.elapsed == "5 min 0 s"
    assert "created 2026-11-29 10:00:00 UTC" in view.text()


def test_running_shows_inputs_and_the_latest_progress() -> None:
    view = CardView.of(RUNNING, "api.u1.archetypeai.app", NOW)
    text = view.text()
    assert "inputs: 3 completed, 1 failed, 2 processing, 4 pending" in text
    assert "progress: Processing input 3 of 10 (30%)" in text
    assert "elapsed 4 min 30 s" in text
    html = view.progress_html()
    assert "width:30.00%" in html and "width:10.00%" in html and "width:40.00%" in html
    assert "api.u1.archetypeai.app" in view.header_html()


def test_completed_with_failures_warns_and_never_reads_as_success() -> None:
    view = CardView.of(WITH_FAILURES, "LOCAL", NOW)
    assert view.warnings == ("1 of 10 inputs failed", "1 FAILED event")
    assert "warning: 1 of 10 inputs failed" in view.text()
    assert "events (last 2):" in view.text()  # the events say what failed
    assert "atai-warning" in view.alerts_html()
    plain = CardView.of(COMPLETED, "LOCAL", NOW)
    assert plain.warnings == () and "warning" not in plain.text()
    assert "elapsed 2 min 5 s" in plain.text()


def test_failed_shows_the_error_block() -> None:
    view = CardView.of(FAILED, "LOCAL", NOW)
    assert view.error == "BackoffLimitExceeded: Job has reached the specified backoff limit"
    assert f"error: {view.error}" in view.text()
    assert "atai-error" in view.alerts_html()


def test_reconnecting_is_visible() -> None:
    snap = Snapshot(RUNNING.record, reconnecting="reconnecting… (attempt 2, next in 2.0 s)")
    view = CardView.of(snap, "LOCAL", NOW)
    assert view.text().splitlines()[2].startswith("reconnecting… (attempt 2")
    assert "atai-reconnecting" in view.alerts_html()


def test_events_outputs_and_html_escaping() -> None:
    view = CardView.of(RUNNING, "LOCAL", NOW)
    assert [e.level for e in view.events] == ["INFO", "FAILED"]
    assert "bad &lt;csv&gt;" in view.events_html() and "<csv>" not in view.html()
    assert "part_1.csv" in view.outputs_html() and "1.5 KB" in view.outputs_html()
    assert view.attach_line == f"%atai_job attach {JOB_ID}"
    bundle = view.mimebundle()
    assert set(bundle) == {"text/plain", "text/html"}


def test_formats() -> None:
    assert [format_duration(s) for s in (0, 59.6, 125, 7300)] == [
        "0 s",
        "60 s",
        "2 min 5 s",
        "2 h 1 min",
    ]
    assert [format_size(n) for n in (None, 12, 1500, 2_500_000)] == [
        "? B",
        "12 B",
        "1.5 KB",
        "2.5 MB",
    ]
    assert backend_label("http://127.0.0.1:5000/v0.5") == "LOCAL"
    assert backend_label("https://api.u1.archetypeai.app/v0.5") == "api.u1.archetypeai.app"
