"""`machine-state-classification` (MSC), run locally.

The platform embeds sliding windows of sensor CSVs with an Omega encoder and classifies each
window with a k-NN index built from labelled n-shot files (reference §9.1). Locally, the
encoder is replaced by `features.embed` (window statistics and spectral energies); the
reader, windowing, k-NN, output parts, events and error wording follow the platform so a job
rehearsed here behaves like the real one, only with a weaker encoder.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import (
    InputFile,
    LocalPipeline,
    PipelineFailure,
    RunContext,
    deep_merge,
    fail_input,
    part_name,
    port,
    schema_defaults,
)
from .features import FloatArray, Standardizer, embed_rows, window_starts
from .knn import METRICS, WEIGHTS, KnnClassifier
from .tabular import CsvColumns, count_data_rows

KEY = "machine-state-classification"
INFERENCE_PORT = "worker.inference"
NSHOT_PORT = "worker.n_shots"
CHECKPOINT_PORT = "worker.fine_tune_checkpoint"
RESULTS_PORT = "worker.results"

MODEL_TYPES = ("omega_1_4_base", "omega_1_3_surface", "omega_1_3_power_drive", "omega_1_5_base")
_NINE_CHANNEL_MODELS = ("omega_1_3_surface", "omega_1_3_power_drive")
_OMEGA_1_3_PATCH = 768  # per-channel embedding width; 9 * 768 = 6912 in the platform's error

_ROWS_PER_BLOCK = 65536
_WINDOWS_PER_CHUNK = 4096


def _int(minimum: int, description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "description": description, **extra}


USER_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "machine-state-classification worker config",
    "type": "object",
    "properties": {
        "model_type": {
            "type": "string",
            "enum": list(MODEL_TYPES),
            "default": "omega_1_4_base",
            "description": "Omega encoder. The omega_1_3_* models need exactly 9 data columns. "
            "Locally every choice uses the same numpy stand-in encoder.",
        },
        "batch_size": _int(1, "Windows per encoder batch (one iteration).", default=32),
        "flush_every_n_iteration": _int(
            1, "Write an output part every N iterations (batch_size windows each).", default=1000
        ),
        "reader_config": {
            "type": "object",
            "description": "How input CSVs are read and cut into windows.",
            "properties": {
                "data_columns": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "description": "Numeric sensor columns fed to the encoder.",
                },
                "timestamp_column": {
                    "type": "string",
                    "description": "Column copied (as text) into the output, one per window.",
                },
                "window_size": _int(2, "Rows per window; each file needs more rows than this."),
                "step_size": _int(1, "Rows between window starts."),
            },
            "required": ["data_columns", "timestamp_column", "window_size", "step_size"],
            "additionalProperties": False,
        },
        "classifier_config": {
            "type": "object",
            "description": "k-NN classifier built from the n-shot example windows.",
            "properties": {
                "n_neighbors": _int(3, "Neighbours that vote for each window.", default=5),
                "metric": {
                    "type": "string",
                    "enum": list(METRICS),
                    "default": "euclidean",
                    "description": "Distance between embeddings.",
                },
                "weights": {
                    "type": "string",
                    "enum": list(WEIGHTS),
                    "default": "uniform",
                    "description": "uniform: one vote per neighbour; distance: weight 1/d.",
                },
                "normalize_embeddings": {
                    "type": "boolean",
                    "default": False,
                    "description": "L2-normalise embeddings before the k-NN search.",
                },
            },
            "additionalProperties": False,
        },
        "omega_1_5": {
            "type": "object",
            "description": "Settings of the omega_1_5_base model (ignored locally).",
            "properties": {"base_model_path": {"type": "string"}},
        },
        "data_source": {
            "type": "object",
            "description": "Where the platform reads data from (ignored locally).",
            "properties": {"source_type": {"type": "string"}},
        },
    },
    "required": ["reader_config"],
    "additionalProperties": False,
}

CONFIG_SCHEMA: dict[str, Any] = deep_merge(
    USER_SCHEMA,
    {
        "title": "machine-state-classification full worker config",
        "properties": {
            "normalize_input": {
                "type": "boolean",
                "const": False,
                "default": False,
                "description": "Input normalisation is fixed off on the platform (internal).",
            }
        },
    },
)

DEFAULT_CONFIG: dict[str, Any] = {
    "worker": {
        "parallelism": 1,
        "config": {
            "model_type": "omega_1_4_base",
            "batch_size": 32,
            "classifier_config": {
                "n_neighbors": 5,
                "metric": "euclidean",
                "weights": "uniform",
                "normalize_embeddings": False,
            },
        },
    }
}


@dataclass(frozen=True)
class Settings:
    """The worker config, checked and typed."""

    model_type: str
    batch_size: int
    flush_every_n_iteration: int
    data_columns: tuple[str, ...]
    timestamp_column: str
    window_size: int
    step_size: int
    n_neighbors: int
    metric: str
    weights: str
    normalize_embeddings: bool

    @property
    def part_size(self) -> int:
        """Windows per output part: one part per flush of N iterations of batch_size windows."""
        return self.batch_size * self.flush_every_n_iteration


def _need_int(section: dict[str, Any], name: str, minimum: int, where: str) -> int:
    value = section.get(name)
    if value is None:
        raise PipelineFailure(f"{where}{name} is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise PipelineFailure(f"{where}{name} must be an integer, got {value!r}")
    if value < minimum:
        raise PipelineFailure(f"{where}{name} must be >= {minimum}, got {value}")
    return value


def parse_settings(config: dict[str, Any]) -> Settings:
    """Check the merged config; anything unusable fails the whole job, as on the platform."""
    cfg = deep_merge(schema_defaults(USER_SCHEMA), config)
    model_type = cfg.get("model_type")
    if model_type not in MODEL_TYPES:
        raise PipelineFailure(f"Unknown model_type {model_type!r}; expected one of {MODEL_TYPES}")
    reader = cfg.get("reader_config")
    if not isinstance(reader, dict):
        raise PipelineFailure("reader_config is required (data_columns, timestamp_column, ...)")
    columns = reader.get("data_columns")
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise PipelineFailure("reader_config.data_columns must be a non-empty list of strings")
    ts_column = reader.get("timestamp_column")
    if not isinstance(ts_column, str) or not ts_column:
        raise PipelineFailure("reader_config.timestamp_column must be a column name")
    classifier = cfg.get("classifier_config") or {}
    metric = classifier.get("metric", "euclidean")
    weights = classifier.get("weights", "uniform")
    if metric not in METRICS:
        raise PipelineFailure(f"Unknown metric {metric!r}; expected one of {list(METRICS)}")
    if weights not in WEIGHTS:
        raise PipelineFailure(f"Unknown weights {weights!r}; expected one of {list(WEIGHTS)}")
    return Settings(
        model_type=model_type,
        batch_size=_need_int(cfg, "batch_size", 1, ""),
        flush_every_n_iteration=_need_int(cfg, "flush_every_n_iteration", 1, ""),
        data_columns=tuple(columns),
        timestamp_column=ts_column,
        window_size=_need_int(reader, "window_size", 2, "reader_config."),
        step_size=_need_int(reader, "step_size", 1, "reader_config."),
        n_neighbors=_need_int(classifier, "n_neighbors", 1, "classifier_config."),
        metric=metric,
        weights=weights,
        normalize_embeddings=bool(classifier.get("normalize_embeddings", False)),
    )


class _CancelledError(Exception):
    """Raised inside the file loop when the job was cancelled, to unwind promptly."""


@dataclass(frozen=True)
class Model:
    """The fitted stand-in: standardiser plus k-NN index."""

    scaler: Standardizer
    knn: KnnClassifier

    def predict(self, embeddings: FloatArray) -> list[str]:
        return self.knn.predict(self.scaler.transform(embeddings))


def _too_short(s: Settings, name: str, rows: int) -> PipelineFailure:
    return PipelineFailure(
        f"window_size ({s.window_size}) must be smaller than the number of rows in {name} ({rows})"
    )


def _embed_all(values: FloatArray, s: Settings) -> FloatArray:
    chunks = list(embed_rows(values, s.window_size, s.step_size, _WINDOWS_PER_CHUNK))
    return np.concatenate(chunks, axis=0)


def build_model(ctx: RunContext, s: Settings) -> Model:
    """Read the n-shot files, embed their windows and fit the classifier (job-level errors)."""
    files = ctx.inputs.get(NSHOT_PORT, [])
    if not files:
        raise PipelineFailure(f"{NSHOT_PORT}: at least one labelled n-shot file is required")
    embeddings: list[FloatArray] = []
    labels: list[str] = []
    for f in files:
        label = f.metadata.get("class")
        if not isinstance(label, str) or not label:
            raise PipelineFailure(f"N-shot file {f.file_id} has no metadata.class label")
        with CsvColumns(f.path, f.file_id, s.data_columns, s.timestamp_column) as reader:
            block = reader.read_all()
        rows = block.values.shape[0]
        if rows <= s.window_size:
            raise _too_short(s, f.file_id, rows)
        if s.model_type in _NINE_CHANNEL_MODELS and len(s.data_columns) != 9:
            n_windows = window_starts(rows, s.window_size, s.step_size)
            size = min(s.batch_size, n_windows) * len(s.data_columns) * _OMEGA_1_3_PATCH
            raise PipelineFailure(f"shape '[-1, 6912]' is invalid for input of size {size}")
        vectors = _embed_all(block.values, s)
        embeddings.append(vectors)
        labels.extend([label] * vectors.shape[0])
        if ctx.cancelled():
            raise _CancelledError
    raw = np.concatenate(embeddings, axis=0)
    scaler = Standardizer.fit(raw, s.normalize_embeddings)
    knn = KnnClassifier(
        scaler.transform(raw),
        labels,
        n_neighbors=s.n_neighbors,
        metric=s.metric,
        weights=s.weights,
    )
    counts = Counter(labels)
    summary = ", ".join(f"{c}: {counts[c]}" for c in knn.classes)
    ctx.event(
        "INFO",
        "info",
        f"Built KNN index from {len(labels)} n-shot windows ({summary})",
        payload={"n_windows": len(labels), "classes": {c: counts[c] for c in knn.classes}},
    )
    if len(knn.classes) == 1:
        ctx.event("WARN", "info", f"All n-shot files share one class ({knn.classes[0]!r})")
    return Model(scaler, knn)


class _PartWriter:
    """Buffers predictions for one file and writes a CSV part every `Settings.part_size` rows."""

    def __init__(
        self, ctx: RunContext, s: Settings, f: InputFile, total: int, steps: Iterator[int]
    ) -> None:
        self._ctx, self._s, self._f, self._total, self._steps = ctx, s, f, total, steps
        self._timestamps: list[str] = []
        self._labels: list[str] = []
        self.parts = 0
        self.written = 0

    def add(self, timestamps: list[str], labels: list[str]) -> None:
        self._timestamps.extend(timestamps)
        self._labels.extend(labels)
        size = self._s.part_size
        while len(self._labels) >= size:
            self._flush(size)

    def finish(self) -> None:
        if self._labels:
            self._flush(len(self._labels))

    def _flush(self, n: int) -> None:
        started = time.perf_counter()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([self._s.timestamp_column, "Prediction"])
        writer.writerows(zip(self._timestamps[:n], self._labels[:n], strict=True))
        del self._timestamps[:n], self._labels[:n]
        name = part_name(self._f.file_id, self.parts, ".csv")
        ctx, fid, iid = self._ctx, self._f.file_id, self._f.input_id
        ctx.write_output(RESULTS_PORT, name, buf.getvalue().encode("utf-8"), input_id=iid)
        self.written += n
        elapsed = time.perf_counter() - started
        ctx.event(
            "INFO",
            "info",
            f"Saving chunk with result for {fid} - Done {elapsed:.1f} sec",
            input_id=iid,
            index=self.parts,
            payload={"filename": name, "rows": n},
        )
        ctx.progress(
            "inference",
            next(self._steps),
            f"Batch {self.parts} for {fid}: {n:,} success",
            {
                "percent_complete": round(100.0 * self.written / max(self._total, 1), 1),
                "items_processed": self.written,
                "items_total": self._total,
                "success": n,
                "failed": 0,
            },
            input_id=iid,
            index=self.parts,
        )
        self.parts += 1


def classify_file(
    ctx: RunContext, s: Settings, model: Model, f: InputFile, steps: Iterator[int]
) -> int:
    """Classify every window of one CSV, writing parts as it goes; returns the window count.

    The file is streamed in blocks; the rows a window still needs from the previous block
    are carried over, so windows never depend on where a block boundary fell.
    """
    rows = count_data_rows(f.path)
    w, step = s.window_size, s.step_size
    with CsvColumns(f.path, f.file_id, s.data_columns, s.timestamp_column) as reader:
        if rows <= w:
            raise _too_short(s, f.file_id, rows)
        parts = _PartWriter(ctx, s, f, window_starts(rows, w, step), steps)
        carry_values: FloatArray = np.empty((0, len(s.data_columns)))
        carry_ts: list[str] = []
        skip = 0  # rows to drop before the next window start (when step > window)
        for block in reader.blocks(max(_ROWS_PER_BLOCK, w + step)):
            values, stamps = block.values, block.timestamps
            if skip:
                drop = min(skip, len(stamps))
                values, stamps, skip = values[drop:], stamps[drop:], skip - drop
            buf = np.concatenate([carry_values, values], axis=0) if len(carry_ts) else values
            buf_ts = carry_ts + stamps
            n_windows = window_starts(len(buf_ts), w, step)
            done = 0
            for vectors in embed_rows(buf, w, step, _WINDOWS_PER_CHUNK):
                if ctx.cancelled():
                    raise _CancelledError
                first, done = done, done + vectors.shape[0]
                ends = slice(first * step + w - 1, (done - 1) * step + w, step)
                parts.add(buf_ts[ends], model.predict(vectors))
            next_start = n_windows * step
            carry_values, carry_ts = buf[next_start:], buf_ts[next_start:]
            skip += max(0, next_start - len(buf_ts))
        parts.finish()
    return parts.written


def run(ctx: RunContext) -> None:
    """Worker entry point for `machine-state-classification`."""
    s = parse_settings(ctx.config)
    ctx.event("INFO", "info", "Using accelerator: cpu")
    ctx.event(
        "INFO",
        "info",
        f"Local stand-in encoder (numpy window features) used in place of {s.model_type}",
        payload={"model_type": s.model_type, "encoder": "local-numpy-window-features"},
    )
    ctx.event("INFO", "running_job", "Running job")
    if ctx.inputs.get(CHECKPOINT_PORT):
        ctx.event(
            "WARN",
            "info",
            "fine_tune_checkpoint is not available locally; using the n-shot files and "
            "classifier_config instead",
        )
    try:
        model = build_model(ctx, s)
        steps = itertools.count(1)
        for f in ctx.inputs.get(INFERENCE_PORT, []):
            if ctx.cancelled():
                return
            ctx.input_status(f.input_id, "processing")
            ctx.event(
                "INFO", "vectorizing_file", f"Vectorizing file {f.file_id}", input_id=f.input_id
            )
            try:
                n = classify_file(ctx, s, model, f, steps)
            except (PipelineFailure, OSError, UnicodeDecodeError, csv.Error) as exc:
                fail_input(ctx, f, str(exc))
                continue
            ctx.input_status(f.input_id, "completed")
            ctx.event(
                "SUCCESS",
                "inference.success",
                f"Processed {n} windows from {f.file_id}",
                input_id=f.input_id,
                payload={"windows": n},
            )
    except _CancelledError:
        return


PIPELINE = LocalPipeline(
    key=KEY,
    version="1.1.1",
    name="Machine State Classification",
    description=(
        "Classifies each sliding window of sensor CSV data with a k-NN index built from "
        "labelled n-shot files. Local stand-in for the platform model: a numpy window-feature "
        "encoder replaces the Omega encoder, so accuracy differs from the platform."
    ),
    component="worker",
    inputs={
        INFERENCE_PORT: port("Input files", "CSV files to classify, one prediction per window."),
        NSHOT_PORT: port(
            "N-Shot example files",
            'Labelled example CSVs, metadata {"class": "<label>"} per file.',
            mode="n_shot_file_list",
            distribute="replicate",
            tracked=False,
        ),
        CHECKPOINT_PORT: port(
            "Fine-tune checkpoint",
            "Optional fine-tuned checkpoint (ignored by the local stand-in).",
            distribute="replicate",
            required=False,
            tracked=False,
        ),
    },
    outputs={
        RESULTS_PORT: {
            "name": "Output files",
            "description": "CSV parts with <timestamp_column>,Prediction per window.",
        }
    },
    default_config=copy.deepcopy(DEFAULT_CONFIG),
    user_schema=USER_SCHEMA,
    config_schema=CONFIG_SCHEMA,
    run=run,
    max_parallelism=4,
)
