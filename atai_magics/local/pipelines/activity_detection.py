"""`activity-detection` (AD), run locally.

On the platform a Newton vision-language model answers one prompt per JSONL line (reference
§9.2). Locally a deterministic, pluggable `ActivityModel` answers instead; by default the
keyword `BaselineModel`, whose answers say plainly that they come from a local baseline. The
record validation, output lines, batching, events and the wrong-file-type behaviour follow
the platform so a job can be rehearsed end to end.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Protocol

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

KEY = "activity-detection"
DATA_PORT = "worker.data"
RESULT_PORT = "worker.result"
DEFAULT_VARIANT = "newton/c:2.5.1-8b-base"

JSONL_TYPES = frozenset(
    {
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
        "application/json-lines",
    }
)
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonlines")
RECORD_SHAPE = (
    "Expected JSONL with fields: system?, instruction?, prompt?, "
    "inputs?: [{type: text|image|video, format: base64|plain, data, extra?}]"
)

USER_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "activity-detection worker config",
    "type": "object",
    "properties": {
        "generation": {
            "type": "object",
            "description": "Decoding parameters of the language model.",
            "properties": {
                "do_sample": {
                    "type": "boolean",
                    "default": True,
                    "description": "Sample tokens (true) or decode greedily (false).",
                },
                "max_new_tokens": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 8192,
                    "default": 512,
                    "description": "Cap on generated tokens; answers are truncated at it.",
                },
                "repetition_penalty": {
                    "type": "number",
                    "minimum": 1,
                    "default": 1,
                    "description": "Penalty for repeated tokens (1 = none).",
                },
                "temperature": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 2,
                    "default": 0.7,
                    "description": "Sampling temperature.",
                },
                "top_k": {
                    "type": "integer",
                    "minimum": 1,
                    "default": 20,
                    "description": "Sample among the k most likely tokens.",
                },
                "top_p": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1,
                    "default": 0.8,
                    "description": "Nucleus sampling probability mass.",
                },
            },
            "additionalProperties": False,
        },
        "model_variant": {
            "type": "string",
            "default": DEFAULT_VARIANT,
            "description": "Newton model to run. Locally every newton/* variant maps to the "
            "deterministic keyword baseline unless another model is registered for it.",
        },
        "max_video_frames": {
            "type": "integer",
            "minimum": 1,
            "default": 32,
            "description": "Frames sampled from each video input.",
        },
        "batch_size": {
            "type": "integer",
            "minimum": 1,
            "default": 16,
            "description": "Records per inference batch.",
        },
    },
    "additionalProperties": False,
}

CONFIG_SCHEMA: dict[str, Any] = deep_merge(
    USER_SCHEMA,
    {
        "title": "activity-detection full worker config",
        "properties": {
            "token_budget": {
                "type": "integer",
                "minimum": 1,
                "default": 16384,
                "description": "Per-record token budget checked before a batch (internal).",
            }
        },
    },
)

DEFAULT_CONFIG: dict[str, Any] = {
    "worker": {"parallelism": 1, "config": schema_defaults(USER_SCHEMA)},
}


# ----------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class RecordInput:
    type: str
    format: str
    data: str
    extra: Any = None


@dataclass(frozen=True)
class InferenceRecord:
    """One validated JSONL line."""

    system: str | None = None
    instruction: str | None = None
    prompt: str | None = None
    inputs: tuple[RecordInput, ...] = field(default_factory=tuple)

    def texts(self) -> list[str]:
        """All text the model can read: the text fields plus plain-text inputs."""
        parts = [t for t in (self.system, self.instruction, self.prompt) if t]
        parts += [i.data for i in self.inputs if i.type == "text" and i.format == "plain"]
        return parts


class RecordError(ValueError):
    """A line that is not a valid InferenceRecord; the message goes into the output line."""


def _validation_error(problems: list[str]) -> RecordError:
    noun = "error" if len(problems) == 1 else "errors"
    return RecordError(
        f"{len(problems)} validation {noun} for InferenceRecord — " + "; ".join(problems)
    )


def parse_record(line: str) -> InferenceRecord:
    """Parse and validate one line; messages read like the platform's (pydantic) ones."""
    try:
        raw = json.loads(line)
    except ValueError:
        raise RecordError("parse error") from None
    if not isinstance(raw, dict):
        raise RecordError(RECORD_SHAPE)
    problems: list[str] = []
    texts: dict[str, str | None] = {}
    for name in ("system", "instruction", "prompt"):
        value = raw.get(name)
        if value is not None and not isinstance(value, str):
            problems.append(f"{name} Input should be a valid string")
        texts[name] = value if isinstance(value, str) else None
    inputs: list[RecordInput] = []
    raw_inputs = raw.get("inputs")
    if raw_inputs is not None and not isinstance(raw_inputs, list):
        problems.append("inputs Input should be a valid list")
    for n, item in enumerate(raw_inputs if isinstance(raw_inputs, list) else []):
        parsed = _parse_input(item, f"inputs.{n}", problems)
        if parsed is not None:
            inputs.append(parsed)
    if problems:
        raise _validation_error(problems)
    record = InferenceRecord(texts["system"], texts["instruction"], texts["prompt"], tuple(inputs))
    if not any(t.strip() for t in (record.system, record.instruction, record.prompt) if t) and not (
        record.inputs
    ):
        raise RecordError(
            "Empty InferenceRecord: set at least one of system, instruction, prompt or inputs"
        )
    return record


def _parse_input(item: Any, where: str, problems: list[str]) -> RecordInput | None:
    if not isinstance(item, dict):
        problems.append(f"{where} Input should be a valid dictionary")
        return None
    before = len(problems)
    allowed = {"type": ("text", "image", "video"), "format": ("plain", "base64")}
    for name, choices in allowed.items():
        if name not in item:
            problems.append(f"{where}.{name} Field required")
        elif item[name] not in choices:
            expected = " or ".join(repr(c) for c in choices)
            problems.append(f"{where}.{name} Input should be {expected}")
    if "data" not in item:
        problems.append(f"{where}.data Field required")
    elif not isinstance(item["data"], str):
        problems.append(f"{where}.data Input should be a valid string")
    elif item.get("format") == "base64":
        try:
            base64.b64decode(item["data"], validate=True)
        except (binascii.Error, ValueError):
            problems.append(f"{where}.data Invalid base64 data")
    if len(problems) > before:
        return None
    return RecordInput(item["type"], item["format"], item["data"], item.get("extra"))


# ----------------------------------------------------------------------------------------
# Models


class ActivityModel(Protocol):
    """What the pipeline needs from a model: a name and a deterministic answer per record."""

    name: str

    def predict(self, record: InferenceRecord) -> str: ...


# Activity -> cue words, checked in this order; ties go to the earlier activity.
ACTIVITY_CUES: dict[str, tuple[str, ...]] = {
    "cooking": ("cook", "stove", "oven", "kitchen", "microwave", "kettle", "fridge", "meal"),
    "sleeping": ("sleep", "bed", "asleep", "nap", "snor", "lights off"),
    "bathing": ("shower", "bath", "toilet", "bathroom", "faucet", "sink"),
    "exercising": ("exercise", "workout", "treadmill", "running", "gym", "heart rate", "steps"),
    "watching_tv": ("tv", "television", "watching", "netflix", "sofa", "couch"),
    "working": ("desk", "computer", "laptop", "typing", "office", "meeting"),
    "cleaning": ("vacuum", "clean", "dishwasher", "laundry", "washing machine", "mop"),
    "away": ("door locked", "left home", "away", "no motion", "nobody", "empty"),
}


class BaselineModel:
    """Keyword baseline: the activity whose cue words occur most often in the record's text.

    Deterministic and instant; its answers start with ``[local baseline]`` so nobody mistakes
    them for Newton's.
    """

    name = "keyword-baseline"

    def __init__(self, cues: dict[str, tuple[str, ...]] | None = None, max_words: int = 512):
        self.cues = cues if cues is not None else ACTIVITY_CUES
        self.max_words = max_words
        self._patterns = {
            activity: [re.compile(r"\b" + re.escape(w)) for w in words]
            for activity, words in self.cues.items()
        }

    def predict(self, record: InferenceRecord) -> str:
        text = " ".join(record.texts()).lower()
        best, best_hits, best_words = "unknown", 0, []
        for activity, patterns in self._patterns.items():
            words = [
                w for w, p in zip(self.cues[activity], patterns, strict=True) if p.search(text)
            ]
            hits = sum(len(p.findall(text)) for p in patterns)
            if hits > best_hits:
                best, best_hits, best_words = activity, hits, words
        media = [i.type for i in record.inputs if i.type != "text"]
        answer = f"[local baseline] activity: {best}"
        if best_words:
            answer += f" (cues: {', '.join(best_words)})"
        if media:
            answer += f"; {len(media)} {'/'.join(sorted(set(media)))} input(s) not analysed"
        words = answer.split(" ")
        return " ".join(words[: self.max_words])


ModelFactory = Callable[[dict[str, Any]], ActivityModel]

# model_variant -> factory(config). Exact keys win; any other "newton/..." variant falls back
# to the keyword baseline. Plug-ins and tests may add entries.
MODELS: dict[str, ModelFactory] = {}


def register_model(variant: str, factory: ModelFactory) -> None:
    """Make ``model_variant: <variant>`` use another local model."""
    MODELS[variant] = factory


def _baseline_factory(config: dict[str, Any]) -> ActivityModel:
    max_new_tokens = int(config.get("generation", {}).get("max_new_tokens", 512))
    return BaselineModel(max_words=max_new_tokens)


def get_model(config: dict[str, Any]) -> ActivityModel:
    variant = config.get("model_variant", DEFAULT_VARIANT)
    if not isinstance(variant, str):
        raise PipelineFailure(f"model_variant must be a string, got {variant!r}")
    if variant in MODELS:
        return MODELS[variant](config)
    if variant.startswith("newton/"):
        return _baseline_factory(config)
    raise PipelineFailure(f"Unknown model_variant {variant!r}")


# ----------------------------------------------------------------------------------------
# Running


def is_jsonl(f: InputFile) -> bool:
    """JSONL by declared MIME type, or by file extension when no type was recorded."""
    if f.file_type:
        return f.file_type.split(";")[0].strip().lower() in JSONL_TYPES
    return PurePath(f.file_id).suffix.lower() in _JSONL_SUFFIXES


def _count_items(f: InputFile) -> int:
    with f.path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def _lines(f: InputFile) -> Iterator[tuple[int, str | None]]:
    """(line index, text) per non-blank line; text is None when the line is not UTF-8."""
    with f.path.open("rb") as fh:
        for index, raw in enumerate(fh):
            if not raw.strip():
                continue
            try:
                yield index, raw.decode("utf-8")
            except UnicodeDecodeError:
                yield index, None


def _answer(model: ActivityModel, index: int, text: str | None) -> dict[str, Any]:
    try:
        if text is None:
            raise RecordError("parse error")
        return {"line_index": index, "prediction": model.predict(parse_record(text))}
    except RecordError as exc:
        return {"line_index": index, "prediction": None, "error": str(exc)}


def process_file(
    ctx: RunContext,
    model: ActivityModel,
    f: InputFile,
    position: int,
    batch_size: int,
    steps: Iterator[int],
) -> bool:
    """Answer every line of one JSONL file; False if the job was cancelled meanwhile."""
    ctx.input_status(f.input_id, "processing")
    if not is_jsonl(f):
        ctx.event(
            "INFO",
            "info",
            f"Processing input {position}: {f.file_id} (item count unknown)",
            input_id=f.input_id,
        )
        fail_input(ctx, f, f"Unsupported file type {f.file_type!r} for {f.file_id}: {RECORD_SHAPE}")
        return True
    total = _count_items(f)
    ctx.event(
        "INFO",
        "info",
        f"Processing input {position}: {f.file_id} ({total} items)",
        input_id=f.input_id,
    )
    out = io.StringIO()
    success = failed = done = 0
    lines = _lines(f)
    for batch_no in itertools.count():
        batch = list(itertools.islice(lines, batch_size))
        if not batch:
            break
        if ctx.cancelled():
            return False
        answers = [_answer(model, i, text) for i, text in batch]
        ok = sum(1 for a in answers if "error" not in a)
        success, failed, done = success + ok, failed + len(answers) - ok, done + len(answers)
        for a in answers:
            out.write(json.dumps(a, ensure_ascii=False) + "\n")
        ctx.event(
            "INFO",
            "info",
            f"Batch {batch_no}: processed {len(answers)} items ({ok} success, "
            f"{len(answers) - ok} failed)",
            input_id=f.input_id,
            index=batch_no,
        )
        ctx.progress(
            "inference",
            next(steps),
            f"Processing input {position}: {done} of {total} items",
            {
                "percent_complete": round(100.0 * done / max(total, 1), 1),
                "items_processed": done,
                "items_total": total,
                "success": ok,
                "failed": len(answers) - ok,
            },
            input_id=f.input_id,
            index=batch_no,
        )
    name = part_name(f.file_id, 0, ".jsonl")
    ctx.write_output(RESULT_PORT, name, out.getvalue().encode("utf-8"), input_id=f.input_id)
    ctx.input_status(f.input_id, "completed")
    ctx.event(
        "SUCCESS",
        "inference.completed",
        f"Processed {done} items ({success} success, {failed} failed) from {f.file_id}",
        input_id=f.input_id,
        payload={"items": done, "success": success, "failed": failed},
    )
    return True


def run(ctx: RunContext) -> None:
    """Worker entry point for `activity-detection`."""
    config = deep_merge(schema_defaults(USER_SCHEMA), ctx.config)
    batch_size = config.get("batch_size")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PipelineFailure(f"batch_size must be an integer >= 1, got {batch_size!r}")
    ctx.event("INFO", "info", "Initializing engine & loading model")
    model = get_model(config)
    ctx.event(
        "INFO",
        "info",
        f"Model loaded & engine initialized: deterministic local baseline ({model.name}) "
        f"standing in for {config.get('model_variant')}; this is not Newton",
        payload={"model": model.name, "model_variant": config.get("model_variant")},
    )
    steps = itertools.count(1)
    for position, f in enumerate(ctx.inputs.get(DATA_PORT, [])):
        if ctx.cancelled():
            return
        try:
            if not process_file(ctx, model, f, position, batch_size, steps):
                return
        except OSError as exc:
            fail_input(ctx, f, f"Could not read {f.file_id}: {exc}")


PIPELINE = LocalPipeline(
    key=KEY,
    version="1.1.0",
    name="Activity Detection",
    description=(
        "Answers one prompt per JSONL line. Local stand-in for the platform model: a "
        "deterministic keyword baseline replaces the Newton model, so answers are labelled "
        "'[local baseline]' and only rehearse the job's shape."
    ),
    component="worker",
    inputs={DATA_PORT: port("Input files", "JSONL files, one InferenceRecord per line.")},
    outputs={
        RESULT_PORT: {
            "name": "Output files",
            "description": 'JSONL, one {"line_index", "prediction"} line per input line.',
        }
    },
    default_config=copy.deepcopy(DEFAULT_CONFIG),
    user_schema=USER_SCHEMA,
    config_schema=CONFIG_SCHEMA,
    run=run,
    max_parallelism=1,
)
