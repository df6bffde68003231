"""The parameter form's view-model: a pipeline's schema -> fields -> a ``%%atai_job`` cell.

No ipywidgets here (``ui.params`` draws the widget from this), so everything a form can do is
testable without a front end.

- `schema_fields` reads a ``user_schema`` into `Field`s (one per setting a widget edits) and
  `Group`s (nested objects). ``$ref`` into ``definitions``/``$defs`` is followed; a setting
  the form has no widget for (``anyOf``/``oneOf`` of several types, arrays of objects, maps
  without ``properties``, ``const``) becomes a ``json`` field: JSON text, validated as such.
- `ParamsModel` holds the form's state (path -> value; None means "not set") and turns it
  into the ``parameters`` mapping and the cell.

Defaults are shown in the form but not written into the cell: a value equal to its schema
default is left out (the pipeline applies the same default), unless the key is required.
So the cell lists what the user chose, and ``value`` is exactly the ``parameters`` of the
request the cell makes. An empty text or list means "not set".
"""

from __future__ import annotations

import difflib
import html
import json
import keyword
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]

from .._yaml import MAX_CELL_BYTES
from ..api.errors import AtaiError
from ..api.models import Pipeline, PipelineSchema, Port
from . import cell_yaml

__all__ = [
    "Field",
    "Group",
    "ParamsInvalid",
    "ParamsModel",
    "Problem",
    "UnknownPipeline",
    "Unparsed",
    "schema_fields",
]

Path = tuple[str, ...]
N_SHOT = "n_shot_file_list"


# --- the schema as fields -----------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One setting: ``path`` is (component, key, subkey, ...); ``kind`` is string, enum,
    integer, number, boolean, strings (a list of strings) or json (anything else)."""

    path: Path
    kind: str
    description: str | None = None
    required: bool = False
    """Required within its parent object."""
    default: Any = None
    has_default: bool = False
    enum: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    min_items: int = 0
    unique_items: bool = False
    schema: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.path[-1]

    def bounds(self) -> list[str]:
        """``["≥ 1", "≤ 8192"]``: the numeric bounds in words."""
        return [
            f"{sign} {_shown(bound)}"
            for sign, bound in (
                ("≥", self.minimum),
                (">", self.exclusive_minimum),
                ("≤", self.maximum),
                ("<", self.exclusive_maximum),
            )
            if bound is not None
        ]

    @property
    def label(self) -> str:
        """The dotted path below the component (``reader_config.window_size``)."""
        return ".".join(self.path[1:])

    def is_set(self, value: Any) -> bool:
        return value is not None and value != "" and value != [] and not isinstance(value, Unparsed)

    def summary(self) -> str:
        """``integer ≥ 1, default 32``: the type, bounds and default in a few words."""
        if self.kind == "enum":
            text = "one of " + ", ".join(_shown(v) for v in self.enum)
        elif self.kind in ("integer", "number"):
            text = " ".join([self.kind, *self.bounds()])
        elif self.kind == "strings":
            text = "list of strings" + (f", at least {self.min_items}" if self.min_items else "")
        else:
            text = {"boolean": "true or false", "json": "JSON value"}.get(self.kind, self.kind)
        if self.has_default:
            text += f", default {_shown(self.default)}"
        return text


@dataclass(frozen=True)
class Group:
    """A nested object of the config (drawn as a titled box)."""

    path: Path
    description: str | None = None
    required: bool = False

    @property
    def label(self) -> str:
        return ".".join(self.path[1:])


@dataclass(frozen=True)
class Unparsed:
    """Text a user typed that is not a value of its field (kept in the state to report it)."""

    text: str
    reason: str


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _deref(node: Any, root: Mapping[str, Any], seen: frozenset[str]) -> tuple[Any, frozenset[str]]:
    """``node`` with a local ``$ref`` replaced by its target (siblings of the ref win)."""
    while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
        ref = node["$ref"]
        if not ref.startswith("#/") or ref in seen:
            return {"$comment": f"unresolved {ref}"}, seen
        target: Any = root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, Mapping) else None
        seen = seen | {ref}
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        node = {**(target if isinstance(target, Mapping) else {}), **siblings}
    return node, seen


def _kind(node: Mapping[str, Any]) -> str:
    """The field kind of a property schema ("object" for a nested group)."""
    for combinator in ("anyOf", "oneOf"):
        options = node.get(combinator)
        if isinstance(options, list):
            real = [o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")]
            if len(real) == 1 and isinstance(real[0], Mapping) and len(node) == 1:
                return _kind(real[0])
            return "json"
    if any(k in node for k in ("allOf", "not", "if", "const")):
        return "json"
    if "enum" in node:
        ok = isinstance(node["enum"], list) and node["enum"]
        return "enum" if ok and all(_is_scalar(v) for v in node["enum"]) else "json"
    kind = node.get("type")
    if isinstance(kind, list):
        real = [k for k in kind if k != "null"]
        kind = real[0] if len(real) == 1 else None
    if kind == "object":
        extra = node.get("additionalProperties")
        plain = isinstance(node.get("properties"), Mapping) and "patternProperties" not in node
        return "object" if plain and not isinstance(extra, Mapping) else "json"
    if kind == "array":
        items = node.get("items")
        if isinstance(items, Mapping) and set(items) <= {"type", "description", "title"}:
            return "strings" if items.get("type") == "string" else "json"
        return "json"
    return kind if kind in ("string", "integer", "number", "boolean") else "json"


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _nullable_base(node: Mapping[str, Any]) -> Mapping[str, Any]:
    """The non-null branch of ``anyOf: [X, {type: null}]`` (else the node)."""
    for combinator in ("anyOf", "oneOf"):
        options = node.get(combinator)
        if isinstance(options, list) and len(node) == 1:
            real = [o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")]
            if len(real) == 1 and isinstance(real[0], Mapping):
                return real[0]
    return node


def _bounds(node: Mapping[str, Any]) -> dict[str, float | None]:
    low, high = node.get("minimum"), node.get("maximum")
    ex_low, ex_high = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    if ex_low is True:  # draft 4: a flag on minimum
        low, ex_low = None, low
    if ex_high is True:
        high, ex_high = None, high
    number = (int, float)

    def num(v: Any) -> float | None:
        return v if isinstance(v, number) and not isinstance(v, bool) else None

    return {
        "minimum": num(low),
        "maximum": num(high),
        "exclusive_minimum": num(ex_low),
        "exclusive_maximum": num(ex_high),
    }


def schema_fields(
    schema: Mapping[str, Any], component: str, root: Mapping[str, Any] | None = None
) -> list[Field | Group]:
    """The fields and groups of one component's config schema, in schema order (a group
    before its children). ``root`` is the document ``$ref``s point into (default: schema)."""
    document = root if root is not None else schema
    entries: list[Field | Group] = []

    def walk(node: Any, path: Path, seen: frozenset[str]) -> None:
        properties = node.get("properties") if isinstance(node, Mapping) else None
        if not isinstance(properties, Mapping):
            return
        required = node.get("required") if isinstance(node.get("required"), list) else []
        for name, raw in properties.items():
            sub, sub_seen = _deref(raw, document, seen)
            if not isinstance(sub, Mapping):
                continue
            base, sub_seen = _deref(_nullable_base(sub), document, sub_seen)
            kind = _kind(sub) if base is sub else _kind(base)
            description = sub.get("description") or base.get("description")
            where = (*path, str(name))
            if kind == "object":
                entries.append(Group(where, description, name in required))
                walk(base, where, sub_seen)
                continue
            items = base.get("minItems", 0)
            entries.append(
                Field(
                    path=where,
                    kind=kind,
                    description=description,
                    required=name in required,
                    default=sub.get("default", base.get("default")),
                    has_default="default" in sub or "default" in base,
                    enum=tuple(base.get("enum", ())) if kind == "enum" else (),
                    min_items=items if isinstance(items, int) else 0,
                    unique_items=base.get("uniqueItems") is True,
                    schema=sub,
                    **(_bounds(base) if kind in ("integer", "number") else {}),
                )
            )

    top, seen = _deref(schema, document, frozenset())
    walk(top, (component,), seen)
    return entries


# --- problems ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Why the form's state does not make a valid job: ``section`` is name, var, inputs,
    config, parallelism or cell; ``path`` is the port, component or field path."""

    section: str
    path: Path
    message: str
    label: str = ""

    def __str__(self) -> str:
        return f"{self.label}: {self.message}" if self.label else self.message


class ParamsInvalid(AtaiError, ValueError):
    """``to_cell`` was asked for a cell that would not validate; lists every problem."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = [f"the form is not a valid job ({len(problems)} problem(s)):"]
        super().__init__("\n".join(lines + [f"- {p}" for p in problems]))


class UnknownPipeline(AtaiError, LookupError):
    """No published pipeline has this key (or version)."""

    def __init__(self, key: str, version: str | None, known: Iterable[str]) -> None:
        known = sorted(set(known))
        near = difflib.get_close_matches(key, known, n=1)
        text = f"no pipeline '{key}{'@' + version if version else ''}'"
        text += f"; did you mean '{near[0]}'?" if near else ""
        text += f"\nknown: {', '.join(known)}" if known else ""
        super().__init__(text)
        self.key, self.version, self.known = key, version, known


# --- the model -----------------------------------------------------------------------------


def components_of(schema: PipelineSchema, pipeline: Pipeline | None = None) -> list[str]:
    """Component names: from the ``<component>.<port>`` input keys, as ``spec`` finds them."""
    found = sorted({port.split(".", 1)[0] for port in schema.inputs if "." in port})
    if not found and pipeline is not None:
        found = sorted(pipeline.components)
    return found or ["worker"]


def user_schema(schema: PipelineSchema) -> dict[str, Any]:
    """The ``user_schema`` as a dict (the platform may send it as JSON text); {} if broken,
    which ``spec.validate`` reports when the cell is run."""
    user = schema.user_schema
    if isinstance(user, str):
        try:
            parsed = json.loads(user) if user.strip() else {}
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return user


def input_items(items: Iterable[Any]) -> list[dict[str, Any]]:
    """Input items in the request's shape, from file ids, ``{file_id, class}`` or full items."""
    found = []
    for item in items:
        if isinstance(item, str):
            found.append({"file_id": item})
        elif isinstance(item, Mapping):
            entry = {k: v for k, v in item.items() if k != "class"}
            if item.get("class") is not None:
                entry["metadata"] = {**dict(item.get("metadata") or {}), "class": item["class"]}
            found.append(entry)
    return found


class ParamsModel:
    """The state of one pipeline's form, and the cell and ``parameters`` it stands for."""

    def __init__(self, schema: PipelineSchema, pipeline: Pipeline | None = None) -> None:
        self.key = schema.pipeline_key
        self.version = schema.pipeline_version
        self.title = (pipeline.name if pipeline else None) or self.key
        self.description = pipeline.description if pipeline else None
        self.ports: dict[str, Port] = dict(schema.inputs)
        self.components = components_of(schema, pipeline)
        user = user_schema(schema)
        self.entries: list[Field | Group] = []
        """Fields and groups in schema order (what the widget draws, top to bottom)."""
        self.fields: list[Field] = []
        self.groups: list[Group] = []
        self._validators: dict[str, Any] = {}
        for component in self.components:
            sub = user
            if len(self.components) > 1:
                sub = user.get("properties", {}).get(component)
                if not isinstance(sub, dict):
                    continue
            entries = schema_fields(sub, component, user)
            self.entries += entries
            self.fields += [e for e in entries if isinstance(e, Field)]
            self.groups += [e for e in entries if isinstance(e, Group)]
            self._validators[component] = _validator(sub)
        defaults = pipeline.default_config if pipeline else {}
        self.default_parallelism: dict[str, int] = {
            c: (defaults[c].parallelism if c in defaults else None) or 1 for c in self.components
        }
        """Workers per component when the job does not say (the pipeline's, else 1)."""
        self.name = self.key
        self.var = ""
        self.state: dict[Path, Any] = {}
        self.parallelism: dict[str, int | None] = dict.fromkeys(self.components)
        """Workers per component; None or the default leaves it to the pipeline."""
        self.port_items: dict[str, list[dict[str, Any]]] = {port: [] for port in self.ports}
        self.files: Any = None
        """Optional file chooser: an object whose ``.value`` is the job's ``inputs`` mapping."""
        self.reset()

    @property
    def pipeline(self) -> str:
        return f"{self.key}@{self.version}"

    def reset(self) -> None:
        """Every setting back to its default (or not set); name and inputs are kept."""
        self.state = {f.path: (f.default if f.has_default else None) for f in self.fields}
        self.parallelism = dict.fromkeys(self.components)

    def field(self, path: Iterable[str]) -> Field:
        """The field at ``path``; the component may be left out of a single-component path."""
        path = tuple(path)
        for f in self.fields:
            if f.path == path or (len(self.components) == 1 and f.path[1:] == path):
                return f
        raise KeyError(".".join(path))

    def set_value(self, path: Iterable[str], value: Any) -> None:
        self.state[self.field(path).path] = value

    @property
    def inputs(self) -> dict[str, list[dict[str, Any]]]:
        """The job's ``inputs``: from ``files`` when a chooser is plugged in, else the ports'."""
        chosen = getattr(self.files, "value", None) if self.files is not None else None
        source = chosen if isinstance(chosen, Mapping) else self.port_items
        return {port: input_items(items) for port, items in source.items() if items}

    # --- what the state means ---------------------------------------------------------------

    def _included(self, f: Field, value: Any, present: set[Path]) -> bool:
        if not f.is_set(value):
            return False
        if f.has_default and _same(value, f.default):
            return f.required and f.path[:-1] in present
        return True

    def _present(self) -> set[Path]:
        """Objects that appear in the config: the components, required objects under
        present ones, and every object holding a value that is not its default."""
        present: set[Path] = {(c,) for c in self.components}
        for f in self.fields:
            if self._included(f, self.state.get(f.path), set()):
                present.update(f.path[:i] for i in range(1, len(f.path)))
        changed = True
        while changed:
            changed = False
            for g in self.groups:
                if g.required and g.path[:-1] in present and g.path not in present:
                    present.add(g.path)
                    changed = True
        return present

    def config(self, component: str) -> dict[str, Any]:
        """One component's config as the cell writes it."""
        present = self._present()
        config: dict[str, Any] = {}
        for entry in self.entries:  # schema order; a group comes before its children
            if entry.path[0] != component:
                continue
            if isinstance(entry, Group):
                if entry.path in present:
                    _put(config, entry.path[1:], {}, keep=True)
            elif self._included(entry, value := self.state.get(entry.path), present):
                _put(config, entry.path[1:], value)
        return config

    @property
    def value(self) -> dict[str, Any]:
        """The request's ``parameters``: component -> {config[, parallelism]}."""
        result: dict[str, Any] = {}
        for component in self.components:
            config = self.config(component)
            count = self.parallelism.get(component)
            if count is not None and count == self.default_parallelism.get(component):
                count = None
            if config or count is not None:
                result[component] = {"config": config}
                if count is not None:
                    result[component]["parallelism"] = count
        return result

    # --- checking ---------------------------------------------------------------------------

    def problems(self) -> list[Problem]:
        """Everything that keeps the state from being a valid job, in form order."""
        found: list[Problem] = []
        if not self.name.strip():
            found.append(Problem("name", ("name",), "the job needs a name", "name"))
        if self.var and not (self.var.isidentifier() and not keyword.iskeyword(self.var)):
            found.append(Problem("var", ("var",), "not a Python variable name", "variable"))
        found += self._input_problems()
        found += self._config_problems()
        for component, count in self.parallelism.items():
            if count is not None and (isinstance(count, bool) or count < 1):
                found.append(
                    Problem("parallelism", (component,), "must be 1 or more", "parallelism")
                )
        try:
            size = len("\n".join(self._body_lines()).encode("utf-8"))
        except cell_yaml.NotRepresentable as exc:
            found.append(Problem("cell", (), str(exc)))
        else:
            if size > MAX_CELL_BYTES:
                found.append(Problem("cell", (), f"the cell would be {size:,} bytes (over 1 MB)"))
        return found

    def _input_problems(self) -> list[Problem]:
        found = []
        inputs = self.inputs
        for port, spec in self.ports.items():
            items = inputs.get(port, [])
            if spec.required and not items:
                found.append(Problem("inputs", (port,), "required: add at least one file", port))
            for item in items:
                if not item.get("file_id") and not item.get("checkpoint_id"):
                    found.append(Problem("inputs", (port,), "an item has no file id", port))
                if spec.mode == N_SHOT and not (item.get("metadata") or {}).get("class"):
                    shown = item.get("file_id") or "?"
                    found.append(Problem("inputs", (port,), f"{shown} needs a class", port))
        for port in inputs:
            if port not in self.ports:
                found.append(Problem("inputs", (port,), "not an input port of this pipeline", port))
        return found

    def _config_problems(self) -> list[Problem]:
        found = []
        present = self._present()
        by_path = {f.path: f for f in self.fields}
        for f in self.fields:
            value = self.state.get(f.path)
            if isinstance(value, Unparsed):
                found.append(Problem("config", f.path, value.reason, f.label))
            elif f.required and f.path[:-1] in present and not f.is_set(value):
                found.append(Problem("config", f.path, "required", f.label))
        known = set(by_path) | {g.path for g in self.groups}
        for component, validator in self._validators.items():
            for error in validator.iter_errors(self.config(component)):
                path = (component, *map(str, error.absolute_path))
                if error.validator == "required":
                    missing = [(*path, k) for k in error.validator_value]
                    if all(p in known for p in missing):
                        continue  # reported above, at the field
                owner = next(
                    (path[:i] for i in range(len(path), 0, -1) if path[:i] in by_path), path
                )
                label = ".".join(owner[1:]) or component
                found.append(Problem("config", owner, _message(error), label))
        order = {f.path: i for i, f in enumerate(self.fields)}
        return sorted(found, key=lambda p: order.get(p.path, len(order)))

    # --- the cell ---------------------------------------------------------------------------

    def _body_lines(self) -> list[str]:
        body: list[str] = [
            f"name: {cell_yaml.scalar(self.name.strip())}",
            f"pipeline: {cell_yaml.scalar(self.pipeline)}",
        ]
        inputs = self.inputs
        if inputs:
            body.append("inputs:")
            for port, items in inputs.items():
                key = cell_yaml.scalar(port)
                if all(set(i) == {"file_id"} for i in items):
                    body.append(f"  {key}: {cell_yaml.flow([i['file_id'] for i in items])}")
                    continue
                body.append(f"  {key}:")
                body += [f"    - {cell_yaml.flow(_short_item(i))}" for i in items]
        value = self.value
        if len(self.components) == 1:
            entry = value.get(self.components[0], {})
            if entry.get("config"):
                body += ["config:", *cell_yaml.block(entry["config"], 2)]
            if "parallelism" in entry:
                body.append(f"parallelism: {entry['parallelism']}")
        elif value:
            body += ["parameters:", *cell_yaml.block(value, 2)]
        return body

    def to_cell(self, *, check: bool = True) -> str:
        """The complete ``%%atai_job`` cell. Raises `ParamsInvalid` if the state is not a
        valid job; with ``check=False`` the cell is returned anyway, its problems written as
        ``# problem:`` comments at the top (it still parses; validation will point at them).
        """
        problems = self.problems()
        unwritable = [p for p in problems if p.section == "cell"]
        if (check and problems) or unwritable:
            raise ParamsInvalid(unwritable or problems)
        head = "%%atai_job" + (f" {self.var}" if self.var else "")
        notes = [cell_yaml.comment(f"problem: {p}") for p in problems]
        return "\n".join([head, *notes, *self._body_lines()]) + "\n"

    # --- renderings -------------------------------------------------------------------------

    def text(self) -> str:
        """The form as text: what it would run, and what is still wrong."""
        problems = self.problems()
        head = f"Parameters of {self.pipeline} ({self.title})"
        if any(p.section == "cell" for p in problems):
            return "\n".join([head, *(f"problem: {p}" for p in problems)])
        status = "valid" if not problems else f"{len(problems)} problem(s)"
        return f"{head}: {status}\n" + self.to_cell(check=False)

    def html(self) -> str:
        text = html.escape(self.text())
        return f"<pre class='atai-params'>{text}</pre>"


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool) and value is default
    numbers = (int, float)
    if isinstance(value, numbers) and isinstance(default, numbers):
        return value == default
    return type(value) is type(default) and bool(value == default)


def _put(target: dict[str, Any], path: Path, value: Any, *, keep: bool = False) -> None:
    for key in path[:-1]:
        target = target.setdefault(key, {})
    if keep:
        target.setdefault(path[-1], value)
    else:
        target[path[-1]] = value


def _short_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """``{file_id, class}`` for an item whose only metadata is its class."""
    metadata = item.get("metadata")
    if isinstance(metadata, Mapping) and set(metadata) == {"class"}:
        rest = {k: v for k, v in item.items() if k != "metadata"}
        return {**rest, "class": metadata["class"]}
    return dict(item)


_PHRASES = {
    "minimum": "must be ≥ {}",
    "maximum": "must be ≤ {}",
    "exclusiveMinimum": "must be > {}",
    "exclusiveMaximum": "must be < {}",
    "minItems": "needs at least {} item(s)",
    "maxItems": "takes at most {} item(s)",
    "type": "must be of type {}",
}


def _message(error: Any) -> str:
    """jsonschema's complaint in a few words (its own text for the rarer ones)."""
    phrase = _PHRASES.get(error.validator)
    if phrase and _is_scalar(error.validator_value):
        return phrase.format(_shown(error.validator_value))
    if error.validator == "enum":
        return "must be one of " + ", ".join(_shown(v) for v in error.validator_value)
    text: str = error.message
    return text if len(text) <= 160 else text[:159] + "…"


def _validator(schema: Mapping[str, Any]) -> Any:
    """The jsonschema validator ``spec.validate`` uses for this schema (the same draft)."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)
