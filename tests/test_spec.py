"""The ``%%atai_job`` cell format: shorthands, interpolation, validation and the bad corpus."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atai_magics.api.errors import NotFound
from atai_magics.api.models import Pipeline, PipelineList, PipelineSchema
from atai_magics.local.pipelines import load_pipelines
from atai_magics.spec import (
    MAX_CELL_BYTES,
    ClientResolver,
    JobSpec,
    PipelineNotFound,
    SpecError,
    SpecErrors,
    body_hash,
    interpolate,
    load_cell,
    parse_cell,
    validate,
)

_spec = importlib.util.spec_from_file_location(
    "spec_corpus_cases", Path(__file__).parent / "spec_corpus" / "cases.py"
)
assert _spec and _spec.loader
corpus = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = corpus
_spec.loader.exec_module(corpus)

PIPELINES = load_pipelines()
MSC = PIPELINES["machine-state-classification"]
AD = PIPELINES["activity-detection"]


def schema_of(p: Any) -> PipelineSchema:
    return PipelineSchema(
        id=f"ppl_{p.key}",
        pipeline_key=p.key,
        pipeline_version=p.version,
        user_schema=p.user_schema,
        config_schema=p.config_schema,
        inputs=p.inputs,
        outputs=p.outputs,
    )


class FakeBackend:
    """A resolver from the real local pipeline schemas, and a create endpoint that counts."""

    def __init__(self, files: list[str] = corpus.FILES) -> None:
        self.schemas = {p.key: schema_of(p) for p in PIPELINES.values()}
        self.files = set(files)
        self.created: list[dict[str, Any]] = []
        self.schema_calls = 0
        self.file_checks = 0

    def pipeline(self, key: str, version: str | None) -> PipelineSchema:
        self.schema_calls += 1
        schema = self.schemas.get(key)
        if schema is None or version not in (None, schema.pipeline_version):
            raise PipelineNotFound(key, version, sorted(self.schemas))
        return schema

    def missing_files(self, file_ids: list[str]) -> set[str]:
        self.file_checks += 1
        return set(file_ids) - self.files

    def known_files(self) -> list[str]:
        return sorted(self.files)

    def create_job(self, body: dict[str, Any]) -> None:
        self.created.append(body)


NAMESPACE: dict[str, Any] = {
    "test_files": ["test1.csv", "test2.csv"],
    "run": "r1",
    "settings": SimpleNamespace(name="x", _secret="s"),
    "sizes": {"window": 64, "step": 16},
    "_hidden": 1,
}


def submit(
    cell: str | bytes, backend: FakeBackend, namespace: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the magic does: parse, validate, and only then create."""
    spec = parse_cell(cell, NAMESPACE if namespace is None else namespace)
    body = validate(spec, backend)
    backend.create_job(body)
    return body


MSC_BODY = {
    "name": "tep",
    "pipeline_type": "batch",
    "pipeline_key": "machine-state-classification",
    "inputs": {
        "worker.inference": [{"file_id": "test1.csv"}, {"file_id": "test2.csv"}],
        "worker.n_shots": [
            {"file_id": "normal.csv", "metadata": {"class": "normal"}},
            {"file_id": "fault.csv", "metadata": {"class": "fault"}},
        ],
    },
    "parameters": {
        "worker": {
            "parallelism": 2,
            "config": {
                "reader_config": {
                    "data_columns": ["a", "b", "c"],
                    "timestamp_column": "time",
                    "window_size": 64,
                    "step_size": 16,
                },
                "classifier_config": {"metric": "euclidean"},
            },
        }
    },
}

AD_BODY = {
    "name": "ad",
    "pipeline_type": "batch",
    "pipeline_key": "activity-detection",
    "pipeline_version": "1.1.0",
    "inputs": {"worker.data": [{"file_id": "prompts.jsonl"}]},
    "parameters": {
        "worker": {
            "config": {"generation": {"temperature": 0.2, "max_new_tokens": 128}, "batch_size": 8}
        }
    },
}


# --- valid cells --------------------------------------------------------------------------


def test_valid_msc_cell_validates_to_the_exact_body() -> None:
    backend = FakeBackend()
    assert submit(corpus.MSC, backend) == MSC_BODY
    assert backend.created == [MSC_BODY]
    assert backend.file_checks == 1


def test_valid_ad_cell_validates_to_the_exact_body() -> None:
    body = submit(corpus.AD, FakeBackend())
    assert body == AD_BODY


def test_json_body_pastes_unchanged() -> None:
    cell = json.dumps(MSC_BODY, indent=2)
    assert submit(cell, FakeBackend()) == MSC_BODY
    assert submit(json.dumps(MSC_BODY), FakeBackend()) == MSC_BODY


def test_canonical_yaml_equals_shorthand() -> None:
    cell = yaml.safe_dump(MSC_BODY, sort_keys=False)
    assert submit(cell, FakeBackend()) == MSC_BODY


def test_pipeline_shorthands() -> None:
    spec = parse_cell("name: a\npipeline: activity-detection@1.1.0\n")
    assert spec.request.pipeline_key == "activity-detection"
    assert spec.request.pipeline_version == "1.1.0"
    assert spec.request.pipeline_type == "batch"
    assert spec.where(("pipeline_version",)) == (2, 11)
    spec = parse_cell("name: a\npipeline_key: k\npipeline_version: 1.10\npipeline_type: training\n")
    assert spec.request.pipeline_version == "1.10"  # the source text, not the float 1.1
    assert spec.request.pipeline_type == "training"


def test_input_item_forms() -> None:
    cell = """\
name: x
pipeline: machine-state-classification
inputs:
  worker.inference: [a.csv, {file_id: b.csv}, {file_id: c.csv, metadata: {site: 3}}]
  worker.n_shots:
    - {file_id: n.csv, class: normal}
    - {file_id: f.csv, metadata: {class: fault, note: x}}
  worker.fine_tune_checkpoint:
    - {kind: checkpoint, checkpoint_id: ckp_1}
"""
    spec = parse_cell(cell)
    assert spec.request.to_body()["inputs"] == {
        "worker.inference": [
            {"file_id": "a.csv"},
            {"file_id": "b.csv"},
            {"file_id": "c.csv", "metadata": {"site": 3}},
        ],
        "worker.n_shots": [
            {"file_id": "n.csv", "metadata": {"class": "normal"}},
            {"file_id": "f.csv", "metadata": {"class": "fault", "note": "x"}},
        ],
        "worker.fine_tune_checkpoint": [{"kind": "checkpoint", "checkpoint_id": "ckp_1"}],
    }
    assert spec.where(("inputs", "worker.n_shots", 0, "metadata", "class")) == (6, 31)
    assert spec.where(("inputs", "worker.inference", 1, "file_id")) == (4, 39)


def test_explicit_parameters_and_positions() -> None:
    cell = corpus.AD.replace("config:", "parameters:\n  worker:\n    parallelism: 3\n    config:")
    cell = cell.replace("  generation", "      generation").replace(
        "  batch_size", "      batch_size"
    )
    body = submit(cell, FakeBackend())
    assert body["parameters"]["worker"]["parallelism"] == 3
    spec = parse_cell(cell)
    assert spec.where(("parameters", "worker", "config", "batch_size")) == (10, 19)
    assert spec.key_positions[("parameters", "worker", "config", "batch_size")] == (10, 7)


def test_interpolation_forms() -> None:
    ns = {
        "ids": ("a.csv", "b.csv"),
        "cfg": {"reader": {"window": 64, "cols": ["x", "y"]}},
        "obj": SimpleNamespace(label="normal", n=2),
        "n": 7,
    }
    cell = """\
name: "run-{{ n }}-{{ obj.label }}"
pipeline: machine-state-classification
inputs:
  worker.inference: {{ ids }}
  worker.n_shots: [{file_id: "{{ ids[0] }}", class: {{ obj.label }}}]
config:
  reader_config:
    data_columns: {{ cfg.reader["cols"] }}
    timestamp_column: t
    window_size: {{ cfg['reader']['window'] }}
    step_size: {{ obj.n }}
"""
    spec = parse_cell(cell, ns)
    body = spec.body()
    assert body["name"] == "run-7-normal"
    assert body["inputs"]["worker.inference"] == [{"file_id": "a.csv"}, {"file_id": "b.csv"}]
    assert body["inputs"]["worker.n_shots"] == [
        {"file_id": "a.csv", "metadata": {"class": "normal"}}
    ]
    assert body["config"]["reader_config"] == {
        "data_columns": ["x", "y"],
        "timestamp_column": "t",
        "window_size": 64,
        "step_size": 2,
    }
    # values from Python point back at their {{
    assert spec.where(("inputs", "worker.inference", 1, "file_id")) == (4, 21)
    assert spec.where(("config", "reader_config", "window_size")) == (10, 18)


def test_interpolation_converts_numpy_like_values() -> None:
    class Array:
        def tolist(self) -> list[int]:
            return [1, 2]

    tree = interpolate(load_cell("a: {{ x }}\nb: {{ y }}\n"), {"x": Array(), "y": None})
    assert tree.entries["a"][1].items[1].value == 2  # type: ignore[attr-defined]
    assert tree.entries["b"][1].value is None  # type: ignore[attr-defined]


def test_interpolation_does_not_evaluate_comments_or_code() -> None:
    calls = []

    class Spy:
        def __getattr__(self, name: str) -> Any:
            calls.append(name)
            raise AttributeError(name)

    spec = parse_cell("name: t  # {{ spy.boom }}\npipeline: k\n", {"spy": Spy()})
    assert spec.request.name == "t"
    assert calls == []


def test_dates_stay_strings_and_hash_is_stable() -> None:
    spec = parse_cell("name: 2024-01-01\npipeline: k\n")
    assert spec.request.name == "2024-01-01"
    assert spec.spec_hash == body_hash(spec.body())
    assert spec.spec_hash == parse_cell('{"pipeline": "k", "name": "2024-01-01"}').spec_hash


def test_small_aliases_are_allowed() -> None:
    cell = corpus.MSC.replace("[a, b, c]", "&cols [a, b, c]") + "name_cols: *cols\n"
    with pytest.raises(SpecError, match="unknown key 'name_cols'"):
        parse_cell(cell)
    cell = "files: &f [a, b]\n"
    assert load_cell(cell).entries["files"][1].items[1].value == "b"  # type: ignore[attr-defined]


# --- the bad-input corpus -----------------------------------------------------------------


def expected_position(case: Any) -> tuple[int, int]:
    if isinstance(case.at, tuple):
        return case.at  # type: ignore[no-any-return]
    text = case.cell if isinstance(case.cell, str) else case.cell.decode("utf-8", "replace")
    index = text.index(case.at)
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1


def test_the_corpus_is_big_enough() -> None:
    assert len(corpus.CASES) >= 45
    assert len({case.id for case in corpus.CASES}) == len(corpus.CASES)


@pytest.mark.parametrize("case", corpus.CASES, ids=lambda case: case.id)
def test_bad_cell(case: Any) -> None:
    backend = FakeBackend()
    with pytest.raises(SpecError) as info:
        submit(case.cell, backend)
    assert backend.created == []
    matching = [e for e in info.value.errors if case.message in e.message]
    assert matching, f"{case.message!r} not in {[e.message for e in info.value.errors]}"
    error = matching[0]
    assert (error.line, error.column) == expected_position(case), str(error)
    if case.suggestion:
        assert error.suggestion and case.suggestion in error.suggestion
    assert error.source_line is not None
    rendered = info.value._render_traceback_()
    assert rendered[0].startswith("SpecError: ")


def test_ten_megabyte_cell_fails_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    import atai_magics._yaml as loader

    def no_parsing(*args: Any) -> None:
        raise AssertionError("the cell was parsed")

    monkeypatch.setattr(loader, "compose", no_parsing)
    monkeypatch.setattr(loader, "mark_slots", no_parsing)
    cell = "name: t\nconfig:\n" + "  k: " + "x" * (10 * 1024 * 1024) + "\n"
    backend = FakeBackend()
    for data in (cell, cell.encode()):
        with pytest.raises(SpecError) as info:
            submit(data, backend)
        assert (info.value.line, info.value.column) == (1, 1)
        assert f"the limit is {MAX_CELL_BYTES:,}" in info.value.message
    assert backend.created == []


def test_every_problem_is_reported_at_once_in_line_order() -> None:
    cell = (
        corpus.MSC.replace("metric: euclidean", "metric: euclidian")
        .replace("window_size", "windw_size")
        .replace("test2.csv]", "nope.csv]")
    )
    with pytest.raises(SpecErrors) as info:
        submit(cell, FakeBackend())
    positions = [(e.line, e.column) for e in info.value.errors]
    assert positions == sorted(positions)
    assert len(positions) == 4  # unknown file, missing window_size, windw_size, euclidian
    assert (info.value.line, info.value.column) == positions[0]


# --- rendering ----------------------------------------------------------------------------


def test_render_traceback_is_short_with_a_caret_under_the_column() -> None:
    cell = corpus.MSC.replace("    window_size: 64", "    window_size: 64\n    windw_size: 64")
    with pytest.raises(SpecError) as info:
        submit(cell, FakeBackend())
    lines = info.value._render_traceback_()
    assert len(lines) <= 8
    assert lines[0] == (
        "SpecError: line 13, column 5: unknown key 'windw_size' in config.reader_config"
    )
    source = next(line for line in lines if "windw_size: 64" in line)
    caret = lines[lines.index(source) + 1]
    assert caret.strip() == "^"
    assert caret.index("^") == source.index("windw_size")
    assert "expected: one of data_columns, step_size, timestamp_column, window_size" in lines[3]
    assert "did you mean 'window_size'?" in lines[4]


def test_many_errors_render_a_capped_list() -> None:
    cell = "name: t\npipeline: k\n" + "".join(f"bad{i}: 1\n" for i in range(12))
    with pytest.raises(SpecErrors) as info:
        parse_cell(cell)
    text = "\n".join(info.value._render_traceback_())
    assert text.startswith("SpecError: 12 problems in the cell")
    assert "... and 7 more" in text
    assert len(info.value._render_traceback_()) <= 30


def test_long_lines_are_windowed_around_the_caret() -> None:
    cell = "name: t\npipeline: k\nparallelism: [" + "1, " * 200 + "x]\n"
    with pytest.raises(SpecError) as info:
        parse_cell(cell.replace("[", "'[", 1).replace("x]", "x]'"))
    for line in info.value._render_traceback_():
        assert len(line) < 120


# --- caching and the client resolver ------------------------------------------------------


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.pipelines = [
            Pipeline(id="ppl_old", pipeline_key=AD.key, pipeline_version="1.0.0"),
            Pipeline(id="ppl_ad", pipeline_key=AD.key, pipeline_version=AD.version),
            Pipeline(id="ppl_msc", pipeline_key=MSC.key, pipeline_version=MSC.version),
        ]
        self.files = corpus.FILES

    def list_pipelines(self, **query: Any) -> PipelineList:
        self.calls.append(("list_pipelines", query))
        offset, limit = query["offset"], 2
        rows = self.pipelines[offset : offset + limit]
        return PipelineList(total=len(self.pipelines), offset=offset, pipelines=rows)

    def get_pipeline_schema(self, pipeline_id: str) -> PipelineSchema:
        self.calls.append(("get_pipeline_schema", pipeline_id))
        for p in PIPELINES.values():
            if pipeline_id in (f"ppl_{p.key}", p.key) or (pipeline_id == "ppl_ad" and p is AD):
                return schema_of(p)
        if pipeline_id == "ppl_msc":
            return schema_of(MSC)
        raise NotFound(404, "no such pipeline")

    def get_file_metadata(self, file_id: str) -> Any:
        self.calls.append(("get_file_metadata", file_id))
        if file_id not in self.files:
            raise NotFound(404, "no such file")
        return SimpleNamespace(file_id=file_id)

    def iter_files(self) -> Any:
        self.calls.append(("iter_files", None))
        return iter(SimpleNamespace(file_id=f) for f in self.files)


def test_client_resolver_finds_newest_version_and_caches() -> None:
    client = FakeClient()
    resolver = ClientResolver(client)
    spec = parse_cell(corpus.AD.replace("@1.1.0", ""))
    assert validate(spec, resolver)["pipeline_key"] == AD.key
    assert validate(spec, resolver)["pipeline_key"] == AD.key
    schema_calls = [c for c in client.calls if c[0] == "get_pipeline_schema"]
    assert schema_calls == [("get_pipeline_schema", "ppl_ad")]
    assert sum(1 for c in client.calls if c[0] == "list_pipelines") == 2  # two pages, once
    with pytest.raises(PipelineNotFound) as info:
        resolver.pipeline("nope", None)
    assert AD.key in info.value.known


def test_client_resolver_checks_files_in_one_listing_when_many() -> None:
    client = FakeClient()
    client.files = [f"f{i}.jsonl" for i in range(30)]
    resolver = ClientResolver(client)
    ids = [f"f{i}.jsonl" for i in range(25)] + ["f99.jsonl"]
    assert resolver.missing_files(ids) == {"f99.jsonl"}
    assert [c[0] for c in client.calls] == ["iter_files"]
    assert resolver.missing_files(["f1.jsonl", "zz"]) == {"zz"}


def test_validate_is_not_fooled_by_a_spec_built_by_hand() -> None:
    spec = parse_cell(corpus.AD)
    assert isinstance(spec, JobSpec)
    spec.request.inputs.clear()
    with pytest.raises(SpecError, match=r"required input port 'worker\.data'"):
        validate(spec, FakeBackend())


# --- property: valid configs round-trip ---------------------------------------------------


def _config_strategy() -> st.SearchStrategy[dict[str, Any]]:
    reader = st.fixed_dictionaries(
        {
            "data_columns": st.lists(
                st.text("abcxyz_", min_size=1, max_size=8), min_size=1, max_size=4
            ),
            "timestamp_column": st.text("abcdefgh", min_size=1, max_size=8),
            "window_size": st.integers(2, 4096),
            "step_size": st.integers(1, 4096),
        }
    )
    classifier = st.fixed_dictionaries(
        {},
        optional={
            "n_neighbors": st.integers(3, 50),
            "metric": st.sampled_from(["euclidean", "cosine", "manhattan"]),
            "weights": st.sampled_from(["uniform", "distance"]),
            "normalize_embeddings": st.booleans(),
        },
    )
    return st.fixed_dictionaries(
        {"reader_config": reader},
        optional={
            "model_type": st.sampled_from(MSC.user_schema["properties"]["model_type"]["enum"]),
            "batch_size": st.integers(1, 10_000),
            "classifier_config": classifier,
        },
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=_config_strategy(), parallelism=st.integers(1, 8), as_json=st.booleans())
def test_valid_configs_round_trip(config: dict[str, Any], parallelism: int, as_json: bool) -> None:
    cell_body = {
        "name": "prop",
        "pipeline": MSC.key,
        "inputs": {
            "worker.inference": ["test1.csv"],
            "worker.n_shots": [{"file_id": "normal.csv", "class": "normal"}],
        },
        "config": config,
        "parallelism": parallelism,
    }
    text = json.dumps(cell_body) if as_json else yaml.safe_dump(cell_body)
    body = submit(text, FakeBackend(), {})
    assert body["parameters"] == {"worker": {"parallelism": parallelism, "config": config}}
