"""Benchmarks of the background watcher (``atai_magics.watch``, issue #5), as ratios from one run.

A private local backend (``concurrency=1``, the ``slow-test`` plug-in of
``tests/local/slow_pipeline.py``) runs one long job, so the 200 jobs submitted after it stay
PENDING (live) for the whole run; every job is cancelled and the backend stopped at the end.
The watcher's tick is pinned at 1 s (``Watcher(interval=1.0, fast_for=0, slow=1.0)``: by
default it ticks every 0.5 s for the first 10 s after a job is watched and every 5 s once
every job has been queued for a minute, which would only make it cheaper).

6. Status requests per tick with 200 jobs watched, from ``watcher.stats`` and counted at the
   backend (``GET /_local/requests``), against a naive poller that sends
   ``GET /batch/jobs/{id}`` for every job every tick, run for the same number of ticks.
   Target: at most 3 per tick.
7. The watcher thread's share of one core over those ticks (the thread's CPU clock, checked
   against ``/proc/self/task/<tid>/stat``, divided by wall time), with a ``JobCard`` per job
   attached as its listener, against the same measure for the naive poller's thread (its own
   ``AsyncClient`` and event loop, the same cards). Watcher and poller alternate in blocks,
   one fresh watcher per block (its first look at the jobs is reported apart).
   Target: under 5% of a core.
8. The round trip (``execute_request`` -> ``execute_reply``) of a trivial cell (``pass``) in a
   real ipykernel whose watcher watches 200 jobs (``%load_ext atai_magics``, then
   ``Job.attach`` with the extension's client and ``ui.card_for(job, show=False)``),
   against a second kernel with the extension loaded and no jobs, in alternating blocks;
   medians. The same pair is measured before the first kernel watches anything, to show the
   two kernels alike. Target: at most 1.5x.

Only 127.0.0.1 is used; kernels, the backend and temporary directories are removed at the end.
Usage: ``benchmarks/run --only=watch [--quick] [--watch-jobs=N ...]`` (``--help`` lists them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import queue
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the checkout: atai_magics (also without `pip install -e .`) and the tests' plug-in helper
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_local import HEADER, log, machine, markdown_table, median, verdict, write_rows

from tests.conftest import start_with_plugin  # the `slow-test` plug-in, as the tests install it

SLOW_KEY = "slow-test"
INTERVAL = 1.0
REQUEST_TARGET = 3.0
SHARE_TARGET = 0.05
LATENCY_TARGET = 1.5
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --- the backend and its jobs -----------------------------------------------------------------


@dataclass
class Backend:
    info: Any  # atai_magics.local.server.ServerInfo

    def counts(self) -> Counter[str]:
        """Requests that reached each handler, counted by the backend (not these requests)."""
        import httpx

        root = self.info.url.rsplit("/v0.5", 1)[0]
        auth = {"Authorization": f"Bearer {self.info.token()}"}
        response = httpx.get(f"{root}/_local/requests", headers=auth, trust_env=False)
        response.raise_for_status()
        counts = Counter(response.json())
        del counts["request_counts"]
        return counts

    def cpu(self) -> float:
        """CPU seconds of the server process itself (not its workers)."""
        return proc_cpu(Path(f"/proc/{self.info.pid}/stat"))


@contextlib.contextmanager
def slow_backend(root: Path) -> Iterator[Backend]:
    """A backend with the ``slow-test`` plug-in and one job slot, stopped on the way out."""
    from atai_magics.local import server

    home = root / "backend"
    info = start_with_plugin(home, root / "site", concurrency=1)
    try:
        yield Backend(info)
    finally:
        try:
            server.stop(home)
        except Exception as exc:
            log(f"could not stop the backend of {home}: {exc}")


def submit_jobs(client: Any, n: int, submitted: list[str]) -> list[str]:
    """One long job that takes the only slot, then ``n`` jobs that stay PENDING behind it;
    returns those; every id is also appended to ``submitted`` as soon as it exists."""
    client.upload_bytes(b"x", "watch.txt", "text/plain")

    def body(name: str, seconds: float) -> dict[str, Any]:
        return {
            "name": name,
            "pipeline_key": SLOW_KEY,
            "inputs": {"worker.data": [{"file_id": "watch.txt"}]},
            "parameters": {"worker": {"config": {"seconds": seconds}}},
        }

    blocker = client.create_job(body("blocker", 24 * 3600)).id
    submitted.append(blocker)
    deadline = time.monotonic() + 60
    while client.get_job(blocker).status.value != "RUNNING":
        if time.monotonic() > deadline:
            raise RuntimeError("the long job did not start within 60 s")
        time.sleep(0.1)
    ids = []
    for i in range(n):
        ids.append(client.create_job(body(f"queued-{i:03d}", 1)).id)
        submitted.append(ids[-1])
    page = client.list_jobs(status="PENDING", limit=1000)
    if page.total != n:
        raise RuntimeError(f"expected {n} PENDING jobs, the backend has {page.total}")
    return ids


def cancel_all(client: Any, ids: list[str]) -> None:
    from atai_magics.api.errors import AtaiError

    for job_id in ids:
        with contextlib.suppress(AtaiError):
            client.cancel_job(job_id)


# --- CPU clocks of threads and processes --------------------------------------------------------


def proc_cpu(stat: Path) -> float:
    """utime + stime of a /proc ``stat`` file, in seconds (clock-tick resolution)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu(thread: threading.Thread) -> float:
    """The CPU time of another thread of this process (its CLOCK_THREAD_CPUTIME_ID), in s."""
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def thread_proc_cpu(thread: threading.Thread) -> float:
    return proc_cpu(Path(f"/proc/self/task/{thread.native_id}/stat"))


class Counting:
    """A card's ``apply`` as a listener, counting the updates it receives."""

    def __init__(self, card: Any) -> None:
        self.card = card
        self.calls = 0

    def __call__(self, snap: Any) -> None:
        self.calls += 1
        self.card.apply(snap)


# --- 6 and 7: the watcher and the naive poller, in alternating blocks ---------------------------


@dataclass
class Sample:
    wall: float
    cpu: float
    proc: float
    ticks: int
    status: int
    detail: int
    updates: int
    backend: Counter[str]
    server_cpu: float


@dataclass
class Block:
    """One measured block: whole ticks, CPU seconds of the thread and of the server."""

    ticks: int
    wall: float
    cpu: float
    status: float = 0.0  # requests counted by the client side
    detail: float = 0.0
    backend: Counter[str] = field(default_factory=Counter)
    server_cpu: float = 0.0
    updates: int = 0
    proc_cpu: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.cpu / self.wall


def _watcher_thread(before: set[int]) -> threading.Thread:
    for thread in threading.enumerate():
        if thread.name == "atai-watcher" and thread.ident not in before:
            return thread
    raise RuntimeError("the watcher's thread is not running")


def watcher_block(
    backend: Backend, jobs: list[Any], listeners: list[Counting], window: float
) -> Block:
    """A fresh ``Watcher`` over ``jobs``: its first look, then ``window`` seconds of ticks."""
    from atai_magics.watch import Watcher

    before = {t.ident for t in threading.enumerate() if t.ident is not None}
    watcher = Watcher(interval=INTERVAL, fast_for=0.0, slow=INTERVAL)
    started = time.perf_counter()
    try:
        for job, listener in zip(jobs, listeners, strict=True):
            watcher.watch(job, listener)
        thread = _watcher_thread(before)
        deadline = time.monotonic() + 120
        # The first look is over when a tick that began after the last watch() has ended,
        # i.e. when the tick after it begins (queued jobs that never ran get no details).
        seen = watcher.stats.ticks
        while watcher.stats.ticks < seen + 2:
            if time.monotonic() > deadline or watcher.stats.errors:
                raise RuntimeError(f"the watcher's first look did not finish: {watcher.stats}")
            time.sleep(0.002)
        first_look = {
            "wall": time.perf_counter() - started,
            "detail": watcher.stats.detail_requests,
        }
        time.sleep(0.2)  # the last answers are being read
        first_look["cpu"] = thread_cpu(thread)
        first_look["updates"] = sum(listener.calls for listener in listeners)

        def sample() -> Sample:
            """Taken 0.3 s after a tick began, so between ticks: the counts are whole ticks."""
            ticks = watcher.stats.ticks
            while watcher.stats.ticks == ticks:
                time.sleep(0.002)
            time.sleep(0.3)
            stats = watcher.stats
            taken = Sample(
                time.perf_counter(),
                thread_cpu(thread),
                thread_proc_cpu(thread),
                stats.ticks,
                stats.status_requests,
                stats.detail_requests,
                sum(listener.calls for listener in listeners),
                backend.counts(),
                backend.cpu(),
            )
            if watcher.stats.ticks != taken.ticks:
                raise RuntimeError("a tick began less than 0.3 s after the previous one")
            return taken

        first = sample()
        time.sleep(max(0.0, window - 1.3))
        last = sample()
        if watcher.stats.errors:
            raise RuntimeError(f"the watcher met {watcher.stats.errors} errors")
    finally:
        watcher.stop()
    ticks = last.ticks - first.ticks
    return Block(
        ticks=ticks,
        wall=last.wall - first.wall,
        cpu=last.cpu - first.cpu,
        status=(last.status - first.status) / ticks,
        detail=(last.detail - first.detail) / ticks,
        backend=last.backend - first.backend,
        server_cpu=last.server_cpu - first.server_cpu,
        updates=last.updates - first.updates,
        proc_cpu=last.proc - first.proc,
        extra={"first_look": first_look},
    )


class NaivePoller:
    """What the watcher replaces: ``GET /batch/jobs/{id}`` for every job, every tick (fixed
    rate), on a thread of its own with an event loop and an ``AsyncClient``, as the watcher
    runs; a listener is called when a job's record changed."""

    def __init__(self, client: Any, jobs: list[Any], listeners: list[Counting]) -> None:
        self.client = client
        self.jobs = jobs
        self.listeners = listeners
        self.requests = 0
        self.marks: list[tuple[float, float, int]] = []  # (wall, thread CPU, requests)
        self.error: BaseException | None = None

    def run(self, ticks: int, warmup: int = 1) -> None:
        thread = threading.Thread(target=self._thread, args=(ticks, warmup), name="naive-poller")
        thread.start()
        thread.join()
        if self.error is not None:
            raise RuntimeError(f"the naive poller failed: {self.error!r}") from self.error

    def _thread(self, ticks: int, warmup: int) -> None:
        try:
            asyncio.run(self._main(ticks, warmup))
        except BaseException as exc:
            self.error = exc

    async def _main(self, ticks: int, warmup: int) -> None:
        from atai_magics.watch import Snapshot

        client = self.client.async_twin(max_retries=0)
        seen = {job.id: job.record for job in self.jobs}
        try:
            start = time.perf_counter()
            for tick in range(warmup + ticks + 1):
                due = start + tick * INTERVAL
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                if tick >= warmup:
                    self.marks.append((time.perf_counter(), time.thread_time(), self.requests))
                if tick == warmup + ticks:
                    break
                for job, listener in zip(self.jobs, self.listeners, strict=True):
                    record = await client.get_job(job.id)
                    self.requests += 1
                    job.update(record)
                    if record != seen[job.id]:
                        seen[job.id] = record
                        listener(Snapshot(record))
        finally:
            await client.aclose()


def poller_block(
    backend: Backend, client: Any, jobs: list[Any], listeners: list[Counting], ticks: int
) -> Block:
    poller = NaivePoller(client, jobs, listeners)
    updates = sum(listener.calls for listener in listeners)
    counts, server_cpu = backend.counts(), backend.cpu()
    poller.run(ticks)
    backend_delta = backend.counts() - counts
    (wall0, cpu0, req0), (wall1, cpu1, req1) = poller.marks[0], poller.marks[-1]
    return Block(
        ticks=ticks,
        wall=wall1 - wall0,
        cpu=cpu1 - cpu0,
        status=(req1 - req0) / ticks,
        backend=backend_delta,  # the warm-up tick included
        server_cpu=backend.cpu() - server_cpu,
        updates=sum(listener.calls for listener in listeners) - updates,
    )


def bench_poll(backend: Backend, client: Any, ids: list[str], window: float, rounds: int) -> dict:
    from atai_magics.jobs import Job
    from atai_magics.ui.card import JobCard

    started = time.perf_counter()
    jobs = [Job.attach(job_id, client) for job_id in ids]
    cards = [JobCard(job) for job in jobs]  # no kernel: ipywidgets use a DummyComm
    log(f"{len(cards)} JobCards made in {time.perf_counter() - started:.1f}s")
    listeners = [Counting(card) for card in cards]
    watched: list[Block] = []
    polled: list[Block] = []
    for i in range(rounds):
        order = ["watcher", "poller"] if i % 2 == 0 else ["poller", "watcher"]
        for kind in order:
            ticks = watched[-1].ticks if watched else round(window / INTERVAL)
            if kind == "watcher":
                block = watcher_block(backend, jobs, listeners, window)
                watched.append(block)
                look = block.extra["first_look"]
                log(
                    f"round {i + 1} watcher: {block.ticks} ticks in {block.wall:.1f}s, CPU "
                    f"{block.cpu * 1000:.0f} ms (/proc {block.proc_cpu * 1000:.0f} ms), "
                    f"{block.status:.2f} status + {block.detail:.2f} detail requests/tick, "
                    f"backend {dict(block.backend)}, {block.updates} card updates; first look "
                    f"{look['detail']} detail requests, {look['updates']} card updates, "
                    f"{look['cpu'] * 1000:.0f} ms CPU in {look['wall']:.1f}s"
                )
            else:
                block = poller_block(backend, client, jobs, listeners, ticks)
                polled.append(block)
                log(
                    f"round {i + 1} poller: {block.ticks} ticks in {block.wall:.1f}s, CPU "
                    f"{block.cpu * 1000:.0f} ms, {block.status:.1f} requests/tick, backend "
                    f"{dict(block.backend)} ({block.ticks + 1} ticks), "
                    f"{block.updates} card updates"
                )
    for block in watched:  # the backend agrees with the watcher's own count
        list_jobs = block.backend["list_jobs"] / block.ticks
        others = sum(v for k, v in block.backend.items() if k != "list_jobs")
        if abs(list_jobs - block.status) > 1e-9 or others != block.detail * block.ticks:
            raise RuntimeError(f"the backend counted {dict(block.backend)} in {block.ticks} ticks")
    for block in polled:
        get_job = block.backend["get_job"] / (block.ticks + 1)
        if get_job != len(ids) or block.status != len(ids):
            raise RuntimeError(f"the poller made {block.status}/tick, backend {get_job}")
    ticks = sum(b.ticks for b in watched)
    poll_ticks = sum(b.ticks for b in polled)
    return {
        "jobs": len(ids),
        "ticks": ticks,
        "rounds": rounds,
        "window": window,
        "status": sum(b.status * b.ticks for b in watched) / ticks,
        "backend_status": sum(b.backend["list_jobs"] for b in watched) / ticks,
        "detail": sum(b.detail * b.ticks for b in watched) / ticks,
        "updates": sum(b.updates for b in watched),
        "poll_status": sum(b.status * b.ticks for b in polled) / poll_ticks,
        "poll_backend": sum(b.backend["get_job"] for b in polled)
        / sum(b.ticks + 1 for b in polled),
        "poll_updates": sum(b.updates for b in polled),
        "share": median([b.share for b in watched]),
        "poll_share": median([b.share for b in polled]),
        "share_ratio": median([w.share / p.share for w, p in zip(watched, polled, strict=True)]),
        "ms_per_tick": median([b.cpu / b.ticks * 1000 for b in watched]),
        "poll_ms_per_tick": median([b.cpu / b.ticks * 1000 for b in polled]),
        "proc_share": median([b.proc_cpu / b.wall for b in watched if b.proc_cpu is not None]),
        # /proc counts in clock ticks (10 ms): the totals of all blocks, not a median
        "server_ms": sum(b.server_cpu for b in watched) / ticks * 1000,
        "poll_server_ms": sum(b.server_cpu for b in polled)
        / sum(b.ticks + 1 for b in polled)  # its warm-up tick included
        * 1000,
        "first_cpu_ms": median([b.extra["first_look"]["cpu"] * 1000 for b in watched]),
        "first_wall": median([b.extra["first_look"]["wall"] for b in watched]),
        "first_detail": watched[0].extra["first_look"]["detail"],
    }


# --- 8: a trivial cell in a real kernel ---------------------------------------------------------


class Kernel:
    """An ipykernel started with jupyter_client, and a blocking client on it."""

    def __init__(self, name: str, env: dict[str, str], cwd: Path) -> None:
        from jupyter_client.manager import KernelManager

        self.name = name
        self.log = cwd / f"kernel-{name}.log"
        self.km = KernelManager(kernel_name="python3")  # ip: 127.0.0.1
        with self.log.open("ab") as output:  # its own stdout and stderr
            self.km.start_kernel(env=env, cwd=str(cwd), stdout=output, stderr=output)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 300, **expressions: str) -> dict[str, str]:
        """Execute ``code``; raise on an error; the ``expressions``' values, as text."""
        msg_id = self.kc.execute(code, store_history=False, user_expressions=expressions)
        reply = self._reply(msg_id, timeout)
        self.drain()
        content = reply["content"]
        if content["status"] != "ok":
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(
                f"{self.name}: {content.get('ename')}: {content.get('evalue')}\n"
                + "\n".join(content.get("traceback", []))
                + f"\nend of the kernel's log:\n{tail}"
            )
        values = {}
        for key, value in content.get("user_expressions", {}).items():
            if value.get("status") != "ok":
                raise RuntimeError(f"{self.name}: {key}: {value.get('evalue')}")
            values[key] = value["data"]["text/plain"]
        return values

    def ping(self) -> float:
        """The round trip of ``pass``: execute_request sent to execute_reply received."""
        started = time.perf_counter()
        msg_id = self.kc.execute("pass", store_history=False)
        reply = self._reply(msg_id, 30)
        elapsed = time.perf_counter() - started
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"{self.name}: `pass` failed")
        return elapsed

    def _reply(self, msg_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            msg: dict[str, Any] = self.kc.get_shell_msg(
                timeout=max(0.1, deadline - time.monotonic())
            )
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg

    def drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self.kc.get_iopub_msg(timeout=0.01)

    def cpu(self) -> float:
        pid = int(self.run("", pid="__import__('os').getpid()")["pid"])
        return proc_cpu(Path(f"/proc/{pid}/stat"))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        try:
            self.km.shutdown_kernel(now=False)
        except Exception:
            self.km.shutdown_kernel(now=True)


def latencies(
    kernels: list[Kernel], n: int, block: int, gap: float, rng: random.Random
) -> dict[str, list[float]]:
    """``n`` pings of each kernel in alternating blocks (rotating who goes first), each
    followed by a random pause of up to ``2 * gap`` so they fall anywhere in the tick."""
    samples: dict[str, list[float]] = {k.name: [] for k in kernels}
    for kernel in kernels:  # warm-up
        for _ in range(10):
            kernel.ping()
        kernel.drain()
    for b in range(max(1, n // block)):
        shift = b % len(kernels)
        for kernel in kernels[shift:] + kernels[:shift]:
            for _ in range(block):
                samples[kernel.name].append(kernel.ping())
                time.sleep(rng.uniform(0.0, 2 * gap))
            kernel.drain()
    return samples


def percentile(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


KERNEL_SETUP = """\
%load_ext atai_magics
import atai_magics.jobs, atai_magics.ui.card, atai_magics.watch
_session = get_ipython().magics_manager.registry["AtaiMagics"].session
_client = _session.client
"""

KERNEL_WATCH = """\
from atai_magics.jobs import Job
from atai_magics.ui import card_for
from atai_magics.watch import default_watcher
_watcher = default_watcher()
_watcher.interval = {interval!r}
_watcher.fast_for = 0.0
_watcher.slow = {interval!r}
_jobs = [Job.attach(job_id, _client) for job_id in {ids!r}]
_cards = [card_for(job, show=False) for job in _jobs]
"""


def bench_kernel(root: Path, backend: Backend, ids: list[str], n: int, block: int) -> dict:
    import jupyter_client

    env = {k: v for k, v in os.environ.items() if not k.startswith("ATAI_")}
    env.update(
        ATAI_LOCAL_HOME=str(backend.info.home),
        IPYTHONDIR=str(root / "ipython"),
        XDG_DATA_HOME=str(root / "data"),  # the journal, were anything submitted
        JUPYTER_RUNTIME_DIR=str(root / "runtime"),
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    os.environ["JUPYTER_RUNTIME_DIR"] = env["JUPYTER_RUNTIME_DIR"]  # connection files
    cwd = root / "kernel-cwd"  # no pyproject.toml above it
    cwd.mkdir()
    rng = random.Random(5)
    gap = 0.02
    kernels: list[Kernel] = []
    try:
        for name in ("watching", "idle"):
            kernels.append(Kernel(name, env, cwd))
            kernels[-1].run(KERNEL_SETUP)
        watching, idle = kernels
        log("kernels ready; both idle ...")
        before = latencies(kernels, n, block, gap, rng)
        started = time.perf_counter()
        watching.run(KERNEL_WATCH.format(interval=INTERVAL, ids=ids))
        stats = "(_watcher.stats.ticks, _watcher.stats.detail_requests, len(_watcher.watching()))"
        deadline = time.monotonic() + 120
        first: int | None = None
        while True:  # settled: two whole ticks over every job (queued jobs get no details)
            ticks, detail, count = eval(watching.run("", s=stats)["s"])
            if count == len(ids) and first is None:
                first = ticks
            if first is not None and ticks >= first + 2:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the kernel's watcher did not settle: {ticks, detail, count}")
            time.sleep(0.5)
        if count != len(ids):
            raise RuntimeError(f"the kernel's watcher watches {count} jobs, not {len(ids)}")
        log(f"kernel watches {count} jobs ({time.perf_counter() - started:.1f}s); timing ...")
        counts = backend.counts()
        cpu = {k.name: k.cpu() for k in kernels}
        phase = time.perf_counter()
        after = latencies(kernels, n, block, gap, rng)
        phase = time.perf_counter() - phase
        cpu = {k.name: k.cpu() - cpu[k.name] for k in kernels}
        ticks_after, _, count = eval(watching.run("", s=stats)["s"])
        list_jobs = (backend.counts() - counts)["list_jobs"]
        log(
            f"during the timed blocks ({phase:.1f}s) the kernel's watcher ticked "
            f"{ticks_after - ticks} times (backend: {list_jobs} list requests); kernel CPU: "
            f"watching {cpu['watching']:.2f}s, idle {cpu['idle']:.2f}s"
        )
        if ticks_after - ticks < phase / INTERVAL / 2 or count != len(ids):
            raise RuntimeError("the kernel's watcher was not ticking during the timed blocks")
    finally:
        for kernel in kernels:
            kernel.close()
    w_after, i_after = after[watching.name], after[idle.name]
    w_before, i_before = before[watching.name], before[idle.name]
    return {
        "jobs": len(ids),
        "n": len(w_after),
        "ipykernel": __import__("ipykernel").__version__,
        "jupyter_client": jupyter_client.__version__,
        "p50": median(w_after) * 1000,
        "idle_p50": median(i_after) * 1000,
        "ratio": median(w_after) / median(i_after),
        "p95": percentile(w_after, 95) * 1000,
        "idle_p95": percentile(i_after, 95) * 1000,
        "p95_ratio": percentile(w_after, 95) / percentile(i_after, 95),
        "before_p50": median(w_before) * 1000,
        "before_idle_p50": median(i_before) * 1000,
        "before_ratio": median(w_before) / median(i_before),
        "ticks": ticks_after - ticks,
        "phase": phase,
        "kernel_cpu": cpu,
        "cpu_share": cpu["watching"] / phase,
        "idle_cpu_share": cpu["idle"] / phase,
    }


# --- the report ---------------------------------------------------------------------------------


def pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def rows(poll: dict[str, Any], kernel: dict[str, Any]) -> list[tuple[str, ...]]:
    n = poll["jobs"]
    return [
        (
            f"6. Status requests per tick, {n} queued jobs watched, 1 s tick "
            f"({poll['ticks']} ticks)",
            f"{poll['status']:.2f} (backend counted {poll['backend_status']:.2f}; "
            f"{poll['detail']:.2f} detail requests/tick)",
            f"per-job polling: {poll['poll_status']:.1f} (backend counted "
            f"{poll['poll_backend']:.1f})",
            f"{poll['status'] / poll['poll_status']:.3f}x",
            f"<= {REQUEST_TARGET:.0f} per tick",
            verdict(poll["status"] <= REQUEST_TARGET),
        ),
        (
            f"7. The watcher thread's share of one core, {n} jobs with cards, 1 s tick "
            f"({poll['rounds']} blocks of {poll['window']:.0f} s, median)",
            f"{pct(poll['share'])} ({poll['ms_per_tick']:.1f} ms CPU/tick; /proc: "
            f"{pct(poll['proc_share'])})",
            f"per-job poller thread: {pct(poll['poll_share'])} "
            f"({poll['poll_ms_per_tick']:.0f} ms CPU/tick)",
            f"{poll['share_ratio']:.3f}x",
            f"< {SHARE_TARGET * 100:.0f}%",
            verdict(poll["share"] < SHARE_TARGET),
        ),
        (
            "7b. the backend's CPU per tick serving it (server process)",
            f"{poll['server_ms']:.1f} ms",
            f"per-job poller: {poll['poll_server_ms']:.0f} ms",
            f"{poll['server_ms'] / poll['poll_server_ms']:.3f}x",
            "(context)",
            "-",
        ),
        (
            f"7c. a fresh watcher's first look at {n} jobs ({poll['first_detail']} detail "
            "requests), CPU of its thread",
            f"{poll['first_cpu_ms']:.0f} ms in {poll['first_wall']:.1f} s",
            "-",
            "-",
            "(context)",
            "-",
        ),
        (
            f"8. `pass` round trip in an ipykernel whose watcher watches {n} jobs with cards "
            f"(median of {kernel['n']})",
            f"{kernel['p50']:.2f} ms",
            f"a kernel without jobs: {kernel['idle_p50']:.2f} ms",
            f"{kernel['ratio']:.2f}x",
            f"<= {LATENCY_TARGET}x",
            verdict(kernel["ratio"] <= LATENCY_TARGET),
        ),
        (
            "8b. same, 95th percentile",
            f"{kernel['p95']:.2f} ms",
            f"a kernel without jobs: {kernel['idle_p95']:.2f} ms",
            f"{kernel['p95_ratio']:.2f}x",
            "(context)",
            "-",
        ),
        (
            "8c. same kernel before it watched anything (the two kernels alike?)",
            f"{kernel['before_p50']:.2f} ms",
            f"the other kernel: {kernel['before_idle_p50']:.2f} ms",
            f"{kernel['before_ratio']:.2f}x",
            "(context)",
            "-",
        ),
        (
            f"8d. kernel process CPU during the timed cells ({kernel['phase']:.0f} s, "
            f"{kernel['ticks']} watcher ticks)",
            f"{pct(kernel['cpu_share'])} of a core",
            f"a kernel without jobs: {pct(kernel['idle_cpu_share'])}",
            f"+{(kernel['cpu_share'] - kernel['idle_cpu_share']) * 100:.1f} points",
            "(context)",
            "-",
        ),
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add(
        "--watch-jobs",
        dest="jobs",
        metavar="N",
        type=int,
        default=200,
        help="queued jobs watched (6-8)",
    )
    add(
        "--watch-window",
        dest="window",
        metavar="S",
        type=float,
        default=10.0,
        help="seconds per block (6, 7)",
    )
    add(
        "--watch-rounds",
        dest="rounds",
        metavar="N",
        type=int,
        default=3,
        help="blocks of each (6, 7)",
    )
    add(
        "--watch-pings",
        dest="pings",
        metavar="N",
        type=int,
        default=200,
        help="cells per kernel (8)",
    )
    add(
        "--watch-block", dest="block", metavar="N", type=int, default=25, help="cells per block (8)"
    )
    add("--quick", action="store_true", help="small sizes, a smoke test")
    add("--rows-json", type=Path, help="append the rows to this file (benchmarks/run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.window, args.rounds, args.pings, args.block = 50, 4.0, 1, 40, 10
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import ipykernel  # noqa: F401
        import jupyter_client  # noqa: F401
    except ImportError as exc:
        log(f"figure 8 needs ipykernel and jupyter_client (pip install -e '.[test]'): {exc}")
        return 2
    from atai_magics import Client

    info = machine()
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="atai-bench-watch-"))
    saved_runtime = os.environ.get("JUPYTER_RUNTIME_DIR")
    try:
        with slow_backend(root) as backend:
            client = Client(backend.info.url, api_key=backend.info.token())
            submitted: list[str] = []
            try:
                step = time.perf_counter()
                ids = submit_jobs(client, args.jobs, submitted)
                log(
                    f"{args.jobs} jobs queued behind a long one ({time.perf_counter() - step:.1f}s)"
                )
                steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
                    (
                        "6-7. watcher vs per-job polling",
                        lambda: bench_poll(backend, client, ids, args.window, args.rounds),
                    ),
                    (
                        "8. a cell in a kernel watching the jobs",
                        lambda: bench_kernel(root, backend, ids, args.pings, args.block),
                    ),
                ]
                results = []
                for title, run in steps:
                    log(f"{title} ...")
                    step = time.perf_counter()
                    results.append(run())
                    log(f"{title}: {time.perf_counter() - step:.1f}s")
            finally:
                cancel_all(client, submitted)
                client.close()
    finally:
        if saved_runtime is None:
            os.environ.pop("JUPYTER_RUNTIME_DIR", None)
        else:
            os.environ["JUPYTER_RUNTIME_DIR"] = saved_runtime
        shutil.rmtree(root, ignore_errors=True)
    poll, kernel = results
    print(
        f"Watcher benchmarks, {info['date']}: {info['nproc']} cores ({info['cpu']}), "
        f"Python {info['python']}, {info['platform']}, ipykernel {kernel['ipykernel']}, "
        f"jupyter_client {kernel['jupyter_client']}"
    )
    table = rows(poll, kernel)
    print()
    print(markdown_table([HEADER, *table]))
    print()
    print(
        f"Ratios are taken against baselines measured in this run, alternating with the figure "
        f"they divide (medians). Total time {time.perf_counter() - started:.0f}s."
    )
    versions = {k: kernel[k] for k in ("ipykernel", "jupyter_client")}
    write_rows(args.rows_json, "watch", table, versions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
