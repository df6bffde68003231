"""An in-memory RunContext that records everything a pipeline reports, plus file helpers."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from atai_magics.local.pipelines.base import InputFile, RunContext


@dataclass
class FakeContext:
    config: dict[str, Any]
    inputs: dict[str, list[InputFile]]
    worker_index: int = 0
    cancel_after: int | None = None  # cancelled() turns True after this many polls
    events: list[dict[str, Any]] = field(default_factory=list)
    progress_entries: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[tuple[str, str, str | None]] = field(default_factory=list)
    outputs: dict[str, bytes] = field(default_factory=dict)
    output_meta: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    polls: int = 0

    def event(
        self,
        level: str,
        event_type: str,
        message: str,
        *,
        input_id: str | None = None,
        index: int | None = None,
        payload: dict[str, Any] | None = None,
    ) -> None:
        assert level in ("INFO", "WARN", "ERROR", "SUCCESS", "FAILED")
        self.events.append(
            {
                "level": level,
                "event_type": event_type,
                "message": message,
                "input_id": input_id,
                "index": index,
                "payload": payload or {},
            }
        )

    def progress(
        self,
        kind: str,
        step: int,
        message: str,
        metrics: dict[str, Any],
        *,
        input_id: str | None = None,
        index: int | None = None,
    ) -> None:
        self.progress_entries.append(
            {
                "kind": kind,
                "step": step,
                "message": message,
                "metrics": metrics,
                "input_id": input_id,
                "index": index,
            }
        )

    def input_status(self, input_id: str, status: str, error_message: str | None = None) -> None:
        assert status in ("processing", "completed", "failed")
        self.statuses.append((input_id, status, error_message))

    def write_output(
        self, port_name: str, filename: str, data: bytes, *, input_id: str | None = None
    ) -> None:
        assert filename not in self.outputs, f"output {filename} written twice"
        self.outputs[filename] = data
        self.output_meta[filename] = (port_name, input_id)

    def cancelled(self) -> bool:
        self.polls += 1
        return self.cancel_after is not None and self.polls > self.cancel_after

    # --- conveniences for assertions ---
    def messages(self, level: str | None = None) -> list[str]:
        return [e["message"] for e in self.events if level is None or e["level"] == level]

    def final_status(self, input_id: str) -> tuple[str, str | None]:
        last = [(s, m) for i, s, m in self.statuses if i == input_id]
        assert last, f"no status reported for {input_id}"
        return last[-1]

    def csv_rows(self, filename: str) -> list[list[str]]:
        return list(csv.reader(self.outputs[filename].decode().splitlines()))


@pytest.fixture
def make_ctx() -> Callable[..., FakeContext]:
    return FakeContext


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def csv_file(tmp_path: Path) -> Callable[..., Path]:
    """csv_file(name, header, rows) -> path of a new CSV under tmp_path."""

    def make(name: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
        return write_csv(tmp_path / name, header, rows)

    return make


@pytest.fixture
def input_file() -> Callable[..., InputFile]:
    """input_file(path, port, input_id=..., file_type=..., **metadata) -> InputFile."""
    counter = iter(range(1, 10_000))

    def make(
        path: Path,
        port: str,
        *,
        input_id: str | None = None,
        file_type: str | None = "text/csv",
        **metadata: Any,
    ) -> InputFile:
        return InputFile(
            input_id=input_id or f"inp_{next(counter):04d}",
            port_name=port,
            file_id=path.name,
            path=path,
            file_type=file_type,
            metadata=dict(metadata),
        )

    return make


def _fake_is_a_run_context(ctx: FakeContext) -> RunContext:
    """Checked by mypy: the fake must keep satisfying the protocol pipelines are written for."""
    return ctx
