"""The file chooser: pick the org's files, assign them to a pipeline's input ports, get YAML.

Two layers, as for the job card. `FilesModel` is pure (no widgets, no network): the rows of
file metadata, search / type filter / paging, the picked files and the port (and n-shot class)
each one goes to, and what that gives — `FilesModel.value` (the job's ``inputs`` mapping,
exactly as ``spec.validate`` sends it), `inputs_yaml` (the ``inputs:`` block a ``%%atai_job``
cell accepts) and a readable `FilesModel.text`. `FileChooser` is the thin ipywidgets layer.

The Files API has no search and lists at most 1,000 files a page, so the chooser lists the
whole org once in a background thread (pages of 1,000, shown as they arrive) and filters and
pages locally; nothing the kernel runs waits on the network (``wait=True`` does, for scripts).
Path uploads stream through `Client.upload_file` (large files take the direct multipart flow)
with its progress callback; browser uploads are limited to what a comm message carries, and
their bytes are taken out of the widget's ``value`` at once.
"""

from __future__ import annotations

import contextlib
import html
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as w
from traitlets import Bunch

from ..api import models as m
from ..api.errors import AtaiError
from . import cell_yaml
from .view import backend_label, format_size

if TYPE_CHECKING:
    from ..api.client import Client
    from ..spec import ClientResolver

__all__ = [
    "BROWSER_UPLOAD_LIMIT",
    "PAGE_SIZE",
    "FileChooser",
    "FileRow",
    "FilesModel",
    "PortChoice",
    "inputs_yaml",
    "job_cell",
]

log = logging.getLogger(__name__)

PAGE_SIZE = 50
LIST_PAGE = 1000
"""Files per listing request (the API's maximum)."""
BROWSER_UPLOAD_LIMIT = 10_000_000
"""Largest browser upload: the file travels in one comm message, and Jupyter's websocket
refuses messages over 10 MiB by default (so a bigger file would never arrive)."""
TEXT_ROWS = 10
"""Rows of the current page that the text form shows."""
PANEL_ROWS = 25
"""Picked files that get their own port/class row in the widget (the rest: bulk assign)."""
DELETE_THREADS = 4


# --- rows, ports, YAML ---------------------------------------------------------------------


@dataclass(frozen=True)
class FileRow:
    """One file as the chooser shows it."""

    file_id: str
    num_bytes: int | None = None
    file_type: str = ""
    status: str = ""
    columns: tuple[str, ...] = ()
    num_rows: int | None = None

    @classmethod
    def of(cls, meta: m.FileMeta) -> FileRow:
        attributes = meta.file_attributes or {}
        headers = attributes.get("column_headers")
        rows = attributes.get("num_rows")
        status = meta.file_status.value if meta.file_status is not None else ""
        return cls(
            file_id=meta.file_id,
            num_bytes=meta.num_bytes,
            file_type=meta.file_type or "",
            status=status.removeprefix("FILE_STATUS_").replace("_", " ").lower(),
            columns=tuple(str(h) for h in headers) if isinstance(headers, list) else (),
            num_rows=rows if isinstance(rows, int) else None,
        )

    @property
    def size(self) -> str:
        return format_size(self.num_bytes) if self.num_bytes is not None else ""

    @property
    def columns_text(self) -> str:
        """``a, b, c +5 (1,200 rows)``: the first CSV columns, when the metadata has them."""
        shown = ", ".join(self.columns[:4])
        if len(self.columns) > 4:
            shown += f" +{len(self.columns) - 4}"
        if self.num_rows is not None and self.columns:
            shown += f" ({self.num_rows:,} rows)"
        return shown

    def line(self) -> str:
        """A fixed-width line: name, size, type, status, columns."""
        return (
            f"{_fit(self.file_id, 36):<36}  {self.size:>9}  {_fit(self.file_type, 20):<20}  "
            f"{_fit(self.status, 10):<10}  {self.columns_text}"
        ).rstrip()


HEADER = f"{'file':<36}  {'size':>9}  {'type':<20}  {'status':<10}  columns"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True)
class PortChoice:
    """An input port files can be assigned to; an n-shot port also wants a class per file."""

    name: str
    n_shot: bool = False
    required: bool = False

    @property
    def label(self) -> str:
        return f"{self.name} (n-shot: needs a class)" if self.n_shot else self.name


def ports_of(schema: m.PipelineSchema) -> list[PortChoice]:
    """The file ports of a pipeline. Checkpoint ports take ``{kind: checkpoint}`` items, not
    files, so they are left out."""
    return [
        PortChoice(
            name,
            n_shot=port.mode == "n_shot_file_list" or "n_shot" in name,
            required=port.required,
        )
        for name, port in schema.inputs.items()
        if "checkpoint" not in name
    ]


def inputs_yaml(value: Mapping[str, Sequence[Mapping[str, Any]]], indent: str = "") -> str:
    """The ``inputs:`` block of a cell for an ``inputs`` mapping (cell shorthands: a bare file
    id, or ``{file_id, class}`` on n-shot ports). Odd ids are quoted by `cell_yaml`, so they
    read back unchanged; `cell_yaml.NotRepresentable` for the few characters a cell cannot
    hold (use ``inputs: {{ chooser.value }}`` then)."""
    lines = [f"{indent}inputs:" + ("" if value else " {}")]
    for port, items in value.items():
        lines.append(f"{indent}  {cell_yaml.scalar(port)}:" + ("" if items else " []"))
        for item in items:
            label = (item.get("metadata") or {}).get("class")
            shorthand = (
                item["file_id"] if label is None else {"file_id": item["file_id"], "class": label}
            )
            lines.append(f"{indent}    - {cell_yaml.flow(shorthand)}")
    return "\n".join(lines) + "\n"


def job_cell(pipeline: str, value: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """A ``%%atai_job`` cell for ``pipeline`` (``KEY`` or ``KEY@VERSION``) with these inputs."""
    key = pipeline.split("@", 1)[0]
    return (
        "%%atai_job\n"
        f"name: {cell_yaml.scalar(key + '-job')}\n"
        f"pipeline: {cell_yaml.scalar(pipeline)}\n" + inputs_yaml(value)
    )


# --- the model -----------------------------------------------------------------------------


@dataclass
class Pick:
    """Where one picked file goes: a port, and a class on n-shot ports."""

    port: str | None = None
    label: str = ""


@dataclass
class FilesModel:
    """Everything the chooser shows, as plain data (not thread-safe: the widget locks it)."""

    backend: str = ""
    pipeline: str | None = None
    rows: list[FileRow] = field(default_factory=list)
    loading: bool = False
    complete: bool = False
    error: str = ""
    search: str = ""
    file_type: str = ""
    page: int = 0
    page_size: int = PAGE_SIZE
    ports: list[PortChoice] = field(default_factory=list)
    picks: dict[str, Pick] = field(default_factory=dict)
    """Picked file ids, in the order they were picked."""
    _filtered: tuple[tuple[int, str, str], list[FileRow]] | None = field(
        default=None, init=False, repr=False
    )
    _version: int = field(default=0, init=False, repr=False)

    # --- rows and filters

    def set_rows(self, rows: Iterable[FileRow], *, complete: bool) -> None:
        """Replace the rows. Picks stay, even of files no longer listed: dropping them would
        lose a pick silently; `warnings` names them and the cell's validation refuses them."""
        self.rows = list(rows)
        self.complete = complete
        self._version += 1
        self.page = min(self.page, self.page_count - 1)

    def add_rows(self, rows: Iterable[FileRow]) -> None:
        """New files (just uploaded) go first, as in the API's newest-first order."""
        new = list(rows)
        ids = {r.file_id for r in new}
        self.set_rows(new + [r for r in self.rows if r.file_id not in ids], complete=self.complete)

    def remove_rows(self, file_ids: Iterable[str]) -> None:
        gone = set(file_ids)
        self.set_rows([r for r in self.rows if r.file_id not in gone], complete=self.complete)
        self.picks = {f: p for f, p in self.picks.items() if f not in gone}

    def set_filter(self, search: str | None = None, file_type: str | None = None) -> None:
        if search is not None:
            self.search = search
        if file_type is not None:
            self.file_type = file_type
        self.page = 0

    def filtered(self) -> list[FileRow]:
        """Rows matching the type and every word of the search (case-insensitive)."""
        key = (self._version, self.search, self.file_type)
        if self._filtered is None or self._filtered[0] != key:
            words = self.search.lower().split()
            rows = [
                r
                for r in self.rows
                if (not self.file_type or r.file_type == self.file_type)
                and all(word in r.file_id.lower() for word in words)
            ]
            self._filtered = (key, rows)
        return self._filtered[1]

    def types(self) -> list[tuple[str, int]]:
        """The file types present, with how many files of each."""
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.file_type] = counts.get(row.file_type, 0) + 1
        return sorted(counts.items())

    # --- paging

    @property
    def page_count(self) -> int:
        return max(1, -(-len(self.filtered()) // self.page_size))

    def turn(self, pages: int) -> None:
        self.page = max(0, min(self.page + pages, self.page_count - 1))

    def page_rows(self) -> list[FileRow]:
        start = self.page * self.page_size
        return self.filtered()[start : start + self.page_size]

    def page_text(self) -> str:
        """``51-100 of 1,000 · page 2/20``."""
        total = len(self.filtered())
        start = self.page * self.page_size
        shown = f"{start + 1:,}-{min(total, start + self.page_size):,}" if total else "0"
        return f"{shown} of {total:,} · page {self.page + 1}/{self.page_count}"

    def status_text(self) -> str:
        if self.error:
            return f"error: {self.error}"
        count = f"{len(self.rows):,} file{'s' * (len(self.rows) != 1)}"
        if self.loading:
            return f"loading… {count} so far" if self.rows else "loading…"
        return count

    # --- picks and ports

    def set_ports(self, pipeline: str | None, ports: list[PortChoice]) -> None:
        """A (new) pipeline: picks on ports it does not have move to the default port."""
        self.pipeline = pipeline
        self.ports = ports
        names = {p.name for p in ports}
        for pick in self.picks.values():
            if pick.port not in names:
                pick.port = self.default_port
                pick.label = pick.label if self.is_n_shot(pick.port) else ""

    @property
    def default_port(self) -> str | None:
        """Where new picks go: the first required plain port, else the first port."""
        for port in self.ports:
            if port.required and not port.n_shot:
                return port.name
        return self.ports[0].name if self.ports else None

    def is_n_shot(self, port: str | None) -> bool:
        return any(p.name == port and p.n_shot for p in self.ports)

    def pick(self, file_ids: Iterable[str], port: str | None = None, label: str = "") -> None:
        """Pick files (already picked ones keep their port and class)."""
        for file_id in file_ids:
            if file_id not in self.picks:
                chosen = port or self.default_port
                self.picks[file_id] = Pick(chosen, label if self.is_n_shot(chosen) else "")

    def unpick(self, file_ids: Iterable[str]) -> None:
        for file_id in file_ids:
            self.picks.pop(file_id, None)

    def set_page_picks(self, chosen: Iterable[str], port: str | None, label: str) -> None:
        """The picks of the current page become ``chosen`` (other pages keep theirs)."""
        chosen = list(chosen)
        self.unpick(r.file_id for r in self.page_rows() if r.file_id not in chosen)
        self.pick(chosen, port, label)

    def assign(self, file_ids: Iterable[str], port: str | None, label: str | None = None) -> None:
        """Send picked files to ``port``; the class is kept (or set) only on n-shot ports."""
        for file_id in file_ids:
            pick = self.picks.get(file_id)
            if pick is None:
                continue
            pick.port = port
            if label is not None:
                pick.label = label
            if not self.is_n_shot(port):
                pick.label = ""

    @property
    def value(self) -> dict[str, list[dict[str, Any]]]:
        """The job's ``inputs``: port -> items, ports in the pipeline's order, files in the
        order picked; n-shot items carry ``metadata.class`` when one is given."""
        value: dict[str, list[dict[str, Any]]] = {}
        for port in self.ports:
            items = []
            for file_id, pick in self.picks.items():
                if pick.port == port.name:
                    item: dict[str, Any] = {"file_id": file_id}
                    if port.n_shot and pick.label.strip():
                        item["metadata"] = {"class": pick.label.strip()}
                    items.append(item)
            if items:
                value[port.name] = items
        return value

    def warnings(self) -> list[str]:
        found = []
        unlabelled = [
            f for f, p in self.picks.items() if self.is_n_shot(p.port) and not p.label.strip()
        ]
        if unlabelled:
            found.append(f"{len(unlabelled)} n-shot file(s) without a class: {unlabelled[0]}…")
        unassigned = [f for f, p in self.picks.items() if p.port is None]
        if unassigned:
            found.append(f"{len(unassigned)} picked file(s) have no port (choose a pipeline)")
        for port in self.ports:
            if port.required and not any(p.port == port.name for p in self.picks.values()):
                found.append(f"required port {port.name} has no files")
        if self.complete:
            listed = {r.file_id for r in self.rows}
            gone = [f for f in self.picks if f not in listed]
            if gone:
                found.append(f"{len(gone)} picked file(s) no longer listed: {gone[0]}")
        return found

    def text(self) -> str:
        """What a terminal or a saved notebook shows."""
        where = f" on {self.backend}" if self.backend else ""
        lines = [f"Files{where}: {self.status_text()}"]
        filters = []
        if self.search:
            filters.append(f"search {self.search!r}")
        if self.file_type:
            filters.append(f"type {self.file_type}")
        lines.append(f"  {self.page_text()}" + (f" · {', '.join(filters)}" if filters else ""))
        rows = self.page_rows()
        if rows:
            lines.append("  " + HEADER)
            marks = self.picks
            lines += [("* " if r.file_id in marks else "  ") + r.line() for r in rows[:TEXT_ROWS]]
            if len(rows) > TEXT_ROWS:
                lines.append(f"  … {len(rows) - TEXT_ROWS} more on this page")
        pipeline = self.pipeline or "(no pipeline)"
        lines.append(f"Picked {len(self.picks)} for {pipeline}:")
        for port, items in self.value.items():
            shown = [
                str(i["file_id"])
                + (f" (class {i['metadata']['class']})" if "metadata" in i else "")
                for i in items
            ]
            tail = f", … {len(shown) - 5} more" if len(shown) > 5 else ""
            lines.append(f"  {port}: {', '.join(shown[:5])}{tail}")
        lines += [f"  ! {text}" for text in self.warnings()]
        return "\n".join(lines)


# --- the widget ----------------------------------------------------------------------------


def default_client() -> Client:
    """The client of the loaded extension's session, else of a session of this process's own.
    May start the local backend, so it is only called from background threads."""
    from ..session import extension_session

    return extension_session(load=False).client


class FileChooser(w.VBox):  # type: ignore[misc]  # ipywidgets is untyped
    """Choose the org's files for a job's inputs; upload and delete files.

    ``FileChooser(client=None, pipeline=None)``: ``client`` defaults to the extension's (see
    `default_client`); ``pipeline`` is ``KEY`` or ``KEY@VERSION`` (default: the first one
    published). ``.value`` is the job's ``inputs`` mapping (usable as ``inputs: {{ chooser.value
    }}`` in a cell), ``.to_yaml()`` its ``inputs:`` block, ``.cell()`` a whole ``%%atai_job``
    cell. Listing, uploads and deletes run in background threads; ``wait=True`` (and the
    ``wait`` arguments of the methods) block until they are done, for scripts and tests.
    ``observe(handler, names="value")`` is told whenever ``.value`` changes (a `ParamsForm`
    showing the chooser re-checks its job so).
    """

    def __init__(
        self,
        client: Client | None = None,
        pipeline: str | None = None,
        *,
        page_size: int = PAGE_SIZE,
        browser_limit: int = BROWSER_UPLOAD_LIMIT,
        wait: bool = False,
        **kwargs: Any,
    ) -> None:
        self._client = client
        self._resolver: ClientResolver | None = None
        self.browser_limit = browser_limit
        self.model = FilesModel(page_size=page_size, pipeline=pipeline)
        self.notice = ""
        self._lock = threading.RLock()
        self._rendering = False
        self._generation = 0
        self._threads: list[threading.Thread] = []
        self._confirming: list[str] = []
        self._port_rows: dict[str, tuple[w.HBox, w.Dropdown, w.Text]] = {}
        self._notified: dict[str, list[dict[str, Any]]] = {}

        self._status = w.HTML()
        self._search = w.Text(placeholder="search names", layout=w.Layout(width="220px"))
        self._type = w.Dropdown(options=[("all types", "")], layout=w.Layout(width="200px"))
        self._reload = w.Button(description="Refresh", icon="refresh", layout=_auto())
        self._header = w.HTML(f"<pre style='margin:0'>{html.escape(HEADER)}</pre>")
        self._table = w.SelectMultiple(options=[], rows=12, layout=w.Layout(width="100%"))
        self._prev = w.Button(description="◀ Prev", layout=_auto())
        self._next = w.Button(description="Next ▶", layout=_auto())
        self._page = w.HTML()
        self._pipeline = w.Dropdown(description="pipeline", options=[], layout=_auto())
        self._port = w.Dropdown(description="assign to", options=[], layout=_auto())
        self._label = w.Text(placeholder="class (n-shot)", layout=w.Layout(width="160px"))
        self._apply = w.Button(description="Apply to all picked", layout=_auto())
        self._panel = w.VBox()
        self._more = w.HTML()
        self._yaml = w.HTML()
        self._insert = w.Button(description="Insert cell below", icon="plus", layout=_auto())
        self._delete = w.Button(description="Delete…", icon="trash", layout=_auto())
        self._cancel_delete = w.Button(description="Keep them", layout=_auto())
        self._path = w.Text(placeholder="local path, e.g. data/run1.csv", layout=_wide())
        self._upload = w.Button(description="Upload", icon="upload", layout=_auto())
        self._progress = w.IntProgress(min=0, max=100, layout=w.Layout(width="200px"))
        self._browser = w.FileUpload(multiple=True, description="From browser")
        self._notice = w.HTML()

        self._search.observe(lambda c: self._on_filter(search=c["new"]), "value")
        self._type.observe(lambda c: self._on_filter(file_type=c["new"]), "value")
        self._reload.on_click(lambda _: self.refresh())
        self._prev.on_click(lambda _: self._turn(-1))
        self._next.on_click(lambda _: self._turn(1))
        self._table.observe(self._on_table, "value")
        self._pipeline.observe(self._on_pipeline, "value")
        self._port.observe(self._on_port, "value")
        self._apply.on_click(lambda _: self._apply_bulk())
        self._insert.on_click(lambda _: self.insert_cell())
        self._delete.on_click(lambda _: self._on_delete())
        self._cancel_delete.on_click(lambda _: self._end_confirm("kept"))
        self._upload.on_click(lambda _: self.upload(self._path.value))
        self._browser.observe(self._on_browser, "value")
        _show(self._cancel_delete, False)
        _show(self._progress, False)

        limit = format_size(browser_limit)
        super().__init__(
            children=[
                w.HBox([self._search, self._type, self._reload, self._status]),
                self._header,
                self._table,
                w.HBox([self._prev, self._next, self._page]),
                w.HBox([self._pipeline, self._port, self._label, self._apply]),
                self._panel,
                self._yaml,
                w.HBox([self._insert, self._delete, self._cancel_delete]),
                w.HBox([self._path, self._upload, self._progress]),
                w.HBox([self._browser, w.HTML(_muted(f"up to {limit} each; larger: by path"))]),
                self._notice,
                w.HTML("<style>.atai-files select{font-family:monospace}</style>"),
            ],
            layout=w.Layout(border="1px solid #d1d5db", padding="4px 10px", margin="4px 0"),
            **kwargs,
        )
        self.add_class("atai-files")
        self._render()
        self.refresh(wait=wait)

    # --- public API ---------------------------------------------------------------------------

    @property
    def value(self) -> dict[str, list[dict[str, Any]]]:
        """The job's ``inputs`` mapping for the picked files."""
        with self._lock:
            return self.model.value

    def to_yaml(self) -> str:
        """The ``inputs:`` block for a ``%%atai_job`` cell."""
        return inputs_yaml(self.value)

    def cell(self) -> str:
        """A whole ``%%atai_job`` cell: name, pipeline and these inputs (add a ``config:``)."""
        with self._lock:
            return job_cell(self.model.pipeline or "PIPELINE", self.model.value)

    def insert_cell(self) -> str:
        """Put `cell` into a new cell below (IPython's ``set_next_input``); returns the text.

        Jupyter delivers a new cell with the reply of an executed cell: called from a cell it
        appears at once; from the button, below the next cell that runs (the text is also
        shown, to copy).
        """
        text = self.cell()
        shell = _shell()
        if shell is not None:
            shell.set_next_input(text, replace=False)
        self._say(
            "The job cell appears below the next non-empty cell you run (Jupyter adds cells "
            "with a cell's reply); the YAML above can also be copied."
        )
        return text

    def show_insert(self, visible: bool) -> None:
        """Show or hide the "Insert cell below" button. A `ParamsForm` showing this chooser
        hides it: the form's own button writes the whole cell, config included."""
        _show(self._insert, visible)

    def refresh(self, *, wait: bool = False) -> None:
        """List the org's files (and load the pipeline's ports) again, in the background."""
        with self._lock:
            self._generation += 1
            generation = self._generation
            self.model.loading, self.model.error = True, ""
            self._render()
        self._spawn("atai-files-list", lambda: self._load(generation), wait)

    def pick(self, file_ids: Iterable[str], port: str | None = None, label: str = "") -> None:
        """Pick files by id (``port`` defaults to the pipeline's main input port)."""
        with self._lock:
            self.model.pick(file_ids, port, label)
            self._end_confirm()
            self._render()

    def unpick(self, file_ids: Iterable[str]) -> None:
        with self._lock:
            self.model.unpick(file_ids)
            self._end_confirm()
            self._render()

    def assign(self, file_ids: Iterable[str], port: str | None, label: str | None = None) -> None:
        """Send picked files to ``port`` (with a class, on n-shot ports)."""
        with self._lock:
            self.model.assign(file_ids, port, label)
            self._render()

    def upload(self, path: str | Path, *, wait: bool = False) -> None:
        """Upload a local file in the background, with progress; it is picked when done."""
        source = Path(str(path).strip()).expanduser()
        if not str(path).strip() or not source.is_file():
            self._say(f"No such file: {str(path).strip() or '(empty path)'}", error=True)
            return
        with self._lock:
            self._upload.disabled = True
            self._progress.value = 0
            _show(self._progress, True)
        self._say(f"Uploading {source.name} ({format_size(source.stat().st_size)})…")
        last = [-1]

        def progress(sent: int, total: int) -> None:
            percent = 100 if total <= 0 else min(100, sent * 100 // total)
            if percent != last[0]:
                last[0] = percent
                self._progress.value = percent

        def work() -> None:
            try:
                result = self._client_now().upload_file(source, on_progress=progress)
                self._progress.value = 100
                self._uploaded([result.file_id or source.name])
            finally:
                self._upload.disabled = False

        self._spawn("atai-files-upload", work, wait)

    def delete(self, file_ids: Iterable[str], *, wait: bool = False) -> None:
        """Delete files at the backend (no confirmation: the buttons ask first)."""
        ids = list(file_ids)

        def work() -> None:
            client = self._client_now()

            def one(file_id: str) -> str | None:
                try:
                    client.delete_file(file_id)
                    return None
                except AtaiError as exc:
                    return f"{file_id}: {exc}"

            with ThreadPoolExecutor(DELETE_THREADS) as pool:
                failed = [f for f in pool.map(one, ids) if f]
            with self._lock:
                self.model.remove_rows(ids)
                self._render()
            text = f"Deleted {len(ids) - len(failed)} file(s)."
            self._say(text + (f" {len(failed)} failed: {failed[0]}" if failed else ""), failed)

        self._say(f"Deleting {len(ids)} file(s)…")
        self._spawn("atai-files-delete", work, wait)

    def wait_idle(self, timeout: float | None = None) -> None:
        """Wait for the background work started so far (listing, uploads, deletes)."""
        for thread in list(self._threads):
            thread.join(timeout)

    # --- renderings -------------------------------------------------------------------------

    def text(self) -> str:
        with self._lock:
            text = self.model.text()
        return text + (f"\n{self.notice}" if self.notice else "")

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        bundle: dict[str, Any] | None = super()._repr_mimebundle_(**kwargs)
        if bundle is not None:
            bundle["text/plain"] = self.text()
        return bundle

    def __repr__(self) -> str:
        return self.text()

    # --- background work ----------------------------------------------------------------------

    def _spawn(self, name: str, work: Callable[[], None], wait: bool) -> None:
        def run() -> None:
            try:
                work()
            except (AtaiError, OSError) as exc:
                self._say(f"{type(exc).__name__}: {exc}", error=True)
            except Exception as exc:  # a thread's error would otherwise vanish
                log.exception("file chooser: %s failed", name)
                self._say(f"{name} failed: {exc!r}", error=True)

        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        if wait:
            thread.join()

    def _client_now(self) -> Client:
        if self._client is None:
            self._client = default_client()
        return self._client

    def _load(self, generation: int) -> None:
        try:
            client = self._client_now()
            with self._lock:
                self.model.backend = backend_label(client.base_url)
            try:
                self._load_pipeline(client)
            except AtaiError as exc:  # the files can still be listed
                self._say(f"The pipelines could not be loaded: {exc}", error=True)
            rows: list[FileRow] = []
            first = not self.model.rows
            for meta in client.iter_files(page_size=LIST_PAGE):
                rows.append(FileRow.of(meta))
                if first and len(rows) % LIST_PAGE == 0:  # show the first pages as they come
                    self._publish(generation, rows, complete=False)
            self._publish(generation, rows, complete=True)
        except (AtaiError, OSError) as exc:
            self._list_failed(generation, str(exc))
        except Exception as exc:
            self._list_failed(generation, repr(exc))
            raise

    def _list_failed(self, generation: int, error: str) -> None:
        with self._lock:
            if generation == self._generation:
                self.model.loading, self.model.error = False, error
                self._render()

    def _publish(self, generation: int, rows: list[FileRow], *, complete: bool) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self.model.set_rows(rows, complete=complete)
            self.model.loading = not complete
            self._render()

    def _load_pipeline(self, client: Client, chosen: str | None = None) -> None:
        from ..spec import ClientResolver, PipelineNotFound

        if self._resolver is None:
            self._resolver = ClientResolver(client)
        keys = self._resolver.pipeline_keys()
        pipeline = chosen or self.model.pipeline or (keys[0] if keys else None)
        ports: list[PortChoice] = []
        if pipeline:
            key, _, version = pipeline.partition("@")
            try:
                ports = ports_of(self._resolver.pipeline(key, version or None))
            except PipelineNotFound:
                self._say(f"No pipeline {pipeline!r}; known: {', '.join(keys)}", error=True)
        with self._lock:
            self.model.set_ports(pipeline, ports)
            options = keys if pipeline is None or pipeline in keys else [*keys, pipeline]
            self._rendering = True
            try:
                self._pipeline.options = options
                self._pipeline.value = pipeline
            finally:
                self._rendering = False
            self._render()

    def _uploaded(self, file_ids: list[str]) -> None:
        client = self._client_now()
        rows = [FileRow.of(client.get_file_metadata(f)) for f in file_ids]
        with self._lock:
            self.model.add_rows(rows)
            self.model.pick(file_ids, self._port.value, self._label.value)
            self._render()
        self._say(f"Uploaded {', '.join(file_ids)} (picked).")

    # --- widget events --------------------------------------------------------------------

    def _on_filter(self, search: str | None = None, file_type: str | None = None) -> None:
        if self._rendering:
            return
        with self._lock:
            self.model.set_filter(search, file_type)
            self._render()

    def _turn(self, pages: int) -> None:
        with self._lock:
            self.model.turn(pages)
            self._render()

    def _on_table(self, change: dict[str, Any]) -> None:
        if self._rendering:
            return
        with self._lock:
            self.model.set_page_picks(change["new"], self._port.value, self._label.value)
            self._end_confirm()
            self._render()

    def _on_pipeline(self, change: dict[str, Any]) -> None:
        if self._rendering or not change["new"]:
            return
        chosen = str(change["new"])
        self._spawn(
            "atai-files-pipeline", lambda: self._load_pipeline(self._client_now(), chosen), False
        )

    def _on_port(self, change: dict[str, Any]) -> None:
        if not self._rendering:
            self._render_ports()

    def _apply_bulk(self) -> None:
        with self._lock:
            self.model.assign(list(self.model.picks), self._port.value, self._label.value)
            self._render()

    def _on_port_row(self, file_id: str, port: str | None, label: str | None) -> None:
        if self._rendering:
            return
        with self._lock:
            self.model.assign([file_id], port, label)
            self._render()

    def _on_delete(self) -> None:
        with self._lock:
            if not self._confirming:
                self._confirming = list(self.model.picks)
                if self._confirming:
                    self._render()
                return
            ids, self._confirming = self._confirming, []
            self._render()
        self.delete(ids)

    def _end_confirm(self, outcome: str = "") -> None:
        with self._lock:
            if self._confirming:
                self._confirming = []
                self._render()
                if outcome:
                    self._say(f"Nothing deleted ({outcome}).")

    def _on_browser(self, change: dict[str, Any]) -> None:
        if self._rendering or not change["new"]:
            return
        taken: list[tuple[str, bytes]] = []
        refused: list[str] = []
        for item in change["new"]:
            size = int(item.get("size") or len(item["content"]))
            if size > self.browser_limit:
                refused.append(f"{item['name']} ({format_size(size)})")
            else:
                taken.append((str(item["name"]), bytes(item["content"])))
        with self._lock:  # the bytes leave the widget's state at once
            self._rendering = True
            try:
                self._browser.value = ()
            finally:
                self._rendering = False
        if refused:
            limit = format_size(self.browser_limit)
            self._say(
                f"Not uploaded from the browser (over {limit}): {', '.join(refused)}. Type the "
                "file's path in the box below and press Upload (streamed, any size).",
                error=True,
            )
        if taken:
            self._spawn("atai-files-browser", lambda: self._upload_bytes(taken), False)

    def _upload_bytes(self, files: list[tuple[str, bytes]]) -> None:
        client = self._client_now()
        done = []
        while files:
            name, data = files.pop(0)
            result = client.upload_bytes(data, name)  # JSONL goes through the direct flow
            del data
            done.append(result.file_id or name)
        self._uploaded(done)

    # --- drawing ----------------------------------------------------------------------------

    def _say(self, text: str, error: object = False) -> None:
        self.notice = text
        colour = "#b91c1c" if error else "#374151"
        self._notice.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"

    def _render(self) -> None:
        """Set every widget from the model (any thread; traits only), then tell observers of
        ``value`` if the picks changed (``value`` is a property, so traitlets would not)."""
        with self._lock:
            self._rendering = True
            try:
                self._draw()
            finally:
                self._rendering = False
            old, new = self._notified, self.model.value
            if new != old:
                self._notified = new
                self.notify_change(Bunch(name="value", old=old, new=new, owner=self, type="change"))

    def _draw(self) -> None:
        model = self.model
        colour = "#b91c1c" if model.error else "#6b7280"
        self._status.value = (
            f"<span style='color:{colour}'>{html.escape(model.status_text())}</span>"
        )
        types = [("all types", "")] + [(f"{t or '?'} ({n:,})", t) for t, n in model.types()]
        if model.file_type and model.file_type not in dict(types).values():
            types.append((model.file_type, model.file_type))
        if list(self._type.options) != types:
            self._type.options = types
        self._type.value = model.file_type
        self._search.value = model.search
        rows = model.page_rows()
        options = [(r.line(), r.file_id) for r in rows]
        if list(self._table.options) != options:
            self._table.options = options
        self._table.value = tuple(r.file_id for r in rows if r.file_id in model.picks)
        self._page.value = _muted(model.page_text() + f" · {len(model.picks):,} picked")
        self._prev.disabled = model.page == 0
        self._next.disabled = model.page >= model.page_count - 1
        self._render_ports()
        try:
            block = inputs_yaml(model.value)
        except cell_yaml.NotRepresentable as exc:
            block = f"# not writable as YAML ({exc}); use  inputs: {{{{ chooser.value }}}}"
        self._yaml.value = (
            "<pre style='margin:2px 0;padding:4px;background:#f9fafb;user-select:all'>"
            f"{html.escape(block)}</pre>"
            + "".join(
                f"<div style='color:#b45309'>! {html.escape(t)}</div>" for t in model.warnings()
            )
        )
        self._delete.disabled = not model.picks and not self._confirming
        if self._confirming:
            count = len(self._confirming)
            self._delete.description = f"Confirm delete {count} file{'s' * (count != 1)}"
            self._delete.button_style = "danger"
        else:
            self._delete.description, self._delete.button_style = "Delete…", ""
        _show(self._cancel_delete, bool(self._confirming))

    def _render_ports(self) -> None:
        with self._lock:
            model = self.model
            options = [(p.label, p.name) for p in model.ports]
            rendering, self._rendering = self._rendering, True
            try:
                if list(self._port.options) != options:
                    chosen = self._port.value
                    self._port.options = options
                    names = dict(options).values()
                    self._port.value = chosen if chosen in names else model.default_port
                _show(self._label, model.is_n_shot(self._port.value))
                rows = []
                for file_id, pick in list(model.picks.items())[:PANEL_ROWS]:
                    row, port, label = self._port_row(file_id)
                    if list(port.options) != options:
                        port.options = options
                    port.value = pick.port if pick.port in dict(options).values() else None
                    label.value = pick.label
                    _show(label, model.is_n_shot(pick.port))
                    rows.append(row)
                for gone in set(self._port_rows) - set(model.picks):  # unpicked: close
                    row = self._port_rows.pop(gone)[0]
                    for widget in (*row.children, row):
                        widget.close()
                more = len(model.picks) - PANEL_ROWS
                self._more.value = _muted(f"… {more:,} more picked (Apply sets them all)")
                self._panel.children = [*rows, self._more] if more > 0 else rows
            finally:
                self._rendering = rendering

    def _port_row(self, file_id: str) -> tuple[w.HBox, w.Dropdown, w.Text]:
        cached = self._port_rows.get(file_id)
        if cached is None:
            port = w.Dropdown(layout=_auto())
            label = w.Text(placeholder="class", layout=w.Layout(width="160px"))
            port.observe(lambda c: self._on_port_row(file_id, c["new"], None), "value")
            label.observe(lambda c: self._on_port_row(file_id, port.value, c["new"]), "value")
            name = w.HTML(f"<code>{html.escape(_fit(file_id, 48))}</code>", layout=_wide())
            drop = w.Button(icon="times", tooltip="unpick", layout=_auto())
            drop.on_click(lambda _: self.unpick([file_id]))
            cached = self._port_rows[file_id] = (w.HBox([name, port, label, drop]), port, label)
        return cached


def _shell() -> Any:
    with contextlib.suppress(ImportError):
        from IPython import get_ipython

        return get_ipython()
    return None


def _auto() -> w.Layout:
    return w.Layout(width="auto")


def _wide() -> w.Layout:
    return w.Layout(width="360px")


def _show(widget: w.DOMWidget, visible: bool) -> None:
    display_value = None if visible else "none"
    if widget.layout.display != display_value:
        widget.layout.display = display_value


def _muted(text: str) -> str:
    return f"<span style='color:#6b7280'>{html.escape(text)}</span>"
