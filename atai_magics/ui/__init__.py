"""Widgets of atai_magics: the job card (and the helper widgets).

Imported on first use only: ipywidgets is not loaded by ``%load_ext atai_magics``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..api.client import Client
    from ..jobs import Job
    from .card import JobCard
    from .files import FileChooser
    from .params import ParamsForm
    from .pipelines import PipelinesView

__all__ = ["FileChooser", "JobCard", "ParamsForm", "card_for", "pipelines_view"]


def card_for(job: Job, *, show: bool = True) -> JobCard:
    """A live card for ``job``, kept up to date by the kernel's watcher; displayed by default."""
    from ..watch import default_watcher
    from .card import JobCard

    watcher = default_watcher()
    new = JobCard(job, watcher=watcher)
    watcher.watch(job, new.apply)
    if show:
        new.show()
    return new


def pipelines_view(client: Client | None = None, key: str | None = None) -> PipelinesView:
    """The published pipelines, or with ``key`` one pipeline's inputs and settings, as text
    and HTML (``%atai_pipelines [KEY]``). ``client`` None: the extension's session."""
    from .pipelines import pipelines_view as view

    return view(client, key)


def __getattr__(name: str) -> Any:
    if name == "JobCard":
        from .card import JobCard

        return JobCard
    if name == "FileChooser":
        from .files import FileChooser

        return FileChooser
    if name == "ParamsForm":
        from .params import ParamsForm

        return ParamsForm
    raise AttributeError(name)
