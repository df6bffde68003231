"""Local pipelines: the registry the local backend publishes and runs.

Built-ins are local stand-ins for the two platform pipelines, ``machine-state-classification``
and ``activity-detection``. Users can add their own (or replace a built-in, e.g. with a real
model they have locally) by publishing a `LocalPipeline` under the entry-point group
``atai_magics.local_pipelines`` in their package's ``pyproject.toml``::

    [project.entry-points."atai_magics.local_pipelines"]
    my-pipeline = "my_package.pipelines:PIPELINE"

where ``my_package/pipelines.py`` contains::

    from atai_magics.local.pipelines.base import LocalPipeline, RunContext, port

    def run(ctx: RunContext) -> None:
        for f in ctx.inputs["worker.data"]:
            ctx.input_status(f.input_id, "processing")
            ctx.write_output("worker.result", f"copy_{f.file_id}", f.path.read_bytes(),
                             input_id=f.input_id)
            ctx.input_status(f.input_id, "completed")

    PIPELINE = LocalPipeline(
        key="my-pipeline", version="0.1.0", name="My pipeline",
        description="Copies its inputs.", component="worker",
        inputs={"worker.data": port("Input files", "Anything")},
        outputs={"worker.result": {"name": "Output files", "description": "Copies"}},
        default_config={"worker": {"parallelism": 1, "config": {}}},
        user_schema={"type": "object", "properties": {}},
        config_schema={"type": "object", "properties": {}},
        run=run,
    )

The entry point may also name a zero-argument callable that returns a `LocalPipeline`.
``run`` must be a module-level function: the scheduler runs it in a worker process. After
``pip install -e .`` of that package the local backend lists the pipeline on its next start.
A plug-in that fails to import or returns something else is skipped, and the reason is kept
in `plugin_warnings()`, so one broken package never hides the built-ins.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

from .base import InputFile, LocalPipeline, PipelineFailure, RunContext, deep_merge

ENTRY_POINT_GROUP = "atai_magics.local_pipelines"

__all__ = [
    "ENTRY_POINT_GROUP",
    "InputFile",
    "LocalPipeline",
    "PipelineFailure",
    "RunContext",
    "builtin_pipelines",
    "discover_pipelines",
    "load_pipelines",
    "merge_config",
    "plugin_warnings",
]

_log = logging.getLogger(__name__)
_last_warnings: list[str] = []


def builtin_pipelines() -> list[LocalPipeline]:
    """The pipelines that ship with atai_magics."""
    from . import activity_detection, machine_state

    return [machine_state.PIPELINE, activity_detection.PIPELINE]


def _load_entry_point(ep: Any) -> LocalPipeline:
    obj = ep.load()
    if not isinstance(obj, LocalPipeline) and callable(obj):
        obj = obj()
    if not isinstance(obj, LocalPipeline):
        raise TypeError(f"expected a LocalPipeline, got {type(obj).__name__}")
    if not obj.key or not callable(obj.run):
        raise TypeError("the LocalPipeline needs a non-empty key and a callable run")
    return obj


def discover_pipelines() -> tuple[dict[str, LocalPipeline], list[str]]:
    """Built-ins plus plug-ins, keyed by pipeline key, and the warnings found on the way."""
    pipelines = {p.key: p for p in builtin_pipelines()}
    builtin_keys = set(pipelines)
    warnings: list[str] = []
    try:
        entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # a corrupt installed distribution must not break the built-ins
        return pipelines, [f"Could not list {ENTRY_POINT_GROUP} entry points: {exc}"]
    for ep in entry_points:
        try:
            pipeline = _load_entry_point(ep)
        except Exception as exc:
            warnings.append(
                f"Skipped local pipeline plug-in {ep.name!r} ({ep.value}): "
                f"{type(exc).__name__}: {exc}"
            )
            continue
        if pipeline.key in builtin_keys:
            warnings.append(
                f"Local pipeline plug-in {ep.name!r} replaces the built-in {pipeline.key!r}"
            )
        elif pipeline.key in pipelines:
            warnings.append(
                f"Local pipeline plug-in {ep.name!r} replaces an earlier plug-in for "
                f"{pipeline.key!r}"
            )
        pipelines[pipeline.key] = pipeline
    return pipelines, warnings


def load_pipelines() -> dict[str, LocalPipeline]:
    """`discover_pipelines`, keeping its warnings for `plugin_warnings` and the log."""
    pipelines, warnings = discover_pipelines()
    _last_warnings[:] = warnings
    for w in warnings:
        _log.warning("%s", w)
    return pipelines


def plugin_warnings() -> list[str]:
    """Warnings from the most recent `load_pipelines` call (empty if all plug-ins loaded)."""
    return list(_last_warnings)


def merge_config(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge a job's parameters over a pipeline's defaults (nested dicts merge; lists and
    scalars replace). Neither argument is modified."""
    return deep_merge(defaults, overrides)
