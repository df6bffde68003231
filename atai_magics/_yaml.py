"""A safe YAML loader that keeps the source position of every node (private to spec.py).

PyYAML composes the text into nodes that carry marks; this module turns them into a small
tree of `Scalar`, `Seq` and `Map` nodes with 1-based line and column, and refuses what a job
cell never needs and an attacker might use: non-data tags, alias bombs and recursive aliases,
deep nesting, duplicate keys, and ``{{ }}`` inside keys. Every refusal is a `Problem` with a
position; ``spec.py`` turns it into a `SpecError`.

``{{ expr }}`` is not YAML (unquoted, it would parse as a nested flow mapping), so before
parsing each one is replaced by a private-use placeholder of the same length: columns stay
right and the placeholder is a plain scalar wherever a value may stand.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.events import AliasEvent, MappingStartEvent, ScalarEvent, SequenceStartEvent
from yaml.tokens import FlowEntryToken, FlowMappingEndToken, FlowSequenceEndToken

MAX_CELL_BYTES = 1_000_000
"""Cells larger than this are refused before parsing (a job spec is a few kilobytes)."""
MAX_ALIAS_NODES = 10_000
"""Total nodes that aliases may add by expansion; billion-laughs cells hit this at once."""
MAX_DEPTH = 64
"""Deepest nesting accepted (PyYAML composes recursively)."""
MAX_INTERPOLATIONS = 10_000

_YAML = "tag:yaml.org,2002:"
_DATA_TAGS = {_YAML + t for t in ("str", "int", "float", "bool", "null", "seq", "map")}
_MERGE = _YAML + "merge"
_SLOT_OPEN = "\ue000"
_SLOT_PAD = "\ue001"
_DIGITS = "".join(chr(0xE010 + i) for i in range(16))
_SLOT_RE = re.compile(f"{_SLOT_OPEN}([{_DIGITS}]+){_SLOT_PAD}*")
_BRACES_RE = re.compile(r"\{\{([^\n]*?)\}\}")
_PRIVATE_RE = re.compile("[\ue000-\ue01f]")


class Problem(Exception):
    """Why the cell cannot be loaded, and where (1-based line and column)."""

    def __init__(self, line: int, column: int, message: str, expected: str | None = None):
        super().__init__(message)
        self.line = line
        self.column = column
        self.message = message
        self.expected = expected


@dataclass(eq=False)
class Node:
    line: int
    column: int


@dataclass(eq=False)
class Slot:
    """One ``{{ expr }}`` in the cell: the expression text and where its ``{{`` is."""

    expr: str
    line: int
    column: int


@dataclass(eq=False)
class Scalar(Node):
    value: Any
    raw: str | None = None
    """The scalar's source text (for a version written as ``1.10``); None if made from Python."""
    template: list[str | Slot] | None = None
    """Set when the string holds ``{{ }}``: its literal parts and slots, in order."""


@dataclass(eq=False)
class Seq(Node):
    items: list[Node] = field(default_factory=list)


@dataclass(eq=False)
class Map(Node):
    entries: dict[str, tuple[Scalar, Node]] = field(default_factory=dict)
    """key -> (key node, value node), in source order."""


def decode(data: str | bytes) -> str:
    """The cell as text: size checked first (without parsing), then UTF-8 decoded."""
    size = len(data)
    if isinstance(data, str) and size <= MAX_CELL_BYTES < size * 4:
        size = len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_CELL_BYTES:
        raise Problem(
            1,
            1,
            f"the cell is too large ({size:,} bytes; the limit is {MAX_CELL_BYTES:,})",
            "a job spec of at most 1 MB; pass long file lists as {{ variable }}",
        )
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = data[: exc.start]
            line = before.count(b"\n") + 1
            start = before.rfind(b"\n") + 1
            column = len(before[start:].decode("utf-8", "replace")) + 1
            raise Problem(
                line,
                column,
                f"the cell is not UTF-8 text (byte 0x{data[exc.start]:02x})",
                "UTF-8 text",
            ) from None
    return text.removeprefix("\ufeff")


def position(text: str, index: int) -> tuple[int, int]:
    """1-based (line, column) of a character index."""
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _encode_slot(index: int, length: int) -> str:
    digits = ""
    while True:
        digits = _DIGITS[index % 16] + digits
        index //= 16
        if not index:
            break
    return _SLOT_OPEN + digits + _SLOT_PAD * (length - 1 - len(digits))


def mark_slots(text: str) -> tuple[str, list[Slot]]:
    """Replace each ``{{ expr }}`` by a same-length placeholder; return the slots found."""
    bad = _PRIVATE_RE.search(text)
    if bad:
        line, column = position(text, bad.start())
        raise Problem(line, column, f"character U+{ord(bad.group()):04X} is not allowed")
    slots: list[Slot] = []

    def replace(match: re.Match[str]) -> str:
        if len(slots) >= MAX_INTERPOLATIONS:
            line, column = position(text, match.start())
            raise Problem(line, column, f"more than {MAX_INTERPOLATIONS:,} {{{{ }}}} in the cell")
        line, column = position(text, match.start())
        slots.append(Slot(match.group(1).strip(), line, column))
        return _encode_slot(len(slots) - 1, len(match.group()))

    marked = _BRACES_RE.sub(replace, text)
    unclosed = marked.find("{{")
    if unclosed >= 0:
        line, column = position(marked, unclosed)
        raise Problem(line, column, "'{{' is not closed", "'}}' on the same line")
    return marked, slots


class _Loader(yaml.SafeLoader):
    """SafeLoader that counts alias expansion and depth, and refuses JSON trailing commas."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in {_YAML + "timestamp"}]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, text: str, json_style: bool) -> None:
        super().__init__(text)
        self._json_style = json_style
        self._previous_token: Any = None
        self._depth = 0
        self._expanded = 0
        self._open_anchors: set[str] = set()
        self._sizes: dict[int, int] = {}

    def get_token(self) -> Any:
        token = super().get_token()  # type: ignore[no-untyped-call]
        if (
            self._json_style
            and isinstance(token, FlowMappingEndToken | FlowSequenceEndToken)
            and isinstance(self._previous_token, FlowEntryToken)
        ):
            mark = self._previous_token.start_mark
            raise Problem(
                mark.line + 1,
                mark.column + 1,
                "trailing comma: JSON does not allow a comma before a closing bracket",
                "a value after the comma, or no comma",
            )
        self._previous_token = token
        return token

    def _size(self, node: yaml.Node) -> int:
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._size(k) + self._size(v) for k, v in node.value)
        self._sizes[id(node)] = size
        return size

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            mark = event.start_mark
            assert mark is not None
            if event.anchor in self._open_anchors:
                raise Problem(mark.line + 1, mark.column + 1, f"recursive alias *{event.anchor}")
            if event.anchor in self.anchors:
                self._expanded += self._size(self.anchors[event.anchor])
                if self._expanded > MAX_ALIAS_NODES:
                    raise Problem(
                        mark.line + 1,
                        mark.column + 1,
                        f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes (an alias bomb?)",
                        "a few aliases of small anchors",
                    )
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            mark = event.start_mark
            assert mark is not None
            raise Problem(
                mark.line + 1, mark.column + 1, f"nested more than {MAX_DEPTH} levels deep"
            )
        anchor = (
            event.anchor
            if isinstance(event, ScalarEvent | SequenceStartEvent | MappingStartEvent)
            else None
        )
        if anchor:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor:
                self._open_anchors.discard(anchor)


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_YAML) :] if tag.startswith(_YAML) else tag


def _lines_tab_problem(text: str, line: int, column: int) -> Problem | None:
    """A plain message when YAML stumbled over a tab."""
    lines = text.splitlines() or [""]
    source = lines[line - 1] if 0 < line <= len(lines) else ""
    indent = source[: len(source) - len(source.lstrip(" \t"))]
    if "\t" in indent:
        return Problem(
            line,
            indent.index("\t") + 1,
            "tabs are not allowed for indentation; use spaces",
            "spaces",
        )
    if source[column - 1 : column] == "\t":
        return Problem(line, column, "a tab cannot separate YAML tokens here; use spaces", "spaces")
    return None


def compose(text: str) -> Node | None:
    """Parse the (placeholder-marked) text into a positioned tree; None for an empty cell."""
    stripped = text.lstrip()
    json_style = stripped.startswith(("{", "["))
    loader: _Loader | None = None
    try:
        loader = _Loader(text, json_style)
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark, context = exc.problem_mark, exc.context_mark
        problem = exc.problem or "malformed YAML"
        if context and (mark is None or "end of stream" in problem):
            mark, context = context, None  # an unclosed quote: point at where it opened
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        tab = _lines_tab_problem(text, line, column)
        if tab:
            raise tab from None
        if exc.context:
            problem += f" ({exc.context}"
            if context:
                problem += f" at line {context.line + 1}, column {context.column + 1}"
            problem += ")"
        raise Problem(line, column, problem, "well-formed YAML or JSON") from None
    except yaml.reader.ReaderError as exc:
        line, column = position(text, exc.position)
        raise Problem(
            line, column, f"character {exc.character!r} is not allowed", "printable text"
        ) from None
    except RecursionError:
        raise Problem(1, 1, "the cell is nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        return None
    return _convert(loader, root, 0)


def _convert(loader: _Loader, node: yaml.Node, depth: int) -> Node:
    line, column = node.start_mark.line + 1, node.start_mark.column + 1
    if depth > MAX_DEPTH:
        raise Problem(line, column, f"nested more than {MAX_DEPTH} levels deep (through aliases)")
    if node.tag not in _DATA_TAGS:
        raise Problem(
            line,
            column,
            f"tag {_tag_name(node.tag)} is not allowed",
            "plain data: strings, numbers, booleans, null, lists and mappings",
        )
    if isinstance(node, yaml.SequenceNode):
        return Seq(line, column, [_convert(loader, child, depth + 1) for child in node.value])
    if isinstance(node, yaml.MappingNode):
        result = Map(line, column)
        for key_node, value_node in node.value:
            key = _key(key_node)
            if key.value in result.entries:
                first = result.entries[key.value][0]
                raise Problem(
                    key.line,
                    key.column,
                    f"duplicate key '{key.value}' (first at line {first.line})",
                    "each key once per mapping",
                )
            result.entries[key.value] = (key, _convert(loader, value_node, depth + 1))
        return result
    assert isinstance(node, yaml.ScalarNode)
    value = loader.yaml_constructors[node.tag](loader, node)
    if isinstance(value, float) and not math.isfinite(value):
        raise Problem(line, column, f"{node.value} is not a finite number", "a JSON number")
    scalar = Scalar(line, column, value, raw=node.value)
    if isinstance(value, str) and _SLOT_OPEN in value:
        scalar.template = _split(value)
    return scalar


def _key(node: yaml.Node) -> Scalar:
    line, column = node.start_mark.line + 1, node.start_mark.column + 1
    if node.tag == _MERGE:
        raise Problem(line, column, "merge keys (<<) are not supported", "the keys written out")
    if not isinstance(node, yaml.ScalarNode):
        raise Problem(line, column, "a key must be a plain string", "key: value")
    if node.tag not in _DATA_TAGS:
        raise Problem(line, column, f"tag {_tag_name(node.tag)} is not allowed")
    if _SLOT_OPEN in node.value:
        raise Problem(line, column, "{{ }} is not allowed in a key", "a literal key")
    return Scalar(line, column, node.value, raw=node.value)


def _split(value: str) -> list[str | Slot]:
    """Literal text and slot indices of a string holding placeholders (slots resolved later)."""
    parts: list[str | Slot] = []
    last = 0
    for match in _SLOT_RE.finditer(value):
        if match.start() > last:
            parts.append(value[last : match.start()])
        index = int("".join(f"{_DIGITS.index(c):x}" for c in match.group(1)), 16)
        parts.append(Slot(str(index), 0, 0))
        last = match.end()
    if last < len(value):
        parts.append(value[last:])
    return parts


def load(data: str | bytes) -> tuple[str, Node | None]:
    """Decode, mark ``{{ }}`` slots, parse: the cell's text and its positioned tree."""
    text = decode(data)
    marked, slots = mark_slots(text)
    tree = compose(marked)
    if tree is not None:
        _attach(tree, slots)
    return text, tree


def _attach(node: Node, slots: list[Slot]) -> None:
    """Replace the index placeholders in templates by the slots they stand for."""
    if isinstance(node, Scalar) and node.template is not None:
        node.template = [
            slots[int(part.expr)] if isinstance(part, Slot) else part for part in node.template
        ]
    elif isinstance(node, Seq):
        for child in node.items:
            _attach(child, slots)
    elif isinstance(node, Map):
        for _, child in node.entries.values():
            _attach(child, slots)
