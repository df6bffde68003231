"""atai_magics: Archetype AI's Batch Processing API as a first-class part of a notebook.

``from atai_magics import Client`` gives the typed API client; ``%load_ext atai_magics``
loads the IPython extension. Importing this package stays light: the client, httpx and
pydantic are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "__version__", "load_ipython_extension"]

if TYPE_CHECKING:
    from .api.client import AsyncClient, Client


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient"):
        from .api import client

        return getattr(client, name)
    raise AttributeError(f"module 'atai_magics' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext atai_magics``."""
    from ._extension import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from ._extension import unload

    unload(ipython)
