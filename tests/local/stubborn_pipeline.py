"""A LocalPipeline that ignores cancellation: it stands for a worker that outlives its attempt.

It ignores SIGTERM and never asks ``ctx.cancelled()``: until SIGKILL it keeps writing a tick
event and a tick output every few milliseconds, named with its pid, then copies its inputs
and marks them completed. Only the store's attempt guard can keep such a worker from writing
into a job it no longer belongs to. (A module of its own, like ``slow_pipeline``, so worker
processes can import ``run`` by name.)
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from atai_magics.local.pipelines.base import LocalPipeline, RunContext, port

KEY = "stubborn-test"
DATA_PORT = "worker.data"
RESULT_PORT = "worker.result"


def run(ctx: RunContext) -> None:
    """Config: ``seconds`` of ticking (every ``tick`` seconds) before the inputs are copied;
    with ``release_file``, it ticks on after ``seconds`` until that file exists."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pid = os.getpid()
    files = ctx.inputs.get(DATA_PORT, [])
    for f in files:
        ctx.input_status(f.input_id, "processing")
    deadline = time.monotonic() + float(ctx.config.get("seconds", 1.0))
    tick = float(ctx.config.get("tick", 0.01))
    release = ctx.config.get("release_file")
    n = 0
    # never looks at ctx.cancelled(), on purpose
    while time.monotonic() < deadline or (release and not Path(str(release)).exists()):
        n += 1
        ctx.event("INFO", "tick", f"tick {pid} {n}")
        ctx.write_output(RESULT_PORT, f"tick_{pid}_{n}.txt", b"tick")
        time.sleep(tick)
    for f in files:
        data = f.path.read_bytes()
        ctx.write_output(RESULT_PORT, f"done_{pid}_{f.file_id}", data, input_id=f.input_id)
        ctx.input_status(f.input_id, "completed")


PIPELINE = LocalPipeline(
    key=KEY,
    version="0.0.1",
    name="Stubborn test pipeline",
    description="Ignores cancellation; ticks, then copies its inputs.",
    component="worker",
    inputs={DATA_PORT: port("Input files", "Anything")},
    outputs={RESULT_PORT: {"name": "Output files", "description": "Ticks and copies"}},
    default_config={"worker": {"parallelism": 1, "config": {"seconds": 1.0}}},
    user_schema={"type": "object", "properties": {}},
    config_schema={"type": "object", "properties": {}},
    run=run,
    max_parallelism=1,
)
