"""Run the notebooks under nbval against a private, fresh local backend.

nbval starts one kernel per notebook, and the kernel inherits the environment pytest has at
that moment; the kernel's ``%load_ext atai_magics`` then starts the embedded local backend
in the background (a detached process that outlives the kernel). So, while a notebook's
cells are being set up (which is when nbval starts its kernel), the environment is
pointed at a temporary directory made for that notebook:

- ``ATAI_LOCAL_HOME``: the local backend's home (token, state, files, outputs, log);
- ``XDG_DATA_HOME``: the extension's data dir (journal of submitted jobs, downloaded
  results), so nothing is read from or written to the user's own;
- ``ATAI_API_KEY``, ``ATAI_API_ENDPOINT`` and ``ATAI_MAGICS_WAIT`` are removed, so the
  notebook runs on the LOCAL backend as its stored outputs say;
- this checkout is put first on ``PYTHONPATH``, so the kernel tests this source tree.

pytest's own environment is restored right after. When the notebook's last cell has run (or
at the end of the session, whatever happened) its backend is stopped with
``atai_magics.local.server.stop(home)`` and the directory is deleted, so no backend process
outlives pytest. The kernel runs with pytest's Python (``--nbval-current-env``) unless a
kernel is named with ``--nbval-kernel-name``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REMOVED = ("ATAI_API_KEY", "ATAI_API_ENDPOINT", "ATAI_MAGICS_WAIT")

_homes: dict[str, Path] = {}  # notebook node id -> its temporary directory


def _is_notebook_cell(item: pytest.Item) -> bool:
    return item.path.suffix == ".ipynb"


def _kernel_env(item: pytest.Item) -> dict[str, str | None]:
    notebook = item.parent.nodeid if item.parent is not None else item.nodeid
    base = _homes.get(notebook)
    if base is None:
        base = _homes[notebook] = Path(tempfile.mkdtemp(prefix="atai-nbval-"))
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env: dict[str, str | None] = {
        "ATAI_LOCAL_HOME": str(base / "local-home"),
        "XDG_DATA_HOME": str(base / "data"),
        "PYTHONPATH": pythonpath,
    }
    env.update(dict.fromkeys(REMOVED))
    return env


def _stop(notebook: str) -> None:
    base = _homes.pop(notebook, None)
    if base is None:
        return
    from atai_magics.local import server

    try:
        server.stop(base / "local-home")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    if not config.option.nbval_kernel_name:
        config.option.nbval_current_env = True


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    if not _is_notebook_cell(item):
        yield
        return
    saved = {}
    for name, value in _kernel_env(item).items():
        saved[name] = os.environ.get(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield  # the notebook's kernel starts here, with its first cell
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield  # after the last cell, this also shuts the notebook's kernel down
    if _is_notebook_cell(item) and (nextitem is None or nextitem.parent is not item.parent):
        _stop(item.parent.nodeid if item.parent is not None else item.nodeid)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for notebook in list(_homes):
        _stop(notebook)
