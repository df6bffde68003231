"""The parameter form against the real local backend: every enum value and numeric bound of
both local pipelines, and random in-schema states (hypothesis), make cells that ``%%atai_job``
parses and validates to the form's own ``parameters``; live validation agrees with the
magic's; the buttons insert and submit; the listing and the form read well as text."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import traitlets
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import atai_magics.ui
from atai_magics.api.models import PipelineSchema
from atai_magics.local.pipelines import activity_detection, machine_state
from atai_magics.magics import AtaiMagics
from atai_magics.spec import ClientResolver, SpecError, parse_cell, validate
from atai_magics.ui import cell_yaml
from atai_magics.ui.params import ParamsForm
from atai_magics.ui.params_model import (
    Field,
    ParamsInvalid,
    ParamsModel,
    UnknownPipeline,
    Unparsed,
    schema_fields,
)
from atai_magics.ui.pipelines import PipelinesView, pipelines_view
from tests.conftest import LocalBackend

MSC, AD = machine_state.KEY, activity_detection.KEY
SCHEMAS = {MSC: machine_state.USER_SCHEMA, AD: activity_detection.USER_SCHEMA}
RESERVED = "".join(chr(c) for c in range(0xE000, 0xE020))
PIECES = ["{{", "}}", "{{ x }}", "yes", "null", "1e3", "#", ": ", "- ", "\n", "'", '"', "\\", " "]
TEXT = st.lists(
    st.characters(codec="utf-8", exclude_characters=RESERVED) | st.sampled_from(PIECES),
    max_size=8,
).map("".join)
"""Any text a cell can hold, rich in what YAML or ``{{ }}`` would read differently."""
CHECKED = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- fixtures ------------------------------------------------------------------------------


class Backend:
    """The session's backend, with a few uploaded files and one cached resolver."""

    def __init__(self, local: LocalBackend) -> None:
        self.local = local
        self.client = local.client()
        self.resolver = ClientResolver(self.client)
        tag = uuid.uuid4().hex[:8]
        saw = "ts,x\n" + "".join(f"{i},{i % 5}\n" for i in range(80))
        ramp = "ts,x\n" + "".join(f"{i},{i / 80:.4f}\n" for i in range(80))
        self.saw, self.ramp, self.prompts = f"saw-{tag}.csv", f"ramp-{tag}.csv", f"p-{tag}.jsonl"
        self.client.upload_bytes(saw.encode(), self.saw)
        self.client.upload_bytes(ramp.encode(), self.ramp)
        self.client.upload_bytes(b'{"prompt": "is the pump on?"}\n', self.prompts, "text/plain")

    def form(self, key: str, **kwargs: Any) -> ParamsForm:
        """A form with valid inputs and required settings (``minimal`` values)."""
        form = ParamsForm(key, self.client, **kwargs)
        if key == MSC:
            form.set_inputs("worker.inference", [self.ramp])
            form.set_inputs("worker.n_shots", [(self.saw, "saw"), (self.ramp, "ramp")])
        else:
            form.set_inputs("worker.data", [self.prompts])
        fill_required(form)
        return form

    def request(self, cell: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
        """The body ``%%atai_job`` would send for this cell (SpecError if it would not)."""
        line, body = cell.split("\n", 1)
        assert line.startswith("%%atai_job")
        return validate(parse_cell(body, namespace), self.resolver)


def fill_required(form: ParamsForm) -> None:
    if form.model.key == MSC:
        form.set("reader_config.data_columns", ["x"])
        form.set("reader_config.timestamp_column", "ts")
        form.set("reader_config.window_size", 8)
        form.set("reader_config.step_size", 1)


@pytest.fixture(scope="module")
def backend(local_backend: LocalBackend) -> Backend:
    return Backend(local_backend)


@pytest.fixture(scope="module")
def forms(backend: Backend) -> dict[str, ParamsForm]:
    """One form per pipeline, reused by the property tests (reset per example)."""
    return {key: backend.form(key) for key in (MSC, AD)}


def assert_round_trip(form: ParamsForm, backend: Backend) -> dict[str, Any]:
    assert form.problems == [] and form.valid
    body = backend.request(form.to_cell())
    assert body["parameters"] == form.value
    return body


def config_at(value: dict[str, Any], f: Field) -> Any:
    node: Any = value.get(f.path[0], {}).get("config", {})
    for key in f.path[1:]:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


# --- every enum value and every numeric bound ---------------------------------------------


def _cases() -> Iterator[Any]:
    for key, schema in SCHEMAS.items():
        for f in schema_fields(schema, "worker"):
            if not isinstance(f, Field):
                continue
            for value in f.enum:
                yield pytest.param(key, f.path, value, id=f"{key}:{f.label}={value}")
            if f.kind in ("integer", "number"):
                for name, value in _bounds(f):
                    yield pytest.param(key, f.path, value, id=f"{key}:{f.label}@{name}")


def _bounds(f: Field) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    nudge_up = (lambda v: v + 1) if f.kind == "integer" else (lambda v: math.nextafter(v, 1e9))
    nudge_down = (lambda v: v - 1) if f.kind == "integer" else (lambda v: math.nextafter(v, -1e9))
    if f.minimum is not None:
        found.append(("min", f.minimum))
    if f.maximum is not None:
        found.append(("max", f.maximum))
    if f.exclusive_minimum is not None:
        found.append(("xmin", nudge_up(f.exclusive_minimum)))
    if f.exclusive_maximum is not None:
        found.append(("xmax", nudge_down(f.exclusive_maximum)))
    return found


@pytest.mark.parametrize(("key", "path", "value"), list(_cases()))
def test_each_enum_value_and_bound_makes_a_valid_cell(
    backend: Backend, forms: dict[str, ParamsForm], key: str, path: tuple[str, ...], value: Any
) -> None:
    form = forms[key]
    form.reset()
    fill_required(form)
    form.set(path, value)
    f = form.model.field(path)
    assert form.model.state[f.path] == value
    body = assert_round_trip(form, backend)
    sent = config_at(body["parameters"], f)
    assert sent == (None if f.has_default and value == f.default else value)


def test_both_pipelines_have_enums_and_bounds() -> None:
    ids = [c.id for c in _cases()]
    assert (
        f"{MSC}:model_type=omega_1_5_base" in ids and f"{MSC}:reader_config.window_size@min" in ids
    )
    assert f"{AD}:generation.max_new_tokens@max" in ids and f"{AD}:generation.top_p@max" in ids


@pytest.mark.parametrize(("key", "label"), [(MSC, "batch_size"), (AD, "generation.temperature")])
def test_out_of_bounds_is_reported_refused_and_marked(
    backend: Backend, forms: dict[str, ParamsForm], key: str, label: str
) -> None:
    form = forms[key]
    form.reset()
    fill_required(form)
    f = form.model.field(label.split("."))
    assert f.minimum is not None
    below = f.minimum - 1
    form.set(label, below)  # the number box clamps, as a user typing -1 sees
    assert form.model.state[f.path] == f.minimum and form.valid
    form.model.state[f.path] = below  # the model itself takes any value
    form.refresh()
    assert not form.valid and form._submit.disabled
    message = f"must be ≥ {f.minimum}"
    assert [str(p) for p in form.problems] == [f"{f.label}: {message}"]
    assert message in form._editors[f.path].message.value and "1 problem" in form._status.value
    with pytest.raises(ParamsInvalid, match=message):
        form.to_cell()
    marked = form.to_cell(check=False)
    assert f"# problem: {f.label}: {message}\n" in marked
    with pytest.raises(SpecError, match=f.name):  # parses; the magic refuses it too
        backend.request(marked)
    form.reset()
    fill_required(form)


def test_a_number_without_default_is_text_and_reports_bad_entries(
    backend: Backend, forms: dict[str, ParamsForm]
) -> None:
    form = forms[MSC]
    form.reset()
    fill_required(form)
    path = ("worker", "reader_config", "window_size")
    box = form._editors[path].widget
    for text, message in [("1", "must be ≥ 2"), ("eight", "not an integer"), ("2.5", "not an")]:
        box.value = text
        assert not form.valid and message in form._editors[path].message.value
    box.value = ""
    assert [str(p) for p in form.problems] == ["reader_config.window_size: required"]
    box.value = " 16 "
    assert form.model.state[path] == 16
    assert (
        assert_round_trip(form, backend)["parameters"]["worker"]["config"]["reader_config"][
            "window_size"
        ]
        == 16
    )


# --- random states (hypothesis) -----------------------------------------------------------


def in_schema(f: Field) -> st.SearchStrategy[Any]:
    """Values the schema accepts for ``f`` (None: not set, for optional fields)."""
    if f.kind == "enum":
        values: st.SearchStrategy[Any] = st.sampled_from(f.enum)
    elif f.kind == "boolean":
        values = st.booleans()
    elif f.kind == "integer":
        low = f.minimum if f.minimum is not None else -(10**6)
        high = f.maximum if f.maximum is not None else low + 10**6
        values = st.integers(int(low), int(high))
    elif f.kind == "number":
        low = f.minimum if f.minimum is not None else -1e9
        high = f.maximum if f.maximum is not None else 1e9
        values = st.floats(low, high, allow_nan=False, allow_infinity=False)
    elif f.kind == "strings":
        size = max(f.min_items, 1 if f.required else 0)
        values = st.lists(TEXT.filter(bool), min_size=size, max_size=4, unique=f.unique_items)
    else:
        values = TEXT.filter(bool) if f.required else TEXT
    return values if f.required or f.has_default else st.none() | values


@st.composite
def form_states(draw: st.DrawFn, key: str) -> dict[tuple[str, ...], Any]:
    fields = [e for e in schema_fields(SCHEMAS[key], "worker") if isinstance(e, Field)]
    return {f.path: draw(in_schema(f)) for f in fields}


def _check_state(
    form: ParamsForm,
    backend: Backend,
    state: dict[tuple[str, ...], Any],
    name: str,
    workers: int,
) -> None:
    form.reset()
    for path, value in state.items():
        form.set(path, value)
    form._name.value = name
    form._parallelism["worker"].value = workers
    body = assert_round_trip(form, backend)
    assert body["name"] == name.strip()
    sent_workers = body["parameters"].get("worker", {}).get("parallelism")
    assert sent_workers == (
        None if workers == form.model.default_parallelism["worker"] else workers
    )
    for f in form.model.fields:
        value, sent = state[f.path], config_at(body["parameters"], f)
        if value is None or value in ("", []) or (f.has_default and value == f.default):
            assert sent is None, f.label
        else:
            assert sent == value and type(sent) is type(form.model.state[f.path]), f.label


@CHECKED
@given(state=form_states(MSC), name=TEXT.filter(str.strip), workers=st.integers(1, 8))
def test_msc_form_state_to_cell_to_same_parameters(
    backend: Backend, forms: dict[str, ParamsForm], state: dict[Any, Any], name: str, workers: int
) -> None:
    _check_state(forms[MSC], backend, state, name, workers)


@CHECKED
@given(state=form_states(AD), name=TEXT.filter(str.strip), workers=st.integers(1, 8))
def test_ad_form_state_to_cell_to_same_parameters(
    backend: Backend, forms: dict[str, ParamsForm], state: dict[Any, Any], name: str, workers: int
) -> None:
    _check_state(forms[AD], backend, state, name, workers)


def anything(f: Field) -> st.SearchStrategy[Any]:
    """Values of the right type, in or out of bounds, set or not."""
    if f.kind == "integer":
        return st.none() | st.integers(-(10**4), 10**4)
    if f.kind == "number":
        return st.none() | st.floats(-10.0, 10.0)
    if f.kind == "strings":
        return st.none() | st.lists(TEXT, max_size=3)
    return in_schema(f)


@CHECKED
@given(data=st.data(), key=st.sampled_from([MSC, AD]))
def test_live_validation_agrees_with_the_magic(
    backend: Backend, data: st.DataObject, key: str
) -> None:
    model = ParamsModel(backend.resolver.pipeline(key, None))
    model.port_items = (
        {
            "worker.inference": [backend.ramp],
            "worker.n_shots": [{"file_id": backend.saw, "class": "a"}],
        }
        if key == MSC
        else {"worker.data": [backend.prompts]}
    )
    for f in model.fields:
        model.state[f.path] = data.draw(anything(f), label=f.label)
    problems = model.problems()
    cell = model.to_cell(check=False)  # always a cell the parser reads
    event("invalid" if problems else "valid")
    if problems:
        with pytest.raises(SpecError):
            backend.request(cell)
    else:
        assert backend.request(cell)["parameters"] == model.value


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(config=st.dictionaries(TEXT, JSON, min_size=1, max_size=4))
def test_the_emitter_writes_any_json_data_back_unchanged(config: dict[str, Any]) -> None:
    body = "name: n\npipeline: p\nconfig:\n" + "\n".join(cell_yaml.block(config, 2)) + "\n"
    assert parse_cell(body, {"x": "INTERPOLATED"}).config == config


# --- strings the cell must keep as they are ----------------------------------------------

TRICKY = [
    "yes", "No", "on", "null", "~", "true", "1e3", "0x1F", ".inf", "1_000", "2001-12-14",
    "#", "a #b", ": ", "a: b", "- a", "? x", "*alias", "&anchor", "!tag", "%", "@", "`",
    "'", '"', "\\", "a\nb", "\t", " lead", "trail ", "{{x}}", "{{ x }}", "a{{b}}c", "{{{",
    "}}", "{a: 1}", "[a]", "Müller", "\u2028", "\x85", "\ufeff", "\x00\x7f", "😀",
]  # fmt: skip


@pytest.mark.parametrize("text", TRICKY)
def test_strings_round_trip_and_braces_are_not_interpolated(
    backend: Backend, forms: dict[str, ParamsForm], text: str
) -> None:
    form = forms[AD]
    form.reset()
    form.set("model_variant", text)
    form._name.value = f"n {text}"
    body = backend.request(form.to_cell(), {"x": "INTERPOLATED"})
    assert body["parameters"]["worker"]["config"]["model_variant"] == text
    assert body["name"] == f"n {text}".strip()
    form.reset()
    form._name.value = AD


def test_a_character_a_cell_cannot_hold_is_refused(forms: dict[str, ParamsForm]) -> None:
    form = forms[AD]
    form.reset()
    form.set("model_variant", "a\ue000b")
    assert [p.section for p in form.problems] == ["cell"] and "U+E000" in form._status.value
    for check in (True, False):
        with pytest.raises(ParamsInvalid, match="U\\+E000"):
            form.to_cell(check=check)
    assert "contains U+E000, which a cell cannot hold" in repr(form)
    form.reset()


# --- the cell, the buttons, files= --------------------------------------------------------


def test_defaults_are_shown_but_not_written(backend: Backend) -> None:
    form = backend.form(AD)
    f = form.model.field(("generation", "temperature"))
    assert (
        form._editors[f.path].widget.value == 0.7
        and "default 0.7" in form._editors[f.path].widget.tooltip
    )
    assert form._editors[f.path].widget.tooltip.startswith("Sampling temperature.")
    assert form.value == {} and "config:" not in form.to_cell()
    form.set("generation.temperature", 1.5)
    form.set("batch_size", 16)  # its default: still not written
    assert form.value == {"worker": {"config": {"generation": {"temperature": 1.5}}}}
    assert form.to_cell().endswith("config:\n  generation:\n    temperature: 1.5\n")
    form._var.value = "job"
    assert form.to_cell().startswith("%%atai_job job\nname: activity-detection\n")
    assert_round_trip(form, backend)
    form._parallelism["worker"].value = 2
    assert form.to_cell().endswith("    temperature: 1.5\nparallelism: 2\n")
    assert assert_round_trip(form, backend)["parameters"]["worker"]["parallelism"] == 2
    form._parallelism["worker"].value = 1  # the pipeline's default: left out again
    assert "parallelism" not in form.to_cell() and "parallelism" not in form.value["worker"]


def test_insert_cell_below_uses_set_next_input(
    backend: Backend, ipython: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    inserted: list[tuple[str, bool]] = []
    monkeypatch.setattr(
        ipython, "set_next_input", lambda text, replace: inserted.append((text, replace))
    )
    form = backend.form(MSC)
    form._insert.click()
    assert inserted == [(form.to_cell(), False)] and form.notice.startswith("Insert: ")
    form.set("reader_config.timestamp_column", "")
    form._insert.click()
    assert inserted[-1][0].startswith(
        "%%atai_job\n# problem: reader_config.timestamp_column: required\n"
    )


@pytest.fixture
def shell(
    local_backend: LocalBackend, ipython: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The test shell with the magics bound to the session's backend; cells do not wait."""
    monkeypatch.delenv("ATAI_API_KEY", raising=False)
    monkeypatch.delenv("ATAI_API_ENDPOINT", raising=False)
    monkeypatch.setenv("ATAI_MAGICS_WAIT", "0")
    magics = AtaiMagics(ipython)
    magics.session.settings.local_home = str(local_backend.info.home)
    magics.session.settings.journal = str(tmp_path / "journal.jsonl")
    ipython.register_magics(magics)
    yield ipython
    magics.session.reset()


def test_submit_runs_the_cell_through_the_magic(backend: Backend, shell: Any, capsys: Any) -> None:
    form = ParamsForm(MSC, name=f"form-{uuid.uuid4().hex[:8]}")  # the extension's session
    assert form._session is shell.magics_manager.registry["AtaiMagics"].session
    form.set_inputs("worker.inference", [backend.ramp])
    form.set_inputs("worker.n_shots", [(backend.saw, "saw"), (backend.ramp, "ramp")])
    fill_required(form)
    form.set("classifier_config.n_neighbors", 3)
    creates = backend.local.handled("create_job")
    form._submit.click()
    assert form.job is not None, form.notice
    assert form.notice == f"Submit: submitted {form.job.id}"
    assert backend.local.handled("create_job") == creates + 1
    assert f"Submitted '{form.model.name}' to LOCAL:" in capsys.readouterr().out
    assert not [k for k in shell.user_ns if k.startswith("_atai_params_job")]
    assert form.job.wait(timeout=120).status.value == "COMPLETED"
    sent = backend.client.get_job(form.job.id).parameters["worker"].config
    assert sent == form.value["worker"]["config"]


def test_submit_with_a_client_creates_the_job_directly(backend: Backend) -> None:
    form = backend.form(AD, name=f"direct-{uuid.uuid4().hex[:8]}")
    form.set("generation.max_new_tokens", 8192)
    creates = backend.local.handled("create_job")
    job = form.submit()
    assert form.job is job and backend.local.handled("create_job") == creates + 1
    assert backend.client.get_job(job.id).parameters["worker"].config == {
        "generation": {"max_new_tokens": 8192}
    }
    form.set_inputs("worker.data", [])
    assert form._submit.disabled
    form._submit.click()
    assert form.notice.startswith("Submit failed: the form is not a valid job")
    assert backend.local.handled("create_job") == creates + 1 and form.job is job


class Chooser(traitlets.HasTraits):
    """Stands in for ``ui.files.FileChooser``: ``value`` is the job's inputs mapping."""

    value = traitlets.Dict()


def test_a_file_chooser_supplies_the_inputs(backend: Backend) -> None:
    chooser = Chooser()
    form = ParamsForm(MSC, backend.client, files=chooser)
    fill_required(form)
    assert not form.valid and "worker.inference: required" in form._status.value
    chooser.value = {
        "worker.inference": [{"file_id": backend.ramp}],
        "worker.n_shots": [
            {"file_id": backend.saw, "metadata": {"class": "saw"}},
            {"file_id": backend.ramp, "metadata": {"class": "{{ramp}}"}},
        ],
    }
    assert form.valid
    body = assert_round_trip(form, backend)
    assert body["inputs"] == chooser.value


# --- text outside a front end --------------------------------------------------------------


def test_the_form_reads_as_its_cell(backend: Backend, ipython: Any) -> None:
    form = backend.form(MSC)
    text = repr(form)
    assert text.startswith(f"Parameters of {MSC}@1.1.1 (Machine State Classification): valid\n")
    assert text.endswith(form.to_cell())
    bundle = form._repr_mimebundle_()
    assert bundle is not None and bundle["text/plain"] == text
    data, _ = ipython.display_formatter.format(form)
    assert data["text/plain"] == text
    form.set_inputs("worker.n_shots", [(backend.saw, "")])
    assert "1 problem(s)" in repr(
        form
    ) and f"# problem: worker.n_shots: {backend.saw} needs a class" in repr(form)


def test_pipelines_view_lists_and_details(backend: Backend) -> None:
    listing = atai_magics.ui.pipelines_view(backend.client)
    assert isinstance(listing, PipelinesView)
    text = listing.text()
    assert f"  {AD}@1.1.0  " in text and f"  {MSC}@1.1.1  Machine State Classification" in text
    assert "Answers one prompt per JSONL line." in text and "on LOCAL" in text
    bundle = listing._repr_mimebundle_()
    assert bundle["text/plain"] == text == repr(listing)
    assert f"<code>{MSC}</code>" in bundle["text/html"]

    detail = pipelines_view(backend.client, MSC).text()
    assert detail.startswith(f"{MSC}@1.1.1: Machine State Classification\n")
    assert "  worker.n_shots (required, each file needs a class) — " in detail
    assert "  worker.fine_tune_checkpoint (optional) — " in detail
    assert "  reader_config (required) — How input CSVs" in detail
    assert "    window_size: integer ≥ 2, required — Rows per window" in detail
    assert "  model_type: one of omega_1_4_base, omega_1_3_surface" in detail
    assert detail.endswith(f"form: atai_magics.ui.ParamsForm('{MSC}')")
    assert (
        "max_new_tokens: integer ≥ 1 ≤ 8192, default 512"
        in pipelines_view(backend.client, AD).text()
    )
    with pytest.raises(UnknownPipeline, match=f"did you mean '{MSC}'"):
        pipelines_view(backend.client, "machine-state")


# --- schemas the local pipelines do not have ----------------------------------------------


class FakeResolver:
    """A `spec.Resolver` for a hand-written pipeline; every file exists."""

    def __init__(self, schema: PipelineSchema) -> None:
        self.schema = schema

    def pipeline(self, key: str, version: str | None) -> PipelineSchema:
        return self.schema

    def missing_files(self, file_ids: list[str]) -> set[str]:
        return set()


ODD_SCHEMA: dict[str, Any] = {
    "$defs": {"ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}},
    "definitions": {"level": {"enum": [1, 2, "high"], "default": 1}},
    "type": "object",
    "properties": {
        "ratio": {"$ref": "#/$defs/ratio", "description": "a ratio"},
        "level": {"$ref": "#/definitions/level"},
        "label": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "seed": {"type": "integer", "minimum": 0, "exclusiveMaximum": 10},
        "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        "points": {"type": "array", "items": {"type": "object"}},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "loop": {"$ref": "#/properties/loop"},
    },
    "additionalProperties": False,
}


def test_refs_combinators_and_exclusive_bounds() -> None:
    schema = PipelineSchema(
        id="p", pipeline_key="odd", pipeline_version="1", user_schema=ODD_SCHEMA,
        inputs={"a.data": {"required": True}, "b.data": {"required": False}},
    )  # fmt: skip
    model = ParamsModel(schema)
    assert model.components == ["a", "b"] and model.fields == []  # config is per component
    one = PipelineSchema(
        id="p", pipeline_key="odd", pipeline_version="1", user_schema=ODD_SCHEMA,
        inputs={"w.data": {"required": True}},
    )  # fmt: skip
    model = ParamsModel(one)
    kinds = {f.label: (f.kind, f.summary()) for f in model.fields}
    assert kinds == {
        "ratio": ("number", "number > 0 < 1"),
        "level": ("enum", "one of 1, 2, high, default 1"),
        "label": ("string", "string"),
        "seed": ("integer", "integer ≥ 0 < 10"),
        "either": ("json", "JSON value"),
        "points": ("json", "JSON value"),
        "tags": ("strings", "list of strings"),
        "loop": ("json", "JSON value"),
    }
    resolver = FakeResolver(one)
    model.port_items = {"w.data": ["f.csv"]}
    good = {"ratio": 0.5, "level": "high", "label": "{{x}}", "seed": 9}
    good |= {"either": "text", "points": [{"x": 1}], "tags": ["a", "b"]}
    for label, value in good.items():
        model.set_value((label,), value)
    assert model.problems() == []
    body = validate(parse_cell(model.to_cell().split("\n", 1)[1]), resolver)
    assert body["parameters"] == model.value == {"w": {"config": good}}
    bad = {"ratio": 1, "seed": 10, "tags": ["a", "a"], "either": Unparsed("{", "no")}
    for label, value in bad.items():
        model.set_value((label,), value)
    assert {p.label: p.message for p in model.problems()} == {
        "ratio": "must be < 1",
        "seed": "must be < 10",
        "either": "no",
        "tags": "['a', 'a'] has non-unique elements",
    }
    with pytest.raises(SpecError):
        validate(parse_cell(model.to_cell(check=False).split("\n", 1)[1]), resolver)
    draft4 = {"properties": {"n": {"type": "integer", "minimum": 0, "exclusiveMinimum": True}}}
    (old,) = schema_fields(draft4, "w")
    assert isinstance(old, Field) and old.summary() == "integer > 0"


def test_several_components_write_parameters() -> None:
    user = {
        "type": "object",
        "properties": {
            "reader": {"type": "object", "properties": {"rows": {"type": "integer"}}},
            "writer": {
                "type": "object",
                "properties": {"fmt": {"enum": ["csv", "json"], "default": "csv"}},
            },
        },
    }
    schema = PipelineSchema(
        id="p", pipeline_key="two", pipeline_version="2", user_schema=user,
        inputs={"reader.data": {"required": True}, "writer.extra": {}},
    )  # fmt: skip
    model = ParamsModel(schema)
    assert [f.path for f in model.fields] == [("reader", "rows"), ("writer", "fmt")]
    model.port_items = {"reader.data": ["f.csv"]}
    model.set_value(("reader", "rows"), 5)
    model.set_value(("writer", "fmt"), "json")
    model.parallelism["writer"] = 3
    cell = model.to_cell()
    assert "parameters:\n  reader:\n    config:\n      rows: 5\n" in cell
    body = validate(parse_cell(cell.split("\n", 1)[1]), FakeResolver(schema))
    assert (
        body["parameters"]
        == model.value
        == {
            "reader": {"config": {"rows": 5}},
            "writer": {"config": {"fmt": "json"}, "parallelism": 3},
        }
    )
