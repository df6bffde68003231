"""``%atai_jobs``: a paged table of the org's jobs, with row actions.

``fetch_page`` is the pure part (filters → one page of ``CardView`` rows, so badges and times
read as on a card); ``JobsTable`` is the widget: filters, the table, paging, and actions on the
chosen job (open its card, cancel, retry, delete after a confirming second click). Pages load
in a background thread, so the kernel never waits on a listing.
"""

from __future__ import annotations

import html
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ipywidgets as w
from IPython.display import display

from ..api.errors import AtaiError
from ..watch import Snapshot
from .card import _auto
from .view import CardView, backend_label

if TYPE_CHECKING:
    from ..api.client import Client

__all__ = ["JobsPage", "JobsQuery", "JobsTable", "fetch_page"]

STATUSES = ("", "PENDING", "ADMITTED", "RUNNING", "PREEMPTED", "COMPLETED", "FAILED", "CANCELLED")
SCAN_LIMIT = 5000
"""Jobs scanned at most when filtering by pipeline (the API has no such filter)."""


@dataclass(frozen=True)
class JobsQuery:
    status: str | None = None
    pipeline: str | None = None
    search: str | None = None
    limit: int = 20


@dataclass(frozen=True)
class JobsPage:
    rows: tuple[CardView, ...]
    offset: int
    total: int
    query: JobsQuery

    def text(self) -> str:
        if not self.rows:
            return "No jobs." if not self.offset else f"No jobs after {self.offset}."
        first, last = self.offset + 1, self.offset + len(self.rows)
        lines = [f"jobs {first}-{last} of {self.total}"]
        for row in self.rows:
            lines.append(
                f"{row.status:<10} {row.name[:28]:<28} {row.pipeline[:34]:<34} "
                f"{row.created or '':<23} {row.elapsed or '':>10}  {row.job_id}"
            )
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(
            f"<th style='text-align:left;padding:2px 8px'>{h}</th>"
            for h in ("status", "name", "pipeline", "created", "elapsed", "id")
        )
        rows = "".join(
            "<tr>"
            f"<td style='padding:2px 8px'>{row.badge()}</td>"
            f"<td style='padding:2px 8px'>{html.escape(row.name)}</td>"
            f"<td style='padding:2px 8px'><code>{html.escape(row.pipeline)}</code></td>"
            f"<td style='padding:2px 8px'>{html.escape(row.created or '')}</td>"
            f"<td style='padding:2px 8px'>{html.escape(row.elapsed or '')}</td>"
            f"<td style='padding:2px 8px'><code>{html.escape(row.job_id)}</code></td></tr>"
            for row in self.rows
        )
        return f"<table class='atai-jobs'><tr>{head}</tr>{rows}</table>"


def fetch_page(client: Client, query: JobsQuery, offset: int = 0) -> JobsPage:
    """One page of jobs, newest first (as the API lists them)."""
    backend = backend_label(client.base_url)
    status, search = query.status or None, query.search or None
    if query.pipeline:  # filtered here: scan, then page what matched
        matched = []
        for scanned, record in enumerate(client.iter_jobs(status=status, q=search)):
            if scanned >= SCAN_LIMIT:
                break
            if record.pipeline_key == query.pipeline:
                matched.append(record)
        records = matched[offset : offset + query.limit]
        total = len(matched)
    else:
        page = client.list_jobs(status=status, q=search, offset=offset, limit=query.limit)
        records, total = list(page.jobs), page.total
    rows = tuple(CardView.of(Snapshot(r), backend) for r in records)
    return JobsPage(rows, offset, total, query)


class JobsTable(w.VBox):  # type: ignore[misc]  # ipywidgets is untyped
    """Filters, a page of jobs, paging, and actions on the chosen job."""

    def __init__(
        self,
        client: Client,
        *,
        status: str | None = None,
        pipeline: str | None = None,
        search: str | None = None,
        limit: int = 20,
        wait: bool = False,
    ) -> None:
        self.client = client
        self.page: JobsPage | None = None
        self.offset = 0
        self.limit = limit
        self.notice = ""
        self._pending_delete: str | None = None
        self._status = w.Dropdown(options=STATUSES, value=status or "", description="status")
        self._pipeline = w.Text(value=pipeline or "", placeholder="pipeline key")
        self._search = w.Text(value=search or "", placeholder="search names")
        self._reload = w.Button(description="Refresh", icon="refresh", layout=_auto())
        self._table = w.HTML("loading…")
        self._prev = w.Button(description="◀ Prev", layout=_auto())
        self._next = w.Button(description="Next ▶", layout=_auto())
        self._range = w.HTML()
        self._choice = w.Dropdown(description="job", layout=w.Layout(width="420px"))
        self._open = w.Button(description="Open card", layout=_auto())
        self._cancel = w.Button(description="Cancel", layout=_auto())
        self._retry = w.Button(description="Retry", layout=_auto())
        self._delete = w.Button(description="Delete", button_style="danger", layout=_auto())
        self._notice = w.HTML()
        self._cards = w.Output()
        self._reload.on_click(lambda _: self.go(0))
        for field in (self._status, self._pipeline, self._search):
            field.observe(lambda _: self.go(0), names="value")
        self._prev.on_click(lambda _: self.go(max(0, self.offset - self.limit)))
        self._next.on_click(lambda _: self.go(self.offset + self.limit))
        self._open.on_click(lambda _: self.open_card())
        self._cancel.on_click(lambda _: self.act("cancel"))
        self._retry.on_click(lambda _: self.act("retry"))
        self._delete.on_click(lambda _: self.act("delete"))
        super().__init__(
            children=[
                w.HBox([self._status, self._pipeline, self._search, self._reload]),
                self._table,
                w.HBox([self._prev, self._next, self._range]),
                w.HBox([self._choice, self._open, self._cancel, self._retry, self._delete]),
                self._notice,
                self._cards,
            ]
        )
        self.go(0, wait=wait)

    @property
    def query(self) -> JobsQuery:
        return JobsQuery(
            self._status.value or None,
            self._pipeline.value.strip() or None,
            self._search.value.strip() or None,
            self.limit,
        )

    def go(self, offset: int, *, wait: bool = False) -> None:
        """Load the page at ``offset`` in a background thread (``wait``: here and now)."""
        query = self.query

        def load() -> None:
            try:
                page = fetch_page(self.client, query, offset)
            except AtaiError as exc:
                self._say(f"could not list jobs: {exc}", error=True)
                return
            self.page, self.offset = page, offset
            self._table.value = page.html()
            last = offset + len(page.rows)
            self._range.value = f"{offset + 1 if page.rows else 0}-{last} of {page.total}"
            self._prev.disabled = offset == 0
            self._next.disabled = last >= page.total
            options = [(f"{r.name} · {r.status} · {r.job_id}", r.job_id) for r in page.rows]
            self._choice.options = options
            self._choice.value = options[0][1] if options else None

        self._table.value = "loading…"
        if wait:
            load()
        else:
            threading.Thread(target=load, name="atai-jobs-table", daemon=True).start()

    def open_card(self) -> None:
        """Show the chosen job's live card under the table."""
        from . import card_for

        job_id = self._choice.value
        if not job_id:
            return
        from ..jobs import Job

        try:
            job = Job.attach(job_id, self.client)
        except AtaiError as exc:
            self._say(f"could not open {job_id}: {exc}", error=True)
            return
        with self._cards:
            card_for(job)

    def act(self, action: str) -> str:
        """Cancel, retry or delete the chosen job (delete asks for a second click)."""
        job_id = self._choice.value
        if not job_id:
            return self._say("choose a job first", error=True)
        if action == "delete" and self._pending_delete != job_id:
            self._pending_delete = job_id
            self._delete.description = "Confirm delete"
            return self._say(f"click “Confirm delete” to delete {job_id}")
        self._pending_delete = None
        self._delete.description = "Delete"
        try:
            if action == "cancel":
                from ..jobs import Job

                outcome = Job.attach(job_id, self.client).cancel()
            elif action == "retry":
                result = self.client.retry_job(job_id)
                outcome = f"queued again (retry {result.retry_count})"
            else:
                self.client.delete_job(job_id)
                outcome = "deleted"
        except AtaiError as exc:
            return self._say(f"{action} {job_id} failed: {exc}", error=True)
        self.go(self.offset)
        return self._say(f"{job_id}: {outcome}")

    def _say(self, text: str, *, error: bool = False) -> str:
        self.notice = text
        colour = "#b91c1c" if error else "#374151"
        self._notice.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"
        return text

    def __repr__(self) -> str:
        return self.page.text() if self.page is not None else "<JobsTable loading>"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        bundle: dict[str, Any] | None = super()._repr_mimebundle_(**kwargs)
        if bundle is not None:
            bundle["text/plain"] = repr(self)
        return bundle


def show_jobs(client: Client, query: JobsQuery, *, widget: bool) -> None:
    """What ``%atai_jobs`` shows: the table widget, or the first page as text."""
    if widget:
        display(  # type: ignore[no-untyped-call]
            JobsTable(
                client,
                status=query.status,
                pipeline=query.pipeline,
                search=query.search,
                limit=query.limit,
            )
        )
        return
    page = fetch_page(client, query)
    display({"text/plain": page.text(), "text/html": page.html()}, raw=True)  # type: ignore[no-untyped-call]
