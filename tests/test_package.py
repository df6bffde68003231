"""The package itself: a light import, the public names, and the extension entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import atai_magics


def test_import_stays_light() -> None:
    code = (
        "import json, sys, atai_magics; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    for heavy in ("httpx", "pydantic", "IPython", "ipywidgets", "numpy", "yaml"):
        assert heavy not in loaded


def test_public_names() -> None:
    from atai_magics.api.client import AsyncClient, Client

    assert atai_magics.Client is Client
    assert atai_magics.AsyncClient is AsyncClient
    with pytest.raises(AttributeError):
        _ = atai_magics.NoSuchThing  # type: ignore[attr-defined]


def test_load_ext_says_loudly_what_is_not_built_yet(capsys: pytest.CaptureFixture[str]) -> None:
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "atai_magics")
    out = capsys.readouterr().out
    assert "NOT YET AVAILABLE" in out
    assert atai_magics.__version__ in out
    shell.run_line_magic("unload_ext", "atai_magics")
