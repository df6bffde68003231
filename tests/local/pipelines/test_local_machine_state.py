"""machine-state-classification: accuracy, output shape, parts, platform errors, cancellation."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from atai_magics.local.pipelines import machine_state as msc
from atai_magics.local.pipelines.base import InputFile, PipelineFailure

CHANNELS = ["vib_x", "vib_y", "current", "temp"]
CLASSES = ["fault", "idle", "running"]
SEGMENTS = ["running", "idle", "fault", "running", "fault", "idle"]
SEGMENT_ROWS = 300


def signal(cls: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Multichannel signal whose frequency, level and noise depend on the machine state."""
    t = np.arange(n)[:, None]
    phase = np.arange(len(CHANNELS))[None, :]
    if cls == "idle":
        return 0.05 * rng.standard_normal((n, len(CHANNELS)))
    if cls == "running":
        wave = np.sin(2 * np.pi * 4 * t / 64 + phase)
        return 1.0 + wave + 0.1 * rng.standard_normal((n, len(CHANNELS)))
    wave = 0.8 * np.sin(2 * np.pi * 7 * t / 64 + phase)  # close to "running": 7 vs 4 cycles
    return 1.0 + wave + 0.25 * rng.standard_normal((n, len(CHANNELS)))


def stamp(i: int) -> str:
    return f"2024-01-01 {i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}"


def rows_of(values: np.ndarray, start: int = 0) -> list[list[Any]]:
    return [[stamp(start + i), *(f"{v:.6f}" for v in row)] for i, row in enumerate(values)]


def base_config(**reader: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "model_type": "omega_1_4_base",
        "batch_size": 8,
        "flush_every_n_iteration": 1000,
        "classifier_config": {"n_neighbors": 5, "metric": "euclidean", "weights": "uniform"},
        "reader_config": {
            "data_columns": list(CHANNELS),
            "timestamp_column": "timestamp",
            "window_size": 32,
            "step_size": 4,
        },
    }
    cfg["reader_config"].update(reader)
    return cfg


@pytest.fixture
def dataset(csv_file: Callable[..., Path], input_file: Callable[..., InputFile]) -> dict[str, Any]:
    """Labelled n-shot files (seed 1) and a held-out inference file of known segments (seed 2)."""
    header = ["timestamp", *CHANNELS]
    train = np.random.default_rng(1)
    n_shots = [
        input_file(
            csv_file(f"nshot_{c}.csv", header, rows_of(signal(c, 400, train))),
            "worker.n_shots",
            **{"class": c},
        )
        for c in CLASSES
    ]
    test = np.random.default_rng(2)
    values = np.concatenate([signal(c, SEGMENT_ROWS, test) for c in SEGMENTS])
    inference = input_file(
        csv_file("plant_inference.csv", header, rows_of(values)), "worker.inference"
    )
    return {"n_shots": n_shots, "inference": inference, "rows": len(values)}


def run_msc(make_ctx: Callable[..., Any], data: dict[str, Any], config: dict[str, Any]) -> Any:
    ctx = make_ctx(
        config=config,
        inputs={"worker.inference": [data["inference"]], "worker.n_shots": data["n_shots"]},
    )
    msc.run(ctx)
    return ctx


def predictions(ctx: Any) -> list[list[str]]:
    """All prediction rows, parts concatenated in part order (headers dropped)."""
    names = sorted(ctx.outputs, key=lambda n: int(n.rsplit("_part_", 1)[1].removesuffix(".csv")))
    rows: list[list[str]] = []
    for name in names:
        table = ctx.csv_rows(name)
        assert table[0] == ["timestamp", "Prediction"]
        rows.extend(table[1:])
    return rows


def accuracy(rows: list[list[str]], window: int, step: int) -> float:
    """Share of windows lying wholly inside one segment that got that segment's class."""
    hits = total = 0
    for j, (_, label) in enumerate(rows):
        first, last = j * step, j * step + window - 1
        if first // SEGMENT_ROWS != last // SEGMENT_ROWS:
            continue
        total += 1
        hits += label == SEGMENTS[first // SEGMENT_ROWS]
    assert total > 100
    return hits / total


def test_classifies_held_out_signal(make_ctx: Callable[..., Any], dataset: dict[str, Any]) -> None:
    ctx = run_msc(make_ctx, dataset, base_config())
    rows = predictions(ctx)
    assert len(rows) == (dataset["rows"] - 32) // 4 + 1
    assert accuracy(rows, 32, 4) > 0.9
    assert set(label for _, label in rows) == set(CLASSES)
    inp = dataset["inference"].input_id
    assert ctx.final_status(inp) == ("completed", None)
    assert ctx.messages("SUCCESS") == [f"Processed {len(rows)} windows from plant_inference.csv"]


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "manhattan"])
@pytest.mark.parametrize("weights", ["uniform", "distance"])
@pytest.mark.parametrize("normalize", [False, True])
def test_classifier_variants_stay_accurate(
    make_ctx: Callable[..., Any],
    dataset: dict[str, Any],
    metric: str,
    weights: str,
    normalize: bool,
) -> None:
    cfg = base_config(step_size=8)
    cfg["classifier_config"] = {
        "n_neighbors": 7,
        "metric": metric,
        "weights": weights,
        "normalize_embeddings": normalize,
    }
    assert accuracy(predictions(run_msc(make_ctx, dataset, cfg)), 32, 8) > 0.9


def test_events_follow_the_platform(make_ctx: Callable[..., Any], dataset: dict[str, Any]) -> None:
    ctx = run_msc(make_ctx, dataset, base_config())
    types = [(e["level"], e["event_type"]) for e in ctx.events]
    assert ctx.events[0]["message"] == "Using accelerator: cpu"
    assert "omega_1_4_base" in ctx.events[1]["message"]
    assert "stand-in" in ctx.events[1]["message"]
    assert ("INFO", "running_job") in types
    assert "Vectorizing file plant_inference.csv" in ctx.messages("INFO")
    inp = dataset["inference"].input_id
    assert [s for i, s, _ in ctx.statuses if i == inp] == ["processing", "completed"]
    assert all(port == "worker.results" and i == inp for port, i in ctx.output_meta.values())


def test_one_row_per_window_with_last_row_timestamp(
    make_ctx: Callable[..., Any],
    csv_file: Callable[..., Path],
    input_file: Callable[..., InputFile],
    dataset: dict[str, Any],
) -> None:
    rng = np.random.default_rng(5)
    values = signal("running", 100, rng)
    stamps = [f"2024-03-01T10:00:{i:02d}.5Z" if i < 60 else f"t,{i}" for i in range(100)]
    rows = [[s, *map(str, v)] for s, v in zip(stamps, values, strict=True)]
    dataset["inference"] = input_file(
        csv_file("short.csv", ["timestamp", *CHANNELS], rows), "worker.inference"
    )
    ctx = run_msc(make_ctx, dataset, base_config(window_size=10, step_size=3))
    out = predictions(ctx)
    assert len(out) == (100 - 10) // 3 + 1 == 31
    assert [ts for ts, _ in out] == [stamps[j * 3 + 9] for j in range(31)]
    assert list(ctx.outputs) == ["pred_short_part_0.csv"]


def test_parts_follow_flush_every_n_iteration(
    make_ctx: Callable[..., Any], dataset: dict[str, Any]
) -> None:
    cfg = base_config(window_size=32, step_size=4)
    cfg["batch_size"], cfg["flush_every_n_iteration"] = 16, 5  # 80 windows per part
    ctx = run_msc(make_ctx, dataset, cfg)
    total = (dataset["rows"] - 32) // 4 + 1  # 443
    sizes = [len(ctx.csv_rows(f"pred_plant_inference_part_{n}.csv")) - 1 for n in range(6)]
    assert len(ctx.outputs) == 6
    assert sizes == [80, 80, 80, 80, 80, total - 400]
    metrics = [p["metrics"] for p in ctx.progress_entries]
    assert [p["kind"] for p in ctx.progress_entries] == ["inference"] * 6
    assert [m["items_processed"] for m in metrics] == [80, 160, 240, 320, 400, total]
    assert all(m["items_total"] == total and m["failed"] == 0 for m in metrics)
    assert metrics[-1]["percent_complete"] == 100.0
    assert [p["step"] for p in ctx.progress_entries] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(("window", "step"), [(32, 4), (5, 1), (4, 9), (16, 16)])
def test_streaming_blocks_do_not_change_results(
    make_ctx: Callable[..., Any],
    dataset: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    window: int,
    step: int,
) -> None:
    cfg = base_config(window_size=window, step_size=step)
    whole = predictions(run_msc(make_ctx, dataset, cfg))
    monkeypatch.setattr(msc, "_ROWS_PER_BLOCK", 7)
    monkeypatch.setattr(msc, "_WINDOWS_PER_CHUNK", 3)
    streamed = predictions(run_msc(make_ctx, dataset, cfg))
    assert streamed == whole
    assert len(whole) == (dataset["rows"] - window) // step + 1


def test_two_files_and_per_file_failure_keeps_job_going(
    make_ctx: Callable[..., Any],
    csv_file: Callable[..., Path],
    input_file: Callable[..., InputFile],
    dataset: dict[str, Any],
) -> None:
    bad = input_file(
        csv_file("no_temp.csv", ["timestamp", "vib_x"], [[stamp(i), i] for i in range(50)]),
        "worker.inference",
    )
    ctx = make_ctx(
        config=base_config(),
        inputs={
            "worker.inference": [bad, dataset["inference"]],
            "worker.n_shots": dataset["n_shots"],
        },
    )
    msc.run(ctx)
    status, message = ctx.final_status(bad.input_id)
    assert status == "failed"
    assert message == "Column(s) not found in no_temp.csv: ['vib_y', 'current', 'temp']"
    failed = [e for e in ctx.events if e["level"] == "FAILED"]
    assert [(e["event_type"], e["message"]) for e in failed] == [
        ("inference.failed", "Processing failed for no_temp.csv")
    ]
    assert ctx.final_status(dataset["inference"].input_id) == ("completed", None)
    assert all(name.startswith("pred_plant_inference_part_") for name in ctx.outputs)


def test_short_inference_file_fails_only_that_input(
    make_ctx: Callable[..., Any],
    csv_file: Callable[..., Path],
    input_file: Callable[..., InputFile],
    dataset: dict[str, Any],
) -> None:
    rows = rows_of(signal("idle", 32, np.random.default_rng(0)))
    dataset["inference"] = input_file(
        csv_file("tiny.csv", ["timestamp", *CHANNELS], rows), "worker.inference"
    )
    ctx = run_msc(make_ctx, dataset, base_config(window_size=32))
    status, message = ctx.final_status(dataset["inference"].input_id)
    assert status == "failed"
    assert message is not None and "tiny.csv" in message and "window_size (32)" in message
    assert ctx.outputs == {}


def test_missing_nshot_column_fails_job(
    make_ctx: Callable[..., Any], dataset: dict[str, Any]
) -> None:
    cfg = base_config(data_columns=[*CHANNELS, "pressure"])
    with pytest.raises(PipelineFailure) as info:
        run_msc(make_ctx, dataset, cfg)
    assert str(info.value) == "Column(s) not found in nshot_fault.csv: ['pressure']"


def test_missing_timestamp_column_is_reported(
    make_ctx: Callable[..., Any], dataset: dict[str, Any]
) -> None:
    cfg = base_config(timestamp_column="DATE_TIME")
    with pytest.raises(PipelineFailure, match=re.escape("nshot_fault.csv: ['DATE_TIME']")):
        run_msc(make_ctx, dataset, cfg)


@pytest.mark.parametrize("model", ["omega_1_3_surface", "omega_1_3_power_drive"])
def test_omega_1_3_needs_nine_columns(
    make_ctx: Callable[..., Any], dataset: dict[str, Any], model: str
) -> None:
    cfg = base_config()
    cfg["model_type"] = model
    with pytest.raises(PipelineFailure) as info:
        run_msc(make_ctx, dataset, cfg)
    assert re.fullmatch(r"shape '\[-1, 6912\]' is invalid for input of size \d+", str(info.value))
    assert str(info.value).endswith(str(8 * 4 * 768))


def test_omega_1_3_with_nine_columns_runs(
    make_ctx: Callable[..., Any],
    csv_file: Callable[..., Path],
    input_file: Callable[..., InputFile],
) -> None:
    rng = np.random.default_rng(9)
    header = ["DATE_TIME", *[f"c{i}" for i in range(9)]]
    files = {
        c: csv_file(f"{c}.csv", header, rows_of(rng.standard_normal((80, 9)) + k))
        for k, c in enumerate(["a", "b"])
    }
    ctx = make_ctx(
        config={
            "model_type": "omega_1_3_surface",
            "batch_size": 8,
            "classifier_config": {"n_neighbors": 3},
            "reader_config": {
                "data_columns": header[1:],
                "timestamp_column": "DATE_TIME",
                "window_size": 16,
                "step_size": 1,
            },
        },
        inputs={
            "worker.n_shots": [
                input_file(p, "worker.n_shots", **{"class": c}) for c, p in files.items()
            ],
            "worker.inference": [input_file(files["b"], "worker.inference")],
        },
    )
    msc.run(ctx)
    rows = ctx.csv_rows("pred_b_part_0.csv")
    assert rows[0] == ["DATE_TIME", "Prediction"]
    assert len(rows) - 1 == 80 - 16 + 1
    assert sum(label == "b" for _, label in rows[1:]) > 0.9 * (len(rows) - 1)


def test_nshot_shorter_than_window_fails_job(
    make_ctx: Callable[..., Any], dataset: dict[str, Any]
) -> None:
    with pytest.raises(PipelineFailure) as info:
        run_msc(make_ctx, dataset, base_config(window_size=400))
    assert "nshot_fault.csv" in str(info.value)
    assert "window_size (400)" in str(info.value)


def test_too_few_nshot_windows_for_n_neighbors(
    make_ctx: Callable[..., Any], dataset: dict[str, Any]
) -> None:
    cfg = base_config(window_size=390, step_size=10)  # 2 windows per n-shot file, 6 in all
    cfg["classifier_config"]["n_neighbors"] = 7
    with pytest.raises(PipelineFailure) as info:
        run_msc(make_ctx, dataset, cfg)
    assert str(info.value) == "n_neighbors must be <= number of samples in index"


def test_non_numeric_value_names_file_column_and_row(
    make_ctx: Callable[..., Any],
    csv_file: Callable[..., Path],
    input_file: Callable[..., InputFile],
    dataset: dict[str, Any],
) -> None:
    rows = rows_of(signal("idle", 60, np.random.default_rng(3)))
    rows[41][3] = "n/a"
    bad = input_file(csv_file("glitch.csv", ["timestamp", *CHANNELS], rows), "worker.n_shots")
    bad = InputFile(bad.input_id, bad.port_name, bad.file_id, bad.path, None, {"class": "idle"})
    dataset["n_shots"] = [*dataset["n_shots"], bad]
    with pytest.raises(PipelineFailure) as info:
        run_msc(make_ctx, dataset, base_config())
    assert str(info.value) == (
        "Invalid numeric value 'n/a' in column 'current' at row 42 (line 43) of glitch.csv"
    )


def test_nshot_without_class_fails(make_ctx: Callable[..., Any], dataset: dict[str, Any]) -> None:
    f = dataset["n_shots"][0]
    dataset["n_shots"][0] = InputFile(f.input_id, f.port_name, f.file_id, f.path, None, {})
    with pytest.raises(PipelineFailure, match=re.escape("nshot_fault.csv has no metadata.class")):
        run_msc(make_ctx, dataset, base_config())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reader_config": None}, "reader_config is required"),
        ({"model_type": "omega_9"}, "Unknown model_type 'omega_9'"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ],
)
def test_bad_config_fails_job(
    make_ctx: Callable[..., Any], dataset: dict[str, Any], change: dict[str, Any], message: str
) -> None:
    cfg = {**base_config(), **change}
    if cfg["reader_config"] is None:
        del cfg["reader_config"]
    with pytest.raises(PipelineFailure, match=re.escape(message)):
        run_msc(make_ctx, dataset, cfg)


def test_window_size_one_is_rejected(make_ctx: Callable[..., Any], dataset: dict[str, Any]) -> None:
    with pytest.raises(PipelineFailure, match=r"window_size must be >= 2, got 1"):
        run_msc(make_ctx, dataset, base_config(window_size=1))


def test_cancellation_stops_early(make_ctx: Callable[..., Any], dataset: dict[str, Any]) -> None:
    cfg = base_config(step_size=1)
    cfg["batch_size"], cfg["flush_every_n_iteration"] = 4, 1  # a part per 4 windows
    full = run_msc(make_ctx, dataset, cfg)
    ctx = make_ctx(
        config=cfg,
        inputs={"worker.inference": [dataset["inference"]], "worker.n_shots": dataset["n_shots"]},
        cancel_after=3,
    )
    msc.run(ctx)
    assert len(ctx.outputs) < len(full.outputs)
    assert all(s != "completed" for _, s, _ in ctx.statuses)
    assert ctx.messages("SUCCESS") == []


def test_cancellation_between_chunks(
    make_ctx: Callable[..., Any], dataset: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(msc, "_WINDOWS_PER_CHUNK", 10)
    cfg = base_config(step_size=1)
    cfg["batch_size"], cfg["flush_every_n_iteration"] = 10, 1
    ctx = make_ctx(
        config=cfg,
        inputs={"worker.inference": [dataset["inference"]], "worker.n_shots": dataset["n_shots"]},
        cancel_after=len(dataset["n_shots"]) + 1 + 5,  # n-shot polls, file poll, 5 chunks
    )
    msc.run(ctx)
    assert len(ctx.outputs) == 5
    assert ctx.polls == len(dataset["n_shots"]) + 1 + 6


def test_checkpoint_port_is_warned_about(
    make_ctx: Callable[..., Any], dataset: dict[str, Any], input_file: Callable[..., InputFile]
) -> None:
    ctx = make_ctx(
        config=base_config(step_size=16),
        inputs={
            "worker.inference": [dataset["inference"]],
            "worker.n_shots": dataset["n_shots"],
            "worker.fine_tune_checkpoint": [
                input_file(dataset["inference"].path, "worker.fine_tune_checkpoint")
            ],
        },
    )
    msc.run(ctx)
    assert any("fine_tune_checkpoint" in m for m in ctx.messages("WARN"))
    assert ctx.final_status(dataset["inference"].input_id)[0] == "completed"


def test_parse_settings_fills_schema_defaults() -> None:
    s = msc.parse_settings(
        {
            "reader_config": {
                "data_columns": ["a"],
                "timestamp_column": "t",
                "window_size": 8,
                "step_size": 2,
            }
        }
    )
    assert (s.model_type, s.batch_size, s.flush_every_n_iteration) == ("omega_1_4_base", 32, 1000)
    assert (s.n_neighbors, s.metric, s.weights, s.normalize_embeddings) == (
        5,
        "euclidean",
        "uniform",
        False,
    )
    assert s.part_size == 32_000


def test_single_data_column(
    make_ctx: Callable[..., Any],
    csv_file: Callable[..., Path],
    input_file: Callable[..., InputFile],
) -> None:
    rng = np.random.default_rng(4)
    quiet = [[stamp(i), f"{v:.4f}"] for i, v in enumerate(0.01 * rng.standard_normal(120))]
    loud = [[stamp(i), f"{v:.4f}"] for i, v in enumerate(3.0 * rng.standard_normal(120))]
    files = {
        "quiet": csv_file("q.csv", ["ts", "amp"], quiet),
        "loud": csv_file("l.csv", ["ts", "amp"], loud),
    }
    ctx = make_ctx(
        config={
            "classifier_config": {"n_neighbors": 3},
            "reader_config": {
                "data_columns": ["amp"],
                "timestamp_column": "ts",
                "window_size": 20,
                "step_size": 5,
            },
        },
        inputs={
            "worker.n_shots": [
                input_file(p, "worker.n_shots", **{"class": c}) for c, p in files.items()
            ],
            "worker.inference": [input_file(files["loud"], "worker.inference")],
        },
    )
    msc.run(ctx)
    rows = ctx.csv_rows("pred_l_part_0.csv")
    assert rows[0] == ["ts", "Prediction"]
    assert [label for _, label in rows[1:]] == ["loud"] * ((120 - 20) // 5 + 1)
