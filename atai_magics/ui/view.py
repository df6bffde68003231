"""The job card's view-model: one ``CardView`` renders the widget, ``text/plain`` and HTML.

``CardView.of(snapshot, backend, now)`` turns what is known about a job (a ``Snapshot``) into
plain values: labels, counts, colours, which buttons apply. The widget (``ui.card``), the
text a terminal or a sanitized notebook shows, and the HTML a saved notebook shows are all
drawn from it, so they cannot disagree. Nothing here imports ipywidgets or talks to the API.

The text is stable: the job id on a line of its own, times as ``YYYY-MM-DD HH:MM:SS UTC``,
durations as ``N s``, so an nbval sanitize file can normalise them.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ..api import models as m

if TYPE_CHECKING:
    from ..watch import Snapshot

__all__ = ["CardView", "EventLine", "OutputLine", "backend_label", "format_size", "format_time"]

S = m.JobStatus
TONES = {
    S.PENDING: "queued",
    S.ADMITTED: "queued",
    S.PREEMPTED: "warn",
    S.RUNNING: "running",
    S.COMPLETED: "ok",
    S.FAILED: "error",
    S.CANCELLED: "muted",
}
"""Status → colour family; an unknown status is ``muted``."""
COLOURS = {
    "queued": "#6b7280",
    "running": "#2563eb",
    "ok": "#15803d",
    "warn": "#b45309",
    "error": "#b91c1c",
    "muted": "#4b5563",
}
LEVEL_COLOURS = {
    "INFO": "#374151",
    "SUCCESS": "#15803d",
    "WARN": "#b45309",
    "ERROR": "#b91c1c",
    "FAILED": "#b91c1c",
}
BAR_COLOURS = {
    "completed": "#16a34a",
    "failed": "#dc2626",
    "processing": "#2563eb",
    "pending": "#d1d5db",
}
TEXT_EVENTS = 5
"""Events the text form shows (the widget shows the whole tail the watcher keeps)."""


def backend_label(base_url: str) -> str:
    """``LOCAL`` for a loopback API (the embedded backend), else the API's host."""
    from urllib.parse import urlsplit

    from ..api._config import is_loopback

    host = urlsplit(base_url).hostname or base_url
    return "LOCAL" if is_loopback(host) else host


def format_time(stamp: datetime | None) -> str | None:
    if stamp is None:
        return None
    return stamp.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 120:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


def format_size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "? B"
    size = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class EventLine:
    level: str
    time: str | None
    message: str


@dataclass(frozen=True)
class OutputLine:
    name: str
    size: str
    output_id: str


@dataclass(frozen=True)
class CardView:
    """Everything the card shows, as plain values."""

    job_id: str
    name: str
    pipeline: str
    backend: str
    status: str
    """The API's status word (``RUNNING``)."""
    phrase: str
    """What the badge says: ``running``, ``completed with failures``, ``position 3 of 5``."""
    tone: str
    queue: str | None
    created: str | None
    started: str | None
    ended: str | None
    elapsed: str | None
    inputs: m.InputProgressCounts | None
    progress: str | None
    percent: float | None
    events: tuple[EventLine, ...]
    event_total: int
    error: str | None
    warnings: tuple[str, ...]
    outputs: tuple[OutputLine, ...]
    output_total: int
    reconnecting: str | None
    can_cancel: bool
    can_retry: bool

    @property
    def attach_line(self) -> str:
        return f"%atai_job attach {self.job_id}"

    @property
    def live(self) -> bool:
        return self.status not in ("COMPLETED", "FAILED", "CANCELLED")

    # --- building ---------------------------------------------------------------------------

    @classmethod
    def of(cls, snap: Snapshot, backend: str, now: datetime | None = None) -> CardView:
        record = snap.record
        status = record.status
        now = now or datetime.now(timezone.utc)
        ended_at = record.completed_at or record.failed_at or record.cancelled_at
        if not status.is_terminal:
            ended_at = None
        begin = record.started_at or record.created_at
        elapsed = None
        if begin is not None and (ended_at is not None or not status.is_terminal):
            elapsed = format_duration(((ended_at or now) - begin).total_seconds())
        queue = None
        if status in (S.PENDING, S.PREEMPTED) and record.queue_position:
            depth = record.queue_depth or record.queue_position
            queue = f"position {record.queue_position} of {depth}"
        warnings = snap.failures if status == S.COMPLETED else ()
        phrase = status.value.lower()
        if warnings:
            phrase = "completed with failures"
        elif queue:
            phrase = f"{phrase}, {queue}"
        progress = percent = None
        if snap.progress is not None and status == S.RUNNING:
            progress = snap.progress.message
            raw = snap.progress.metrics.get("percent_complete")
            percent = float(raw) if isinstance(raw, int | float) else None
        return cls(
            job_id=record.id,
            name=record.name or "(unnamed)",
            pipeline=f"{record.pipeline_key or '?'}@{record.pipeline_version or 'latest'}",
            backend=backend,
            status=status.value,
            phrase=phrase,
            tone="warn" if warnings else TONES.get(status, "muted"),
            queue=queue,
            created=format_time(record.created_at),
            started=format_time(record.started_at),
            ended=format_time(ended_at),
            elapsed=elapsed,
            inputs=record.input_progress,
            progress=progress,
            percent=percent,
            events=tuple(
                EventLine(e.level.value, format_time(e.created_at), e.message or e.event_type or "")
                for e in snap.events
            ),
            event_total=snap.event_total,
            error=_error_text(record.error) if status == S.FAILED else None,
            warnings=warnings,
            outputs=tuple(
                OutputLine(o.data.filename, format_size(o.data.num_bytes), o.id)
                for o in snap.outputs
            ),
            output_total=snap.output_total,
            reconnecting=snap.reconnecting,
            can_cancel=status.can_cancel,
            can_retry=status.can_retry,
        )

    # --- text -------------------------------------------------------------------------------

    @property
    def times(self) -> list[str]:
        """``["created …", "started …", "ended …", "elapsed …"]``, those that are known."""
        named = (
            ("created", self.created),
            ("started", self.started),
            ("ended", self.ended),
            ("elapsed", self.elapsed),
        )
        return [f"{label} {value}" for label, value in named if value]

    @property
    def inputs_text(self) -> str | None:
        counts = self.inputs
        if counts is None or not counts.total:
            return None
        return (
            f"inputs: {counts.completed} completed, {counts.failed} failed, "
            f"{counts.processing} processing, {counts.pending} pending"
        )

    @property
    def progress_text(self) -> str | None:
        """The latest progress message, with its percent when given."""
        if not self.progress:
            return None
        pct = f" ({self.percent:.0f}%)" if self.percent is not None else ""
        return f"{self.progress}{pct}"

    def text(self) -> str:
        """Stable lines for a terminal, nbval and a saved notebook."""
        head = f"Job {self.name!r} ({self.pipeline}) on {self.backend}: {self.phrase}"
        lines = [head, self.job_id]
        if self.reconnecting:
            lines.append(self.reconnecting)
        if self.times:
            lines.append(", ".join(self.times))
        if self.inputs_text:
            lines.append(self.inputs_text)
        if self.progress_text:
            lines.append(f"progress: {self.progress_text}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        if self.error:
            lines.append(f"error: {self.error}")
        if self.output_total:
            lines.append(f"outputs: {self.output_total}")
            lines.extend(f"  {o.name} ({o.size})" for o in self.outputs[:TEXT_EVENTS])
            if self.output_total > min(len(self.outputs), TEXT_EVENTS):
                lines.append(f"  … {self.output_total - min(len(self.outputs), TEXT_EVENTS)} more")
        if self.events and (self.error or self.warnings or self.status == "CANCELLED"):
            lines.append(f"events (last {min(len(self.events), TEXT_EVENTS)}):")
            lines.extend(f"  {e.level} {e.message}" for e in self.events[-TEXT_EVENTS:])
        return "\n".join(lines)

    # --- HTML -------------------------------------------------------------------------------

    def badge(self) -> str:
        colour = COLOURS[self.tone]
        return (
            f"<span class='atai-badge atai-{self.tone}' style='background:{colour};color:#fff;"
            f"border-radius:4px;padding:1px 6px;font-weight:600'>{_e(self.phrase)}</span>"
        )

    def header_html(self) -> str:
        """Name, pipeline, backend and status badges, times."""
        backend = (
            f"<span class='atai-backend' style='border:1px solid #9ca3af;border-radius:4px;"
            f"padding:0 5px;font-size:85%'>{_e(self.backend)}</span>"
        )
        times = _e(" · ".join(self.times))
        return (
            f"<div class='atai-header'><b>{_e(self.name)}</b> "
            f"<code>{_e(self.pipeline)}</code> {backend} {self.badge()}"
            f"<div style='color:#6b7280;font-size:85%'>{times}</div></div>"
        )

    def progress_html(self) -> str:
        """A stacked bar completed / failed / processing / pending, and the latest message."""
        parts = []
        counts = self.inputs
        if counts is not None and counts.total:
            segments = "".join(
                f"<div class='atai-bar-{key}' title='{value} {key}' style='width:"
                f"{100 * value / counts.total:.2f}%;background:{BAR_COLOURS[key]}'></div>"
                for key, value in (
                    ("completed", counts.completed),
                    ("failed", counts.failed),
                    ("processing", counts.processing),
                    ("pending", counts.pending),
                )
                if value
            )
            parts.append(
                "<div class='atai-bar' style='display:flex;height:10px;width:100%;"
                f"max-width:480px;border-radius:3px;overflow:hidden;background:#f3f4f6'>{segments}"
                f"</div><div style='font-size:85%'>{self.inputs_text}</div>"
            )
        if self.progress_text:
            parts.append(f"<div class='atai-progress'>{_e(self.progress_text)}</div>")
        return "".join(parts)

    def alerts_html(self) -> str:
        """The reconnecting state, warnings of a COMPLETED job, the error of a FAILED one."""
        parts = []
        if self.reconnecting:
            parts.append(_alert(self.reconnecting, "warn", "atai-reconnecting"))
        parts.extend(_alert(f"⚠ {w}", "warn", "atai-warning") for w in self.warnings)
        if self.error:
            parts.append(_alert(self.error, "error", "atai-error"))
        return "".join(parts)

    def events_html(self) -> str:
        rows = "".join(
            f"<div class='atai-event' style='color:{LEVEL_COLOURS.get(e.level, '#374151')}'>"
            f"<code>{_e(e.time or '')}</code> <b>{_e(e.level)}</b> {_e(e.message)}</div>"
            for e in self.events
        )
        return rows or "<i>no events yet</i>"

    def outputs_html(self) -> str:
        if not self.output_total:
            return ""
        rows = "".join(
            f"<tr><td>{_e(o.name)}</td><td style='text-align:right'>{_e(o.size)}</td></tr>"
            for o in self.outputs
        )
        more = self.output_total - len(self.outputs)
        tail = f"<tr><td colspan=2>… {more} more</td></tr>" if more > 0 else ""
        return (
            f"<div><b>Outputs ({self.output_total})</b></div>"
            f"<table class='atai-outputs' style='font-size:85%'>{rows}{tail}</table>"
        )

    def html(self) -> str:
        """The whole card as static HTML (for a saved notebook; no buttons)."""
        events = ""
        if self.events:
            events = (
                f"<details><summary>Events ({self.event_total})</summary>"
                f"{self.events_html()}</details>"
            )
        return (
            "<div class='atai-card' style='border:1px solid #d1d5db;border-radius:6px;"
            "padding:6px 10px'>"
            f"{self.header_html()}{self.progress_html()}{self.alerts_html()}"
            f"{self.outputs_html()}{events}"
            f"<div style='font-size:85%'><code>{_e(self.job_id)}</code></div></div>"
        )

    def mimebundle(self) -> dict[str, str]:
        return {"text/plain": self.text(), "text/html": self.html()}


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _alert(text: str, tone: str, css: str) -> str:
    colour = COLOURS[tone]
    return (
        f"<div class='{css}' style='border-left:4px solid {colour};padding:2px 8px;"
        f"margin:3px 0;color:{colour};white-space:pre-wrap'>{_e(text)}</div>"
    )


def _error_text(error: object) -> str:
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail")
        code = error.get("code") or error.get("type")
        if message and code:
            return f"{code}: {message}"
        return str(message or code or error)
    return str(error) if error else "the job failed (no error detail given)"
