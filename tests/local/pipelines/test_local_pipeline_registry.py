"""The registry: built-ins, schemas, config merging and entry-point plug-ins."""

from __future__ import annotations

import importlib.metadata
import pickle
from dataclasses import replace
from typing import Any

import pytest

from atai_magics.local import pipelines
from atai_magics.local.pipelines import activity_detection, machine_state
from atai_magics.local.pipelines.base import LocalPipeline, RunContext

PORT_FIELDS = {"name", "description", "mode", "distribute", "required", "tracked"}


def defaults_of(schema: dict[str, Any]) -> dict[str, Any]:
    """Independent re-implementation of 'the defaults a schema declares', for comparison."""
    out: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        if "default" in prop:
            out[name] = prop["default"]
        elif prop.get("type") == "object":
            sub = defaults_of(prop)
            if sub:
                out[name] = sub
    return out


def assert_subset(part: dict[str, Any], whole: dict[str, Any], where: str = "") -> None:
    for key, value in part.items():
        assert key in whole, f"{where}{key} has no default in the schema"
        if isinstance(value, dict):
            assert_subset(value, whole[key], f"{where}{key}.")
        else:
            assert whole[key] == value, f"{where}{key}: {whole[key]!r} != {value!r}"


def test_builtins() -> None:
    found = {p.key: p for p in pipelines.builtin_pipelines()}
    assert set(found) == {"machine-state-classification", "activity-detection"}
    assert found["machine-state-classification"].version == "1.1.1"
    assert found["activity-detection"].version == "1.1.0"
    assert found["activity-detection"].max_parallelism == 1
    for p in found.values():
        assert "local stand-in" in p.description.lower()
        assert p.component == "worker"


@pytest.mark.parametrize("pipeline", pipelines.builtin_pipelines(), ids=lambda p: p.key)
def test_schemas_are_json_schema_and_match_defaults(pipeline: LocalPipeline) -> None:
    for schema in (pipeline.user_schema, pipeline.config_schema):
        assert schema["type"] == "object"
        assert isinstance(schema["properties"], dict) and schema["properties"]
        assert schema["additionalProperties"] is False
        for prop in schema["properties"].values():
            assert "type" in prop and "description" in prop
    assert set(pipeline.user_schema["properties"]) <= set(pipeline.config_schema["properties"])
    worker = pipeline.default_config["worker"]
    assert worker["parallelism"] == 1
    assert_subset(worker["config"], defaults_of(pipeline.user_schema))


@pytest.mark.parametrize("pipeline", pipelines.builtin_pipelines(), ids=lambda p: p.key)
def test_schemas_validate_with_jsonschema(pipeline: LocalPipeline) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator_cls = jsonschema.Draft202012Validator
    for schema in (pipeline.user_schema, pipeline.config_schema):
        validator_cls.check_schema(schema)
    config = dict(pipeline.default_config["worker"]["config"])
    if pipeline.key == "machine-state-classification":
        config["reader_config"] = {
            "data_columns": ["a"],
            "timestamp_column": "t",
            "window_size": 16,
            "step_size": 1,
        }
        bad = {**config, "classifier_config": {"metric": "chebyshev"}}
        assert not validator_cls(pipeline.user_schema).is_valid(bad)
        assert not validator_cls(pipeline.user_schema).is_valid({"model_type": "omega_1_4_base"})
        real = {
            **config,
            "omega_1_5": {"base_model_path": "s3://x"},
            "data_source": {"source_type": "s3"},
        }
        assert validator_cls(pipeline.user_schema).is_valid(real)
    else:
        assert not validator_cls(pipeline.user_schema).is_valid({"generation": {"top_p": 2}})
    validator_cls(pipeline.user_schema).validate(config)
    assert not validator_cls(pipeline.user_schema).is_valid({**config, "typo_field": 1})


def test_ports_have_platform_fields() -> None:
    msc = machine_state.PIPELINE
    assert all(set(p) == PORT_FIELDS for p in msc.inputs.values())
    assert msc.inputs["worker.inference"] | {"name": "", "description": ""} == {
        "name": "",
        "description": "",
        "mode": "plain_file_list",
        "distribute": "scatter",
        "required": True,
        "tracked": True,
    }
    nshot = msc.inputs["worker.n_shots"]
    assert (nshot["mode"], nshot["distribute"], nshot["required"], nshot["tracked"]) == (
        "n_shot_file_list",
        "replicate",
        True,
        False,
    )
    ckpt = msc.inputs["worker.fine_tune_checkpoint"]
    assert (ckpt["required"], ckpt["tracked"], ckpt["distribute"]) == (False, False, "replicate")
    assert set(msc.outputs) == {"worker.results"}
    ad = activity_detection.PIPELINE
    assert set(ad.inputs) == {"worker.data"} and set(ad.outputs) == {"worker.result"}
    assert all(set(o) == {"name", "description"} for p in (msc, ad) for o in p.outputs.values())


def test_pipelines_pickle_by_reference() -> None:
    for p in pipelines.builtin_pipelines():
        clone = pickle.loads(pickle.dumps(p))
        assert clone == p
        assert clone.run is p.run


def test_merge_config_is_deep_and_pure() -> None:
    defaults: dict[str, Any] = {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": 1}
    overrides: dict[str, Any] = {"a": {"c": [3], "d": {"g": 2}}, "f": {"now": "dict"}}
    merged = pipelines.merge_config(defaults, overrides)
    assert merged == {"a": {"b": 1, "c": [3], "d": {"e": 1, "g": 2}}, "f": {"now": "dict"}}
    assert defaults == {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": 1}
    merged["a"]["c"].append(4)
    assert overrides["a"]["c"] == [3]


# --- plug-ins ------------------------------------------------------------------------------


def plugin_run(ctx: RunContext) -> None:
    ctx.event("INFO", "info", "plugin ran")


PLUGIN = LocalPipeline(
    key="echo-pipeline",
    version="0.0.1",
    name="Echo",
    description="Test plug-in",
    component="worker",
    inputs={},
    outputs={},
    default_config={"worker": {"parallelism": 1, "config": {}}},
    user_schema={"type": "object", "properties": {}},
    config_schema={"type": "object", "properties": {}},
    run=plugin_run,
)


class FakeEntryPoint:
    def __init__(self, name: str, target: Any) -> None:
        self.name, self.value, self.group = name, f"fake_module:{name}", pipelines.ENTRY_POINT_GROUP
        self._target = target

    def load(self) -> Any:
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, eps: list[FakeEntryPoint]) -> None:
    def entry_points(**kwargs: Any) -> list[FakeEntryPoint]:
        assert kwargs == {"group": "atai_magics.local_pipelines"}
        return eps

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_plugins_load_and_broken_ones_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    factory_made = replace(PLUGIN, key="factory-pipeline")
    fake_entry_points(
        monkeypatch,
        [
            FakeEntryPoint("echo", PLUGIN),
            FakeEntryPoint("factory", lambda: factory_made),
            FakeEntryPoint("broken", ImportError("No module named 'fake_module'")),
            FakeEntryPoint("wrong", {"key": "not-a-pipeline"}),
            FakeEntryPoint("raises", lambda: 1 / 0),
        ],
    )
    loaded = pipelines.load_pipelines()
    assert set(loaded) == {
        "machine-state-classification",
        "activity-detection",
        "echo-pipeline",
        "factory-pipeline",
    }
    assert loaded["echo-pipeline"] is PLUGIN
    warnings = pipelines.plugin_warnings()
    assert len(warnings) == 3
    assert "'broken'" in warnings[0] and "No module named 'fake_module'" in warnings[0]
    assert "'wrong'" in warnings[1] and "expected a LocalPipeline" in warnings[1]
    assert "'raises'" in warnings[2] and "ZeroDivisionError" in warnings[2]


def test_plugin_may_replace_a_builtin_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    mine = replace(PLUGIN, key="activity-detection", version="9.9.9")
    fake_entry_points(monkeypatch, [FakeEntryPoint("my-ad", mine)])
    loaded = pipelines.load_pipelines()
    assert loaded["activity-detection"].version == "9.9.9"
    assert loaded["machine-state-classification"] is machine_state.PIPELINE
    assert pipelines.plugin_warnings() == [
        "Local pipeline plug-in 'my-ad' replaces the built-in 'activity-detection'"
    ]


def test_entry_point_listing_failure_keeps_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(**kwargs: Any) -> list[Any]:
        raise RuntimeError("corrupt METADATA")

    monkeypatch.setattr(importlib.metadata, "entry_points", boom)
    loaded = pipelines.load_pipelines()
    assert set(loaded) == {"machine-state-classification", "activity-detection"}
    assert "corrupt METADATA" in pipelines.plugin_warnings()[0]


def test_no_plugins_no_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, [])
    assert len(pipelines.load_pipelines()) == 2
    assert pipelines.plugin_warnings() == []
