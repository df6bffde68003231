"""A tiny LocalPipeline for scheduler tests: runs for ``seconds``, so it can be cancelled/stopped.

It lives in its own module (not in a test file) because worker processes import ``run`` by
name; pytest puts this directory on ``sys.path`` and the fork server inherits it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from atai_magics.local.pipelines.base import LocalPipeline, PipelineFailure, RunContext, port

KEY = "slow-test"
DATA_PORT = "worker.data"
RESULT_PORT = "worker.result"


def run(ctx: RunContext) -> None:
    """Mark inputs processing, write a marker output, wait, then copy each input.

    Config: ``seconds`` to wait; ``ignore_term`` ignores SIGTERM and cancellation (so only
    SIGKILL stops it); ``fail`` raises a PipelineFailure with that message, ``error`` a
    RuntimeError (a pipeline bug); ``pid_dir`` receives ``<worker_index>.pid``;
    ``release_file`` makes it wait (after ``seconds``) until that file exists, so a test
    decides when it may finish, however slow the machine.
    """
    if ctx.config.get("error"):
        raise RuntimeError(str(ctx.config["error"]))
    if ctx.config.get("fail"):
        raise PipelineFailure(str(ctx.config["fail"]))
    if ctx.config.get("pid_dir"):  # lets a test see whether the worker process still runs
        pid_file = Path(str(ctx.config["pid_dir"])) / f"{ctx.worker_index}.pid"
        pid_file.write_text(str(os.getpid()))
    ignore = bool(ctx.config.get("ignore_term"))
    if ignore:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx.event("INFO", "running_job", "Running job")
    files = ctx.inputs.get(DATA_PORT, [])
    for f in files:
        ctx.input_status(f.input_id, "processing")
    ctx.write_output(RESULT_PORT, f"started_{ctx.worker_index}.txt", b"started")
    deadline = time.monotonic() + float(ctx.config.get("seconds", 30))
    release = ctx.config.get("release_file")
    while time.monotonic() < deadline or (release and not Path(str(release)).exists()):
        if not ignore and ctx.cancelled():
            return
        time.sleep(0.02)
    for f in files:
        ctx.write_output(RESULT_PORT, f"copy_{f.file_id}", f.path.read_bytes(), input_id=f.input_id)
        ctx.input_status(f.input_id, "completed")


PIPELINE = LocalPipeline(
    key=KEY,
    version="0.0.1",
    name="Slow test pipeline",
    description="Waits, then copies its inputs.",
    component="worker",
    inputs={DATA_PORT: port("Input files", "Anything")},
    outputs={RESULT_PORT: {"name": "Output files", "description": "Copies"}},
    default_config={"worker": {"parallelism": 1, "config": {"seconds": 30}}},
    user_schema={"type": "object", "properties": {}},
    config_schema={"type": "object", "properties": {}},
    run=run,
    max_parallelism=4,
)
