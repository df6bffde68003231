"""Print every figure of one ``benchmarks/run`` as a single Markdown table.

The benchmark scripts run in two environments (the dev venv, and ``.bench-venv`` for
jupysql and the official ``archetypeai`` client), so each appends its rows as one JSON line
to a file (``--rows-json``); this gathers them, in figure order, under one machine line.
Usage: ``python benchmarks/report.py ROWS.jsonl [--expect local,magic,watch,upload]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_local import HEADER, machine, markdown_table

SECTIONS = {
    "local": "the local backend (bench_local.py)",
    "magic": "the extension (bench_magic.py)",
    "watch": "the watcher (bench_watch.py)",
    "upload": "the upload's memory (bench_upload.py)",
}


def read(path: Path) -> dict[str, dict[str, Any]]:
    """The records by section; a section run twice keeps its last record."""
    records: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["section"]] = record
    return records


def report(records: dict[str, dict[str, Any]], expected: list[str]) -> str:
    info = machine()
    present = [s for s in SECTIONS if s in records]
    pythons = sorted({records[s]["python"] for s in present}) or [info["python"]]
    lines = [
        f"Benchmark report, {info['date']}. Machine: {info['nproc']} cores ({info['cpu']}), "
        f"{platform.system()} {platform.release()} {platform.machine()}, "
        f"Python {', '.join(pythons)}.",
        "",
    ]
    table = [HEADER] + [tuple(row) for s in present for row in records[s]["rows"]]
    lines.append(markdown_table(table) if len(table) > 1 else "(no figures were measured)")
    versions = {k: v for s in present for k, v in records[s]["versions"].items()}
    if versions:
        lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))]
    if present:
        loads = ", ".join(
            f"{s} {records[s]['loadavg']:.1f} ({records[s]['finished']})" for s in present
        )
        lines.append(f"1-minute load average as each part ended: {loads}.")
    missing = [s for s in expected if s not in records]
    if missing:
        names = "; ".join(SECTIONS.get(s, s) for s in missing)
        lines += ["", f"NOT MEASURED (the script failed; its output is above): {names}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", type=Path, help="the JSON lines the scripts appended")
    parser.add_argument("--expect", default="", help="sections that should be there (a,b,...)")
    args = parser.parse_args(argv)
    expected = [s for s in args.expect.split(",") if s]
    records = read(args.rows)
    print(report(records, expected))
    return 1 if any(s not in records for s in expected) else 0


if __name__ == "__main__":
    sys.exit(main())
