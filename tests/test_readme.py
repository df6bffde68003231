"""Every README block marked ``<!-- runnable... -->`` runs, in order, against a local backend
of its own (the platform's variables point at it), so the README cannot drift from the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from atai_magics.local import server

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- runnable[^>]*-->\n```(python|bash)\n(.*?)```", re.DOTALL)


def runnable_blocks() -> list[tuple[str, str]]:
    return BLOCK.findall((ROOT / "README.md").read_text())


def _csv(path: Path, rows: int, wave: float) -> None:
    lines = ["t,a,b"] + [f"{i},{(i * wave) % 1:.4f},{(i * wave * 2) % 1:.4f}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def readme_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A backend home, its variables, and the data files the README's example uploads."""
    home = tmp_path / "home"
    info = server.start(home, concurrency=1)
    (tmp_path / "data").mkdir()
    _csv(tmp_path / "data" / "normal.csv", 200, 0.01)
    _csv(tmp_path / "data" / "cavitation.csv", 200, 0.37)
    _csv(tmp_path / "data" / "inference.csv", 200, 0.2)
    env = {
        **os.environ,
        "ATAI_LOCAL_HOME": str(home),
        "ATAI_API_ENDPOINT": info.url,
        "ATAI_API_KEY": info.token(),
        "PYTHONPATH": str(ROOT),
    }
    try:
        yield env
    finally:
        server.stop(home)


def test_the_readme_has_runnable_blocks() -> None:
    kinds = [kind for kind, _ in runnable_blocks()]
    assert kinds.count("python") >= 2 and "bash" in kinds


def test_every_runnable_block_runs(readme_env: dict[str, str], tmp_path: Path) -> None:
    for kind, code in runnable_blocks():
        command = [sys.executable, "-c", code] if kind == "python" else ["bash", "-ec", code]
        bindir = str(Path(sys.executable).parent)  # the atai-magics script of this interpreter
        env = {**readme_env, "PATH": bindir + os.pathsep + readme_env.get("PATH", "")}
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{kind} block failed:\n{code}\n{done.stdout}{done.stderr}"
        assert readme_env["ATAI_API_KEY"] not in done.stdout + done.stderr
