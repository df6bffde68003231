"""The helper widgets in JupyterLab, in Chromium, driven as a user drives them (issue #6).

"Must show": search the file chooser, pick two labelled example files and a file to classify by
clicking its list, send the examples to the n-shot port with their classes, press "Insert cell
below", run the next cell (Jupyter delivers a new cell with a cell's reply), type the config
into the emitted ``%%atai_job`` cell, run it, and watch its card reach ``completed``.

And the parameter form showing that chooser: settings typed into its boxes, files picked
afterwards (the form hears the chooser), Submit, and the card completes inside the form.
Screenshots of each step go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, expect

from atai_magics.api import models as m
from atai_magics.jobs import Job
from tests.conftest import LocalBackend, plugin_backend

MSC = "machine-state-classification"
INFERENCE = "worker.inference"
N_SHOTS = "worker.n_shots"
N_SHOTS_OPTION = "worker.n_shots (n-shot: needs a class)"
# What the user types at the end of the emitted cell: the machine-state reader's settings, in
# YAML's one-line form (the editor's Python auto-indent would shift block lines after a colon).
CONFIG = (
    "config: {reader_config: {data_columns: [a], timestamp_column: ts, "
    "window_size: 8, step_size: 1}}"
)


@dataclass(frozen=True)
class Files:
    """The files uploaded for one test: two classes of example and one file to classify."""

    backend: LocalBackend
    tag: str

    @property
    def flat(self) -> str:
        return f"flat-{self.tag}.csv"

    @property
    def up(self) -> str:
        return f"up-{self.tag}.csv"

    @property
    def inference(self) -> str:
        return f"inf-{self.tag}.csv"

    @property
    def inputs_yaml(self) -> str:
        """The ``inputs:`` block the chooser shows once `_pick_in_chooser` is done."""
        return (
            "inputs:\n"
            f"  {INFERENCE}:\n"
            f"    - {self.inference}\n"
            f"  {N_SHOTS}:\n"
            f"    - {{file_id: {self.flat}, class: flat}}\n"
            f"    - {{file_id: {self.up}, class: up}}"
        )

    def setup_cell(self) -> str:
        """The notebook's first cell: this module's backend, then the extension."""
        return (
            "import os\n"
            f"os.environ['ATAI_LOCAL_HOME'] = {str(self.backend.info.home)!r}\n"
            "%load_ext atai_magics"
        )


@pytest.fixture(scope="module")
def helpers_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    """A backend of this module's own, so the chooser lists only the files uploaded here."""
    with plugin_backend(tmp_path_factory, "helpers", concurrency=2) as backend:
        yield backend


@pytest.fixture
def files(helpers_backend: LocalBackend, tmp_path: Path) -> Files:
    """A saw-tooth and a ramp (columns ts,a) as examples, a ramp to classify, and a text file
    that the search must hide."""
    client = helpers_backend.client()
    uploaded = Files(helpers_backend, uuid.uuid4().hex[:8])
    saw = ["ts,a"] + [f"{i},{(i % 7) / 7:.3f}" for i in range(120)]
    ramp = ["ts,a"] + [f"{i},{i / 120:.3f}" for i in range(120)]
    for name, lines in (
        (uploaded.flat, saw),
        (uploaded.up, ramp),
        (uploaded.inference, ramp),
        (f"other-{uploaded.tag}.txt", ["not for this job"]),
    ):
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        client.upload_file(tmp_path / name)
    return uploaded


# --- what the user does ----------------------------------------------------------------------


def _pick_in_chooser(lab: Any, chooser: Locator, files: Files, label: str) -> None:
    """Search, click the two examples in the list (the second with Ctrl, to add it), send
    each to the n-shot port and type its class, then Ctrl-click the file to classify (it goes
    to the default port); the chooser's YAML shows the three."""
    expect(chooser.locator(".widget-html", has_text=re.compile(r"^\d+ files$"))).to_be_visible()
    chooser.get_by_placeholder("search names").fill(files.tag + " .csv")
    expect(chooser.locator(".widget-select-multiple option")).to_have_count(3)
    lab.screenshot(f"{label}-listed")

    _option(chooser, files.flat).click()
    _option(chooser, files.up).click(modifiers=["Control"])
    expect(chooser.locator("code", has_text=files.up)).to_be_visible()
    for file_id, name in ((files.flat, "flat"), (files.up, "up")):
        row = _picked(chooser, file_id)
        row.locator("select").select_option(label=N_SHOTS_OPTION)
        row.get_by_placeholder("class").fill(name)
    _option(chooser, files.inference).click(modifiers=["Control"])
    expect(chooser.locator("pre", has_text="inputs:")).to_have_text(files.inputs_yaml)
    expect(chooser).not_to_contain_text("!")  # no warnings: every required port has files
    lab.screenshot(f"{label}-picked")


def _option(chooser: Locator, file_id: str) -> Locator:
    """The row of ``file_id`` in the chooser's list of files."""
    return chooser.locator(".widget-select-multiple option", has_text=file_id)


def _picked(chooser: Locator, file_id: str) -> Locator:
    """The row of a picked file: its name, port dropdown, class box and unpick button."""
    return chooser.locator(".widget-hbox").filter(
        has=chooser.page.locator("code", has_text=file_id)
    )


def _source(lab: Any, index: int) -> str:
    """The text of cell ``index``, from JupyterLab's model of the notebook."""
    return str(
        lab.page.evaluate(
            "(i) => window.jupyterapp.shell.currentWidget.content.widgets[i]"
            ".model.sharedModel.getSource()",
            index,
        )
    )


def _completes(lab: Any, card: Locator) -> None:
    """The live card goes to ``completed`` and Cancel goes away."""
    badge = card.locator(".atai-badge")
    expect(badge).to_have_text(re.compile(r"^(pending|admitted|running|completed)"))
    expect(badge).to_have_text("completed")
    expect(card.locator("button", has_text="Cancel")).to_be_hidden()


def _check_job(files: Files, name: str, dest: Path) -> m.JobRecord:
    """The backend agrees: one completed job of this name, with the picked inputs; the classes
    given in the chooser are the ones predicted."""
    client = files.backend.client()
    jobs = [j for j in client.iter_jobs(q=name) if j.name == name]
    assert [j.status.value for j in jobs] == ["COMPLETED"], jobs
    inputs = {(i.port_name, i.file_id) for i in client.list_inputs(jobs[0].id).inputs}
    assert inputs == {
        (INFERENCE, files.inference),
        (N_SHOTS, files.flat),
        (N_SHOTS, files.up),
    }, inputs
    results = Job(jobs[0], client).results(dest)
    assert set(results["Prediction"]) <= {"flat", "up"}, results
    return jobs[0]


# --- the tests -------------------------------------------------------------------------------


def test_pick_files_emit_the_cell_run_it_and_see_the_card_complete(
    lab: Any, files: Files, tmp_path: Path
) -> None:
    lab.write_notebook(
        "chooser", [files.setup_cell(), f"chooser = %atai_files {MSC}\nchooser", "chooser.value"]
    )
    lab.open("chooser")
    lab.run_cell(0)
    lab.wait_for_output(0, "LOCAL")
    lab.run_cell(1)
    chooser = lab.output(1).locator(".atai-files")
    _pick_in_chooser(lab, chooser, files, "1")

    # "Insert cell below": the new cell comes with the reply of the next cell that runs.
    lab.click_button(1, "Insert cell below")
    expect(chooser).to_contain_text("appears below the next non-empty cell you run")
    lab.run_cell(2)
    expect(lab.cells).to_have_count(4)
    emitted = _source(lab, 3)
    assert emitted.startswith(f"%%atai_job\nname: {MSC}-job\npipeline: {MSC}\n"), emitted
    assert files.inputs_yaml in emitted
    lab.cell(3).scroll_into_view_if_needed()
    lab.screenshot("2-emitted")

    # The chooser wrote the inputs; the user types the pipeline's config at the end of the
    # cell and runs it with Shift+Enter.
    lab.cell(3).locator(".cm-content").click()
    lab.page.keyboard.press("Control+End")
    lab.page.keyboard.type(CONFIG)
    assert _source(lab, 3) == emitted + CONFIG
    lab.screenshot("3-typed")
    lab.page.keyboard.press("Shift+Enter")
    lab.wait_until_run(3)
    _completes(lab, lab.output(3).locator(".atai-job-card"))
    # The final state is also written as a plain output under the card.
    expect(lab.output(3).locator(".atai-card .atai-badge")).to_have_text("completed")
    lab.cell(3).scroll_into_view_if_needed()
    lab.screenshot("4-completed")

    job = _check_job(files, f"{MSC}-job", tmp_path / "results")
    assert job.parameters["worker"].config["reader_config"]["window_size"] == 8


def test_the_form_hears_the_chooser_and_submits_the_job(
    lab: Any, files: Files, tmp_path: Path
) -> None:
    name = f"form-{files.tag}"
    form_cell = (
        "from atai_magics.ui import ParamsForm\n"
        f"chooser = %atai_files {MSC}\n"
        f"form = ParamsForm({MSC!r}, files=chooser, name={name!r})\n"
        "form"
    )
    lab.write_notebook("form", [files.setup_cell(), form_cell])
    lab.open("form")
    lab.run_cell(0)
    lab.wait_for_output(0, "LOCAL")
    lab.run_cell(1)
    form = lab.output(1).locator(".atai-params-form")
    chooser = form.locator(".atai-files")
    # One "Insert cell below": the form's, which writes the config too (the chooser's is hidden).
    inserts = form.locator("button", has_text="Insert cell below")
    expect(inserts.filter(visible=True)).to_have_count(1)
    expect(chooser.locator("button", has_text="Insert cell below")).to_be_hidden()

    # The required settings first, typed into their boxes (data_columns takes tags: Enter).
    form.locator(".jupyter-widget-taginput").fill("a")
    form.locator(".jupyter-widget-taginput").press("Enter")
    for setting, value in (("timestamp_column", "ts"), ("window_size", "8"), ("step_size", "1")):
        form.get_by_label(setting, exact=True).fill(value)
    # The status line, right above the buttons (problems, or a tick).
    status = form.locator(":scope > .widget-html", has_text=re.compile(r"problem\(s\)|valid job"))
    expect(status).to_contain_text("2 problem(s)")  # the two ports have no files yet
    expect(status).to_contain_text(f"{INFERENCE}: required")

    # Then the files: the form re-checks the job when the chooser's picks change.
    _pick_in_chooser(lab, chooser, files, "form")
    expect(status).to_have_text("✓ a valid job")
    submit = form.locator("button", has_text="Submit")
    expect(submit).to_be_enabled()
    submit.scroll_into_view_if_needed()
    lab.screenshot("form-valid")

    submit.click()
    expect(form).to_contain_text("Submit: submitted job_")
    _completes(lab, form.locator(".atai-job-card"))
    form.locator(".atai-job-card").scroll_into_view_if_needed()
    lab.screenshot("form-completed")

    job = _check_job(files, name, tmp_path / "results")
    assert job.parameters["worker"].config["reader_config"] == {
        "data_columns": ["a"],
        "timestamp_column": "ts",
        "window_size": 8,
        "step_size": 1,
    }
