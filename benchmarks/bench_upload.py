"""Peak memory of a large path upload (issue #8), against its size and the official client.

Runs in the benchmark environment (``.bench-venv``, made by ``benchmarks/run``), the only
place the official ``archetypeai`` client (26.10.14.0) is installed. One private local
backend (127.0.0.1) receives every upload; each upload runs in a fresh subprocess, which
imports its client and builds it, then reads its resident memory (``VmRSS``), resets its
peak (``/proc/self/clear_refs``), uploads, and reads the peak (``VmHWM``; a 5 ms sampling
thread cross-checks it). Growth = peak - before.

9. ``Client.upload_file(path)`` of a 2,048 MB file (MB = 2**20 bytes; large files go by the
   direct flow: initiate, presigned part PUTs streamed from disk, complete). The backend's
   size and SHA-256 of what it stored are checked against the file. Target: growth under
   64 MB, i.e. independent of the file's size.
9b. The same file through ``archetypeai``'s ``files.local.upload(path)``: its default simple
   upload, ``POST /files`` with a ``requests_toolbelt`` multipart body built from
   ``file.read()`` (the whole file in memory). The backend refuses simple uploads over
   512 MB (reference §10: 413), as the platform does; its memory up to the refusal and the
   status it got are what is reported.
9c. The same file through ``archetypeai``'s direct flow (``use_proxy=False``): parts are
   streamed from disk by 8 threads, as ours are.
9d. ``archetypeai``'s simple upload of a file the backend accepts (500 MB): its growth
   against that file's size.
9e. The backend's own peak memory growth while it received our upload and 9b's.

Only 127.0.0.1 is used; the backend, the files and the temporary directory are removed.
Usage: ``benchmarks/run --only=upload [--quick] [--upload-size-mb=N]`` (``--help``).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

try:
    import atai_magics  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_local import HEADER, log, machine, markdown_table, running_server, verdict, write_rows

MB = 1024 * 1024
GROWTH_TARGET_MB = 64
SIMPLE_LIMIT_MB = 512  # the backend's (and the platform's) POST /files limit
TOKEN_ENV = "ATAI_BENCH_UPLOAD_TOKEN"
KINDS = ("ours", "aai-simple", "aai-direct")


# --- memory of this process -------------------------------------------------------------------


def status_kb(field: str, pid: int | str = "self") -> int:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/<pid>/status``, in kB."""
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no {field} in /proc/{pid}/status")
    return int(found.group(1))


def reset_peak(pid: int | str = "self") -> bool:
    """Set ``VmHWM`` back to the current RSS (Linux >= 4.0), so the peak is this upload's."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Sampler(threading.Thread):
    """Samples RSS every 5 ms: a cross-check of VmHWM, and the peak if it cannot be reset."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kb = 0
        self._done = threading.Event()
        self._page_kb = os.sysconf("SC_PAGE_SIZE") // 1024

    def run(self) -> None:
        with Path("/proc/self/statm").open() as statm:
            while not self._done.wait(0.005):
                statm.seek(0)
                self.peak_kb = max(self.peak_kb, int(statm.read().split()[1]) * self._page_kb)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak_kb


# --- one upload, in a fresh process -----------------------------------------------------------


def _route(method: str, url: str) -> str:
    """``PUT /files/uploads/{id}/parts/{n}``-style names, so requests can be counted."""
    path = url.split("?", 1)[0].split("/v0.5", 1)[-1]
    path = re.sub(r"/(upl|fil)_[0-9a-z]+", r"/{\1}", path)
    return f"{method} {re.sub(r'/[0-9]+(?=/|$)', '/{n}', path)}"


def upload_child(kind: str, path: Path, url: str) -> dict[str, Any]:
    """Build the client, then measure only its upload of ``path``."""
    token = os.environ.pop(TOKEN_ENV)
    requests_seen: Counter[str] = Counter()
    parallel = 8  # archetypeai's direct_upload(max_workers=8), its default
    if kind == "ours":
        import httpx

        from atai_magics import Client

        client = Client(url, token, transport=httpx.HTTPTransport())
        parallel = client.upload_concurrency

        def upload() -> str:
            return client.upload_file(path).file_id

    else:
        import requests.adapters
        from archetypeai import ArchetypeAI

        send = requests.adapters.HTTPAdapter.send

        def counted(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            # Only to report the statuses the client got; the body object passes untouched.
            response = send(self, request, *args, **kwargs)
            requests_seen[f"{_route(request.method, request.url)} -> {response.status_code}"] += 1
            return response

        requests.adapters.HTTPAdapter.send = counted  # type: ignore[method-assign]
        api = ArchetypeAI(token, api_endpoint=url)

        def upload() -> str:
            result = api.files.local.upload(str(path), use_proxy=kind == "aai-simple")
            return str(result["file_id"])

    gc.collect()
    before = status_kb("VmRSS")
    reset = reset_peak()
    sampler = Sampler()
    sampler.start()
    started = time.perf_counter()
    try:
        outcome, file_id = "ok", upload()
    except Exception as exc:  # reported as it is: a refusal is a result here
        outcome, file_id = f"{type(exc).__name__}: {str(exc)[:300]}", None
    seconds = time.perf_counter() - started
    sampled = sampler.stop()
    peak = status_kb("VmHWM") if reset else max(sampled, before)
    return {
        "kind": kind,
        "outcome": outcome,
        "file_id": file_id,
        "seconds": seconds,
        "before_mb": before / 1024,
        "peak_mb": peak / 1024,
        "growth_mb": (peak - before) / 1024,
        "sampled_growth_mb": (sampled - before) / 1024,
        "hwm_reset": reset,
        "parallel": parallel,
        "requests": dict(requests_seen),
    }


# --- the parent ------------------------------------------------------------------------------


def make_file(path: Path, size_mb: int) -> str:
    """``size_mb`` MB of CSV-like text (digits, commas, newlines) from a random 1 MB block,
    rotated differently in every block so no two blocks are equal; returns its SHA-256."""
    rng = random.Random(size_mb)
    alphabet = b"\n" * 4 + b"," * 28 + b"0123456789" * 22 + b"0123"  # 256 entries
    block = rng.randbytes(MB).translate(alphabet)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for i in range(size_mb):
            shift = (i * 104_729) % MB
            chunk = block[shift:] + block[:shift]
            out.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def child_env() -> dict[str, str]:
    """No key or endpoint of the real platform, and no proxy between us and 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    for name in ("ATAI_API_KEY", "ATAI_API_ENDPOINT"):
        env.pop(name, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def run_child(kind: str, path: Path, info: Any) -> dict[str, Any]:
    env = {**child_env(), TOKEN_ENV: info.token()}
    command = [sys.executable, str(Path(__file__).resolve()), "--upload-child", kind]
    command += ["--child-path", str(path), "--child-url", info.url]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"the {kind} upload process failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def landed(info: Any, file_id: str, size: int, digest: str) -> dict[str, Any]:
    """What the backend holds under ``file_id``: its size, and whether its bytes are ours."""
    import httpx

    from atai_magics import Client
    from atai_magics.api.errors import NotFound

    with Client(info.url, info.token(), transport=httpx.HTTPTransport()) as client:
        try:
            meta = client.get_file_metadata(file_id)
        except NotFound:
            return {"stored": False}
        sha = hashlib.sha256()
        headers = {"Authorization": f"Bearer {info.token()}"}
        download = f"{info.url}/files/download/{file_id}"
        with httpx.stream("GET", download, headers=headers, trust_env=False, timeout=300) as r:
            r.raise_for_status()
            for chunk in r.iter_bytes(MB):
                sha.update(chunk)
        client.delete_file(file_id)  # frees the disk before the next upload
    return {
        "stored": True,
        "num_bytes": meta.num_bytes,
        "size_ok": meta.num_bytes == size,
        "sha_ok": sha.hexdigest() == digest,
    }


def bench_upload(root: Path, size_mb: int, accepted_mb: int) -> dict[str, Any]:
    from importlib.metadata import version

    from atai_magics.local.store import DEFAULT_PART_SIZE

    files = root / "files"
    files.mkdir()
    sources: dict[str, tuple[Path, int, str]] = {}
    sizes = {"big": size_mb}
    if size_mb > SIMPLE_LIMIT_MB and 0 < accepted_mb <= SIMPLE_LIMIT_MB:
        sizes["accepted"] = accepted_mb
    for name, mb in sizes.items():
        step = time.perf_counter()
        path = files / f"{name}.csv"
        sources[name] = (path, mb * MB, make_file(path, mb))
        log(f"wrote a {mb:,} MB file in {time.perf_counter() - step:.1f}s")
    plan = [(kind, "big") for kind in KINDS]
    if "accepted" in sizes:
        plan.append(("aai-simple", "accepted"))
    runs: list[dict[str, Any]] = []
    with running_server(root / "backend") as info:
        for kind, source in plan:
            src, size, digest = sources[source]
            link = files / f"{kind}-{source}.csv"  # the file id both clients derive
            os.link(src, link)
            server_before = status_kb("VmRSS", info.pid)
            server_reset = reset_peak(info.pid)
            log(f"upload: {kind}, {size // MB:,} MB ...")
            result = run_child(kind, link, info)
            if server_reset:
                result["server_growth_mb"] = (status_kb("VmHWM", info.pid) - server_before) / 1024
            result.update(source=source, size_mb=size / MB)
            result.update(landed(info, link.name, size, digest))
            link.unlink()
            log(
                f"upload: {kind}: +{result['growth_mb']:.1f} MB (sampled "
                f"+{result['sampled_growth_mb']:.1f}), {result['seconds']:.1f}s, "
                f"{result['outcome']}, stored={result['stored']}, requests {result['requests']}"
            )
            runs.append(result)
    ours = runs[0]
    if not (ours["outcome"] == "ok" and ours.get("size_ok") and ours.get("sha_ok")):
        raise RuntimeError(f"our upload did not land intact: {ours}")
    return {
        "runs": runs,
        "size_mb": size_mb,
        "part_mb": DEFAULT_PART_SIZE / MB,
        "archetypeai": version("archetypeai"),
        "requests_toolbelt": version("requests-toolbelt"),
    }


# --- the report -------------------------------------------------------------------------------


def _fate(run: dict[str, Any]) -> str:
    """How an upload ended, in a few words."""
    if run["outcome"] == "ok" and run.get("size_ok") and run.get("sha_ok"):
        return "stored, size and SHA-256 equal"
    if run["outcome"] == "ok":
        return f"stored, but NOT intact ({run.get('num_bytes')} bytes)"
    statuses = sorted({k.rsplit(" ", 1)[-1] for k in run["requests"]} - {"200", "201"})
    ended = f"refused (HTTP {', '.join(statuses)})" if statuses else "failed"
    ended += f", {run['outcome'].split(':')[0]}"  # the exception the client raised
    return ended + (", nothing stored" if not run["stored"] else ", yet a file was stored")


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    by = {(r["kind"], r["source"]): r for r in result["runs"]}
    ours, simple, direct = (by[(k, "big")] for k in KINDS)
    size = result["size_mb"]
    aai = f"`archetypeai` {result['archetypeai']}"

    def grew(run: dict[str, Any]) -> str:
        return f"+{run['growth_mb']:,.1f} MB"

    def ratio(a: float, b: float) -> str:
        if b <= 0:
            return "-"
        return f"{a / b:.3f}x" if a / b < 0.1 else f"{a / b:.2f}x"

    table = [
        (
            f"9. Peak RSS growth of `Client.upload_file(path)`, a {size:,} MB file (direct "
            f"flow, {size / result['part_mb']:,.0f} parts of {result['part_mb']:.0f} MB, "
            f"{ours['parallel']} at a time; fresh process)",
            f"{grew(ours)} (peak {ours['peak_mb']:,.0f} MB; {ours['seconds']:.0f} s; "
            f"{_fate(ours)})",
            f"the file: {size:,} MB",
            ratio(ours["growth_mb"], size),
            f"< {GROWTH_TARGET_MB} MB",
            verdict(ours["growth_mb"] < GROWTH_TARGET_MB),
        ),
        (
            f"9b. same file, {aai} `files.local.upload(path)` (simple `POST /files`, the "
            "whole file read into memory first)",
            f"ours: {grew(ours)}",
            f"{aai}: {grew(simple)} in {simple['seconds']:.0f} s, {_fate(simple)}",
            ratio(ours["growth_mb"], simple["growth_mb"]),
            "(context)",
            "-",
        ),
        (
            f"9c. same file, {aai} direct flow (`use_proxy=False`, {direct['parallel']} "
            "threads, parts streamed)",
            f"ours: {grew(ours)} in {ours['seconds']:.0f} s",
            f"{aai}: {grew(direct)} in {direct['seconds']:.0f} s, {_fate(direct)}",
            ratio(ours["growth_mb"], direct["growth_mb"]),
            "(context)",
            "-",
        ),
    ]
    accepted = by.get(("aai-simple", "accepted"))
    if accepted is not None:
        mb = accepted["size_mb"]
        table.append(
            (
                f"9d. {aai} simple upload of a {mb:,.0f} MB file (under the "
                f"{SIMPLE_LIMIT_MB} MB limit)",
                f"{grew(accepted)} in {accepted['seconds']:.0f} s, {_fate(accepted)}",
                f"the file: {mb:,.0f} MB",
                ratio(accepted["growth_mb"], mb),
                "(context)",
                "-",
            )
        )
    if "server_growth_mb" in ours and "server_growth_mb" in simple:
        table.append(
            (
                "9e. the local backend's own peak RSS growth while receiving 9 (and 9b)",
                f"{ours['server_growth_mb']:+,.1f} MB",
                f"receiving 9b: {simple['server_growth_mb']:+,.1f} MB",
                "-",
                "(context)",
                "-",
            )
        )
    return table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add(
        "--upload-size-mb",
        dest="size_mb",
        metavar="N",
        type=int,
        default=2048,
        help="size of the uploaded file in MB (9-9c)",
    )
    add(
        "--upload-accepted-mb",
        dest="accepted_mb",
        metavar="N",
        type=int,
        default=500,
        help="size of archetypeai's accepted simple upload in MB (9d; 0 skips it)",
    )
    add("--quick", action="store_true", help="a 200 MB file, no 9d: a smoke test")
    add("--rows-json", type=Path, help="append the figures' rows to this file (benchmarks/run)")
    add("--upload-child", choices=KINDS, help=argparse.SUPPRESS)
    add("--child-path", type=Path, help=argparse.SUPPRESS)
    add("--child-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mb, args.accepted_mb = 200, 0
    if args.size_mb < 1:
        parser.error("--upload-size-mb must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.upload_child:
        print(json.dumps(upload_child(args.upload_child, args.child_path, args.child_url)))
        return 0
    info = machine()
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="atai-bench-upload-"))
    try:
        result = bench_upload(root, args.size_mb, args.accepted_mb)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = rows(result)
    print(
        f"Upload benchmarks, {info['date']}: {info['nproc']} cores ({info['cpu']}), "
        f"Python {info['python']}, archetypeai {result['archetypeai']} "
        f"(requests-toolbelt {result['requests_toolbelt']})"
    )
    print()
    print(markdown_table([HEADER, *table]))
    print()
    print(f"Each upload in a fresh process. Total time {time.perf_counter() - started:.0f}s.")
    write_rows(args.rows_json, "upload", table, {"archetypeai": result["archetypeai"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
