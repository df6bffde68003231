"""``%atai_jobs`` and the JobsTable widget against the real local backend."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from atai_magics.api.errors import NotFound
from atai_magics.magics import AtaiMagics
from atai_magics.session import OptionsError, parse_jobs_options
from atai_magics.ui.jobs_table import JobsQuery, JobsTable, fetch_page
from atai_magics.watch import default_watcher
from tests.conftest import LocalBackend
from tests.test_watch import _slow_job


def _wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def tagged(local_backend: LocalBackend) -> Iterator[tuple[str, list[str]]]:
    """Five jobs whose names share a tag: three quick ones, two that fail at once."""
    client = local_backend.client()
    tag = uuid.uuid4().hex[:8]
    ids = [_slow_job(client, f"{tag}{i}", seconds=0).id for i in range(3)]
    ids += [_slow_job(client, f"{tag}f{i}", fail="no data").id for i in range(2)]
    for job_id in ids:
        _wait_until(lambda job_id=job_id: client.get_job(job_id).status.is_terminal)
    yield tag, ids


def test_pages_cover_every_job_once(local_backend: LocalBackend, tagged: Any) -> None:
    tag, ids = tagged
    client = local_backend.client()
    seen = []
    for offset in (0, 2, 4):
        page = fetch_page(client, JobsQuery(search=tag, limit=2), offset)
        assert page.total == 5
        seen += [row.job_id for row in page.rows]
    assert sorted(seen) == sorted(ids)
    failed = fetch_page(client, JobsQuery(status="FAILED", search=tag))
    assert {row.phrase for row in failed.rows} == {"failed"} and failed.total == 2
    text = fetch_page(client, JobsQuery(search=tag)).text()
    assert text.splitlines()[0] == "jobs 1-5 of 5"
    assert all(job_id in text for job_id in ids)
    assert "<span class='atai-badge atai-error'" in failed.html()


def test_pipeline_filter_is_applied_here(local_backend: LocalBackend, tagged: Any) -> None:
    tag, _ = tagged
    client = local_backend.client()
    assert fetch_page(client, JobsQuery(pipeline="slow-test", search=tag)).total == 5
    none = fetch_page(client, JobsQuery(pipeline="machine-state-classification", search=tag))
    assert none.total == 0 and none.text() == "No jobs."


def test_row_actions_change_the_server(local_backend: LocalBackend) -> None:
    client = local_backend.client()
    job = _slow_job(client, uuid.uuid4().hex[:8], seconds=600)
    table = JobsTable(client, search=job.name, wait=True)
    assert table._choice.value == job.id
    assert table.act("cancel") == f"{job.id}: cancelled"
    assert client.get_job(job.id).status.value == "CANCELLED"
    assert table.act("retry") == f"{job.id}: queued again (retry 1)"
    assert client.get_job(job.id).status.value in ("PENDING", "ADMITTED", "RUNNING")
    table.act("cancel")

    table.open_card()  # the card goes under the table; the watcher fetches its final state
    _wait_until(lambda: job.id not in default_watcher().watching())

    assert table.act("delete").startswith("click “Confirm delete”")
    assert client.get_job(job.id).id == job.id  # nothing deleted yet
    assert table.act("delete") == f"{job.id}: deleted"
    with pytest.raises(NotFound):
        client.get_job(job.id)
    table.go(0, wait=True)
    assert table.page is not None and table.page.total == 0
    assert repr(table) == "No jobs."


def test_the_magic_prints_a_page_outside_a_notebook(
    local_backend: LocalBackend, tagged: Any, ipython: Any, capsys: Any
) -> None:
    tag, ids = tagged
    magics = AtaiMagics(ipython)
    magics.session.settings.local_home = str(local_backend.info.home)
    ipython.register_magics(magics)
    try:
        ipython.run_line_magic("atai_jobs", f"--search {tag} --status completed --limit 5")
    finally:
        magics.session.reset()
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "jobs 1-3 of 3"
    assert sum(job_id in out for job_id in ids) == 3
    with pytest.raises(OptionsError, match="--limit"):
        parse_jobs_options("--limit 0")
    with pytest.raises(OptionsError, match="unrecognized"):
        parse_jobs_options("--colour red")
