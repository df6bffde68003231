"""Re-execute notebooks and store their outputs, clean: ``python notebooks/execute.py [NB ...]``.

Each notebook runs in a fresh kernel on a private local backend (the same environment
``notebooks/conftest.py`` gives nbval), then every stored text output is passed through
``sanitize.cfg``'s regexes, so the repository holds no run-specific ids, times, ports or
temporary paths. nbval applies the same regexes to fresh outputs, so they still compare.
Run it after changing what a notebook prints; with no argument it runs every notebook here.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REMOVED = ("ATAI_API_KEY", "ATAI_API_ENDPOINT", "ATAI_MAGICS_WAIT")


def sanitizers() -> list[tuple[re.Pattern[str], str]]:
    parser = configparser.ConfigParser()
    parser.read(HERE / "sanitize.cfg")
    return [(re.compile(parser[s]["regex"]), parser[s]["replace"]) for s in parser.sections()]


def _clean(text: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


def _clean_output(output: Any, rules: list[tuple[re.Pattern[str], str]]) -> None:
    if "text" in output:
        output["text"] = _clean("".join(output["text"]), rules)
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/") and isinstance(value, str | list):
            output["data"][mime] = _clean("".join(value), rules)
    output.get("metadata", {}).pop("execution", None)


def execute(path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    from atai_magics.local import server

    base = Path(tempfile.mkdtemp(prefix="atai-nbexec-"))
    saved = {name: os.environ.get(name) for name in (*REMOVED, "ATAI_LOCAL_HOME", "XDG_DATA_HOME")}
    for name in REMOVED:
        os.environ.pop(name, None)
    os.environ["ATAI_LOCAL_HOME"] = str(base / "local-home")
    os.environ["XDG_DATA_HOME"] = str(base / "data")
    try:
        notebook = nbformat.read(path, as_version=4)
        NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(HERE)}}).execute()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop(base / "local-home")
        shutil.rmtree(base, ignore_errors=True)
    rules = sanitizers()
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            _clean_output(output, rules)
    notebook.metadata.pop("widgets", None)  # no widget state: saved outputs are text/HTML
    nbformat.write(notebook, path)
    print(f"executed and cleaned {path.relative_to(ROOT)}")


def main(argv: list[str]) -> None:
    paths = [Path(a).resolve() for a in argv] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        execute(path)


if __name__ == "__main__":
    main(sys.argv[1:])
