"""activity-detection: record validation, output lines, events, MIME handling, models."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from atai_magics.local.pipelines import activity_detection as ad
from atai_magics.local.pipelines.base import InputFile, PipelineFailure

GOOD_B64 = base64.b64encode(b"\x89PNG fake").decode()

LINES = [
    json.dumps({"prompt": "Sensor log: stove on, kettle boiling in the kitchen"}),  # 0 valid
    "timestamp,temp,humidity",  # 1 not JSON
    json.dumps([1, 2, 3]),  # 2 JSON but not an object
    json.dumps({"prompt": "x", "inputs": [{"type": "image", "data": "abc"}]}),  # 3 no format
    "",  # 4 blank: skipped, not an item
    json.dumps({"system": "  ", "prompt": ""}),  # 5 no content
    json.dumps({"inputs": [{"type": "image", "format": "base64", "data": GOOD_B64}]}),  # 6 valid
    json.dumps({"inputs": [{"type": "audio", "format": "plain", "data": "hi"}]}),  # 7 bad type
    json.dumps({"inputs": [{"type": "image", "format": "base64", "data": "%%%"}]}),  # 8 bad b64
    json.dumps({"instruction": 3}),  # 9 wrong field type
]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def jsonl(
    tmp_path: Path, name: str, lines: list[str], input_id: str, mime: str | None
) -> InputFile:
    path = write_lines(tmp_path / name, lines)
    return InputFile(input_id, "worker.data", name, path, mime, {})


def run_ad(make_ctx: Callable[..., Any], files: list[InputFile], **config: Any) -> Any:
    ctx = make_ctx(config=config, inputs={"worker.data": files})
    ad.run(ctx)
    return ctx


def out_lines(ctx: Any, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ctx.outputs[name].decode().splitlines()]


def test_valid_and_invalid_lines(make_ctx: Callable[..., Any], tmp_path: Path) -> None:
    f = jsonl(tmp_path, "home.jsonl", LINES, "inp_1", "application/x-ndjson")
    ctx = run_ad(make_ctx, [f])
    out = out_lines(ctx, "pred_home_part_0.jsonl")
    assert [o["line_index"] for o in out] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    by_line = {o["line_index"]: o for o in out}
    assert by_line[0]["prediction"].startswith("[local baseline] activity: cooking")
    assert "error" not in by_line[0] and "error" not in by_line[6]
    assert "image" in by_line[6]["prediction"] and "not analysed" in by_line[6]["prediction"]
    assert by_line[1] == {"line_index": 1, "prediction": None, "error": "parse error"}
    assert by_line[2]["error"] == ad.RECORD_SHAPE
    assert by_line[3]["error"] == (
        "1 validation error for InferenceRecord — inputs.0.format Field required"
    )
    assert "at least one of system, instruction, prompt or inputs" in by_line[5]["error"]
    assert "inputs.0.type Input should be 'text' or 'image' or 'video'" in by_line[7]["error"]
    assert "inputs.0.data Invalid base64" in by_line[8]["error"]
    assert "instruction Input should be a valid string" in by_line[9]["error"]
    assert all(o["prediction"] is None for o in out if "error" in o)
    assert ctx.final_status("inp_1") == ("completed", None)
    assert ctx.messages("SUCCESS") == ["Processed 9 items (2 success, 7 failed) from home.jsonl"]
    assert ctx.output_meta["pred_home_part_0.jsonl"] == ("worker.result", "inp_1")


def test_events_batches_and_progress(make_ctx: Callable[..., Any], tmp_path: Path) -> None:
    f = jsonl(tmp_path, "home.jsonl", LINES, "inp_1", "application/x-ndjson")
    ctx = run_ad(make_ctx, [f], batch_size=4)
    info = ctx.messages("INFO")
    assert info[0] == "Initializing engine & loading model"
    assert info[1].startswith("Model loaded & engine initialized")
    assert "local baseline" in info[1] and "not Newton" in info[1]
    assert "Processing input 0: home.jsonl (9 items)" in info
    batches = [m for m in info if m.startswith("Batch ")]
    assert batches == [
        "Batch 0: processed 4 items (1 success, 3 failed)",
        "Batch 1: processed 4 items (1 success, 3 failed)",
        "Batch 2: processed 1 items (0 success, 1 failed)",
    ]
    metrics = [p["metrics"] for p in ctx.progress_entries]
    assert [p["kind"] for p in ctx.progress_entries] == ["inference"] * 3
    assert [m["items_processed"] for m in metrics] == [4, 8, 9]
    assert [(m["success"], m["failed"]) for m in metrics] == [(1, 3), (1, 3), (0, 1)]
    assert metrics[-1]["percent_complete"] == 100.0 and metrics[-1]["items_total"] == 9


@pytest.mark.parametrize("mime", ["text/csv", "text/plain", "application/json"])
def test_wrong_mime_fails_input_but_job_completes(
    make_ctx: Callable[..., Any], tmp_path: Path, mime: str
) -> None:
    bad = jsonl(tmp_path, "readings.csv", ["a,b", "1,2"], "inp_bad", mime)
    good = jsonl(tmp_path, "ok.jsonl", LINES[:1], "inp_ok", "application/x-ndjson")
    ctx = run_ad(make_ctx, [bad, good])
    assert "Processing input 0: readings.csv (item count unknown)" in ctx.messages("INFO")
    assert ctx.messages("FAILED") == ["Processing failed for readings.csv"]
    status, message = ctx.final_status("inp_bad")
    assert status == "failed" and message is not None and mime in message
    assert ctx.final_status("inp_ok") == ("completed", None)
    assert list(ctx.outputs) == ["pred_ok_part_0.jsonl"]
    assert "Processing input 1: ok.jsonl (1 items)" in ctx.messages("INFO")


def test_mime_missing_falls_back_to_extension(make_ctx: Callable[..., Any], tmp_path: Path) -> None:
    f = jsonl(tmp_path, "a.jsonl", LINES[:1], "inp_a", None)
    g = jsonl(tmp_path, "b.txt", LINES[:1], "inp_b", None)
    ctx = run_ad(make_ctx, [f, g])
    assert ctx.final_status("inp_a")[0] == "completed"
    assert ctx.final_status("inp_b")[0] == "failed"


def test_output_is_deterministic(make_ctx: Callable[..., Any], tmp_path: Path) -> None:
    f = jsonl(tmp_path, "home.jsonl", LINES, "inp_1", "application/x-ndjson")
    first = run_ad(make_ctx, [f], batch_size=3).outputs
    second = run_ad(make_ctx, [f], batch_size=16).outputs
    assert first == second


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Motion in bedroom, lights off, user asleep in bed", "sleeping"),
        ("treadmill running, heart rate 150, steps rising", "exercising"),
        ("shower running in the bathroom", "bathing"),
        ("nothing to see here", "unknown"),
    ],
)
def test_baseline_labels_from_text(text: str, label: str) -> None:
    record = ad.parse_record(json.dumps({"instruction": "Which activity?", "prompt": text}))
    assert ad.BaselineModel().predict(record).startswith(f"[local baseline] activity: {label}")


def test_plain_text_inputs_are_read() -> None:
    line = json.dumps({"inputs": [{"type": "text", "format": "plain", "data": "oven preheating"}]})
    assert "cooking" in ad.BaselineModel().predict(ad.parse_record(line))


def test_max_new_tokens_truncates(make_ctx: Callable[..., Any], tmp_path: Path) -> None:
    f = jsonl(tmp_path, "one.jsonl", LINES[:1], "inp_1", "application/x-ndjson")
    ctx = run_ad(make_ctx, [f], generation={"max_new_tokens": 3})
    prediction = out_lines(ctx, "pred_one_part_0.jsonl")[0]["prediction"]
    assert prediction == "[local baseline] activity:"


def test_models_are_pluggable_by_variant(
    make_ctx: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Echo:
        name = "echo"

        def predict(self, record: ad.InferenceRecord) -> str:
            return (record.prompt or "").upper()

    monkeypatch.setitem(ad.MODELS, "test/echo", lambda config: Echo())
    f = jsonl(tmp_path, "one.jsonl", LINES[:1], "inp_1", "application/x-ndjson")
    ctx = run_ad(make_ctx, [f], model_variant="test/echo")
    assert out_lines(ctx, "pred_one_part_0.jsonl")[0]["prediction"].startswith("SENSOR LOG")
    assert "(echo)" in ctx.messages("INFO")[1]


def test_other_newton_variants_use_baseline_and_unknown_fail(
    make_ctx: Callable[..., Any], tmp_path: Path
) -> None:
    f = jsonl(tmp_path, "one.jsonl", LINES[:1], "inp_1", "application/x-ndjson")
    ctx = run_ad(make_ctx, [f], model_variant="newton/c:2.4.0-7b-base")
    assert "newton/c:2.4.0-7b-base" in ctx.messages("INFO")[1]
    with pytest.raises(PipelineFailure, match="Unknown model_variant 'gpt-x'"):
        run_ad(make_ctx, [f], model_variant="gpt-x")


def test_cancellation_stops_before_next_batch(make_ctx: Callable[..., Any], tmp_path: Path) -> None:
    f = jsonl(tmp_path, "home.jsonl", LINES, "inp_1", "application/x-ndjson")
    g = jsonl(tmp_path, "two.jsonl", LINES, "inp_2", "application/x-ndjson")
    ctx = make_ctx(config={"batch_size": 2}, inputs={"worker.data": [f, g]}, cancel_after=2)
    ad.run(ctx)
    batches = [m for m in ctx.messages("INFO") if m.startswith("Batch ")]
    assert len(batches) == 1
    assert ctx.outputs == {}
    assert ("inp_2", "processing", None) not in ctx.statuses


def test_non_utf8_line_is_a_parse_error(make_ctx: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"prompt": "tv on"}\n\xff\xfe\n')
    f = InputFile("inp_1", "worker.data", "bytes.jsonl", path, "application/x-ndjson", {})
    ctx = run_ad(make_ctx, [f])
    out = out_lines(ctx, "pred_bytes_part_0.jsonl")
    assert out[1] == {"line_index": 1, "prediction": None, "error": "parse error"}
    assert "watching_tv" in out[0]["prediction"]
