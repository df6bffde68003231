"""What ``%load_ext atai_magics`` does in this version.

PLACEHOLDER: the ``%%atai_job`` magic, the status card and the helper widgets are not built
yet. Loading the extension says so plainly instead of pretending; the API client
(``from atai_magics import Client``) is complete and usable today.
"""

from __future__ import annotations

from typing import Any

NOT_YET = (
    "atai_magics {version}: NOT YET AVAILABLE - the %%atai_job magic and its widgets are not "
    "built in this version. The API client is: `from atai_magics import Client`."
)


def load(ipython: Any) -> None:
    from . import __version__

    print(NOT_YET.format(version=__version__))


def unload(ipython: Any) -> None:
    """Nothing is registered yet, so there is nothing to remove."""
