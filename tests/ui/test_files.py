"""The file chooser against a backend of its own holding 1,000 files (so other tests' listings
stay small): listing, filters and paging; picks -> inputs -> YAML -> the magic's parser; path
uploads with flat memory; browser uploads; deleting with a confirmation."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import atai_magics.ui as ui
import atai_magics.ui.files as files
from atai_magics import Client
from atai_magics.api.errors import ConfigError, NotFound
from atai_magics.spec import ClientResolver, parse_cell, validate
from atai_magics.ui.files import FileChooser, FileRow, FilesModel, PortChoice, inputs_yaml
from tests.conftest import LocalBackend, plugin_backend

MSC = "machine-state-classification"
CSV = b"time,a,b\n1,2,3\n"
MB = 1024 * 1024


@dataclass(frozen=True)
class Org:
    client: Client
    tag: str
    ids: dict[str, list[str]]
    """File ids by type, in upload order."""

    @property
    def all_ids(self) -> set[str]:
        return {f for ids in self.ids.values() for f in ids}


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    with plugin_backend(tmp_path_factory, "files", concurrency=1) as backend:
        yield backend


@pytest.fixture(scope="module")
def org(backend: LocalBackend) -> Org:
    """1,000 small files: 600 CSV, 300 text, 100 JSON."""
    client = backend.client()
    tag = uuid.uuid4().hex[:6]
    ids: dict[str, list[str]] = {
        "text/csv": [f"{tag}-{i:04d}.csv" for i in range(600)],
        "text/plain": [f"{tag}-{i:04d}.txt" for i in range(600, 900)],
        "application/json": [f"{tag}-{i:04d}.json" for i in range(900, 1000)],
    }
    with ThreadPoolExecutor(8) as pool:
        names = [f for type_ids in ids.values() for f in type_ids]
        list(pool.map(lambda name: client.upload_bytes(CSV, name), names))
    return Org(client, tag, ids)


def _page_ids(chooser: FileChooser) -> list[str]:
    return [file_id for _, file_id in chooser._table.options]


def _search(chooser: FileChooser, text: str) -> None:
    chooser._search.value = text


# --- listing, filters, paging ----------------------------------------------------------------


def test_lists_filters_and_pages_a_thousand_files(org: Org) -> None:
    chooser = FileChooser(org.client, MSC, wait=True)
    assert chooser.model.status_text() == "1,000 files" and chooser.model.complete
    assert chooser._page.value.count("1-50 of 1,000 · page 1/20")

    seen: list[str] = []
    while True:
        page = _page_ids(chooser)
        assert 0 < len(page) <= 50
        seen += page
        if chooser._next.disabled:
            break
        chooser._next.click()
    assert len(seen) == 1000 and set(seen) == org.all_ids  # every file exactly once
    assert chooser.model.page_text() == "951-1,000 of 1,000 · page 20/20"
    chooser._prev.click()
    assert chooser.model.page == 18 and not chooser._next.disabled

    # Searching goes back to the first page; every word must match, case-insensitively.
    _search(chooser, f"{org.tag.upper()}-00")
    assert chooser.model.page == 0 and chooser.model.page_text().endswith("of 100 · page 1/2")
    assert all(f.startswith(f"{org.tag}-00") for f in _page_ids(chooser))
    _search(chooser, f"{org.tag}-09 .json")
    assert {r.file_id for r in chooser.model.filtered()} == set(org.ids["application/json"])

    # The type filter offers the types present, with counts, and combines with the search.
    _search(chooser, "")
    labels = dict(chooser._type.options)
    assert labels["text/csv (600)"] == "text/csv" and labels["text/plain (300)"] == "text/plain"
    chooser._type.value = "text/plain"
    assert chooser.model.page_text() == "1-50 of 300 · page 1/6"
    _search(chooser, f"{org.tag}-06")
    assert len(chooser.model.filtered()) == 100
    chooser._type.value = ""
    _search(chooser, f"{org.tag}-0001.csv")

    # Size, type, status and the CSV columns the metadata has.
    (line,) = [label for label, _ in chooser._table.options]
    assert f"{org.tag}-0001.csv" in line and "15 B" in line and "text/csv" in line
    assert "time, a, b (1 rows)" in line
    row = chooser.model.filtered()[0]
    assert row.columns == ("time", "a", "b") and row.status


def test_listing_runs_in_the_background(org: Org) -> None:
    release = threading.Event()

    class SlowClient:
        """The org's client, whose file listing waits until released."""

        def __getattr__(self, name: str) -> Any:
            return getattr(org.client, name)

        def iter_files(self, **kwargs: Any) -> Iterator[Any]:
            release.wait(30)
            yield from org.client.iter_files(**kwargs)

    chooser = FileChooser(SlowClient(), MSC)  # type: ignore[arg-type]
    assert "loading…" in chooser.text() and chooser._status.value.count("loading…")
    release.set()
    chooser.wait_idle()
    assert chooser.model.status_text() == "1,000 files"


# --- picks -> inputs -> YAML -> the magic's parser ----------------------------------------------


def test_picks_become_inputs_yaml_and_the_same_request(org: Org) -> None:
    odd = [f"{{{{odd}}}} {org.tag} 'q' #1: yes.csv", f"{org.tag} ü ñ.csv", "true.csv"]
    for name in odd:
        org.client.upload_bytes(CSV, name)
    chooser = FileChooser(org.client, MSC, wait=True)
    assert [p.name for p in chooser.model.ports] == ["worker.inference", "worker.n_shots"]
    assert chooser._port.value == "worker.inference" and chooser._label.layout.display == "none"

    # Pick three files on one page: they go to the main input port.
    _search(chooser, f"{org.tag}-001")
    first = _page_ids(chooser)[:3]
    chooser._table.value = tuple(first)
    # New picks follow the "assign to" row: n-shot files with a class.
    chooser._port.value = "worker.n_shots"
    assert chooser._label.layout.display is None
    chooser._label.value = "normal"
    _search(chooser, org.tag)
    odd_on_page = [f for f in _page_ids(chooser) if f in odd]
    chooser._table.value = (*chooser._table.value, *odd_on_page)
    chooser.pick(["true.csv"], "worker.n_shots", "yes")

    # Change one n-shot file's class in its own row; move an odd one to the inference port.
    rows = {file_id: row for file_id, row in chooser._port_rows.items()}
    _, _, label = rows[odd[1]]
    label.value = "1"
    _, port, _ = rows[odd[0]]
    port.value = "worker.inference"

    expected = {
        "worker.inference": [{"file_id": f} for f in [*first, odd[0]]],
        "worker.n_shots": [
            {"file_id": odd[1], "metadata": {"class": "1"}},
            {"file_id": "true.csv", "metadata": {"class": "yes"}},
        ],
    }
    assert chooser.value == expected

    # The YAML block, inside a cell, parses and validates to the same inputs.
    block = chooser.to_yaml()
    assert block.startswith("inputs:\n  worker.inference:\n")
    config = "config:\n  reader_config: {data_columns: [a, b], timestamp_column: time, "
    config += "window_size: 2, step_size: 1}\n"
    cell = f"name: picked\npipeline: {MSC}\n{block}{config}"
    spec = parse_cell(cell)
    assert spec.request.to_body()["inputs"] == expected
    assert validate(spec, ClientResolver(org.client))["inputs"] == expected
    # So does the whole cell the chooser writes, and a cell interpolating .value.
    whole = chooser.cell()
    assert whole.startswith("%%atai_job\n")
    body = validate(parse_cell(whole.split("\n", 1)[1] + config), ClientResolver(org.client))
    assert body["inputs"] == expected and body["pipeline_key"] == MSC
    interpolated = parse_cell(
        "name: x\npipeline: p\ninputs: {{ files.value }}\n", {"files": chooser}
    )
    assert interpolated.request.to_body()["inputs"] == expected

    # The button puts the cell into the next input (IPython's set_next_input).
    inserted: list[tuple[str, bool]] = []
    shell = SimpleNamespace(set_next_input=lambda text, replace: inserted.append((text, replace)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files, "_shell", lambda: shell)
        chooser._insert.click()
    assert inserted == [(whole, False)]

    # Readable outside a front end.
    text = chooser.text()
    assert f"Picked 6 for {MSC}:" in text and "worker.n_shots: " in text
    assert f"{odd[1]} (class 1)" in text
    bundle = chooser._repr_mimebundle_()
    assert bundle is not None and "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"] == text == repr(chooser)

    # Another pipeline: picks on ports it lacks move to its main port; classes drop.
    chooser._pipeline.value = "activity-detection"
    chooser.wait_idle()
    assert list(chooser.value) == ["worker.data"] and len(chooser.value["worker.data"]) == 6
    assert all("metadata" not in item for item in chooser.value["worker.data"])
    for name in odd:
        org.client.delete_file(name)


def test_warnings_and_the_panel_of_picked_files(org: Org) -> None:
    chooser = FileChooser(org.client, f"{MSC}@1.1.1", wait=True)
    assert chooser._pipeline.value == f"{MSC}@1.1.1" and len(chooser.model.ports) == 2
    csv = org.ids["text/csv"]
    chooser.pick([csv[0]], "worker.n_shots")
    warnings = chooser.model.warnings()
    assert any("without a class" in w for w in warnings)
    assert any("required port worker.inference has no files" in w for w in warnings)
    assert chooser.value == {"worker.n_shots": [{"file_id": csv[0]}]}
    assert "! 1 n-shot file(s) without a class" in chooser.text()

    # Every picked file has a row of its own, up to 25; "Apply" sets them all.
    chooser.pick(csv[1:30])
    assert len(chooser._panel.children) == 26
    assert "5 more picked" in chooser._panel.children[-1].value
    chooser._port.value = "worker.inference"
    chooser._apply.click()
    assert chooser.value == {"worker.inference": [{"file_id": f} for f in csv[:30]]}
    row = chooser._panel.children[0]
    row.children[-1].click()  # its unpick button
    assert csv[0] not in chooser.model.picks and len(chooser.value["worker.inference"]) == 29
    assert row.comm is None and all(widget.comm is None for widget in row.children)  # closed


# --- uploads --------------------------------------------------------------------------------


def _rss() -> int:
    with Path("/proc/self/status").open() as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PeakRss:
    """The process's resident set size, sampled every 20 ms in a thread of its own."""

    def __init__(self) -> None:
        self.base = _rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        return self.peak - self.base


def test_path_upload_of_300_mb_streams_with_progress(
    org: Org, tmp_path: Path, record_property: Any
) -> None:
    big = tmp_path / f"{org.tag}-big.csv"
    with big.open("wb") as file:  # sparse: the header, then zeros
        file.write(b"time,a\n")
        file.truncate(300 * MB)
    chooser = FileChooser(org.client, MSC, wait=True)
    percents: list[int] = []
    chooser._progress.observe(lambda change: percents.append(change["new"]), "value")
    chooser._path.value = str(big)
    try:
        memory = PeakRss()
        chooser._upload.click()
        assert chooser._upload.disabled  # the click returned; the upload runs on
        chooser.wait_idle()
        growth = memory.stop()
    finally:
        big.unlink()
    record_property("rss_growth_mb", round(growth / MB, 1))
    print(f"peak RSS growth during the 300 MB upload: {growth / MB:.1f} MB")
    assert growth < 64 * MB, f"{growth / MB:.1f} MB"
    assert chooser.notice == f"Uploaded {big.name} (picked).", chooser.notice
    assert percents[-1] == 100 and percents == sorted(percents)
    assert len([p for p in percents if 0 < p < 100]) >= 10
    assert not chooser._upload.disabled
    assert org.client.get_file_metadata(big.name).num_bytes == 300 * MB
    assert chooser.model.rows[0].file_id == big.name
    assert chooser.value["worker.inference"] == [{"file_id": big.name}]
    org.client.delete_file(big.name)


def test_path_upload_problems_are_shown(org: Org, tmp_path: Path) -> None:
    chooser = FileChooser(org.client, MSC, wait=True)
    chooser._path.value = str(tmp_path / "nope.csv")
    chooser._upload.click()
    assert chooser.notice.startswith("No such file:") and not chooser._threads[-1].is_alive()
    taken = tmp_path / org.ids["text/csv"][0]
    taken.write_bytes(CSV)
    chooser.upload(taken, wait=True)
    assert chooser.notice.startswith("Conflict: 409"), chooser.notice
    assert not chooser._upload.disabled and chooser.model.picks == {}


def _browser_file(name: str, data: bytes) -> dict[str, Any]:
    """An entry of ``FileUpload.value`` as ipywidgets 8 makes it from the browser's message."""
    return {
        "name": name,
        "type": "",
        "size": len(data),
        "content": memoryview(data),
        "last_modified": datetime.now(timezone.utc),
    }


def test_browser_upload_takes_bytes_out_of_the_widget(org: Org) -> None:
    chooser = FileChooser(org.client, "activity-detection", wait=True)
    names = [f"{org.tag}-browser.csv", f"{org.tag}-prompts.jsonl"]
    chooser._browser.value = (
        _browser_file(names[0], CSV),
        _browser_file(names[1], b'{"prompt": "hi"}\n'),
    )
    assert chooser._browser.value == ()  # at once, before the upload finishes
    chooser.wait_idle()
    assert chooser.notice == f"Uploaded {', '.join(names)} (picked).", chooser.notice
    assert org.client.get_file_metadata(names[0]).file_type == "text/csv"
    assert org.client.get_file_metadata(names[1]).file_type == "application/x-ndjson"
    assert chooser.value == {"worker.data": [{"file_id": n} for n in names]}
    for name in names:
        org.client.delete_file(name)


def test_browser_upload_over_the_limit_points_to_path_upload(org: Org) -> None:
    chooser = FileChooser(org.client, MSC, browser_limit=1000, wait=True)
    name = f"{org.tag}-large.csv"
    chooser._browser.value = (_browser_file(name, CSV * 400),)
    assert chooser._browser.value == ()
    chooser.wait_idle()
    assert "over 1.0 KB" in chooser.notice and "press Upload" in chooser.notice
    with pytest.raises(NotFound):
        org.client.get_file_metadata(name)


# --- deleting -------------------------------------------------------------------------------


def test_delete_asks_first_then_removes_at_the_backend(org: Org) -> None:
    names = [f"{org.tag}-del-{i}.csv" for i in range(3)]
    for name in names:
        org.client.upload_bytes(CSV, name)
    chooser = FileChooser(org.client, MSC, wait=True)
    assert chooser._delete.disabled
    _search(chooser, f"{org.tag}-del-")
    chooser._table.value = tuple(_page_ids(chooser))

    chooser._delete.click()
    assert chooser._delete.description == "Confirm delete 3 files"
    assert chooser._cancel_delete.layout.display is None
    chooser._cancel_delete.click()
    assert chooser._delete.description == "Delete…" and chooser.notice == "Nothing deleted (kept)."

    chooser._delete.click()
    *doomed, kept = _page_ids(chooser)
    chooser._table.value = tuple(doomed)  # a changed pick ends the confirmation
    assert chooser._delete.description == "Delete…"
    chooser._delete.click()
    assert chooser._delete.description == "Confirm delete 2 files"
    chooser._delete.click()
    chooser.wait_idle()
    assert chooser.notice == "Deleted 2 file(s).", chooser.notice
    for name in doomed:
        with pytest.raises(NotFound):
            org.client.get_file_metadata(name)
    assert org.client.get_file_metadata(kept).file_id == kept
    assert _page_ids(chooser) == [kept] and chooser.model.picks == {}
    org.client.delete_file(kept)


# --- the pure parts and the default client ----------------------------------------------------


def test_inputs_yaml_quotes_what_yaml_would_misread() -> None:
    value: dict[str, list[dict[str, Any]]] = {
        "worker.inference": [{"file_id": i} for i in ["a.csv", "null", "1e3", "x: y", "{{a}}"]],
        "worker.n_shots": [{"file_id": "n.csv", "metadata": {"class": "no"}}],
    }
    block = inputs_yaml(value)
    assert "    - a.csv\n" in block and '"{{' not in block
    spec = parse_cell(f"name: x\npipeline: p\n{block}")
    assert spec.request.to_body()["inputs"] == value
    assert inputs_yaml({}) == "inputs: {}\n"


def test_model_pages_and_text_without_widgets() -> None:
    model = FilesModel(backend="LOCAL", page_size=2)
    model.set_rows([FileRow(f"f{i}.csv", 10 * i, "text/csv") for i in range(5)], complete=True)
    assert model.page_count == 3 and model.page_text() == "1-2 of 5 · page 1/3"
    model.turn(5)
    assert [r.file_id for r in model.page_rows()] == ["f4.csv"]
    model.set_ports("p", [PortChoice("in", required=True), PortChoice("shots", n_shot=True)])
    model.pick(["f4.csv"])
    assert model.value == {"in": [{"file_id": "f4.csv"}]}
    assert model.text().splitlines()[0] == "Files on LOCAL: 5 files"
    assert "* f4.csv" in model.text()
    model.remove_rows(["f4.csv"])
    assert model.page == 1 and model.picks == {}


def test_default_client_is_the_extensions(org: Org, monkeypatch: pytest.MonkeyPatch) -> None:
    session = SimpleNamespace(client=org.client)
    shell = SimpleNamespace(
        magics_manager=SimpleNamespace(registry={"AtaiMagics": SimpleNamespace(session=session)})
    )
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    chooser = ui.FileChooser(pipeline=MSC, wait=True)
    assert chooser._client is org.client and chooser.model.complete


def test_a_listing_error_shows_on_the_widget(org: Org) -> None:
    class Broken:
        base_url = org.client.base_url

        def __getattr__(self, name: str) -> Any:
            return getattr(org.client, name)

        def iter_files(self, **kwargs: Any) -> Iterator[Any]:
            raise ConfigError("no files here")

    chooser = FileChooser(Broken(), MSC, wait=True)  # type: ignore[arg-type]
    assert chooser.model.status_text() == "error: no files here"
    assert "error: no files here" in chooser.text()
