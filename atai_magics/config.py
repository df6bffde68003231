"""Where the extension's settings come from, and which backend they select.

Settings, highest priority first:

1. ``%atai_config name=value`` or ``%config AtaiMagics.name = value`` in the session;
2. the ``[tool.atai_magics]`` table of the nearest ``pyproject.toml`` (from the working
   directory upwards);
3. environment variables (``ATAI_API_ENDPOINT``, ``ATAI_LOCAL_HOME``);
4. the defaults below.

The API key itself is never a setting: ``api_key_env`` names the environment variable it is
read from, at request time. With no endpoint and no key, the embedded local backend is used.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .api.errors import ConfigError

__all__ = ["Backend", "Settings", "data_dir", "find_pyproject", "load_pyproject_settings"]

LOCAL = "LOCAL"


def data_dir() -> Path:
    """The per-user data directory (the journal and downloaded outputs live there)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "atai_magics"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "atai_magics"
    xdg = os.environ.get("XDG_DATA_HOME")
    return Path(xdg if xdg else Path.home() / ".local" / "share") / "atai_magics"


@dataclass
class Settings:
    """Every setting, with its default; the field docstrings are shown by ``%atai_config``."""

    endpoint: str | None = None
    """API endpoint; unset means ATAI_API_ENDPOINT, else the local backend (when no key)."""
    api_key_env: str = "ATAI_API_KEY"
    """Name of the environment variable holding the API key (the key is never stored)."""
    local_home: str | None = None
    """State directory of the local backend; unset means ATAI_LOCAL_HOME or the data dir."""
    local_concurrency: int = 2
    """Jobs the local backend runs at once (when it is started by the extension)."""
    poll: float = 1.0
    """Seconds between status checks while waiting."""
    max_retries: int = 3
    """Times a failed request is repeated, with backoff (never in a way that creates twice)."""
    timeout: float | None = None
    """Seconds --wait waits before giving up (the job keeps running); unset waits forever."""
    wait: str = "auto"
    """auto: wait when no widget front end shows a card; always; never."""
    journal: str | None = None
    """Path of the journal of submitted jobs; unset means <data dir>/journal.jsonl."""

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def set(self, name: str, value: Any) -> None:
        """Change one setting, converting text as a user types it (``poll=1``)."""
        if name not in self.names():
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"Unknown setting {name!r}{hint} (settings: {', '.join(self.names())})"
            )
        setattr(self, name, _convert(name, value, getattr(Settings(), name)))

    def journal_path(self) -> Path:
        return Path(self.journal) if self.journal else data_dir() / "journal.jsonl"

    def backend(self) -> Backend:
        """Which API the settings point at: an endpoint, the platform, or the local backend."""
        endpoint = self.endpoint or os.environ.get("ATAI_API_ENDPOINT")
        if endpoint:
            return Backend(endpoint=endpoint, key_env=self.api_key_env)
        if os.environ.get(self.api_key_env):
            return Backend(endpoint=None, key_env=self.api_key_env)
        return Backend(endpoint=None, key_env=None)


@dataclass(frozen=True)
class Backend:
    """An endpoint (``None``: the platform's default) and where its key comes from;
    ``key_env=None`` with no endpoint means the embedded local backend."""

    endpoint: str | None
    key_env: str | None

    @property
    def is_local(self) -> bool:
        return self.endpoint is None and self.key_env is None


def _convert(name: str, value: Any, default: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if name in ("local_concurrency", "max_retries"):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{name} takes a whole number, not {value!r}") from None
    if text.lower() in ("none", "null", ""):
        return None
    if name in ("poll", "timeout"):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{name} takes a number of seconds, not {value!r}") from None
    if name == "wait" and text not in ("auto", "always", "never"):
        raise ConfigError(f"wait takes auto, always or never, not {value!r}")
    return text


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` from ``start`` (the working directory) upwards."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_pyproject_settings(settings: Settings, start: Path | None = None) -> Path | None:
    """Apply ``[tool.atai_magics]`` of the nearest pyproject.toml; returns the file used."""
    path = find_pyproject(start)
    if path is None:
        return None
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        import tomli as tomllib
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {}).get("atai_magics")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read {path}: {exc}") from None
    if not table:
        return None
    for name, value in table.items():
        try:
            settings.set(name, value)
        except ConfigError as exc:
            raise ConfigError(f"{path} [tool.atai_magics]: {exc}") from None
    return path
