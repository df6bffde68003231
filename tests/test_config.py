"""Settings: conversion, did-you-mean, pyproject.toml, and which backend they select."""

from __future__ import annotations

from pathlib import Path

import pytest

from atai_magics.api.errors import ConfigError
from atai_magics.config import Settings, find_pyproject, load_pyproject_settings


def test_set_converts_text_and_suggests_names() -> None:
    settings = Settings()
    settings.set("poll", "0.5")
    settings.set("timeout", "none")
    settings.set("local_concurrency", "3")
    assert (settings.poll, settings.timeout, settings.local_concurrency) == (0.5, None, 3)
    with pytest.raises(ConfigError, match="did you mean 'poll'"):
        settings.set("pol", "1")
    with pytest.raises(ConfigError, match="number of seconds"):
        settings.set("poll", "soon")
    with pytest.raises(ConfigError, match="auto, always or never"):
        settings.set("wait", "sometimes")
    with pytest.raises(ConfigError, match="whole number"):
        settings.set("max_retries", "none")


def test_max_retries_reaches_the_client_and_a_change_reconnects() -> None:
    from atai_magics.session import Session

    settings = Settings(endpoint="http://127.0.0.1:9/v0.5")  # never contacted
    session = Session(settings)
    assert session.client.retry.max_retries == 3
    session.change("max_retries", "8")
    assert session.client.retry.max_retries == 8


def test_pyproject_table_is_found_upwards(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.atai_magics]\npoll = 1.5\nwait = "always"\n')
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    settings = Settings()
    assert find_pyproject(nested) == tmp_path / "pyproject.toml"
    assert load_pyproject_settings(settings, nested) == tmp_path / "pyproject.toml"
    assert (settings.poll, settings.wait) == (1.5, "always")


def test_pyproject_typo_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.atai_magics]\nendpont = 'x'\n")
    with pytest.raises(ConfigError, match=r"pyproject.toml \[tool.atai_magics\].*'endpoint'"):
        load_pyproject_settings(Settings(), tmp_path)


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATAI_API_ENDPOINT", raising=False)
    monkeypatch.delenv("ATAI_API_KEY", raising=False)
    assert Settings().backend().is_local
    monkeypatch.setenv("ATAI_API_KEY", "sk_x")
    platform = Settings().backend()
    assert not platform.is_local and platform.endpoint is None
    assert platform.key_env == "ATAI_API_KEY"
    monkeypatch.setenv("ATAI_API_ENDPOINT", "https://api.example.test")
    assert Settings().backend().endpoint == "https://api.example.test"
    monkeypatch.delenv("ATAI_API_KEY")
    settings = Settings(api_key_env="MY_KEY")
    assert settings.backend().key_env == "MY_KEY"  # an endpoint is never the local backend
