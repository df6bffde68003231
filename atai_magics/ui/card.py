"""The live job status card: an ipywidgets box drawn from ``CardView``.

The watcher (``atai_magics.watch``) calls ``JobCard.apply`` from its thread with each new
``Snapshot``; ``apply`` only sets widget traits. The buttons act through the ``Job`` handle
and say what happened on the card (a cancel that comes too late reads "already finished").
When the job ends, the final state is also written as plain text and HTML to an output with
a ``display_id``, so a saved or nbconvert-executed notebook shows the outcome without widget
state.
"""

from __future__ import annotations

import html
import logging
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as w
from IPython.display import display, update_display
from traitlets import Unicode

from ..api.errors import AtaiError
from ..watch import Snapshot, Watcher
from .view import CardView, backend_label

if TYPE_CHECKING:
    from ..jobs import Job

__all__ = ["JobCard"]

log = logging.getLogger(__name__)

DOWNLOAD_ALL = ""


class JobCard(w.VBox):  # type: ignore[misc]  # ipywidgets is untyped
    """One job's card. ``status`` and ``phrase`` mirror what it shows (for observers)."""

    status = Unicode("", help="the job's status as last shown")
    phrase = Unicode("", help="the status badge's words")
    notice = Unicode("", help="what the last button press did")

    def __init__(
        self,
        job: Job,
        *,
        watcher: Watcher | None = None,
        download_dir: str | Path = "atai_outputs",
        **kwargs: Any,
    ) -> None:
        self.job = job
        self.watcher = watcher
        self.download_dir = Path(download_dir) / job.id
        self.backend = backend_label(job.client.base_url)
        self.view: CardView | None = None
        self._final_id: str | None = None
        self._final_shown = False
        self._lock = threading.Lock()

        self._header = w.HTML()
        self._progress = w.HTML()
        self._alerts = w.HTML()
        self._outputs = w.HTML()
        self._events = w.HTML()
        self._events_box = w.Accordion(children=[self._events], selected_index=None)
        self._choice = w.Dropdown(layout=w.Layout(width="260px"))
        self._download = w.Button(description="Download", icon="download", layout=_auto())
        self._download_row = w.HBox([self._choice, self._download])
        self._cancel = w.Button(description="Cancel", button_style="danger", layout=_auto())
        self._retry = w.Button(description="Retry", button_style="warning", layout=_auto())
        self._refresh = w.Button(description="Refresh", icon="refresh", layout=_auto())
        self._notice = w.HTML()
        self._attach = w.HTML()
        self._cancel.on_click(lambda _: self.cancel())
        self._retry.on_click(lambda _: self.retry())
        self._refresh.on_click(lambda _: self.refresh())
        self._download.on_click(lambda _: self.download())
        buttons = w.HBox([self._cancel, self._retry, self._refresh, self._notice])
        super().__init__(
            children=[
                self._header,
                self._progress,
                self._alerts,
                self._outputs,
                self._download_row,
                self._events_box,
                buttons,
                self._attach,
            ],
            layout=w.Layout(border="1px solid #d1d5db", padding="4px 10px", margin="4px 0"),
            **kwargs,
        )
        self.add_class("atai-job-card")
        self.apply(Snapshot(job.record))

    # --- what it shows ----------------------------------------------------------------------

    def apply(self, snap: Snapshot) -> None:
        """Show a snapshot (called from the watcher's thread; sets traits only)."""
        with self._lock:
            view = CardView.of(snap, self.backend)
            self.view = view
            self._header.value = view.header_html()
            self._progress.value = view.progress_html()
            self._alerts.value = view.alerts_html()
            self._outputs.value = view.outputs_html()
            self._events.value = view.events_html()
            self._events_box.set_title(0, f"Events ({view.event_total})")
            options = [("all outputs", DOWNLOAD_ALL)] + [
                (f"{o.name} ({o.size})", o.output_id) for o in view.outputs
            ]
            if list(self._choice.options) != options:
                chosen = self._choice.value
                self._choice.options = options
                self._choice.value = chosen if chosen in dict(options).values() else DOWNLOAD_ALL
            _show(self._download_row, view.output_total > 0)
            _show(self._cancel, view.can_cancel)
            _show(self._retry, view.can_retry)
            self._attach.value = (
                "<div style='font-size:85%;color:#6b7280'>attach later: <code "
                f"style='user-select:all'>{view.attach_line}</code></div>"
            )
            if snap.final:
                self._write_final()
            self.status, self.phrase = view.status, view.phrase  # last: observers see it all

    def show(self) -> None:
        """Display the card, and below it the output that keeps its final state."""
        display(self)  # type: ignore[no-untyped-call]
        with self._lock:
            self._final_id = f"atai-final-{self.job.id}-{uuid.uuid4().hex[:8]}"
            bundle = self.view.mimebundle() if self._final_shown and self.view else {}
            display(bundle or {"text/plain": ""}, raw=True, display_id=self._final_id)  # type: ignore[no-untyped-call]

    def _write_final(self) -> None:
        self._final_shown = True
        if self._final_id is not None and self.view is not None:
            update_display(self.view.mimebundle(), raw=True, display_id=self._final_id)  # type: ignore[no-untyped-call]

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        bundle: dict[str, Any] | None = super()._repr_mimebundle_(**kwargs)
        if bundle is not None and self.view is not None:
            bundle["text/plain"] = self.view.text()
        return bundle

    def __repr__(self) -> str:
        return f"<JobCard {self.job.id} {self.status}>"

    # --- what its buttons do ----------------------------------------------------------------

    def cancel(self) -> str:
        return self._act("Cancel", lambda: self.job.cancel())

    def retry(self) -> str:
        def retry() -> str:
            self.job.retry()
            return f"queued again (retry {self.job.record.retry_count})"

        return self._act("Retry", retry)

    def refresh(self) -> str:
        def refresh() -> str:
            self.job.refresh()
            return "updated"

        return self._act("Refresh", refresh)

    def _act(self, label: str, action: Any) -> str:
        """Run a button's action; show its outcome (or its error) instead of raising."""
        try:
            outcome = f"{label}: {action()}"
            colour = "#374151"
        except AtaiError as exc:
            outcome = f"{label} failed: {exc}"
            colour = "#b91c1c"
        self.notice = outcome
        self._notice.value = f"<span style='color:{colour}'>{html.escape(outcome)}</span>"
        if self.watcher is not None:
            self.watcher.watch(self.job, self.apply)  # again, if it had ended
        else:
            self.apply(Snapshot(self.job.record, final=self.job.done))
        return outcome

    def download(self, *, wait: bool = False) -> None:
        """Save the chosen output (or all) under ``download_dir`` in a background thread."""
        choice = self._choice.value

        def work() -> None:
            try:
                if choice == DOWNLOAD_ALL:
                    paths = self.job.download(self.download_dir)
                    text = f"saved {len(paths)} file(s) to {self.download_dir}"
                else:
                    output = next(o for o in self.job.outputs() if o.id == choice)
                    path = self.job.client.download_output(output, self.download_dir)
                    text = f"saved {path}"
                colour = "#374151"
            except (AtaiError, OSError, StopIteration) as exc:
                reason = str(exc) or "the output is no longer listed"
                text, colour = f"download failed: {reason}", "#b91c1c"
            self.notice = text
            self._notice.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"

        self._notice.value = "<span>downloading…</span>"
        thread = threading.Thread(target=work, name="atai-download", daemon=True)
        thread.start()
        if wait:
            thread.join()


def _auto() -> w.Layout:
    return w.Layout(width="auto")  # a Layout of its own: buttons are hidden one by one


def _show(widget: w.DOMWidget, visible: bool) -> None:
    display_value = None if visible else "none"
    if widget.layout.display != display_value:
        widget.layout.display = display_value
