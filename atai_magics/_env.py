"""What kind of front end runs the kernel, and which notebook and cell are executing.

Isolated here because every answer is a heuristic over IPython and ipykernel internals.
"""

from __future__ import annotations

import os
from typing import Any

WAIT_ENV = "ATAI_MAGICS_WAIT"
"""``1`` makes cells wait (as in CI), ``0`` never waits; overrides the ``wait`` setting."""


def _kernel(shell: Any) -> Any:
    return getattr(shell, "kernel", None)


def has_live_frontend(shell: Any) -> bool:
    """Whether a person is watching a front end that renders widgets.

    Terminal IPython has none. Notebook runners (nbconvert, nbclient, papermill, nbval) send
    ``execute_request`` with ``allow_stdin`` false, while JupyterLab, Notebook and VS Code
    send it true; that flag is the one signal every runner sets.
    """
    kernel = _kernel(shell)
    if kernel is None:
        return False
    allow_stdin = getattr(kernel, "_allow_stdin", None)
    return bool(allow_stdin)


def in_kernel(shell: Any) -> bool:
    """Whether the shell runs in a Jupyter kernel (so widgets can be shown, even if headless)."""
    return _kernel(shell) is not None


def should_wait(shell: Any, setting: str, requested: bool) -> bool:
    """``--wait``, else ``ATAI_MAGICS_WAIT``, else the ``wait`` setting (auto: no live UI)."""
    if requested:
        return True
    env = os.environ.get(WAIT_ENV)
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes", "always")
    if setting == "always":
        return True
    if setting == "never":
        return False
    return not has_live_frontend(shell)


def _parent(shell: Any) -> dict[str, Any]:
    kernel = _kernel(shell)
    if kernel is None:
        return {}
    try:
        parent = kernel.get_parent()
    except (AttributeError, TypeError):
        parent = getattr(kernel, "_parent_header", None) or {}
    return parent if isinstance(parent, dict) else {}


def notebook_name(shell: Any) -> str | None:
    """The notebook's path when the front end tells (Jupyter Server, VS Code), else None."""
    namespace = getattr(shell, "user_ns", {}) or {}
    for key in ("__vsc_ipynb_file__", "__session__"):
        value = namespace.get(key)
        if isinstance(value, str) and value:
            return value
    return os.environ.get("JPY_SESSION_NAME") or None


def cell_id(shell: Any) -> str | None:
    """The executing cell's id, which JupyterLab sends in the request's metadata."""
    metadata = _parent(shell).get("metadata") or {}
    value = metadata.get("cellId") if isinstance(metadata, dict) else None
    return value if isinstance(value, str) else None
