"""Benchmarks of the IPython extension (issue #4), as ratios from one run.

Runs in the benchmark environment (``.bench-venv``, made by ``benchmarks/run``), which is
the only place jupysql is installed:

1. The time ``%load_ext atai_magics`` adds to a started IPython, against ``%load_ext sql``
   (jupysql). Each load runs in a fresh subprocess that first creates an
   ``InteractiveShell`` (not timed), then times only ``shell.run_line_magic("load_ext", X)``;
   the two extensions alternate, one warm-up each is discarded, medians are compared.
   The local backend that atai_magics starts in a background thread is *not* waited for
   (the user does not wait for it either); the child then waits for it and stops it.
   Target: at most 0.25x. ``import ipywidgets`` in the same kind of process (a started
   shell, the import alone timed) is a second baseline, in the same rotation: the widgets
   library the cards need, which the load does not import (checked in every child).
2. The time of a ``%%atai_job --no-card --quiet`` cell (``shell.run_cell``, one new job per
   run: the name interpolates ``{{ i }}``, ``wait=never``, schema cached by a warm-up run),
   against a bare ``httpx.Client.post(url + "/batch/jobs", json=<the same body>)`` on a
   keep-alive connection to the same backend, sent from a notebook cell too
   (``shell.run_cell`` of the three lines a user would write): a cell against a cell. The
   same POST as a plain function call outside any cell, the magic called directly
   (``run_cell_magic``), an empty cell, and the floor of any cell magic (the same cell text
   to a cell magic that only sends the bare POST) are measured too, for context. The loops
   are interleaved in blocks (rotating order) to cancel drift. Target: at most 1.5x. When it
   misses (or with ``--magic-profile``) the cell path is profiled and timed piece by piece.

Only 127.0.0.1 is used; servers and temporary homes are removed at the end.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import cProfile
import importlib
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_local import (
    CHANNELS,
    HEADER,
    MSC_KEY,
    job_body,
    log,
    machine,
    markdown_table,
    tiny_csv,
    verdict,
    write_rows,
)

LOAD_TARGET = 0.25
CELL_TARGET = 1.5
CELL_OPTIONS = "--no-card --quiet"
CELL_BODY = f"""\
name: bench-{{{{ i }}}}
pipeline: {MSC_KEY}
inputs:
  worker.inference: [bench.csv]
  worker.n_shots:
    - {{file_id: bench.csv, class: idle}}
config:
  classifier_config: {{n_neighbors: 3}}
  reader_config:
    data_columns: [{", ".join(CHANNELS)}]
    timestamp_column: timestamp
    window_size: 8
    step_size: 4
"""
LOAD_MARK = "@@ load_ext @@"
POST_MAGIC = "atai_bench_post"
POST_CELL = """\
body["name"] = f"bare-{i}"
response = bare.post(url + "/batch/jobs", json=body)
assert response.is_success, response.text
"""
EXTENSIONS = {"atai_magics": ("cell", "atai_job"), "sql": ("line", "sql")}
WIDGETS = "ipywidgets"
LOADS = (*EXTENSIONS, WIDGETS)  # what a --load-child process times: a load or the import


def quiet_env(root: Path) -> dict[str, str]:
    """The environment of every measured process: private homes, no telemetry, local backend."""
    env = dict(os.environ)
    for name in ("ATAI_API_KEY", "ATAI_API_ENDPOINT", "ATAI_MAGICS_WAIT", "JPY_SESSION_NAME"):
        env.pop(name, None)
    env.update(
        HOME=str(root / "home"),  # jupysql's ploomber-core writes ~/.ploomber
        IPYTHONDIR=str(root / "ipython"),
        XDG_DATA_HOME=str(root / "data"),  # the journal's default place
        ATAI_LOCAL_HOME=str(root / "local"),
        PLOOMBER_STATS_ENABLED="false",  # no telemetry requests from jupysql
        PLOOMBER_VERSION_CHECK_DISABLED="1",  # no PyPI version check either
    )
    for key in ("HOME", "IPYTHONDIR", "XDG_DATA_HOME"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- 1. %load_ext ----------------------------------------------------------------------------


def load_child(extension: str) -> dict[str, Any]:
    """In a fresh process: start a shell, time the load (or the import) alone, then clean up
    after it."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    if WIDGETS in sys.modules:
        raise RuntimeError("ipywidgets was imported before the timed step")
    print(LOAD_MARK, file=sys.stderr, flush=True)  # for -X importtime (not timed)
    started = time.perf_counter()
    if extension == WIDGETS:
        importlib.import_module(WIDGETS)
    else:
        shell.run_line_magic("load_ext", extension)
    elapsed = time.perf_counter() - started
    print(LOAD_MARK, file=sys.stderr, flush=True)
    result: dict[str, Any] = {
        "extension": extension,
        "load_s": elapsed,
        "widgets_imported": WIDGETS in sys.modules,
    }
    if extension == WIDGETS:
        return result
    kind, name = EXTENSIONS[extension]
    if name not in shell.magics_manager.magics[kind]:
        raise RuntimeError(f"%load_ext {extension} did not register %{name}")
    if extension == "atai_magics":
        from atai_magics.local import server

        future = shell.magics_manager.registry["AtaiMagics"].session._local
        try:
            if future is None:
                raise RuntimeError("the extension did not start the local backend")
            future.result(timeout=60)  # not timed: the user does not wait for this
            result["backend_ready_s"] = time.perf_counter() - started - elapsed
        finally:
            server.stop(os.environ["ATAI_LOCAL_HOME"])
    return result


def imports_during_load(stderr: str) -> dict[str, Any]:
    """Summarise the ``-X importtime`` lines between the two marks (the load's imports)."""
    entries = []  # (self us, cumulative us, module)
    for line in stderr.split(LOAD_MARK)[1].splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        own, cumulative, name = line[len("import time:") :].split("|")
        if cumulative.strip().isdigit():
            entries.append((int(own), int(cumulative), name.strip()))
    packages = sorted(((c, n) for _, c, n in entries if "." not in n), reverse=True)
    own_time = sorted(((o, n) for o, _, n in entries), reverse=True)
    return {
        "modules": len(entries),
        "self_ms": sum(o for o, _, _ in entries) / 1000,
        "packages": [(n, c / 1000) for c, n in packages[:8]],
        "own": [(n, o / 1000) for o, n in own_time[:6]],
    }


def bench_load(root: Path, repeats: int) -> dict[str, Any]:
    from atai_magics.local import server

    env = quiet_env(root)
    home = env["ATAI_LOCAL_HOME"]
    samples: dict[str, list[float]] = {ext: [] for ext in LOADS}
    ready: list[float] = []
    widgets_by_load: list[bool] = []

    def one(extension: str, importtime: bool = False) -> dict[str, Any]:
        command = [sys.executable, str(Path(__file__).resolve()), "--load-child", extension]
        if importtime:
            command[1:1] = ["-X", "importtime"]
        try:
            done = subprocess.run(
                command, env=env, cwd=root, capture_output=True, text=True, timeout=120
            )
        finally:
            server.stop(home)  # in case the child died before stopping it
        if done.returncode != 0:
            raise RuntimeError(f"{extension} load child failed:\n{done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        if importtime:
            result["imports"] = imports_during_load(done.stderr)
        return result

    order = list(LOADS)
    for ext in order:  # warm-up: first-time files (~/.ploomber, the token, .pyc, page cache)
        one(ext)
    for i in range(repeats):
        shift = i % len(order)  # rotate who goes first
        for ext in order[shift:] + order[:shift]:
            result = one(ext)
            samples[ext].append(result["load_s"])
            if "backend_ready_s" in result:
                ready.append(result["backend_ready_s"])
            if ext == "atai_magics":
                widgets_by_load.append(result["widgets_imported"])
    from importlib.metadata import version

    atai, sql = median(samples["atai_magics"]), median(samples["sql"])
    widgets = median(samples[WIDGETS])
    imports = {}
    if atai / sql > LOAD_TARGET or PROFILE:  # where the load's time goes: its imports
        imports = {ext: one(ext, importtime=True)["imports"] for ext in order}
    return {
        "imports": imports,
        "repeats": repeats,
        "atai_s": atai,
        "sql_s": sql,
        "ratio": atai / sql,
        "widgets_s": widgets,
        "widgets_ratio": atai / widgets,
        "widgets_by_load": any(widgets_by_load),
        "ready_s": median(ready),
        "jupysql": version("jupysql"),
        "ipywidgets": version("ipywidgets"),
        "ipython": version("ipython"),
        "all": samples,
    }


# --- 2. the %%atai_job cell ------------------------------------------------------------------


def make_shell(root: Path) -> Any:
    """An InteractiveShell with the extension loaded and pointed at ``root/local``."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    with contextlib.redirect_stdout(io.StringIO()):
        shell.run_line_magic("load_ext", "atai_magics")
        shell.run_line_magic("atai_config", f"wait=never journal={root / 'journal.jsonl'}")
    return shell


def bench_cell(root: Path, calls: int, blocks: int) -> dict[str, Any]:
    import httpx

    from atai_magics import Client
    from atai_magics.local import server
    from atai_magics.spec import parse_cell, validate

    env = quiet_env(root)
    os.environ.clear()
    os.environ.update(env)
    home = Path(env["ATAI_LOCAL_HOME"])
    info = server.start(home, concurrency=1)
    try:
        with Client(info.url, info.token(), transport=httpx.HTTPTransport()) as client:
            client.upload_bytes(tiny_csv(), "bench.csv", "text/csv")
        shell = make_shell(root)
        session = shell.magics_manager.registry["AtaiMagics"].session
        counter = iter(range(10**9))

        def cell() -> None:
            shell.user_ns["i"] = next(counter)
            result = shell.run_cell(f"%%atai_job {CELL_OPTIONS}\n{CELL_BODY}")
            result.raise_error()

        def magic() -> None:
            shell.user_ns["i"] = next(counter)
            shell.run_cell_magic("atai_job", CELL_OPTIONS, CELL_BODY)

        def empty() -> None:
            shell.run_cell("pass").raise_error()

        cell()  # warm-up: connects, lists the pipelines, caches the schema
        if session.endpoint != info.url:
            raise RuntimeError(f"the extension uses {session.endpoint}, not {info.url}")
        # The exact body the cell sends (a dry run of the same text), renamed per request.
        body = validate(parse_cell(CELL_BODY, {"i": "x"}), session.resolver)
        if body != job_body("bench.csv", "bench-x"):
            raise RuntimeError(f"unexpected body: {body}")
        bare = httpx.Client(
            headers={"Authorization": f"Bearer {info.token()}"}, trust_env=False, timeout=30.0
        )
        url = info.url

        def post() -> None:
            body["name"] = f"bare-{next(counter)}"
            bare.post(url + "/batch/jobs", json=body).raise_for_status()

        shell.user_ns.update(bare=bare, body=body, url=url)

        def post_cell() -> None:
            shell.user_ns["i"] = next(counter)
            shell.run_cell(POST_CELL).raise_error()

        # The floor of any cell magic: the same cell text, to a magic that only sends the POST.
        def only_post(line: str, cell: str) -> None:
            post()

        shell.register_magic_function(only_post, "cell", POST_MAGIC)
        floor_cell = f"%%{POST_MAGIC} {CELL_OPTIONS}\n{CELL_BODY}"

        def floor() -> None:
            shell.user_ns["i"] = next(counter)
            shell.run_cell(floor_cell).raise_error()

        loops: dict[str, Callable[[], None]] = {
            "cell": cell,
            "post_cell": post_cell,
            "post": post,
            "magic": magic,
            "floor": floor,
            "empty": empty,
        }
        for _ in range(3):
            for loop in loops.values():
                loop()
        samples: dict[str, list[float]] = {name: [] for name in loops}
        per_block = max(1, calls // blocks)
        names = list(loops)
        try:
            for b in range(blocks):
                shift = b % len(names)
                for name in names[shift:] + names[:shift]:
                    loop = loops[name]
                    for _ in range(per_block):
                        started = time.perf_counter()
                        loop()
                        samples[name].append(time.perf_counter() - started)
            creating = len(loops) - 1  # every loop but `empty` creates a job per run
            created = 1 + 3 * creating + creating * blocks * per_block
            with Client(info.url, info.token(), transport=httpx.HTTPTransport()) as client:
                total = client.list_jobs(limit=1).total
            if total != created:
                raise RuntimeError(f"expected {created} jobs, the backend has {total}")
            p50 = {name: median(values) for name, values in samples.items()}
            result: dict[str, Any] = {
                "calls": blocks * per_block,
                "p50": p50,
                "ratio": p50["cell"] / p50["post_cell"],
                "ratio_call": p50["cell"] / p50["post"],
                "ratio_magic": p50["magic"] / p50["post"],
                "ratio_floor": p50["floor"] / p50["post"],
            }
            if result["ratio"] > CELL_TARGET or PROFILE:
                result["profile"] = profile_cell(cell, session, body, bare, url, per_block * 2)
        finally:
            bare.close()
            shell.atexit_operations()  # close the history database before its dir goes
            atexit.unregister(shell.atexit_operations)
        return result
    finally:
        server.stop(home)


# --- where the cell's time goes ---------------------------------------------------------------

# (file suffix, function) -> label; cumulative times per cell under cProfile.
PROFILE_PARTS = [
    (("IPython/core/interactiveshell.py", "run_cell"), "whole cell (`shell.run_cell`)"),
    (("atai_magics/magics.py", "atai_job"), "the magic (`AtaiMagics.atai_job`)"),
    (("atai_magics/session.py", "parse_cell_options"), "option parsing (argparse)"),
    (("atai_magics/spec.py", "parse_cell"), "`parse_cell` (YAML, interpolation, pydantic)"),
    (("atai_magics/spec.py", "validate_request"), "`validate_request` (schema + file check)"),
    (("atai_magics/spec.py", "missing_files"), "  of which file-existence requests"),
    (("atai_magics/session.py", "_live_job_of"), "rerun lookup (`_live_job_of`)"),
    (("atai_magics/api/client.py", "create_job"), "`Client.create_job` (POST + pydantic)"),
    (("atai_magics/jobs.py", "record"), "journal append (`Journal.record`)"),
    (("~", "<built-in method posix.fsync>"), "  of which fsync"),
    (("httpx/_client.py", "send"), "all HTTP requests (`httpx.Client.send`)"),
]


def profile_cell(
    cell: Callable[[], None],
    session: Any,
    body: dict[str, Any],
    bare: Any,
    url: str,
    n: int,
) -> dict[str, Any]:
    """cProfile the cell path, and time its pieces one by one without the profiler."""
    from atai_magics.jobs import Journal, JournalEntry
    from atai_magics.spec import parse_cell, validate_request

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        cell()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    parts = []
    for (suffix, func), label in PROFILE_PARTS:
        calls, cum = 0, 0.0
        for (filename, _line, name), (_cc, nc, _tt, ct, _callers) in stats.items():
            if name == func and filename.replace("\\", "/").endswith(suffix):
                calls += nc
                cum = max(cum, ct)  # a recursive entry's ct already includes the inner ones
        parts.append({"label": label, "calls": calls / n, "ms": cum / n * 1000})
    top = io.StringIO()
    pstats.Stats(profiler, stream=top).sort_stats("tottime").print_stats(8)

    # The pieces again, without the profiler's overhead (same backend, same connection).
    namespace = {"i": 0}
    spec = parse_cell(CELL_BODY, namespace)
    request = validate_request(spec, session.resolver)
    journal = Journal(Path(session.settings.journal_path()).with_name("pieces.jsonl"))
    client = session.client

    def timed(action: Callable[[], Any]) -> float:
        values = []
        for _ in range(n):
            started = time.perf_counter()
            action()
            values.append(time.perf_counter() - started)
        return median(values) * 1000

    entries = len(session.journal.entries())
    pieces = {
        "parse_cell": timed(lambda: parse_cell(CELL_BODY, namespace)),
        "validate_request (schema and files known)": timed(
            lambda: validate_request(spec, session.resolver)
        ),
        "spec hash (for the journal)": timed(lambda: spec.spec_hash),
        "one GET /files/{id} metadata (not made: files seen < 300 s ago)": timed(
            lambda: client.get_file_metadata("bench.csv")
        ),
        f"rerun lookup (journal, {entries} entries, no match)": timed(
            lambda: session._live_job_of("0" * 64)
        ),
        "Client.create_job (the validated request)": timed(lambda: client.create_job(request)),
        "bare httpx POST": timed(lambda: bare.post(url + "/batch/jobs", json=body)),
        "Journal.record (write; fsync deferred)": timed(
            lambda: journal.record(JournalEntry("job_x", "bench", url, "0" * 64))
        ),
    }
    return {
        "n": n,
        "journal_entries": entries,
        "parts": parts,
        "pieces_ms": pieces,
        "top": top.getvalue(),
    }


# --- the report -------------------------------------------------------------------------------


def rows(load: dict[str, Any], cell: dict[str, Any]) -> list[tuple[str, ...]]:
    ms = {name: value * 1000 for name, value in cell["p50"].items()}
    n = cell["calls"]
    widgets = "imported" if load["widgets_by_load"] else "not imported"
    return [
        (
            f"4. `%load_ext atai_magics` in a started IPython (median of {load['repeats']} "
            "fresh processes)",
            f"{load['atai_s'] * 1000:.0f} ms",
            f"`%load_ext sql` (jupysql {load['jupysql']}): {load['sql_s'] * 1000:.0f} ms",
            f"{load['ratio']:.2f}x",
            f"<= {LOAD_TARGET}x",
            verdict(load["ratio"] <= LOAD_TARGET),
        ),
        (
            "4b. the local backend's start, in the background after the load returned",
            f"{load['ready_s'] * 1000:.0f} ms",
            "(not waited for)",
            "-",
            "(context)",
            "-",
        ),
        (
            f"4c. `%load_ext atai_magics` against `import ipywidgets` in a started IPython "
            f"(median of {load['repeats']} fresh processes each, same rotation as 4)",
            f"{load['atai_s'] * 1000:.0f} ms (ipywidgets {widgets} by the load)",
            f"`import ipywidgets` ({load['ipywidgets']}): {load['widgets_s'] * 1000:.0f} ms",
            f"{load['widgets_ratio']:.2f}x",
            "(context)",
            "-",
        ),
        (
            f"5. `%%atai_job {CELL_OPTIONS}` cell, `shell.run_cell`, a new job each run, "
            f"schema cached (median of {n})",
            f"{ms['cell']:.2f} ms",
            f"a cell sending the bare httpx POST of the same body, keep-alive: "
            f"{ms['post_cell']:.2f} ms",
            f"{cell['ratio']:.2f}x",
            f"<= {CELL_TARGET}x",
            verdict(cell["ratio"] <= CELL_TARGET),
        ),
        (
            f"5a. the same cell against the bare POST as a plain call, outside any cell ({n})",
            f"{ms['cell']:.2f} ms",
            f"bare httpx POST: {ms['post']:.2f} ms",
            f"{cell['ratio_call']:.2f}x",
            "(context)",
            "-",
        ),
        (
            f"5b. the magic alone (`run_cell_magic`, no IPython cell machinery; {n})",
            f"{ms['magic']:.2f} ms",
            f"bare httpx POST: {ms['post']:.2f} ms",
            f"{cell['ratio_magic']:.2f}x",
            "(context)",
            "-",
        ),
        (
            f"5c. an empty cell (`shell.run_cell('pass')`; {n})",
            f"{ms['empty']:.2f} ms",
            "-",
            "-",
            "(context)",
            "-",
        ),
        (
            f"5d. the floor of any cell magic: the same cell text to a magic that only sends "
            f"the bare POST (`run_cell`; {n})",
            f"{ms['floor']:.2f} ms",
            f"bare httpx POST: {ms['post']:.2f} ms",
            f"{cell['ratio_floor']:.2f}x",
            "(context)",
            "-",
        ),
    ]


def imports_report(load: dict[str, Any]) -> str:
    lines = ["What the loads import (`python -X importtime`, one more load of each, ms):"]
    for ext, info in load["imports"].items():
        what = f"import {ext}" if ext == WIDGETS else f"%load_ext {ext}"
        lines += [
            "",
            f"  {what}: {info['modules']} modules imported, {info['self_ms']:.0f} ms "
            "summed over them (self times)",
            "    packages first imported by the load (cumulative):",
        ]
        lines += [f"    {ms:8.1f} ms  {name}" for name, ms in info["packages"]]
        lines += ["    the slowest modules to execute (self):"]
        lines += [f"    {ms:8.1f} ms  {name}" for name, ms in info["own"]]
    return "\n".join(lines)


def profile_report(profile: dict[str, Any]) -> str:
    lines = [
        f"Where the cell's time goes (cProfile over {profile['n']} cells; cumulative ms per "
        "cell, inflated by the profiler):",
        "",
    ]
    lines += [
        f"  {part['ms']:8.2f} ms  {part['calls']:5.2f} calls/cell  {part['label']}"
        for part in profile["parts"]
    ]
    lines += ["", "The pieces timed alone, without the profiler (median ms per call):", ""]
    lines += [f"  {value:8.2f} ms  {name}" for name, value in profile["pieces_ms"].items()]
    lines += ["", "Top functions by own time (under cProfile):", profile["top"]]
    return "\n".join(lines)


PROFILE = False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--magic-loads", type=int, default=10, help="loads of each extension (4)")
    parser.add_argument("--magic-calls", type=int, default=200, help="calls per loop (figure 5)")
    parser.add_argument("--magic-blocks", type=int, default=10, help="interleaved blocks (5)")
    parser.add_argument("--magic-profile", action="store_true", help="profile the cell always")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke test")
    parser.add_argument(
        "--rows-json", type=Path, help="append the rows to this file (benchmarks/run)"
    )
    parser.add_argument("--load-child", choices=LOADS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.magic_loads, args.magic_calls, args.magic_blocks = 3, 40, 4
    return args


def main(argv: list[str] | None = None) -> int:
    global PROFILE
    args = parse_args(argv)
    if args.load_child:
        print(json.dumps(load_child(args.load_child)))
        return 0
    PROFILE = args.magic_profile
    info = machine()
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="atai-bench-magic-"))
    cwd = Path.cwd()
    saved_env = dict(os.environ)
    try:
        os.chdir(root)  # no pyproject.toml [tool.atai_magics] from the checkout applies
        log("4. %load_ext ...")
        step = time.perf_counter()
        load = bench_load(root / "load", args.magic_loads)
        log(f"4. %load_ext: {time.perf_counter() - step:.1f}s")
        log("5. %%atai_job cell ...")
        step = time.perf_counter()
        cell = bench_cell(root / "cell", args.magic_calls, args.magic_blocks)
        log(f"5. %%atai_job cell: {time.perf_counter() - step:.1f}s")
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"Extension benchmarks, {info['date']}: {info['nproc']} cores ({info['cpu']}), "
        f"Python {info['python']}, IPython {load['ipython']}, jupysql {load['jupysql']}"
    )
    table = rows(load, cell)
    print()
    print(markdown_table([HEADER, *table]))
    print()
    print(
        "Ratios are taken against baselines measured in this run, interleaved with the figure "
        f"they divide (medians). Total time {time.perf_counter() - started:.0f}s."
    )
    if load["imports"]:
        print()
        print(imports_report(load))
    if "profile" in cell:
        print()
        print(profile_report(cell["profile"]))
    versions = {k: load[k] for k in ("ipython", "jupysql", "ipywidgets")}
    write_rows(args.rows_json, "magic", table, versions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
