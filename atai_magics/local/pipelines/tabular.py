"""Streaming reader for sensor CSVs: numeric data columns plus an opaque timestamp column.

Files are read in blocks so a multi-gigabyte input never has to fit in memory, and every
error names the file, the column and the row, because the user has to go and fix that file.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from .base import PipelineFailure

FloatArray = npt.NDArray[np.float64]


def count_data_rows(path: Path) -> int:
    """Number of non-blank lines after the header (fast binary scan; used for progress totals)."""
    rows = 0
    with path.open("rb") as fh:
        fh.readline()
        for line in fh:
            if line.strip():
                rows += 1
    return rows


@dataclass
class Block:
    """A run of consecutive data rows: the timestamps as written, and the numeric columns."""

    timestamps: list[str]
    values: FloatArray  # shape (rows, n_columns)


class CsvColumns:
    """Open a CSV, check its header, and yield `Block`s of the requested columns."""

    def __init__(
        self, path: Path, display_name: str, data_columns: Sequence[str], timestamp_column: str
    ) -> None:
        self.display_name = display_name
        self.data_columns = list(data_columns)
        self._fh = path.open(newline="", encoding="utf-8-sig")
        try:
            self._reader = csv.reader(self._fh)
            header = [h.strip() for h in next(self._reader, [])]
            wanted = [*self.data_columns, timestamp_column]
            missing = [c for c in dict.fromkeys(wanted) if c not in header]
            if missing:
                raise PipelineFailure(f"Column(s) not found in {display_name}: {missing}")
        except BaseException:
            self._fh.close()
            raise
        self._indices = [header.index(c) for c in self.data_columns]
        self._ts_index = header.index(timestamp_column)
        self._rows_read = 0
        getter = itemgetter(*self._indices)
        self._get_values: Callable[[list[str]], Any] = (
            getter if len(self._indices) > 1 else (lambda row: (getter(row),))
        )

    def __enter__(self) -> CsvColumns:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._fh.close()

    def blocks(self, max_rows: int) -> Iterator[Block]:
        """Yield blocks of at most ``max_rows`` rows until the file ends."""
        while True:
            block = self._read_block(max_rows)
            if block is None:
                return
            yield block

    def read_all(self) -> Block:
        """The whole (remaining) file as one block; meant for small files such as n-shots."""
        parts = list(self.blocks(65536))
        if not parts:
            return Block([], np.empty((0, len(self.data_columns))))
        return Block(
            [t for p in parts for t in p.timestamps],
            np.concatenate([p.values for p in parts], axis=0),
        )

    def _read_block(self, max_rows: int) -> Block | None:
        timestamps: list[str] = []
        cells: list[Any] = []
        lines: list[int] = []
        ts_index = self._ts_index
        get_values = self._get_values
        for row in self._reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            try:
                timestamps.append(row[ts_index])
                cells.append(get_values(row))
            except IndexError:
                raise PipelineFailure(
                    f"Row {self._rows_read + len(lines) + 1} (line {self._reader.line_num}) of "
                    f"{self.display_name} has {len(row)} fields; the header has more"
                ) from None
            lines.append(self._reader.line_num)
            if len(lines) >= max_rows:
                break
        if not lines:
            return None
        first_row = self._rows_read + 1
        self._rows_read += len(lines)
        try:
            values = np.array(cells, dtype=np.float64)
        except ValueError:
            values = None
        if values is None or not np.isfinite(values).all():
            self._raise_bad_value(cells, lines, first_row)
        assert values is not None
        return Block(timestamps, values.reshape(len(lines), len(self.data_columns)))

    def _raise_bad_value(self, cells: list[Any], lines: list[int], first_row: int) -> None:
        """Find the first offending cell (slow path, only on error) and report it precisely."""
        for offset, row_values in enumerate(cells):
            for column, text in zip(self.data_columns, row_values, strict=True):
                try:
                    ok = math.isfinite(float(text))
                except ValueError:
                    ok = False
                if not ok:
                    raise PipelineFailure(
                        f"Invalid numeric value {text!r} in column {column!r} at row "
                        f"{first_row + offset} (line {lines[offset]}) of {self.display_name}"
                    )
        raise PipelineFailure(f"Could not parse numeric columns of {self.display_name}")
