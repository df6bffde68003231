"""The package itself: a light import, the public names, and the extension entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

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


def test_load_ext_registers_the_magics_and_names_the_backend(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    local_backend: Any,
    ipython: Any,
) -> None:

    monkeypatch.setenv("ATAI_LOCAL_HOME", str(local_backend.info.home))  # reuse, don't spawn
    monkeypatch.delenv("ATAI_API_KEY", raising=False)
    monkeypatch.delenv("ATAI_API_ENDPOINT", raising=False)
    shell = ipython
    shell.run_line_magic("load_ext", "atai_magics")
    try:
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1 and "LOCAL backend" in out[0] and "ATAI_API_KEY" in out[0]
        assert "atai_job" in shell.magics_manager.magics["cell"]
        assert "atai_job" in shell.magics_manager.magics["line"]
        assert "atai_config" in shell.magics_manager.magics["line"]
    finally:
        shell.run_line_magic("unload_ext", "atai_magics")
    assert "atai_job" not in shell.magics_manager.magics["cell"]
    assert not any(name.startswith("atai_") for name in shell.magics_manager.magics["line"])

    monkeypatch.setenv("ATAI_API_KEY", "sk_canary_load_ext")
    shell.run_line_magic("load_ext", "atai_magics")
    shell.run_line_magic("unload_ext", "atai_magics")
    out = capsys.readouterr().out
    assert "Archetype AI platform" in out and "sk_canary_load_ext" not in out
