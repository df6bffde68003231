"""The job card in JupyterLab, in Chromium: it goes PENDING → RUNNING → COMPLETED on its own,
and its Cancel button really cancels (the backend agrees). Screenshots go to
``test-artifacts/browser/``."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Locator, expect

from tests.conftest import LocalBackend, plugin_backend


@pytest.fixture(scope="module")
def card_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    """A backend of this module's own, two jobs at a time, so the test decides what queues."""
    with plugin_backend(tmp_path_factory, "browser", concurrency=2) as backend:
        yield backend


def _slow_cell(var: str, name: str, file_id: str, seconds: int, release: Path | None = None) -> str:
    config = f"  seconds: {seconds}\n" + (f"  release_file: {release}\n" if release else "")
    return (
        f"%%atai_job {var}\nname: {name}\npipeline: slow-test\n"
        f"inputs:\n  worker.data: [{file_id}]\nconfig:\n{config}"
    )


def _badge(lab: object, index: int) -> Locator:
    """The status badge of the card in cell ``index`` (the live widget's, not the final text's)."""
    return lab.output(index).locator(".atai-job-card .atai-badge")  # type: ignore[attr-defined]


def test_the_card_moves_on_its_own_and_cancel_cancels(  # type: ignore[no-untyped-def]
    lab, card_backend: LocalBackend, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    release = tmp_path / "release"  # the queued job ends only once its card showed "running"
    client = card_backend.client()
    file_id = f"browser-{tag}.txt"
    client.upload_bytes(b"x", file_id, "text/plain")
    setup = (
        "import os\n"
        f"os.environ['ATAI_LOCAL_HOME'] = {str(card_backend.info.home)!r}\n"
        "%load_ext atai_magics"
    )
    cells = [
        setup,
        _slow_cell("long", f"long-{tag}", file_id, 600),  # takes one slot ...
        _slow_cell("other", f"other-{tag}", file_id, 600),  # ... and the other
        _slow_cell("job", f"short-{tag}", file_id, 0, release),  # so this one queues
    ]
    lab.write_notebook("card", cells)
    lab.open("card")
    lab.run_cell(0)
    lab.wait_for_output(0, "LOCAL")

    lab.run_cell(1)
    lab.run_cell(2)
    expect(_badge(lab, 1)).to_have_text("running")
    expect(_badge(lab, 2)).to_have_text("running")
    lab.run_cell(3)
    expect(_badge(lab, 3)).to_have_text(re.compile(r"^pending, position 1 of \d+$"))
    lab.screenshot("1-pending")

    # Cancel the second long job from its card: a slot frees, the queued job runs.
    lab.output(2).locator(".atai-job-card button", has_text="Cancel").click()
    expect(_badge(lab, 2)).to_have_text("cancelled")
    expect(lab.output(2)).to_contain_text("Cancel: cancelled")
    expect(_badge(lab, 3)).to_have_text("running")
    lab.screenshot("2-running")
    release.touch()
    expect(_badge(lab, 3)).to_have_text("completed")
    # The final state is also in a plain output (what a saved notebook keeps).
    expect(lab.output(3).locator(".atai-card .atai-badge")).to_have_text("completed")
    lab.screenshot("3-completed")
    # The card alone, as README shows it (docs/img/card.png is a copy of this file).
    lab.output(3).locator(".atai-job-card").screenshot(path=lab.artifacts / "card.png")

    jobs = {j.name: j for j in client.iter_jobs(q=tag)}
    assert jobs[f"other-{tag}"].status.value == "CANCELLED"  # the backend agrees
    assert jobs[f"short-{tag}"].status.value == "COMPLETED"
    assert jobs[f"long-{tag}"].status.value == "RUNNING"
    lab.output(1).locator(".atai-job-card button", has_text="Cancel").click()
    expect(_badge(lab, 1)).to_have_text("cancelled")
    assert client.get_job(jobs[f"long-{tag}"].id).status.value == "CANCELLED"
