"""Benchmarks of the embedded local backend (``atai_magics.local``), as ratios from one run.

The machine these run on is shared and noisy (2 cores), so every figure is compared with a
baseline measured in the same run, interleaved with it, and the target is checked as well:

1. Job creations per second through the sync ``Client`` over one keep-alive connection,
   against a bare ``httpx`` ``GET /healthz`` loop on the same server (a no-op request).
   Target: at least 200 creations/s.
2. Median latency of ``GET /batch/jobs?limit=100`` with 10,000 jobs in the store, as a ratio
   to an empty store. Target: at most 2x. A third store holding exactly one page (100 jobs)
   is measured too, to tell the cost of the page apart from the cost of the store's size.
3. ``machine-state-classification`` throughput on one worker (9 channels, window 64, step 1,
   1,000 n-shot windows), run in-process with an in-memory RunContext in a subprocess whose
   BLAS is pinned to one thread, against one numpy mean pass over the same windows.
   Target: at least 10,000 windows/s.

Only 127.0.0.1 is used; servers and temporary homes are removed at the end, whatever happens.
Usage: ``benchmarks/run [--quick]`` (``--help`` lists the sizes).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import atai_magics  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MSC_KEY = "machine-state-classification"
CHANNELS = [f"ch{i}" for i in range(9)]
WINDOW = 64
STEP = 1
NSHOT_CLASSES = ("idle", "running", "fault", "overload")
NSHOT_WINDOWS = 1000  # in total, over the n-shot files (250 per class)
BLAS_ENV = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

# How the jobs of the filled stores end (cycled): mostly completed, some failed or cancelled.
FINAL_PATHS = (
    *[("ADMITTED", "RUNNING", "COMPLETED")] * 8,
    ("ADMITTED", "RUNNING", "FAILED"),
    ("CANCELLED",),
)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- shared helpers ---------------------------------------------------------------------------


def tiny_csv() -> bytes:
    """A small 9-channel CSV, enough for a machine-state job with window 8."""
    lines = ["timestamp," + ",".join(CHANNELS)]
    for i in range(40):
        lines.append(f"{i}," + ",".join(f"{((i * (c + 1)) % 7) / 7:.3f}" for c in range(9)))
    return ("\n".join(lines) + "\n").encode()


def job_body(file_id: str, name: str = "bench") -> dict[str, Any]:
    """A valid machine-state job over one uploaded file (as inference and as n-shot)."""
    return {
        "name": name,
        "pipeline_type": "batch",
        "pipeline_key": MSC_KEY,
        "inputs": {
            "worker.inference": [{"file_id": file_id}],
            "worker.n_shots": [{"file_id": file_id, "metadata": {"class": "idle"}}],
        },
        "parameters": {
            "worker": {
                "config": {
                    "classifier_config": {"n_neighbors": 3},
                    "reader_config": {
                        "data_columns": CHANNELS,
                        "timestamp_column": "timestamp",
                        "window_size": 8,
                        "step_size": 4,
                    },
                }
            }
        },
    }


def median(values: list[float]) -> float:
    return statistics.median(values)


@contextlib.contextmanager
def running_server(home: Path, concurrency: int = 1) -> Iterator[Any]:
    """A detached backend for ``home``, always stopped on the way out."""
    from atai_magics.local import server

    info = server.start(home=home, concurrency=concurrency)
    try:
        yield info
    finally:
        try:
            server.stop(home)
        except Exception as exc:  # keep cleaning up the others
            log(f"could not stop the server of {home}: {exc}")


def fill_store(home: Path, n_jobs: int) -> float:
    """Create ``n_jobs`` finished jobs (2 inputs each) directly in the store; returns seconds."""
    from atai_magics.local.pipelines import machine_state as msc
    from atai_magics.local.store import Store

    started = time.perf_counter()
    with Store(home) as store:
        store.add_file("bench.csv", "text/csv", tiny_csv())
        body = job_body("bench.csv")
        # One outer transaction: the create/transition calls join it, so the rows are exactly
        # what the API would write, without 40,000 separate commits.
        with store._tx():
            for i in range(n_jobs):
                body["name"] = f"bench-{i:05d}"
                job = store.create_job(body, msc.PIPELINE.version, msc.PIPELINE.inputs)
                for status in FINAL_PATHS[i % len(FINAL_PATHS)]:
                    store.transition(job["id"], status)
    return time.perf_counter() - started


# --- 1. job creations per second --------------------------------------------------------------


def bench_create(root: Path, n_jobs: int, rounds: int) -> dict[str, Any]:
    import httpx

    from atai_magics import Client

    home = root / "create"
    per_round = max(1, n_jobs // rounds)
    create_rates: list[float] = []
    health_rates: list[float] = []
    with running_server(home) as info:
        health = f"http://127.0.0.1:{info.port}/healthz"
        with (
            Client(info.url, info.token(), transport=httpx.HTTPTransport()) as client,
            httpx.Client(trust_env=False) as bare,
        ):
            client.upload_bytes(tiny_csv(), "bench.csv", "text/csv")
            body = job_body("bench.csv")
            for _ in range(20):  # warm up both paths (connections, imports, caches)
                client.create_job(body)
                bare.get(health).raise_for_status()
            for _ in range(rounds):  # interleaved, so both loops see the same noise
                started = time.perf_counter()
                for _ in range(per_round):
                    bare.get(health).raise_for_status()
                health_rates.append(per_round / (time.perf_counter() - started))
                started = time.perf_counter()
                for _ in range(per_round):
                    client.create_job(body)
                create_rates.append(per_round / (time.perf_counter() - started))
            total = client.list_jobs(limit=1).total
    expected = 20 + rounds * per_round
    if total != expected:
        raise RuntimeError(f"expected {expected} jobs in the store, found {total}")
    ratios = [h / c for h, c in zip(health_rates, create_rates, strict=True)]
    return {
        "jobs": rounds * per_round,
        "create_rate": median(create_rates),
        "health_rate": median(health_rates),
        "ratio": median(ratios),
    }


# --- 2. list latency vs store size ------------------------------------------------------------


def bench_list(root: Path, fill: int, requests: int, warmup: int = 10) -> dict[str, Any]:
    import httpx

    sizes = {"empty": 0, "page": 100, "full": fill}
    fill_seconds = 0.0
    samples: dict[str, list[float]] = {name: [] for name in sizes}
    with contextlib.ExitStack() as stack:
        clients: dict[str, httpx.Client] = {}
        for name, n in sizes.items():
            home = root / f"list-{name}"
            if n:
                fill_seconds += fill_store(home, n)
            info = stack.enter_context(running_server(home))
            clients[name] = stack.enter_context(
                httpx.Client(
                    base_url=info.url,
                    headers={"Authorization": f"Bearer {info.token()}"},
                    trust_env=False,
                    timeout=30.0,
                )
            )
        log(f"filled {fill + 100:,} jobs in {fill_seconds:.1f}s; timing {requests} requests each")
        names = list(sizes)
        for i in range(warmup + requests):
            shift = i % len(names)  # rotate which store is asked first
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                response = clients[name].get("/batch/jobs", params={"limit": 100})
                response.raise_for_status()
                elapsed = time.perf_counter() - started
                if i == 0:
                    page = response.json()
                    if page["total"] != sizes[name] or len(page["jobs"]) != min(100, sizes[name]):
                        raise RuntimeError(f"unexpected page from the {name} store")
                if i >= warmup:
                    samples[name].append(elapsed)
    p50 = {name: median(values) for name, values in samples.items()}
    return {
        "fill": fill,
        "p50": p50,
        "ratio_empty": p50["full"] / p50["empty"],
        "ratio_page": p50["full"] / p50["page"],
    }


# --- 3. machine-state throughput (runs in a subprocess) ---------------------------------------


@dataclass
class MemoryContext:
    """The RunContext a pipeline sees, kept in memory (mirrors the tests' FakeContext)."""

    config: dict[str, Any]
    inputs: dict[str, list[Any]]
    worker_index: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[tuple[str, str, str | None]] = field(default_factory=list)
    output_bytes: int = 0

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
        self.events.append({"level": level, "message": message, "payload": payload or {}})

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
        pass

    def input_status(self, input_id: str, status: str, error_message: str | None = None) -> None:
        self.statuses.append((input_id, status, error_message))

    def write_output(
        self, port_name: str, filename: str, data: bytes, *, input_id: str | None = None
    ) -> None:
        self.output_bytes += len(data)

    def cancelled(self) -> bool:
        return False


def _signals(rng: Any, cls: str, rows: int) -> Any:
    """9-channel sensor-like values whose level, noise and frequency depend on the state."""
    import numpy as np

    t = np.arange(rows)[:, None]
    phase = np.arange(len(CHANNELS))[None, :]
    noise = rng.standard_normal((rows, len(CHANNELS)))
    if cls == "idle":
        return 0.05 * noise
    shapes = {"running": (4, 1.0, 1.0), "fault": (7, 1.0, 0.8), "overload": (4, 2.5, 1.5)}
    freq, level, amp = shapes[cls]
    return level + amp * np.sin(2 * np.pi * freq * t / WINDOW + phase) + 0.2 * noise


def _write_csv(path: Path, values: Any) -> None:
    import numpy as np

    stamps = 1_700_000_000 + np.arange(values.shape[0])
    np.savetxt(
        path,
        np.column_stack([stamps, values]),
        fmt=["%d"] + ["%.6f"] * len(CHANNELS),
        delimiter=",",
        header="timestamp," + ",".join(CHANNELS),
        comments="",
    )


def msc_child(rows: int, repeats: int, workdir: Path) -> dict[str, Any]:
    """Time the pipeline and the numpy baseline, interleaved; BLAS is pinned by the parent."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    from atai_magics.local.pipelines import machine_state as msc
    from atai_magics.local.pipelines.base import InputFile

    rng = np.random.default_rng(0)
    per_class = NSHOT_WINDOWS // len(NSHOT_CLASSES)
    n_shots = []
    for cls in NSHOT_CLASSES:
        path = workdir / f"nshot_{cls}.csv"
        _write_csv(path, _signals(rng, cls, per_class + WINDOW - 1))
        meta = {"class": cls}
        n_shots.append(InputFile(f"inp_{cls}", msc.NSHOT_PORT, path.name, path, "text/csv", meta))
    segment = 2_000
    values = np.concatenate(
        [
            _signals(rng, NSHOT_CLASSES[i % len(NSHOT_CLASSES)], min(segment, rows - start))
            for i, start in enumerate(range(0, rows, segment))
        ]
    )
    inference_path = workdir / "inference.csv"
    _write_csv(inference_path, values)
    inference = InputFile(
        "inp_inference", msc.INFERENCE_PORT, inference_path.name, inference_path, "text/csv", {}
    )
    values = np.loadtxt(inference_path, delimiter=",", skiprows=1, usecols=range(1, 10))
    n_windows = (rows - WINDOW) // STEP + 1
    config = {
        "model_type": "omega_1_4_base",
        "batch_size": 32,
        "flush_every_n_iteration": 1000,
        "classifier_config": {"n_neighbors": 5, "metric": "euclidean", "weights": "uniform"},
        "reader_config": {
            "data_columns": CHANNELS,
            "timestamp_column": "timestamp",
            "window_size": WINDOW,
            "step_size": STEP,
        },
    }

    def numpy_pass() -> float:
        started = time.perf_counter()
        sliding_window_view(values, WINDOW, axis=0)[::STEP].mean(axis=-1)
        return time.perf_counter() - started

    def pipeline_pass() -> float:
        ctx = MemoryContext(config, {msc.NSHOT_PORT: n_shots, msc.INFERENCE_PORT: [inference]})
        started = time.perf_counter()
        msc.run(ctx)
        elapsed = time.perf_counter() - started
        done = [e for e in ctx.events if e["level"] == "SUCCESS"]
        if not done or done[-1]["payload"].get("windows") != n_windows:
            raise RuntimeError(f"pipeline did not classify {n_windows} windows: {ctx.events[-3:]}")
        return elapsed

    numpy_pass()  # warm-up (page faults, first-call costs)
    baseline = [numpy_pass() for _ in range(3)]
    pipeline: list[float] = []
    for _ in range(repeats):
        pipeline.append(pipeline_pass())
        baseline += [numpy_pass() for _ in range(3)]
    return {
        "rows": rows,
        "windows": n_windows,
        "pipeline_s": median(pipeline),
        "numpy_s": median(baseline),
        "blas_threads": {name: os.environ.get(name) for name in BLAS_ENV},
        "numpy": np.__version__,
    }


def bench_msc(root: Path, rows: int, repeats: int) -> dict[str, Any]:
    workdir = root / "msc"
    workdir.mkdir()
    env = {**os.environ, **dict.fromkeys(BLAS_ENV, "1")}
    command = [sys.executable, str(Path(__file__).resolve()), "--msc-child", str(workdir)]
    command += ["--rows", str(rows), "--repeats", str(repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"machine-state benchmark failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["rate"] = result["windows"] / result["pipeline_s"]
    result["numpy_rate"] = result["windows"] / result["numpy_s"]
    result["ratio"] = result["pipeline_s"] / result["numpy_s"]
    return result


# --- the report -------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(cores),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def rows(
    create: dict[str, Any], listing: dict[str, Any], msc: dict[str, Any]
) -> list[tuple[str, ...]]:
    ms = {name: value * 1000 for name, value in listing["p50"].items()}
    fill = f"{listing['fill']:,}"
    return [
        (
            f"1. Job creations/s, sync `Client`, 1 keep-alive connection ({create['jobs']} jobs)",
            f"{create['create_rate']:,.0f} jobs/s",
            f"bare `GET /healthz`: {create['health_rate']:,.0f} req/s",
            f"a create costs {create['ratio']:.1f}x a no-op request",
            ">= 200 jobs/s",
            verdict(create["create_rate"] >= 200),
        ),
        (
            f"2. `GET /batch/jobs?limit=100` p50 latency, {fill} jobs in the store",
            f"{ms['full']:.2f} ms",
            f"empty store: {ms['empty']:.2f} ms",
            f"{listing['ratio_empty']:.2f}x",
            "<= 2x",
            verdict(listing["ratio_empty"] <= 2.0),
        ),
        (
            f"2b. same, {fill} jobs vs a store of one full page (100 jobs)",
            f"{ms['full']:.2f} ms",
            f"100-job store: {ms['page']:.2f} ms",
            f"{listing['ratio_page']:.2f}x",
            "(context)",
            "-",
        ),
        (
            f"3. Machine-state windows/s, one worker: 9 ch, window {WINDOW}, step {STEP}, "
            f"{NSHOT_WINDOWS:,} n-shot windows, {msc['windows']:,} windows",
            f"{msc['rate']:,.0f} windows/s",
            f"one numpy mean pass: {msc['numpy_rate']:,.0f} windows/s",
            f"{msc['ratio']:.0f}x slower than one numpy mean pass",
            ">= 10,000 windows/s",
            verdict(msc["rate"] >= 10_000),
        ),
    ]


HEADER = ("Figure", "Measured", "Baseline (same run)", "Ratio", "Target", "Result")


def write_rows(
    path: Path | None, section: str, rows: list[tuple[str, ...]], versions: dict[str, str]
) -> None:
    """Append one script's rows as a JSON line, so ``benchmarks/report.py`` can print every
    figure of a ``benchmarks/run`` in one table (each script runs in its own venv)."""
    if path is None:
        return
    record = {
        "section": section,
        "rows": rows,
        "versions": versions,
        "python": platform.python_version(),
        "loadavg": os.getloadavg()[0],
        "finished": dt.datetime.now(dt.timezone.utc).strftime("%H:%M UTC"),
    }
    with path.open("a") as out:
        out.write(json.dumps(record) + "\n")  # one write: a whole line or nothing


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    """Rows (the first is the header) as an aligned Markdown table."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in rows[1:]]
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500, help="jobs to create (figure 1)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (figure 1)")
    parser.add_argument("--fill", type=int, default=10_000, help="jobs in the big store (2)")
    parser.add_argument("--requests", type=int, default=100, help="list requests per store (2)")
    parser.add_argument("--rows", type=int, default=100_000, help="inference CSV rows (3)")
    parser.add_argument("--repeats", type=int, default=3, help="pipeline runs (figure 3)")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke test")
    parser.add_argument(
        "--rows-json", type=Path, help="append the rows to this file (benchmarks/run)"
    )
    parser.add_argument("--msc-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.fill, args.requests, args.rows, args.repeats = 100, 1000, 30, 10_000, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.msc_child is not None:
        print(json.dumps(msc_child(args.rows, args.repeats, args.msc_child)))
        return 0
    info = machine()
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="atai-bench-"))
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("1. job creations", lambda: bench_create(root, args.jobs, args.rounds)),
        ("2. list latency", lambda: bench_list(root, args.fill, args.requests)),
        ("3. machine-state throughput", lambda: bench_msc(root, args.rows, args.repeats)),
    ]
    results: list[dict[str, Any]] = []
    try:
        for title, step in steps:
            log(f"{title} ...")
            step_started = time.perf_counter()
            results.append(step())
            log(f"{title}: {time.perf_counter() - step_started:.1f}s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"Local backend benchmarks, {info['date']}: {info['nproc']} cores ({info['cpu']}), "
        f"Python {info['python']}, {info['platform']}, numpy {results[2]['numpy']}"
    )
    table = rows(*results)
    print()
    print(markdown_table([HEADER, *table]))
    print()
    print(
        f"Ratios are taken against baselines measured in this run, interleaved with the figure "
        f"they divide (medians). Total time {time.perf_counter() - started:.0f}s."
    )
    write_rows(args.rows_json, "local", table, {"numpy": results[2]["numpy"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
