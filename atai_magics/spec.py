"""The ``%%atai_job`` cell: a job written as YAML, checked before anything is sent.

The cell body is YAML, and JSON is YAML too, so the create-job body from the API reference
pastes in unchanged::

    %%atai_job
    name: tep-classification
    pipeline: machine-state-classification@1.1.1   # or pipeline_key: + pipeline_version:
    inputs:
      worker.inference: {{ test_files }}            # a list of file ids from the notebook
      worker.n_shots:
        - {file_id: normal.csv, class: normal}      # -> metadata: {class: normal}
        - {file_id: fault.csv, class: fault}
    config:                                         # the single component's config
      reader_config:
        data_columns: [a, b, c]
        timestamp_column: time
        window_size: 64
        step_size: 16
    parallelism: 2

Keys
    ``name``, ``pipeline_type`` (default ``batch``), ``pipeline_key``, ``pipeline_version``,
    ``inputs`` (port -> list of items) and ``parameters`` (component -> ``{parallelism,
    config}``) mean what they mean in ``POST /batch/jobs``. Shorthands: ``pipeline: KEY`` or
    ``pipeline: KEY@VERSION``; an input item may be a bare file id or ``{file_id, class}``;
    top-level ``config:`` and ``parallelism:`` stand for the parameters of the pipeline's only
    component (an error if it has several).

Interpolation
    ``{{ expr }}`` takes a value from the notebook's namespace. ``expr`` is a name followed by
    any number of ``.attr``, ``[0]``, ``['key']`` or ``["key"]``; nothing else is evaluated, and
    names or attributes starting with ``_`` are refused (a leading ``_`` is allowed on the
    first name only, for IPython's ``_`` outputs; dunders never). A value that is exactly
    ``{{ x }}`` (quoted or not) becomes the object itself, which must be JSON data: str, int,
    float, bool, None, list/tuple or dict with string keys (numpy values and arrays are
    converted with ``tolist()``). Inside a longer string ``str(x)`` is formatted in.
    ``{{ }}`` may not appear in keys, and ``{{`` always starts an interpolation.

Safety and limits
    Loading uses PyYAML's safe loader: only plain data tags are accepted (``!!python/...`` and
    any other tag is an error at the tag). Cells over 1 MB are refused before parsing.
    Anchors and aliases are allowed, but all aliases together may expand to at most 10,000
    nodes (billion-laughs cells fail at the first alias over budget); recursive aliases, merge
    keys (``<<``), nesting over 64 levels, duplicate keys and tab indentation are errors.
    Text must be UTF-8. Dates stay strings. A JSON-style cell (starting with ``{``) may not
    have trailing commas.

Validation
    `parse_cell` checks the structure; `validate` checks it against the pipeline (through a
    `Resolver`: the pipeline exists, input ports are known, required ports have files, n-shot
    files have a class, ``config`` matches the pipeline's ``user_schema``, files exist) and
    returns the exact JSON body to send. Every problem of the cell is reported at once as a
    `SpecError` naming the line and column, showing the line with a caret, what was expected
    and the nearest valid name. Nothing is sent if anything is wrong.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import math
import re
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import jsonschema  # type: ignore[import-untyped,unused-ignore]
from pydantic import ValidationError

from . import _yaml
from ._yaml import MAX_ALIAS_NODES, MAX_CELL_BYTES, Map, Node, Scalar, Seq, Slot
from .api.errors import AtaiError, NotFound
from .api.models import JobRequest, Pipeline, PipelineSchema

__all__ = [
    "MAX_ALIAS_NODES",
    "MAX_CELL_BYTES",
    "ClientResolver",
    "JobSpec",
    "ParsedCell",
    "PipelineNotFound",
    "Resolver",
    "SpecError",
    "SpecErrors",
    "body_hash",
    "interpolate",
    "load_cell",
    "parse_cell",
    "validate",
    "validate_request",
]

Path = tuple[str | int, ...]
Position = tuple[int, int]

CANONICAL_KEYS = (
    "name",
    "pipeline_type",
    "pipeline_key",
    "pipeline_version",
    "inputs",
    "parameters",
)
SHORTHAND_KEYS = ("pipeline", "config", "parallelism")
PIPELINE_TYPES = ("batch", "training")
ITEM_KEYS = ("file_id", "class", "metadata", "kind", "checkpoint_id")
COMPONENT_KEYS = ("parallelism", "config")
MAX_ERRORS_SHOWN = 5
_LINE_WIDTH = 100


# --- errors -------------------------------------------------------------------------------


class SpecError(AtaiError):
    """A problem in the cell, at a line and column of the cell body (both 1-based)."""

    def __init__(
        self,
        message: str,
        *,
        line: int = 1,
        column: int = 1,
        expected: str | None = None,
        suggestion: str | None = None,
        source_line: str | None = None,
    ) -> None:
        self.message = message
        self.line = line
        self.column = column
        self.expected = expected
        self.suggestion = suggestion
        self.source_line = source_line
        super().__init__(message)

    @property
    def errors(self) -> list[SpecError]:
        """Every problem this error stands for (just itself here)."""
        return [self]

    def _block(self) -> list[str]:
        lines = [f"line {self.line}, column {self.column}: {self.message}"]
        if self.source_line is not None:
            text, caret = _window(self.source_line, self.column)
            lines += [f"    {text}", "    " + " " * caret + "^"]
        if self.expected:
            lines.append(f"expected: {self.expected}")
        if self.suggestion:
            lines.append(self.suggestion)
        return lines

    def __str__(self) -> str:
        return "\n".join(self._block())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(line={self.line}, column={self.column}, {self.message!r})"

    def _render_traceback_(self) -> list[str]:
        """IPython shows these lines instead of a traceback; the cell still fails."""
        first, *rest = str(self).splitlines()
        return [f"SpecError: {first}", *(f"  {line}" for line in rest)]


class SpecErrors(SpecError):
    """Several problems in one cell, ordered by position; renders the first few."""

    def __init__(self, errors: Sequence[SpecError]) -> None:
        ordered = sorted(errors, key=lambda e: (e.line, e.column))
        first = ordered[0]
        super().__init__(
            first.message,
            line=first.line,
            column=first.column,
            expected=first.expected,
            suggestion=first.suggestion,
            source_line=first.source_line,
        )
        self._errors = ordered

    @property
    def errors(self) -> list[SpecError]:
        return list(self._errors)

    def __str__(self) -> str:
        lines = [f"{len(self._errors)} problems in the cell"]
        for error in self._errors[:MAX_ERRORS_SHOWN]:
            first, *rest = error._block()
            lines += [f"- {first}", *(f"  {line}" for line in rest)]
        if len(self._errors) > MAX_ERRORS_SHOWN:
            lines.append(f"... and {len(self._errors) - MAX_ERRORS_SHOWN} more")
        return "\n".join(lines)


def _window(source: str, column: int) -> tuple[str, int]:
    """The part of a long line around ``column``, and the caret's offset in it."""
    source = source.replace("\t", " ")
    start = max(0, column - 1 - _LINE_WIDTH // 2) if len(source) > _LINE_WIDTH else 0
    text = source[start : start + _LINE_WIDTH]
    return (("..." + text) if start else text), column - 1 - start + (3 if start else 0)


def _raise(errors: list[SpecError], text: str | None) -> None:
    """Raise the errors collected for one cell (with their source lines), if any."""
    if not errors:
        return
    if text is not None:
        for error in errors:
            if error.source_line is None:
                error.source_line = _source_line(text, error.line)
    if len(errors) == 1:
        raise errors[0]
    raise SpecErrors(errors)


def _source_line(text: str, line: int) -> str:
    """Line ``line`` of ``text`` (1-based), found without splitting a huge text."""
    start = 0
    for _ in range(line - 1):
        start = text.find("\n", start) + 1
        if start == 0:
            return ""
    end = text.find("\n", start, start + 10_000)
    return text[start : end if end >= 0 else start + 10_000].rstrip("\r")


def _suggest(bad: object, choices: Iterable[str]) -> str | None:
    """``did you mean 'x'?`` for the nearest valid name, if one is close."""
    if not isinstance(bad, str):
        return None
    options = [c for c in choices if isinstance(c, str)]
    folded = {c.lower(): c for c in options}
    suffixed = [c for c in options if c.rsplit(".", 1)[-1] == bad]
    match = (
        folded.get(bad.lower())
        or (suffixed[0] if len(suffixed) == 1 else None)
        or next(iter(difflib.get_close_matches(bad, options, n=1, cutoff=0.6)), None)
    )
    return f"did you mean '{match}'?" if match and match != bad else None


def _one_of(choices: Iterable[object], limit: int = 10) -> str:
    names = [str(c) for c in choices]
    shown = ", ".join(names[:limit])
    return f"one of {shown}" + (", ..." if len(names) > limit else "")


# --- loading ------------------------------------------------------------------------------


def load_cell(text: str | bytes) -> Node:
    """Parse the cell safely into a tree whose every node knows its line and column.

    Raises `SpecError` for anything that is not a small, plain YAML (or JSON) mapping.
    """
    return _load(text)[1]


@functools.lru_cache(maxsize=64)
def _load(data: str | bytes) -> tuple[str, Map, frozenset[int]]:
    """The cell's source, tree and template-free nodes (`_static`); cached by text, since
    cells are re-run unchanged (the tree is never modified: `interpolate` builds a new one)."""
    try:
        text, tree = _yaml.load(data)
    except _yaml.Problem as problem:
        shown = data if isinstance(data, str) else data[:20_000].decode("utf-8", "replace")
        error = SpecError(
            problem.message,
            line=problem.line,
            column=problem.column,
            expected=problem.expected,
            source_line=_source_line(shown, problem.line),
        )
        raise error from None
    if tree is None:
        raise SpecError(
            "the cell is empty",
            expected="a YAML mapping with name, pipeline and inputs",
            source_line=_source_line(text, 1),
        )
    if not isinstance(tree, Map):
        what = "a list" if isinstance(tree, Seq) else "a single value"
        raise SpecError(
            f"the cell is {what}, not a mapping",
            line=tree.line,
            column=tree.column,
            expected="a YAML mapping with name, pipeline and inputs",
            source_line=_source_line(text, tree.line),
        )
    return text, tree, _static(tree)


def _static(tree: Node) -> frozenset[int]:
    """The ids of the nodes of ``tree`` with no ``{{ }}`` template in them or under them:
    interpolation leaves them as they are (valid while ``tree`` lives)."""
    found: set[int] = set()

    def visit(node: Node) -> bool:
        if isinstance(node, Seq):
            static = all([visit(child) for child in node.items])
        elif isinstance(node, Map):
            static = all([visit(value) for _, value in node.entries.values()])
        else:
            static = not (isinstance(node, Scalar) and node.template is not None)
        if static:
            found.add(id(node))
        return static

    visit(tree)
    return frozenset(found)


# --- interpolation ------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INDEX = re.compile(r"\[\s*(-?\d+)\s*\]")
_KEY = re.compile(r"""\[\s*(?:'([^'\\]*)'|"([^"\\]*)")\s*\]""")
_ONLY_NAMES = "only names with .attr and [index] are allowed"
_EXPR_HELP = "a name with .attr and [index], e.g. {{ files }} or {{ cfg['size'] }}"


def _parse_expr(expr: str) -> tuple[str, list[str | int]] | None:
    """``name`` and its steps (an attribute name, an int index, or a quoted key).

    Attributes are returned as ``"." + name`` and keys as ``"[" + key`` so the three kinds
    stay distinct without a class; None if the text is not in the grammar.
    """
    match = _NAME.match(expr)
    if not match:
        return None
    root, i = match.group(), match.end()
    steps: list[str | int] = []
    while i < len(expr):
        if expr[i] == ".":
            match = _NAME.match(expr, i + 1)
            if not match:
                return None
            steps.append("." + match.group())
        elif (index := _INDEX.match(expr, i)) is not None:
            steps.append(int(index.group(1)))
            match = index
        elif (key := _KEY.match(expr, i)) is not None:
            steps.append("[" + (key.group(1) if key.group(1) is not None else key.group(2)))
            match = key
        else:
            return None
        i = match.end()
    return root, steps


def _evaluate(slot: Slot, namespace: Mapping[str, Any]) -> Any:
    def fail(message: str, expected: str | None = None, suggestion: str | None = None) -> Any:
        raise SpecError(
            message,
            line=slot.line,
            column=slot.column,
            expected=expected,
            suggestion=suggestion,
        )

    parsed = _parse_expr(slot.expr)
    if parsed is None:
        fail(f"cannot interpolate '{{{{ {slot.expr} }}}}': {_ONLY_NAMES}", _EXPR_HELP)
        raise AssertionError  # pragma: no cover
    root, steps = parsed
    if root.startswith("__"):
        fail(f"'{root}' is private: {_ONLY_NAMES} on public names", _EXPR_HELP)
    if root not in namespace:
        # Only now: a notebook's namespace grows with every cell (IPython's _i<N> entries).
        public = [n for n in namespace if not n.startswith("_")]
        fail(f"name '{root}' is not defined", "a variable of the notebook", _suggest(root, public))
    value = namespace[root]
    shown = root
    for step in steps:
        if isinstance(step, int):
            shown += f"[{step}]"
            try:
                value = value[step]
            except IndexError:
                fail(f"index {step} is out of range for {shown[: -len(str(step)) - 2]}")
            except (TypeError, KeyError):
                fail(f"{shown[: -len(str(step)) - 2]} ({type(value).__name__}) has no item {step}")
        elif step.startswith("."):
            attr = step[1:]
            if attr.startswith("_"):
                fail(f"attribute '{attr}' is private: {_ONLY_NAMES} on public names", _EXPR_HELP)
            if isinstance(value, Mapping) and attr in value:
                value, shown = value[attr], f"{shown}.{attr}"
                continue
            try:
                value = getattr(value, attr)
            except Exception:
                names = list(value) if isinstance(value, Mapping) else dir(value)
                fail(
                    f"{shown} ({type(value).__name__}) has no attribute '{attr}'",
                    suggestion=_suggest(attr, [n for n in names if not str(n).startswith("_")]),
                )
            shown += f".{attr}"
        else:
            key = step[1:]
            try:
                value = value[key]
            except (KeyError, TypeError, IndexError):
                keys = list(value) if isinstance(value, Mapping) else []
                fail(f"{shown} has no key '{key}'", suggestion=_suggest(key, keys))
            shown += f"[{key!r}]"
    return value


def _jsonable(value: Any, slot: Slot, depth: int = 0) -> Any:
    """The value as JSON data, or a SpecError saying what it is instead."""
    if depth > _yaml.MAX_DEPTH:
        raise SpecError(
            f"{{{{ {slot.expr} }}}} is nested too deeply", line=slot.line, column=slot.column
        )
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(
                f"{{{{ {slot.expr} }}}} contains {value}, which JSON cannot carry",
                line=slot.line,
                column=slot.column,
                expected="a finite number",
            )
        return value
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise SpecError(
                f"{{{{ {slot.expr} }}}} is a mapping with non-string keys",
                line=slot.line,
                column=slot.column,
                expected="a dict with string keys",
            )
        return {k: _jsonable(v, slot, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, slot, depth + 1) for v in value]
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return _jsonable(tolist(), slot, depth + 1)
    raise SpecError(
        f"{{{{ {slot.expr} }}}} is a {type(value).__name__}, not JSON data",
        line=slot.line,
        column=slot.column,
        expected="str, int, float, bool, None, a list or a dict",
    )


def _to_node(value: Any, line: int, column: int) -> Node:
    if isinstance(value, dict):
        return Map(
            line,
            column,
            {k: (Scalar(line, column, k), _to_node(v, line, column)) for k, v in value.items()},
        )
    if isinstance(value, list):
        return Seq(line, column, [_to_node(v, line, column) for v in value])
    return Scalar(line, column, value)


def interpolate(tree: Node, namespace: Mapping[str, Any]) -> Node:
    """A copy of ``tree`` with every ``{{ expr }}`` replaced from ``namespace``.

    Raises `SpecError` (all problems at once) for missing names, bad expressions or values
    that are not JSON data.
    """
    return _interpolate(tree, namespace, frozenset())


def _interpolate(tree: Node, namespace: Mapping[str, Any], static: frozenset[int]) -> Node:
    """`interpolate`; the ``static`` nodes (`_static` of ``tree``) are shared with ``tree``
    instead of copied (nothing modifies them)."""
    errors: list[SpecError] = []

    def walk(node: Node) -> Node:
        if id(node) in static:
            return node
        if isinstance(node, Scalar) and node.template is not None:
            try:
                parts = node.template
                if len(parts) == 1 and isinstance(parts[0], Slot):
                    slot = parts[0]
                    value = _jsonable(_evaluate(slot, namespace), slot)
                    return _to_node(value, slot.line, slot.column)
                text = "".join(
                    part if isinstance(part, str) else str(_evaluate(part, namespace))
                    for part in parts
                )
                return Scalar(node.line, node.column, text, raw=text)
            except SpecError as error:
                errors.append(error)
                return node
        if isinstance(node, Seq):
            return Seq(node.line, node.column, [walk(child) for child in node.items])
        if isinstance(node, Map):
            entries = {k: (key, walk(value)) for k, (key, value) in node.entries.items()}
            return Map(node.line, node.column, entries)
        return node

    result = walk(tree)
    _raise(errors, None)
    return result


# --- the job spec -------------------------------------------------------------------------


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical_json(body: Any) -> str:
    return _CANONICAL.encode(body)


def body_hash(body: Mapping[str, Any]) -> str:
    """sha256 of a create-job body in canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(_canonical_json(body).encode("utf-8")).hexdigest()


@dataclass
class JobSpec:
    """A parsed cell: the request, and where each of its values was written."""

    request: JobRequest
    positions: dict[Path, Position]
    """Path into the body (``("inputs", "worker.n_shots", 1, "class")``) -> (line, column)."""
    key_positions: dict[Path, Position] = field(default_factory=dict)
    """Path of a mapping key -> where the key itself is written (for unknown-key errors)."""
    text: str = ""
    config: dict[str, Any] | None = None
    """Top-level ``config:`` shorthand, waiting for the pipeline's single component."""
    parallelism: int | None = None
    """Top-level ``parallelism:`` shorthand, likewise."""
    _dumped: tuple[JobRequest, dict[str, Any]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def body(self) -> dict[str, Any]:
        """The request body as parsed, with pending shorthands under their own keys."""
        return self._with_shorthands(self.request.to_body())

    def _with_shorthands(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.config is not None:
            body["config"] = self.config
        if self.parallelism is not None:
            body["parallelism"] = self.parallelism
        return body

    def _request_body(self) -> dict[str, Any]:
        """``request.to_body()``, made once per request object for `spec_hash` and `validate`
        (which add top-level keys to a shallow copy, and change nothing inside it)."""
        if self._dumped is None or self._dumped[0] is not self.request:
            self._dumped = (self.request, self.request.to_body())
        return self._dumped[1]

    @property
    def spec_hash(self) -> str:
        """Identifies what the cell asks for (for the journal): `body_hash` of `body`."""
        return body_hash(self._with_shorthands(dict(self._request_body())))

    def where(self, path: Path) -> Position:
        """Where ``path`` (or its nearest written ancestor) is in the cell."""
        return _where(self.positions, path)


ParsedCell = JobSpec


def _where(positions: Mapping[Path, Position], path: Path) -> Position:
    for end in range(len(path), -1, -1):
        found = positions.get(path[:end])
        if found:
            return found
    return (1, 1)


def _plain(node: Node) -> Any:
    if isinstance(node, Map):
        return {k: _plain(v) for k, (_, v) in node.entries.items()}
    if isinstance(node, Seq):
        return [_plain(v) for v in node.items]
    assert isinstance(node, Scalar)
    return node.value


_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    type(None): "null",
}


def _describe(node: Node) -> str:
    if isinstance(node, Map):
        return "a mapping"
    if isinstance(node, Seq):
        return "a list"
    assert isinstance(node, Scalar)
    text = node.raw if node.raw is not None else repr(node.value)
    if len(text) > 30:
        text = text[:27] + "..."
    return f"{_TYPE_NAMES.get(type(node.value), 'a value')} ({text})"


_Recorded = tuple[Path, list[tuple[Path, Position]], list[tuple[Path, Position]]]
_RECORDED: weakref.WeakKeyDictionary[Node, _Recorded] = weakref.WeakKeyDictionary()
"""The positions under a template-free node of a cached tree, by node (see `_Builder.record`)."""


class _Builder:
    """Reads the top-level mapping into a create-job body, collecting every problem."""

    def __init__(self, static: frozenset[int] = frozenset()) -> None:
        self.errors: list[SpecError] = []
        self.positions: dict[Path, Position] = {}
        self.key_positions: dict[Path, Position] = {}
        self.static = static
        """Ids of nodes shared with the cached tree that hold no template (`_static`)."""

    def error(
        self,
        at: Node | Position,
        message: str,
        expected: str | None = None,
        suggestion: str | None = None,
    ) -> None:
        line, column = (at.line, at.column) if isinstance(at, Node) else at
        self.errors.append(
            SpecError(message, line=line, column=column, expected=expected, suggestion=suggestion)
        )

    def unknown_keys(self, node: Map, allowed: Sequence[str], where: str) -> None:
        for key, (key_node, _) in node.entries.items():
            if key not in allowed:
                self.error(
                    key_node,
                    f"unknown key '{key}'{where}",
                    _one_of(allowed),
                    _suggest(key, allowed),
                )

    def record(self, path: Path, node: Node, key: Scalar | None = None) -> None:
        """Remember where ``node`` (and everything under it) is written."""
        if key is not None:
            self.key_positions[path] = (key.line, key.column)
        if id(node) in self.static:  # the same as when this cell text last ran: reuse that
            recorded = _RECORDED.get(node)
            if recorded is None or recorded[0] != path:
                fresh = _Builder()
                fresh.record(path, node)
                recorded = (path, list(fresh.positions.items()), list(fresh.key_positions.items()))
                _RECORDED[node] = recorded
            self.positions.update(recorded[1])
            self.key_positions.update(recorded[2])
            return
        self.positions[path] = (node.line, node.column)
        if isinstance(node, Map):
            for name, (key_node, child) in node.entries.items():
                self.record((*path, name), child, key_node)
        elif isinstance(node, Seq):
            for index, child in enumerate(node.items):
                self.record((*path, index), child)

    def string(self, node: Node, what: str, *, numbers: bool = False) -> str | None:
        """A non-empty string (a number's source text too, if ``numbers``), or an error."""
        if isinstance(node, Scalar):
            if isinstance(node.value, str) and node.value:
                return node.value
            if numbers and isinstance(node.value, int | float) and not isinstance(node.value, bool):
                return node.raw if node.raw is not None else str(node.value)
        self.error(node, f"{what} must be a non-empty string, not {_describe(node)}", "a string")
        return None

    def parallelism(self, node: Node, what: str) -> int | None:
        if (
            isinstance(node, Scalar)
            and isinstance(node.value, int)
            and not isinstance(node.value, bool)
            and node.value >= 1
        ):
            return node.value
        self.error(
            node, f"{what} must be a whole number >= 1, not {_describe(node)}", "an integer >= 1"
        )
        return None

    def mapping(self, node: Node, what: str, expected: str) -> Map | None:
        if isinstance(node, Map):
            return node
        self.error(node, f"{what} must be a mapping, not {_describe(node)}", expected)
        return None

    def build(self, root: Map) -> tuple[dict[str, Any], dict[str, Any] | None, int | None]:
        entries = root.entries
        self.positions[()] = (root.line, root.column)
        self.unknown_keys(root, CANONICAL_KEYS + SHORTHAND_KEYS, "")
        for key, (key_node, value) in entries.items():
            self.key_positions[(key,)] = (key_node.line, key_node.column)
            self.positions[(key,)] = (value.line, value.column)
        body: dict[str, Any] = {}
        top = (root.line, root.column)

        if "name" in entries:
            name = self.string(entries["name"][1], "name")
            if name is not None:
                body["name"] = name
        else:
            self.error(top, "missing key 'name'", "name: <a name for the job>")

        if "pipeline_type" in entries:
            node = entries["pipeline_type"][1]
            kind = self.string(node, "pipeline_type")
            if kind is not None and kind not in PIPELINE_TYPES:
                self.error(
                    node,
                    f"unknown pipeline_type '{kind}'",
                    _one_of(PIPELINE_TYPES),
                    _suggest(kind, PIPELINE_TYPES),
                )
            elif kind is not None:
                body["pipeline_type"] = kind

        self.pipeline(entries, body, top)
        if "inputs" in entries:
            body["inputs"] = self.inputs(entries["inputs"][1])
        if "parameters" in entries:
            body["parameters"] = self.parameters(entries["parameters"][1])

        config: dict[str, Any] | None = None
        parallelism: int | None = None
        for shorthand in ("config", "parallelism"):
            if shorthand in entries and "parameters" in entries:
                self.error(
                    entries[shorthand][0],
                    f"top-level {shorthand}: cannot be combined with parameters:",
                    f"either {shorthand}: (single component) or parameters: {{component: ...}}",
                )
        if "config" in entries:
            node = entries["config"][1]
            if self.mapping(node, "config", "a mapping of the pipeline's settings"):
                config = _plain(node)
                self.record(("config",), node, entries["config"][0])
        if "parallelism" in entries:
            parallelism = self.parallelism(entries["parallelism"][1], "parallelism")
        return body, config, parallelism

    def pipeline(
        self, entries: dict[str, tuple[Scalar, Node]], body: dict[str, Any], top: Position
    ) -> None:
        if "pipeline" in entries:
            node = entries["pipeline"][1]
            for other in ("pipeline_key", "pipeline_version"):
                if other in entries:
                    self.error(
                        entries[other][0],
                        f"{other}: cannot be combined with pipeline:",
                        "pipeline: KEY@VERSION, or pipeline_key: and pipeline_version:",
                    )
            text = self.string(node, "pipeline")
            if text is None:
                return
            key, at, version = text.partition("@")
            if not key.strip() or (at and not version.strip()):
                self.error(node, f"malformed pipeline '{text}'", "KEY or KEY@VERSION")
                return
            body["pipeline_key"] = key.strip()
            self.positions[("pipeline_key",)] = (node.line, node.column)
            if version:
                body["pipeline_version"] = version.strip()
                self.positions[("pipeline_version",)] = (node.line, node.column)
            return
        if "pipeline_key" in entries:
            given = self.string(entries["pipeline_key"][1], "pipeline_key")
            if given is not None:
                body["pipeline_key"] = given
        else:
            self.error(top, "missing key 'pipeline'", "pipeline: KEY or pipeline: KEY@VERSION")
        if "pipeline_version" in entries:
            pinned = self.string(entries["pipeline_version"][1], "pipeline_version", numbers=True)
            if pinned is not None:
                body["pipeline_version"] = pinned

    def inputs(self, node: Node) -> dict[str, Any]:
        ports = self.mapping(node, "inputs", "a mapping of input port to a list of files")
        result: dict[str, Any] = {}
        if ports is None:
            return result
        for port, (key_node, items) in ports.entries.items():
            path: Path = ("inputs", port)
            self.record(path, items, key_node)
            if not isinstance(items, Seq):
                self.error(
                    items,
                    f"input port '{port}' must be a list of files, not {_describe(items)}",
                    "a list: [file.csv, ...] or - {file_id: file.csv, class: label}",
                )
                continue
            result[port] = [
                item
                for i, child in enumerate(items.items)
                if (item := self.item(child, (*path, i)))
            ]
        return result

    def item(self, node: Node, path: Path) -> dict[str, Any] | None:
        if isinstance(node, Scalar):
            file_id = self.string(node, "an input file id")
            at_id: Path = (*path, "file_id")
            self.positions[at_id] = (node.line, node.column)
            return {"file_id": file_id} if file_id else None
        if not isinstance(node, Map):
            self.error(
                node,
                f"an input item must be a file id or a mapping, not {_describe(node)}",
                "file.csv or {file_id: file.csv, class: label}",
            )
            return None
        self.unknown_keys(node, ITEM_KEYS, " in an input item")
        entries = node.entries
        item: dict[str, Any] = {}
        kind = None
        if "kind" in entries:
            kind = self.string(entries["kind"][1], "kind")
            if kind not in (None, "file", "checkpoint"):
                self.error(
                    entries["kind"][1],
                    f"unknown input kind '{kind}'",
                    _one_of(("file", "checkpoint")),
                    _suggest(kind, ("file", "checkpoint")),
                )
            item["kind"] = kind
        id_key = "checkpoint_id" if kind == "checkpoint" else "file_id"
        if id_key in entries:
            value = self.string(entries[id_key][1], id_key)
            if value is not None:
                item[id_key] = value
        else:
            self.error(node, f"missing key '{id_key}' in an input item", f"{id_key}: <id>")
        if "metadata" in entries:
            meta = entries["metadata"][1]
            if self.mapping(meta, "metadata", "a mapping"):
                item["metadata"] = _plain(meta)
        if "class" in entries:
            key_node, label = entries["class"]
            text = self.string(label, "class")
            if text is not None:
                metadata = item.setdefault("metadata", {})
                if "class" in metadata:
                    self.error(key_node, "class is given twice (also in metadata)", "one class")
                metadata["class"] = text
                at_class: Path = (*path, "metadata", "class")
                self.positions[at_class] = (label.line, label.column)
        return item

    def parameters(self, node: Node) -> dict[str, Any]:
        components = self.mapping(node, "parameters", "component: {parallelism: N, config: {...}}")
        result: dict[str, Any] = {}
        if components is None:
            return result
        for name, (key_node, value) in components.entries.items():
            path: Path = ("parameters", name)
            self.record(path, value, key_node)
            params = self.mapping(value, f"parameters.{name}", "{parallelism: N, config: {...}}")
            if params is None:
                continue
            self.unknown_keys(params, COMPONENT_KEYS, f" in parameters.{name}")
            entry: dict[str, Any] = {}
            if "parallelism" in params.entries:
                count = self.parallelism(params.entries["parallelism"][1], "parallelism")
                if count is not None:
                    entry["parallelism"] = count
            if "config" in params.entries:
                config = params.entries["config"][1]
                if self.mapping(config, "config", "a mapping of the pipeline's settings"):
                    entry["config"] = _plain(config)
            result[name] = entry
        return result


def _pydantic_errors(exc: ValidationError, positions: Mapping[Path, Position]) -> list[SpecError]:
    """pydantic's errors placed at the cell positions of their ``loc``."""
    tags = {"FileInputItem", "CheckpointInputItem"}
    errors = []
    seen = set()
    for detail in exc.errors():
        path = tuple(p for p in detail["loc"] if p not in tags)
        line, column = _where(positions, path)
        if (line, column) in seen:
            continue
        seen.add((line, column))
        shown = ".".join(str(p) for p in path) or "the cell"
        errors.append(SpecError(f"{shown}: {detail['msg']}", line=line, column=column))
    return errors


def parse_cell(text: str | bytes, namespace: Mapping[str, Any] | None = None) -> JobSpec:
    """Load, interpolate and read the cell into a `JobSpec`; `SpecError` if it is malformed."""
    source, tree, static = _load(text)
    try:
        root = _interpolate(tree, namespace or {}, static)
    except SpecError as error:
        _raise(error.errors, source)
        raise  # pragma: no cover
    assert isinstance(root, Map)
    builder = _Builder(static)
    body, config, parallelism = builder.build(root)
    _raise(builder.errors, source)
    try:
        request = JobRequest.model_validate(body)
    except ValidationError as exc:
        _raise(_pydantic_errors(exc, builder.positions), source)
        raise  # pragma: no cover
    return JobSpec(
        request=request,
        positions=builder.positions,
        key_positions=builder.key_positions,
        text=source,
        config=config,
        parallelism=parallelism,
    )


# --- validation against the pipeline ------------------------------------------------------


class PipelineNotFound(LookupError):
    """The resolver knows no such pipeline (or no such version of it)."""

    def __init__(self, key: str, version: str | None = None, known: Sequence[str] = ()) -> None:
        super().__init__(f"{key}@{version}" if version else key)
        self.key = key
        self.version = version
        self.known = list(known)


class Resolver(Protocol):
    """What `validate` needs to know about the account; `ClientResolver` asks the API."""

    def pipeline(self, key: str, version: str | None) -> PipelineSchema:
        """The schema of a pipeline version (the newest if None); raise LookupError if none."""
        ...

    def missing_files(self, file_ids: list[str]) -> set[str]:
        """Which of these file ids do not exist (one batched check)."""
        ...


def _version_order(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


class ClientResolver:
    """A `Resolver` over an `atai_magics.api.client.Client`.

    Pipelines are found by listing the published ones (the platform's schema endpoint wants
    an id) and cached per (key, version) for the resolver's life; if the listing does not
    have the key, the key itself is tried, which the local backend accepts. Files are checked
    one by one when there are few, else with one listing of the account's files.
    """

    FEW_FILES = 20
    FILE_SEEN_SECONDS = 300.0
    """A file seen this recently is not asked about again: file ids are immutable on the
    platform, and a file deleted meanwhile is still refused by the server's own check."""

    def __init__(self, client: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._clock = clock
        self._schemas: dict[tuple[str, str | None], PipelineSchema] = {}
        self._pipelines: list[Pipeline] | None = None
        self._listed_files: list[str] | None = None
        self._seen_files: dict[str, float] = {}

    def pipelines(self) -> list[Pipeline]:
        """Every published pipeline (listed once)."""
        if self._pipelines is None:
            found: list[Pipeline] = []
            offset = 0
            while True:
                page = self._client.list_pipelines(status="published", offset=offset, limit=100)
                found += page.pipelines
                offset += len(page.pipelines)
                if not page.pipelines or offset >= page.total:
                    break
            self._pipelines = found
        return self._pipelines

    def pipeline_keys(self) -> list[str]:
        return sorted({p.pipeline_key for p in self.pipelines()})

    def pipeline(self, key: str, version: str | None) -> PipelineSchema:
        cached = self._schemas.get((key, version))
        if cached is not None:
            return cached
        matches = [
            p
            for p in self.pipelines()
            if p.pipeline_key == key and version in (None, p.pipeline_version)
        ]
        if matches:
            chosen = max(matches, key=lambda p: _version_order(p.pipeline_version))
            schema = self._client.get_pipeline_schema(chosen.id)
        else:
            try:
                schema = self._client.get_pipeline_schema(key)
            except NotFound:
                raise PipelineNotFound(key, version, self.pipeline_keys()) from None
            if version is not None and schema.pipeline_version != version:
                raise PipelineNotFound(key, version, self.pipeline_keys())
        self._schemas[(key, version)] = schema
        return schema  # type: ignore[no-any-return]

    def missing_files(self, file_ids: list[str]) -> set[str]:
        self._listed_files = None
        now = self._clock()
        unsure = [
            f for f in file_ids if now - self._seen_files.get(f, -math.inf) > self.FILE_SEEN_SECONDS
        ]
        if len(unsure) < self.FEW_FILES:
            missing = set()
            for file_id in unsure:
                try:
                    self._client.get_file_metadata(file_id)
                except NotFound:
                    missing.add(file_id)
        else:
            self._listed_files = [meta.file_id for meta in self._client.iter_files()]
            missing = set(unsure) - set(self._listed_files)
        self._seen_files.update((f, now) for f in unsure if f not in missing)
        return missing

    def known_files(self) -> list[str]:
        """File ids seen by the last `missing_files` (for suggestions); listed if needed."""
        if self._listed_files is None:
            self._listed_files = [meta.file_id for meta in self._client.iter_files()]
        return self._listed_files


class _SchemaCheck:
    """A jsonschema validator of one schema, and the configs it found valid.

    Validation is a pure function of the schema and the config, and an unchanged cell re-run
    checks the same config again: a config that passed is remembered (as canonical JSON, so
    ``1``, ``1.0`` and ``true`` stay apart) and not walked again. Configs with errors are
    always walked, for their messages.
    """

    PASSED_MAX = 64

    def __init__(self, schema: dict[str, Any]) -> None:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        self.validator = cls(schema)
        self.passed: set[str] = set()

    def errors(self, config: Any) -> list[Any]:
        try:
            key: str | None = _canonical_json(config)
        except (TypeError, ValueError):  # pragma: no cover - configs come from JSON data
            key = None
        if key is not None and key in self.passed:
            return []
        found = list(self.validator.iter_errors(config))
        if not found and key is not None:
            if len(self.passed) >= self.PASSED_MAX:
                self.passed.clear()
            self.passed.add(key)
        return found


_VALIDATORS: dict[int, tuple[dict[str, Any], _SchemaCheck]] = {}


def _validator(schema: dict[str, Any]) -> _SchemaCheck:
    """The `_SchemaCheck` of a schema object, built once (the resolver caches schemas, so an
    unchanged cell re-run reuses it); the schema is kept alongside, so ids never alias."""
    cached = _VALIDATORS.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    if len(_VALIDATORS) >= 64:
        _VALIDATORS.clear()
    check = _SchemaCheck(schema)
    _VALIDATORS[id(schema)] = (schema, check)
    return check


def _components(schema: PipelineSchema) -> list[str]:
    """Component names, from the ``<component>.<port>`` keys of the input ports."""
    return sorted({port.split(".", 1)[0] for port in schema.inputs if "." in port})


def _user_schema(schema: PipelineSchema) -> dict[str, Any]:
    user = schema.user_schema
    if isinstance(user, str):
        parsed = json.loads(user) if user.strip() else {}
        return parsed if isinstance(parsed, dict) else {}
    return user


def _shown(path: Path, shorthand: bool) -> str:
    parts = list(path[3:] if shorthand and path[:1] == ("parameters",) else path)
    if shorthand and path[:1] == ("parameters",):
        parts.insert(0, "config")
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_JSON_TYPES = {"integer": "an integer", "number": "a number", "string": "a string"}


class _Checker:
    """Checks one parsed cell against its pipeline, collecting every problem."""

    def __init__(self, spec: JobSpec, resolver: Resolver) -> None:
        self.spec = spec
        self.resolver = resolver
        self.errors: list[SpecError] = []
        self.positions = spec.positions
        self.key_positions = spec.key_positions
        self.shorthand = spec.config is not None or spec.parallelism is not None
        self.component: str | None = None
        """The one component the top-level shorthands were given to (`resolve_shorthand`)."""

    def written(self, path: Path) -> Path:
        """The path under which the cell wrote ``path`` of the body: ``parameters.<component>
        .config...`` and ``.parallelism`` of a shorthand are the top-level keys."""
        shorthand = self.component is not None and path[:2] == ("parameters", self.component)
        return path[2:] if shorthand and path[2:3] in (("config",), ("parallelism",)) else path

    def error(
        self,
        path: Path,
        message: str,
        expected: str | None = None,
        suggestion: str | None = None,
        *,
        at_key: bool = False,
    ) -> None:
        written = self.written(path)
        where = self.key_positions.get(written) if at_key else None
        line, column = where or _where(self.positions, written)
        self.errors.append(
            SpecError(message, line=line, column=column, expected=expected, suggestion=suggestion)
        )

    def schema(self, key: str, version: str | None) -> PipelineSchema | None:
        try:
            return self.resolver.pipeline(key, version)
        except (LookupError, NotFound) as exc:
            known = list(getattr(exc, "known", None) or [])
            if not known and hasattr(self.resolver, "pipeline_keys"):
                known = list(self.resolver.pipeline_keys())
            if version is not None and key in known:
                self.error(("pipeline_version",), f"pipeline '{key}' has no version '{version}'")
            else:
                self.error(
                    ("pipeline_key",),
                    f"unknown pipeline '{key}'",
                    _one_of(known) if known else "the key of a published pipeline",
                    _suggest(key, known),
                )
            return None

    def resolve_shorthand(self, body: dict[str, Any], components: list[str]) -> None:
        if not self.shorthand:
            return
        if len(components) != 1:
            self.error(
                ("config",) if self.spec.config is not None else ("parallelism",),
                "top-level config:/parallelism: need a pipeline with one component; "
                f"this one has {len(components) or 'no named'} components",
                f"parameters: {{{' | '.join(components) or 'component'}: {{config: ...}}}}",
            )
            return
        component = components[0]
        entry: dict[str, Any] = {}
        if self.spec.parallelism is not None:
            entry["parallelism"] = self.spec.parallelism
        if self.spec.config is not None:
            entry["config"] = self.spec.config
        body["parameters"] = {component: entry}
        self.component = component  # errors under it are placed by `written`

    def ports(self, body: dict[str, Any], schema: PipelineSchema) -> None:
        inputs: dict[str, list[dict[str, Any]]] = body.get("inputs", {})
        known = list(schema.inputs)
        for port, items in inputs.items():
            spec = schema.inputs.get(port)
            if spec is None:
                self.error(
                    ("inputs", port),
                    f"unknown input port '{port}' of {schema.pipeline_key}",
                    _one_of(known),
                    _suggest(port, known),
                    at_key=True,
                )
                continue
            if spec.mode == "n_shot_file_list":
                for i, item in enumerate(items):
                    if not (item.get("metadata") or {}).get("class"):
                        self.error(
                            ("inputs", port, i),
                            f"file on n-shot port '{port}' has no class",
                            "{file_id: <file>, class: <label>}",
                        )
        for port, spec in schema.inputs.items():
            if spec.required and not inputs.get(port):
                path: Path = ("inputs", port) if port in inputs else ("inputs",)
                self.error(
                    path,
                    f"required input port '{port}' has no files",
                    f"{port}: [<file id>, ...]",
                    at_key=True,
                )

    def config(self, body: dict[str, Any], schema: PipelineSchema, components: list[str]) -> None:
        try:
            user = _user_schema(schema)
        except ValueError:
            self.error(("pipeline_key",), f"the user_schema of {schema.pipeline_key} is not JSON")
            return
        if not user:
            return
        params: dict[str, Any] = body.get("parameters", {})
        for name in params:
            if components and name not in components:
                self.error(
                    ("parameters", name),
                    f"unknown component '{name}' of {schema.pipeline_key}",
                    _one_of(components),
                    _suggest(name, components),
                    at_key=True,
                )
        targets = (
            [components[0]] if len(components) == 1 else [c for c in params if c in components]
        )
        for name in targets:
            sub = user
            if len(components) > 1:
                sub = user.get("properties", {}).get(name)
                if not isinstance(sub, dict):
                    continue
            config = params.get(name, {}).get("config", {})
            self.check_config(config, sub, ("parameters", name, "config"))

    def check_config(self, config: Any, schema: dict[str, Any], base: Path) -> None:
        try:
            found = _validator(schema).errors(config)
        except jsonschema.SchemaError as exc:  # pragma: no cover - a broken pipeline schema
            self.error(("pipeline_key",), f"the pipeline's user_schema is invalid: {exc.message}")
            return
        for err in found:
            path: Path = (*base, *err.absolute_path)
            shown = _shown(path, self.shorthand)
            if err.validator == "additionalProperties" and isinstance(err.instance, dict):
                props = list(err.schema.get("properties", {}))
                patterns = list(err.schema.get("patternProperties", {}))
                for key in err.instance:
                    if key in props or any(re.search(p, key) for p in patterns):
                        continue
                    self.error(
                        (*path, key),
                        f"unknown key '{key}' in {shown}",
                        _one_of(sorted(props)),
                        _suggest(key, props),
                        at_key=True,
                    )
            elif err.validator == "enum":
                options = list(err.validator_value)
                self.error(
                    path,
                    f"invalid value {err.instance!r} for {shown}",
                    _one_of(options),
                    _suggest(err.instance, [o for o in options if isinstance(o, str)]),
                )
            elif err.validator == "required" and isinstance(err.instance, dict):
                for key in err.validator_value:
                    if key not in err.instance:
                        self.error(
                            path,
                            f"missing required key '{key}' in {shown}",
                            f"{key}: ...",
                            at_key=True,
                        )
            elif err.validator == "type":
                wanted = err.validator_value
                names = [wanted] if isinstance(wanted, str) else list(wanted)
                expected = " or ".join(
                    _JSON_TYPES.get(n, f"a{'n' * (n[0] in 'aeiou')} {n}") for n in names
                )
                got = _TYPE_NAMES.get(type(err.instance), type(err.instance).__name__)
                if isinstance(err.instance, dict):
                    got = "a mapping"
                elif isinstance(err.instance, list):
                    got = "a list"
                self.error(
                    path,
                    f"{shown} must be {expected}, not {got} ({json.dumps(err.instance)[:40]})",
                    expected,
                )
            else:
                self.error(path, f"{shown}: {err.message}")

    def files(self, body: dict[str, Any]) -> None:
        inputs: dict[str, list[dict[str, Any]]] = body.get("inputs", {})
        found = [
            (port, i, item["file_id"])
            for port, items in inputs.items()
            for i, item in enumerate(items)
            if item.get("kind") != "checkpoint" and "file_id" in item
        ]
        ids = sorted({file_id for _, _, file_id in found})
        if not ids:
            return
        missing = self.resolver.missing_files(ids)
        if not missing:
            return
        known_files = getattr(self.resolver, "known_files", None)
        known = [f for f in known_files() if f not in missing] if callable(known_files) else []
        for port, i, file_id in found:
            if file_id in missing:
                self.error(
                    ("inputs", port, i, "file_id"),
                    f"unknown file '{file_id}'",
                    "the id of an uploaded file",
                    _suggest(file_id, known),
                )


def validate(spec: JobSpec, resolver: Resolver) -> dict[str, Any]:
    """Check the parsed cell against its pipeline and files; return the exact body to send.

    Raises `SpecError` with every problem found (ordered by line); nothing is sent by this.
    """
    return validate_request(spec, resolver).to_body()


def validate_request(spec: JobSpec, resolver: Resolver) -> JobRequest:
    """`validate`, returning the checked `JobRequest` itself (whose ``to_body()`` is the body),
    which `Client.create_job` sends as it is instead of validating a dict again."""
    checker = _Checker(spec, resolver)
    body = dict(spec._request_body())  # only top-level keys are set (the shorthands)
    schema = checker.schema(spec.request.pipeline_key, spec.request.pipeline_version)
    if schema is not None:
        components = _components(schema)
        checker.resolve_shorthand(body, components)
        checker.ports(body, schema)
        checker.config(body, schema, components)
    checker.files(body)
    _raise(checker.errors, spec.text)
    return JobRequest.model_validate(body)
