"""The job card widget on real jobs of the local backend, updated by a real watcher."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import atai_magics.ui.card as card_module
from atai_magics.jobs import Job
from atai_magics.ui.card import JobCard
from atai_magics.watch import Watcher
from tests.conftest import LocalBackend
from tests.test_watch import FAST, _slow_job


def _wait_until(condition: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def watcher() -> Iterator[Watcher]:
    watcher = Watcher(**FAST)
    yield watcher
    watcher.stop()


@pytest.fixture
def displays(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any, dict[str, Any]]]:
    """What the card displayed or updated, in order."""
    calls: list[tuple[str, Any, dict[str, Any]]] = []
    monkeypatch.setattr(card_module, "display", lambda obj, **kw: calls.append(("show", obj, kw)))
    monkeypatch.setattr(
        card_module, "update_display", lambda obj, **kw: calls.append(("update", obj, kw))
    )
    return calls


def _card(job: Job, watcher: Watcher, tmp_path: Path) -> JobCard:
    card = JobCard(job, watcher=watcher, download_dir=tmp_path / "downloads")
    watcher.watch(job, card.apply)
    return card


def test_cancel_then_retry_from_the_buttons(
    local_backend: LocalBackend, watcher: Watcher, tmp_path: Path, displays: list[Any]
) -> None:
    client = local_backend.client()
    job = _slow_job(client, uuid.uuid4().hex[:8], seconds=600)
    card = _card(job, watcher, tmp_path)
    card.show()
    _wait_until(lambda: card.status == "RUNNING")
    assert card._cancel.layout.display is None and card._retry.layout.display == "none"

    card._cancel.click()
    assert card.notice == "Cancel: cancelled"
    _wait_until(lambda: card.status == "CANCELLED")
    assert client.get_job(job.id).status.value == "CANCELLED"  # the backend agrees
    assert card._cancel.layout.display == "none" and card._retry.layout.display is None
    assert card.cancel() == "Cancel: already finished (CANCELLED)"  # a 409, not an error

    # The final state went to the plain output displayed under the card.
    kinds = [kind for kind, _, _ in displays]
    assert kinds[:2] == ["show", "show"] and "update" in kinds
    final_id = displays[1][2]["display_id"]
    update = next(obj for kind, obj, kw in displays if kind == "update")
    assert "CANCELLED".lower() in update["text/plain"] and job.id in update["text/html"]
    assert all(kw["display_id"] == final_id for kind, _, kw in displays if kind == "update")

    card._retry.click()
    assert card.notice == "Retry: queued again (retry 1)"
    _wait_until(lambda: card.status in ("PENDING", "ADMITTED", "RUNNING"))
    card.cancel()
    _wait_until(lambda: card.status == "CANCELLED")


def test_outputs_download_and_text_repr(
    local_backend: LocalBackend, watcher: Watcher, tmp_path: Path, displays: list[Any]
) -> None:
    client = local_backend.client()
    job = _slow_job(client, uuid.uuid4().hex[:8], seconds=0)
    card = _card(job, watcher, tmp_path)
    _wait_until(lambda: card.status == "COMPLETED")
    _wait_until(lambda: job.id not in watcher.watching())
    assert card.view is not None and card.view.output_total == 2
    assert card._choice.options[0][0] == "all outputs"
    card.download(wait=True)
    assert card.notice.startswith("saved 2 file(s)"), card.notice
    saved = sorted(p.name for p in (tmp_path / "downloads" / job.id).iterdir())
    assert len(saved) == 2

    card._choice.value = card._choice.options[1][1]
    card.download(wait=True)
    assert card.notice.startswith("saved ")

    bundle = card._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].splitlines()[1] == job.id
    # Shown after it ended: the final output is written at once, no update needed.
    card.show()
    assert displays[-1][1]["text/plain"] == card.view.text()


def test_refresh_and_a_failing_action_show_on_the_card(
    local_backend: LocalBackend, watcher: Watcher, tmp_path: Path
) -> None:
    client = local_backend.client()
    job = _slow_job(client, uuid.uuid4().hex[:8], fail="no windows")
    card = _card(job, watcher, tmp_path)
    _wait_until(lambda: card.status == "FAILED")
    assert card.view is not None and card.view.error and "no windows" in card.view.error
    assert card.refresh() == "Refresh: updated"
    client.delete_job(job.id)
    outcome = card.refresh()
    assert outcome.startswith("Refresh failed:") and "not" in outcome.lower()
