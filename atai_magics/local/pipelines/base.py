"""The contract between the local scheduler and a local pipeline.

A pipeline is a plain description (`LocalPipeline`) plus a module-level ``run`` function.
The scheduler calls ``run(ctx)`` in a worker process; everything the pipeline reports
(events, progress, input statuses, output files) goes through the `RunContext`, so the
compute code never touches the database, HTTP or the file store directly and can be tested
with an in-memory context.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Protocol


@dataclass(frozen=True)
class InputFile:
    """One input item handed to a worker: the platform's DataRef, resolved to a local path."""

    input_id: str
    port_name: str
    file_id: str
    path: Path
    file_type: str | None
    metadata: dict[str, Any]


class PipelineFailure(Exception):
    """A run-time failure the platform reports as a FAILED event; message uses platform wording."""


class RunContext(Protocol):
    """What a running pipeline may see and do. Implemented by the scheduler (and by test fakes)."""

    config: dict[str, Any]
    inputs: dict[str, list[InputFile]]
    worker_index: int

    def event(
        self,
        level: str,
        event_type: str,
        message: str,
        *,
        input_id: str | None = None,
        index: int | None = None,
        payload: dict[str, Any] | None = None,
    ) -> None: ...

    def progress(
        self,
        kind: str,
        step: int,
        message: str,
        metrics: dict[str, Any],
        *,
        input_id: str | None = None,
        index: int | None = None,
    ) -> None: ...

    def input_status(
        self, input_id: str, status: str, error_message: str | None = None
    ) -> None: ...

    def write_output(
        self, port_name: str, filename: str, data: bytes, *, input_id: str | None = None
    ) -> None: ...

    def cancelled(self) -> bool: ...


def fail_input(ctx: RunContext, f: InputFile, message: str) -> None:
    """Mark a tracked input failed, with the platform's FAILED ``inference.failed`` event."""
    ctx.input_status(f.input_id, "failed", message)
    ctx.event(
        "FAILED",
        "inference.failed",
        f"Processing failed for {f.file_id}",
        input_id=f.input_id,
        payload={"error": message},
    )


MAX_NAME_BYTES = 255
"""The store's limit on a file name (``validate_file_id``), outputs included."""


def part_name(file_id: str, part: int, suffix: str) -> str:
    """``pred_<input stem>_part_<n><suffix>``, the platform's output name. A stem too long for
    the whole to fit in MAX_NAME_BYTES is cut (whole characters) and tagged with a short hash
    of itself, so two long inputs never share a name."""
    stem = PurePath(file_id).stem
    name = f"pred_{stem}_part_{part}{suffix}"
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    tag = hashlib.sha256(stem.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    room = MAX_NAME_BYTES - len(f"pred__{tag}_part_{part}{suffix}".encode())
    short = stem.encode("utf-8")[:room].decode("utf-8", "ignore")
    return f"pred_{short}_{tag}_part_{part}{suffix}"


@dataclass(frozen=True)
class LocalPipeline:
    """A pipeline as the local registry publishes it (shapes follow reference §8.1 and §8.4)."""

    key: str
    version: str
    name: str
    description: str
    component: str
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    default_config: dict[str, Any]
    user_schema: dict[str, Any]
    config_schema: dict[str, Any]
    run: Callable[[RunContext], None]
    max_parallelism: int = 1


def port(
    name: str,
    description: str,
    *,
    mode: str = "plain_file_list",
    distribute: str = "scatter",
    required: bool = True,
    tracked: bool = True,
) -> dict[str, Any]:
    """An input Port dict with exactly the fields the platform publishes."""
    return {
        "name": name,
        "description": description,
        "mode": mode,
        "distribute": distribute,
        "required": required,
        "tracked": tracked,
    }


def schema_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """Collect the ``default`` values of an object schema into a nested dict.

    Pipelines merge these under the job's config so a value the scheduler did not fill in
    (e.g. ``flush_every_n_iteration``, absent from the platform's default_config) still has a
    defined meaning.
    """
    out: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        if not isinstance(prop, dict):
            continue
        if "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        elif prop.get("type") == "object" and "properties" in prop:
            nested = schema_defaults(prop)
            if nested:
                out[name] = nested
    return out


def deep_merge(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge nested dicts (overrides win; lists and scalars are replaced, not merged)."""
    merged = copy.deepcopy(defaults)
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
