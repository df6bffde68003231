"""The local backend's scheduler: admits queued jobs and runs their pipelines in worker processes.

One daemon thread owns the loop; routes only create/cancel/retry rows in the `Store` and call
`Scheduler.wake` (or `Scheduler.cancel`). Workers are real OS processes, so a pipeline can use
every core, be killed like a pod, and never block the server's threads.

Choices (the platform documents none of them; see reference §3.2):

- **Start method.** ``forkserver`` where available (``spawn`` elsewhere): never ``fork`` from a
  threaded server. The fork server preloads this module and the pipelines' modules (numpy), so
  a worker starts in milliseconds instead of re-importing numpy for a second. `start` brings
  the fork server up at once (it runs a no-op process), so workers run the code the server
  loaded, not whatever is on disk at the first job (after a ``git pull`` or ``pip install
  -U`` under a running backend, that would mismatch the server's calls). Workers lower their
  CPU priority (``WORKER_NICENESS``), so a running pipeline does not slow the notebook.
- **Admission.** While fewer than ``concurrency`` jobs are ADMITTED/RUNNING, the oldest PENDING
  job is admitted (`Store.admit_next`), gets an INFO ``Starting N worker(s)`` event, its worker
  processes are started and it moves to RUNNING. Workers = min(requested ``parallelism`` or the
  pipeline default, ``max_parallelism``, CPU count), and never more than the largest scatter
  port has items (at least one).
- **Inputs.** ``scatter`` ports are split round-robin among workers, ``replicate`` ports go to
  all. Inputs already final (completed/failed, from an attempt before a preemption) are not
  handed out again; outputs of an interrupted input may therefore appear twice.
- **Job end.** All workers exit 0 → COMPLETED (SUCCESS ``Job completed in Ns``). A
  `PipelineFailure` in a worker → FAILED, ``error = {"message", "type": "PipelineFailure"}`` and
  a FAILED ``Job failed: <message>`` event. A crash (non-zero exit, a signal, or the injected
  ``crash()``) → ERROR ``Container worker terminated: exit=N`` then FAILED with the platform's
  ``BackoffLimitExceeded`` wording. An exception a worker process dies of (even one raised
  before the pipeline runs, like a TypeError calling the entry point) is reported to the
  scheduler through a pipe of its own and recorded first as an ERROR ``Worker N: Type: text``
  event, unless the worker recorded it itself. Either way the other workers are terminated,
  and inputs still ``processing`` become ``failed`` with the job's error message.
- **Cancel.** The route marks the job CANCELLED; `cancel` (or the loop, which notices a job no
  longer active in the store) sets the job's cancel event, sends SIGTERM, and SIGKILL after 1 s.
  Outputs already written stay. Inputs left ``processing`` are set back to ``pending`` once the
  workers are gone (the platform shows them ``processing`` only for a few seconds; locally they
  would otherwise stay so forever). A retry resets them anyway.
- **Stop.** `stop` kills the workers but leaves the store alone: RUNNING jobs stay RUNNING, so
  the next `start` (`Store.recover_after_restart`) preempts and re-queues them, exactly as after
  a ``kill -9`` of the backend.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import (
    ForkServerContext,
    ForkServerProcess,
    SpawnContext,
    SpawnProcess,
)
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

from atai_magics.local.pipelines import (
    InputFile,
    LocalPipeline,
    PipelineFailure,
    RunContext,
    merge_config,
)
from atai_magics.local.store import (
    NotFound,
    StaleAttempt,
    StateConflict,
    Store,
    StoreError,
    _pid_alive,
)

__all__ = ["BACKOFF_MESSAGE", "Scheduler"]

_log = logging.getLogger(__name__)

ACTIVE = ("ADMITTED", "RUNNING")
POLL_SECONDS = 0.2
KILL_AFTER_SECONDS = 1.0
RECONCILE_SECONDS = 5.0
"""How often the loop looks for jobs the store has running that no worker of ours runs."""
CANCEL_CACHE_SECONDS = 0.1
CRASH_EXIT_CODE = 137  # what an OOM-killed pod reports
WORKER_NICENESS = 10
"""Workers run this much below the server's CPU priority: on the platform pipelines run on
other machines, so here they must not slow the notebook's kernel or the server answering it."""
WATCHDOG_INTERVAL = 0.25
BACKOFF_MESSAGE = "BackoffLimitExceeded: Job has reached the specified backoff limit"
WARM_UP_SECONDS = 120.0
_PREFERRED_START = "forkserver"
_UNCAUGHT_EXIT_CODE = 1  # what multiprocessing reports for an exception escaping run()


class _ReportingProcess(BaseProcess):
    """A process that sends the exception it dies of to its parent (``crash_report``).

    The report travels through a pipe of its own, made in `start`, so it also covers what
    happens before the target's own error handling, e.g. a TypeError calling the target.
    """

    crash_reader: multiprocessing.connection.Connection | None = None
    _crash_writer: multiprocessing.connection.Connection | None = None

    def start(self) -> None:
        reader, writer = multiprocessing.Pipe(duplex=False)
        self._crash_writer = writer
        try:
            super().start()  # pickles self, writer included, for the child
        except BaseException:
            reader.close()
            raise
        finally:
            writer.close()
        self.crash_reader = reader

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            writer = self._crash_writer
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.send(f"{type(exc).__name__}: {exc}")
            raise

    def crash_report(self) -> str | None:
        """What the finished process died of, if it said; closes the pipe."""
        reader = self.crash_reader
        if reader is None or reader.closed:
            return None
        try:
            return str(reader.recv()) if reader.poll() else None
        except (EOFError, OSError):
            return None
        finally:
            reader.close()


class _ForkServerWorker(_ReportingProcess, ForkServerProcess):
    pass


class _SpawnWorker(_ReportingProcess, SpawnProcess):
    pass


class _ForkServerContext(ForkServerContext):
    Process = _ForkServerWorker


class _SpawnContext(SpawnContext):
    Process = _SpawnWorker


def _start_context(method: str | None) -> SpawnContext | ForkServerContext:
    """forkserver (cheap, thread-safe) where the OS has it, else spawn; never fork.

    Its processes report the exception they die of (`_ReportingProcess`).
    """
    if method is None:
        available = multiprocessing.get_all_start_methods()
        method = _PREFERRED_START if _PREFERRED_START in available else "spawn"
    if method == "forkserver":
        multiprocessing.get_context("forkserver")  # raises where the OS has no fork server
        return _ForkServerContext()
    if method == "spawn":
        return _SpawnContext()
    raise ValueError(f"start method {method!r} is not supported; use forkserver or spawn")


def _noop() -> None:
    """What `Scheduler.start` runs once, so that the fork server is up before any job."""


# --- the worker side ------------------------------------------------------------------------


class _StoreContext:
    """The RunContext of a worker: every report goes straight to the store (SQLite WAL).

    Every write is a guarded worker write for ``attempt``, the job's attempt when the worker
    was launched (`Store.attempt_of`: ``retry_count + preemption_count``). Once the store
    refuses one (`StaleAttempt`: the job was cancelled, retried, preempted or deleted), or
    `cancelled` sees the job is no longer ADMITTED/RUNNING on that attempt, the worker is
    stale: `cancelled` returns True and every later write is a no-op, so a worker that
    outlives its attempt can never write into the job, nor into the attempt after it.
    """

    def __init__(
        self,
        store: Store,
        job_id: str,
        worker_index: int,
        config: dict[str, Any],
        inputs: dict[str, list[InputFile]],
        cancel_event: MpEvent,
        attempt: int,
    ) -> None:
        self.config = config
        self.inputs = inputs
        self.worker_index = worker_index
        self._store = store
        self._job_id = job_id
        self._cancel_event = cancel_event
        self._attempt = attempt
        self._checked_at = float("-inf")
        self._stale = False

    def _guarded(self, write: Callable[[], object]) -> None:
        """Run a guarded write; a refusal because the attempt is over makes the worker stale."""
        if self._stale:
            return
        try:
            write()
        except StaleAttempt:
            self._stale = True
        except NotFound:  # e.g. the input's job was deleted; anything else is a real error
            if self._current():
                raise

    def _current(self) -> bool:
        """Whether the job is still ADMITTED/RUNNING on this worker's attempt (else stale)."""
        try:
            job = self._store.get_job(self._job_id)
        except NotFound:
            self._stale = True
        else:
            stale = job["status"] not in ACTIVE or Store.attempt_of(job) != self._attempt
            self._stale = self._stale or stale
        return not self._stale

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
        self._guarded(
            lambda: self._store.add_event(
                self._job_id,
                level,
                event_type,
                message,
                payload,
                input_id,
                index,
                attempt=self._attempt,
            )
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
        self._guarded(
            lambda: self._store.add_progress(
                self._job_id,
                kind,
                step,
                message,
                metrics,
                None,
                input_id=input_id,
                index=index,
                attempt=self._attempt,
            )
        )

    def input_status(self, input_id: str, status: str, error_message: str | None = None) -> None:
        self._guarded(
            lambda: self._store.set_input_status(
                input_id, status, error_message, attempt=self._attempt
            )
        )

    def write_output(
        self, port_name: str, filename: str, data: bytes, *, input_id: str | None = None
    ) -> None:
        self._guarded(
            lambda: self._store.add_output(
                self._job_id, port_name, filename, data, input_id=input_id, attempt=self._attempt
            )
        )

    def cancelled(self) -> bool:
        """The scheduler's event, or the job's status and attempt in the store (read at most
        every 100 ms); True for good once the worker is stale."""
        if self._stale or self._cancel_event.is_set():
            return True
        now = time.monotonic()
        if now - self._checked_at >= CANCEL_CACHE_SECONDS:
            self._checked_at = now
            self._current()
        return self._stale


def _worker_main(
    home: str,
    job_id: str,
    worker_index: int,
    run: Callable[[RunContext], None],
    config: dict[str, Any],
    inputs: dict[str, list[InputFile]],
    cancel_event: MpEvent,
    result: multiprocessing.connection.Connection,
    crash_now: bool,
    server_pid: int,
    attempt: int,
) -> None:
    """Entry point of a worker process: exit 0 on success, 3 after a PipelineFailure.

    ``attempt`` is the job's attempt at launch; the worker's writes are guarded by it.
    """
    if crash_now:
        os._exit(CRASH_EXIT_CODE)
    if hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(WORKER_NICENESS)
    threading.Thread(target=_exit_with_server, args=(server_pid,), daemon=True).start()
    store = Store(home)
    try:
        run(_StoreContext(store, job_id, worker_index, config, inputs, cancel_event, attempt))
    except PipelineFailure as exc:
        result.send(str(exc) or type(exc).__name__)
        result.close()
        store.close()
        sys.exit(3)
    except Exception as exc:  # a pipeline bug: record why, then crash like a pod would
        with contextlib.suppress(Exception):
            store.add_event(
                job_id,
                "ERROR",
                "worker.exception",
                f"Worker {worker_index}: {type(exc).__name__}: {exc}",
                attempt=attempt,
            )
        store.close()
        raise
    store.close()


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel, which cannot tell zombies apart
        return _pid_alive(pid)
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _exit_with_server(server_pid: int) -> None:
    """A worker whose server died (kill -9) stops at once: the restarted server re-runs the
    job, and an orphan must not keep writing into the store meanwhile."""
    while _process_alive(server_pid):
        time.sleep(WATCHDOG_INTERVAL)
    os._exit(CRASH_EXIT_CODE)


# --- the scheduler side ---------------------------------------------------------------------


@dataclass
class _Worker:
    process: BaseProcess
    result: multiprocessing.connection.Connection


@dataclass
class _RunningJob:
    job_id: str
    cancel_event: MpEvent
    workers: list[_Worker] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    kill_at: float | None = None  # set once the workers are being terminated
    reset_inputs: bool = False  # cancelled: processing inputs go back to pending when gone
    settle: Callable[[], None] | None = None
    """The end this job is to have in the store (FAILED...): the job is forgotten only once
    it is recorded, tried again on every pass until then (a full disk, a locked database)."""

    def alive(self) -> list[BaseProcess]:
        return [w.process for w in self.workers if w.process.is_alive()]


@dataclass(frozen=True)
class _Plan:
    """What to start for one job: the merged config and each worker's inputs."""

    config: dict[str, Any]
    worker_inputs: list[dict[str, list[InputFile]]]


class Scheduler:
    """Admits queued jobs up to ``concurrency`` and supervises their worker processes."""

    def __init__(
        self,
        store: Store,
        pipelines: dict[str, LocalPipeline],
        concurrency: int = 2,
        *,
        crash: Callable[[], bool] | None = None,
        start_method: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.store = store
        self.pipelines = pipelines
        self.concurrency = concurrency
        self._crash = crash
        self._mp = _start_context(start_method)
        self._jobs: dict[str, _RunningJob] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- public API ---

    def start(self) -> list[str]:
        """Re-queue what a previous run left ADMITTED/RUNNING, then start the loop thread.

        Returns the ids of the recovered (preempted) jobs.
        """
        if self._thread is not None:
            raise RuntimeError("Scheduler already started")
        recovered = self.store.recover_after_restart()
        self._preload()
        self._warm_up()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="atai-local-scheduler", daemon=True)
        self._thread.start()
        return recovered

    def wake(self) -> None:
        """Look at the queue now (after a create or a retry) rather than at the next poll."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Stop a job's workers (the route has already made it CANCELLED in the store).

        Returns at once: SIGTERM now, SIGKILL from the loop after 1 s. Unknown ids are ignored.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job.reset_inputs = True
                self._terminate(job)
        self.wake()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and kill every worker, leaving jobs RUNNING for the next start."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            self._terminate(job)
        deadline = time.monotonic() + KILL_AFTER_SECONDS
        for job in jobs:
            for w in job.workers:
                w.process.join(max(0.0, deadline - time.monotonic()))
                if w.process.is_alive():
                    w.process.kill()
                    w.process.join(KILL_AFTER_SECONDS)
                self._close(w)

    def running(self) -> list[str]:
        """Ids of the jobs that still have (or are stopping) worker processes."""
        with self._lock:
            return list(self._jobs)

    def processes(self, job_id: str) -> list[BaseProcess]:
        """A job's worker processes (for tests and diagnostics); empty once reaped."""
        with self._lock:
            job = self._jobs.get(job_id)
            return [w.process for w in job.workers] if job else []

    # --- the loop ---

    def _preload(self) -> None:
        """Have the fork server import our modules and the pipelines' once, so workers start
        warm and run the code this process loaded (plug-ins included)."""
        if self._mp.get_start_method() != "forkserver":
            return
        modules = [__name__]
        modules += sorted(
            {
                name
                for p in self.pipelines.values()
                if (name := getattr(p.run, "__module__", None) or "") in sys.modules
                and name != "__main__"
            }
            - {__name__}
        )
        self._mp.set_forkserver_preload(modules)

    def _warm_up(self) -> None:
        """Start the fork server now, importing the modules as they are now (see `_preload`).

        Left to the first job, it would import whatever is on disk then. A no-op spawn costs
        nothing worth saving: each worker is a fresh interpreter anyway.
        """
        if self._mp.get_start_method() != "forkserver":
            return
        process = self._mp.Process(target=_noop, name="atai-worker-warm-up", daemon=True)
        try:
            process.start()
            process.join(WARM_UP_SECONDS)
        except Exception:  # the first job will try again, and fail visibly if it must
            _log.exception("could not start the worker process server")
            return
        if process.exitcode != 0:
            _log.warning("the worker process server's test process ended with %s", process.exitcode)
        if isinstance(process, _ReportingProcess):
            process.crash_report()

    def _loop(self) -> None:
        reconciled = time.monotonic()
        while not self._stopping.is_set():
            try:
                self._supervise()
                if not self._stopping.is_set():
                    self._admit()
                if (
                    not self._stopping.is_set()
                    and time.monotonic() - reconciled >= RECONCILE_SECONDS
                ):
                    reconciled = time.monotonic()
                    self._reconcile()
            except Exception:  # keep scheduling; a store hiccup must not end the backend
                _log.exception("local scheduler iteration failed")
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def _admit(self) -> None:
        while not self._stopping.is_set():
            job = self.store.admit_next(self.concurrency)
            if job is None:
                return
            try:
                self._launch(job)
            except Exception as exc:  # admitted, so it must not stay ADMITTED with no workers
                _log.exception("could not launch %s", job["id"])
                self._fail(str(job["id"]), f"Could not start the job: {exc}", "SchedulerError")

    def _reconcile(self) -> None:
        """Fail a job the store has ADMITTED or RUNNING but no worker of this scheduler runs
        (every write that should have ended it failed): it would hold a slot forever."""
        for status in ACTIVE:
            page = self.store.list_jobs(status=status, limit=None)
            with self._lock:
                orphans = [j["id"] for j in page["jobs"] if j["id"] not in self._jobs]
            for job_id in orphans:
                if self._stopping.is_set():  # stop() forgets every job: they are not orphans
                    return
                _log.warning("job %s was %s with no workers: failing it", job_id, status)
                self._fail(job_id, "The local scheduler lost this job's workers", "SchedulerError")

    def _fail(self, job_id: str, message: str, kind: str) -> None:
        with contextlib.suppress(StateConflict, NotFound):
            self.store.transition(
                job_id,
                "FAILED",
                error={"message": message, "type": kind},
                event=("FAILED", "job.failed", f"Job failed: {message}"),
            )

    def _launch(self, job: dict[str, Any]) -> None:
        job_id = str(job["id"])
        pipeline = self.pipelines.get(str(job["pipeline_key"]))
        if pipeline is None:
            msg = f"Pipeline '{job['pipeline_key']}' has no active versions"
            self._fail(job_id, msg, "PipelineNotFound")
            return
        try:
            plan = self._plan(job, pipeline)
        except StoreError as exc:
            self._fail(job_id, exc.message, "InputError")
            return
        with self._lock:
            previous = self._jobs.pop(job_id, None)
        if previous is not None:  # retried while its cancelled workers were still stopping
            for process in previous.alive():
                process.kill()
                process.join(KILL_AFTER_SECONDS)
            self._forget(previous)
        n = len(plan.worker_inputs)
        self.store.add_event(job_id, "INFO", "info", f"Starting {n} worker(s)")
        running = _RunningJob(job_id, self._mp.Event())
        with self._lock:
            self._jobs[job_id] = running
        try:
            for index, inputs in enumerate(plan.worker_inputs):
                reader, writer = self._mp.Pipe(duplex=False)
                crash_now = bool(self._crash and self._crash())
                process = self._mp.Process(
                    target=_worker_main,
                    args=(
                        str(self.store.home),
                        job_id,
                        index,
                        pipeline.run,
                        plan.config,
                        inputs,
                        running.cancel_event,
                        writer,
                        crash_now,
                        os.getpid(),
                        Store.attempt_of(job),
                    ),
                    name=f"atai-worker-{job_id}-{index}",
                    daemon=True,
                )
                running.workers.append(_Worker(process, reader))
                process.start()
                writer.close()
        except Exception as exc:  # could not start a worker process
            _log.exception("could not start workers of %s", job_id)
            self._terminate(running)
            self._fail(job_id, f"Could not start worker: {exc}", "WorkerStartError")
            return
        running.started = time.monotonic()
        try:
            self.store.transition(job_id, "RUNNING")
        except (StateConflict, NotFound):  # cancelled while being admitted
            running.reset_inputs = True
            self._terminate(running)

    def _plan(self, job: dict[str, Any], pipeline: LocalPipeline) -> _Plan:
        component = pipeline.component
        defaults = pipeline.default_config.get(component) or {}
        params = (job.get("parameters") or {}).get(component) or {}
        config = merge_config(defaults.get("config") or {}, params.get("config") or {})
        requested = params.get("parallelism") or defaults.get("parallelism") or 1
        try:
            requested = int(requested)
        except (TypeError, ValueError):
            requested = 1
        parallelism = max(1, min(requested, pipeline.max_parallelism, os.cpu_count() or 1))
        by_port: dict[str, list[InputFile]] = {}
        for item in self.store.list_inputs(str(job["id"]), limit=None)["inputs"]:
            if item["status"] in ("completed", "failed"):
                continue  # finished in an attempt before a preemption
            by_port.setdefault(item["port_name"], []).append(self._input_file(item))
        scatter = {
            name: files
            for name, files in by_port.items()
            if pipeline.inputs.get(name, {}).get("distribute", "scatter") != "replicate"
        }
        widest = max((len(files) for files in scatter.values()), default=1)
        n = max(1, min(parallelism, widest))
        workers: list[dict[str, list[InputFile]]] = [{} for _ in range(n)]
        for name, files in by_port.items():
            for index, worker in enumerate(workers):
                worker[name] = files[index::n] if name in scatter else list(files)
        return _Plan(config, workers)

    def _input_file(self, item: dict[str, Any]) -> InputFile:
        data = item.get("data") or {}
        file_id = item.get("file_id")
        if file_id is None:  # a checkpoint reference: nothing on disk locally
            return InputFile(
                input_id=str(item["id"]),
                port_name=str(item["port_name"]),
                file_id=str(item.get("checkpoint_id") or ""),
                path=Path(os.devnull),
                file_type=None,
                metadata={"kind": item.get("kind"), "checkpoint_id": item.get("checkpoint_id")},
            )
        return InputFile(
            input_id=str(item["id"]),
            port_name=str(item["port_name"]),
            file_id=str(file_id),
            path=self.store.file_path(str(file_id)),
            file_type=data.get("file_type"),
            metadata=dict(data.get("metadata") or {}),
        )

    # --- supervision ---

    def _supervise(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            if job.kill_at is not None:
                self._finish_stopping(job)
                continue
            try:
                status = self.store.get_job(job.job_id)["status"]
            except NotFound:
                status = "DELETED"
            if status not in ACTIVE:  # cancelled by a route that did not call cancel()
                job.reset_inputs = True
                self._terminate(job)
                continue
            self._check_outcome(job)

    def _check_outcome(self, job: _RunningJob) -> None:
        codes = [w.process.exitcode for w in job.workers]
        failure = next((m for w in job.workers if (m := self._failure_message(w))), None)
        if failure is not None:

            def failed() -> None:
                self._fail_processing_inputs(job.job_id, failure)
                self._fail(job.job_id, failure, "PipelineFailure")

            self._end(job, failed)
            return
        crashed = [c for c in codes if c is not None and c != 0]
        if crashed:
            code = crashed[0] if crashed[0] > 0 else 128 - crashed[0]

            reported: list[bool] = []  # once, however often the end is written

            def crashed_out() -> None:
                self._fail_processing_inputs(job.job_id, BACKOFF_MESSAGE)
                with contextlib.suppress(StateConflict, NotFound):
                    if not reported:
                        self._report_crash(job)
                        self.store.add_event(
                            job.job_id,
                            "ERROR",
                            "pod.terminated",
                            f"Container worker terminated: exit={code}",
                        )
                        reported.append(True)
                    self._fail(job.job_id, BACKOFF_MESSAGE, "BackoffLimitExceeded")

            self._end(job, crashed_out)
            return
        if all(c == 0 for c in codes):
            seconds = round(time.monotonic() - job.started)
            with contextlib.suppress(StateConflict, NotFound):
                self.store.transition(
                    job.job_id,
                    "COMPLETED",
                    event=("SUCCESS", "job.completed", f"Job completed in {seconds}s"),
                )
            self._forget(job)

    def _end(self, job: _RunningJob, settle: Callable[[], None]) -> None:
        """Stop a job's workers and record how it ended (now, or on a later pass)."""
        job.settle = settle
        self._terminate(job)
        self._settled(job)

    def _settled(self, job: _RunningJob) -> bool:
        """Whether the job's end is recorded (trying it now if it is not yet)."""
        if job.settle is None:
            return True
        try:
            job.settle()
        except Exception:
            _log.exception("recording the end of %s failed; trying again", job.job_id)
            return False
        job.settle = None
        return True

    def _report_crash(self, job: _RunningJob) -> None:
        """Record why the first crashed worker died, unless it recorded that itself."""
        for index, w in enumerate(job.workers):
            code = w.process.exitcode
            if code is None or code == 0:
                continue
            report = w.process.crash_report() if isinstance(w.process, _ReportingProcess) else None
            if report is None and code == _UNCAUGHT_EXIT_CODE:
                report = "exited with code 1 before reporting; see the backend's log for why"
            if report is None:
                return
            message = f"Worker {index}: {report}"
            recorded = self.store.list_events(
                job.job_id, level="ERROR", event_type="worker.exception", limit=None
            )
            if all(e.get("message") != message for e in recorded.get("events", [])):
                self.store.add_event(job.job_id, "ERROR", "worker.exception", message)
            return

    @staticmethod
    def _failure_message(worker: _Worker) -> str | None:
        if worker.process.exitcode is None or worker.result.closed:
            return None
        try:
            if worker.result.poll():
                return str(worker.result.recv())
        except (EOFError, OSError):
            pass
        return None

    def _fail_processing_inputs(self, job_id: str, message: str) -> None:
        """Inputs a failed job was in the middle of are failed too, not left ``processing``."""
        self._set_processing(job_id, "failed", message)

    def _set_processing(self, job_id: str, status: str, message: str | None = None) -> None:
        try:
            items = self.store.list_inputs(job_id, status="processing", limit=None)["inputs"]
        except NotFound:
            return
        for item in items:
            with contextlib.suppress(StateConflict, NotFound):
                self.store.set_input_status(str(item["id"]), status, message)

    def _terminate(self, job: _RunningJob) -> None:
        """SIGTERM every worker now; `_finish_stopping` sends SIGKILL after a second."""
        job.cancel_event.set()
        for w in job.workers:
            if w.process.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    w.process.terminate()
        if job.kill_at is None:
            job.kill_at = time.monotonic() + KILL_AFTER_SECONDS

    def _finish_stopping(self, job: _RunningJob) -> None:
        alive = job.alive()
        if alive and job.kill_at is not None and time.monotonic() >= job.kill_at:
            for process in alive:
                with contextlib.suppress(OSError, ValueError):
                    process.kill()
            for process in alive:
                process.join(KILL_AFTER_SECONDS)
            alive = job.alive()
        if alive or not self._settled(job):
            return
        if job.reset_inputs:
            self._set_processing(job.job_id, "pending")
        self._forget(job)

    def _forget(self, job: _RunningJob) -> None:
        for w in job.workers:
            w.process.join(0)
            self._close(w)
        with self._lock:
            if self._jobs.get(job.job_id) is job:
                del self._jobs[job.job_id]

    @staticmethod
    def _close(worker: _Worker) -> None:
        with contextlib.suppress(OSError):
            worker.result.close()
        reader = getattr(worker.process, "crash_reader", None)
        if isinstance(reader, multiprocessing.connection.Connection):
            with contextlib.suppress(OSError):
                reader.close()
