"""What ``%atai_pipelines [KEY]`` shows: the published pipelines, or one pipeline's inputs
and settings, as ``text/plain`` and HTML (no widgets, so it reads the same everywhere).

Listing costs one ``GET /pipelines`` (a page of 100); one pipeline adds its schema. Both are
synchronous, a fraction of a second against either backend, so no thread is used.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..session import extension_session
from ..spec import ClientResolver
from .params_model import Field, Group, ParamsModel, UnknownPipeline
from .view import backend_label

if TYPE_CHECKING:
    from ..api.client import Client

__all__ = ["PipelineLine", "PipelinesView", "extension_session", "load_model", "pipelines_view"]


def load_model(resolver: ClientResolver, key: str, version: str | None = None) -> ParamsModel:
    """The form model of a published pipeline (the newest version unless one is given)."""
    try:
        schema = resolver.pipeline(key, version)
    except LookupError:
        raise UnknownPipeline(key, version, resolver.pipeline_keys()) from None
    listed = [
        p
        for p in resolver.pipelines()
        if p.pipeline_key == key and p.pipeline_version == schema.pipeline_version
    ]
    return ParamsModel(schema, listed[0] if listed else None)


@dataclass(frozen=True)
class PipelineLine:
    key: str
    version: str
    name: str
    description: str


@dataclass(frozen=True)
class PipelinesView:
    """The listing (``detail`` None) or one pipeline's ports and settings."""

    backend: str
    pipelines: tuple[PipelineLine, ...]
    detail: ParamsModel | None = None

    def text(self) -> str:
        if self.detail is not None:
            return _detail_text(self.detail)
        lines = [f"{len(self.pipelines)} pipeline(s) on {self.backend}:"]
        width = max((len(f"{p.key}@{p.version}") for p in self.pipelines), default=0)
        for p in self.pipelines:
            lines.append(f"  {f'{p.key}@{p.version}':<{width}}  {p.name}")
            if p.description:
                lines.append(f"      {p.description}")
        lines.append("%atai_pipelines KEY shows one pipeline's inputs and settings.")
        return "\n".join(lines)

    def html(self) -> str:
        if self.detail is not None:
            return _detail_html(self.detail)
        rows = "".join(
            f"<tr><td><code>{_e(p.key)}</code></td><td>{_e(p.version)}</td>"
            f"<td><b>{_e(p.name)}</b><br><span style='color:#4b5563'>{_e(p.description)}</span>"
            "</td></tr>"
            for p in self.pipelines
        )
        return (
            f"<div class='atai-pipelines'><b>{len(self.pipelines)} pipeline(s)</b> on "
            f"{_e(self.backend)}<table><tr><th>key</th><th>version</th><th>pipeline</th></tr>"
            f"{rows}</table></div>"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, str]:
        return {"text/plain": self.text(), "text/html": self.html()}

    def __repr__(self) -> str:
        return self.text()


def pipelines_view(
    client: Client | None = None, key: str | None = None, version: str | None = None
) -> PipelinesView:
    """The published pipelines (key, version, name, description), or with ``key`` that
    pipeline's input ports and config settings. ``client`` None: the extension's."""
    if client is None:
        session = extension_session()
        client, resolver = session.client, session.resolver
    else:
        resolver = ClientResolver(client)
    lines = tuple(
        PipelineLine(p.pipeline_key, p.pipeline_version, p.name or "", p.description or "")
        for p in sorted(resolver.pipelines(), key=lambda p: (p.pipeline_key, p.pipeline_version))
    )
    detail = load_model(resolver, key, version) if key else None
    return PipelinesView(backend_label(client.base_url), lines, detail)


def _port_note(model: ParamsModel, port: str) -> str:
    spec = model.ports[port]
    notes = ["required" if spec.required else "optional"]
    if spec.mode == "n_shot_file_list":
        notes.append("each file needs a class")
    return ", ".join(notes)


def _entry_text(entry: Field | Group) -> str:
    depth = "  " * (len(entry.path) - 1)
    if isinstance(entry, Group):
        head = f"{depth}{entry.path[-1]}" + (" (required)" if entry.required else "")
    else:
        extra = ", required" if entry.required else ""
        head = f"{depth}{entry.name}: {entry.summary()}{extra}"
    return head + (f" — {entry.description}" if entry.description else "")


def _detail_text(model: ParamsModel) -> str:
    lines = [f"{model.pipeline}: {model.title}"]
    if model.description:
        lines.append(model.description)
    lines.append("inputs:")
    for port, spec in model.ports.items():
        about = spec.description or spec.name or ""
        lines.append(f"  {port} ({_port_note(model, port)})" + (f" — {about}" if about else ""))
    for component in model.components:
        entries = [e for e in model.entries if e.path[0] == component]
        lines.append(f"config of {component}:" if len(model.components) > 1 else "config:")
        lines += [_entry_text(e) for e in entries] or ["  (no settings)"]
    lines.append(f"form: atai_magics.ui.ParamsForm({model.key!r})")
    return "\n".join(lines)


def _detail_html(model: ParamsModel) -> str:
    ports = "".join(
        f"<tr><td><code>{_e(port)}</code></td><td>{_e(_port_note(model, port))}</td>"
        f"<td>{_e(spec.description or spec.name or '')}</td></tr>"
        for port, spec in model.ports.items()
    )
    rows = []
    for entry in model.entries:
        pad = 1.2 * (len(entry.path) - 2)
        if isinstance(entry, Group):
            what = "object" + (", required" if entry.required else "")
        else:
            what = entry.summary() + (", required" if entry.required else "")
        rows.append(
            f"<tr><td style='padding-left:{pad:.1f}em'><code>{_e(entry.path[-1])}</code></td>"
            f"<td>{_e(what)}</td><td>{_e(entry.description or '')}</td></tr>"
        )
    return (
        f"<div class='atai-pipeline'><b>{_e(model.title)}</b> <code>{_e(model.pipeline)}</code>"
        f"<p>{_e(model.description or '')}</p><b>Inputs</b><table>{ports}</table>"
        f"<b>Config</b><table>{''.join(rows)}</table></div>"
    )


def _e(text: str) -> str:
    return html.escape(text, quote=True)
