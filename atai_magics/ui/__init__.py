"""Widgets of atai_magics: the job card (and the helper widgets).

Imported on first use only: ipywidgets is not loaded by ``%load_ext atai_magics``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..jobs import Job
    from .card import JobCard

__all__ = ["JobCard", "card_for"]


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


def __getattr__(name: str) -> Any:
    if name == "JobCard":
        from .card import JobCard

        return JobCard
    raise AttributeError(name)
