"""What ``%load_ext atai_magics`` does: register the magics, say which backend they use,
and start the local backend in the background when it is the one (so loading stays cheap)."""

from __future__ import annotations

from typing import Any


def load(ipython: Any) -> None:
    from .magics import AtaiMagics

    magics = AtaiMagics(ipython)
    ipython.register_magics(magics)
    print(magics.session.announce())
    magics.session.start_local_in_background()


def unload(ipython: Any) -> None:
    manager = ipython.magics_manager
    magics = manager.registry.pop("AtaiMagics", None)
    if magics is not None:
        for kind, names in magics.magics.items():  # every magic the class defines
            for name in names:
                manager.magics[kind].pop(name, None)
