"""Avro schema compatibility by the Avro specification's schema resolution rules. Pure: no I/O.

`check(reader, writer)` lists every place where data written with `writer` cannot be read with
`reader`; an empty list means every datum the writer can produce resolves against the reader.
The rules followed (Avro 1.11 "Schema Resolution"):

- primitives match when equal or when the writer's type promotes to the reader's:
  int → long, float, double; long → float, double; float → double; string ↔ bytes;
- records match by unqualified name (or a reader alias); a reader field missing from the writer
  needs a default; writer fields unknown to the reader are ignored; fields match by name or by a
  reader field alias;
- enums match by unqualified name (or alias); a writer symbol unknown to the reader needs the
  reader's enum default;
- fixed match by name and size; arrays and maps resolve their items and values;
- a reader union must accept every branch the writer can produce (a non-union writer is one branch);
  a writer union read by a non-union reader requires every branch to resolve against the reader;
- logical types resolve as their underlying type; a change of logical type is reported as a note,
  except a decimal scale change, which reads the same bytes as a different number (the
  specification requires decimals to agree on scale and precision to match; a precision change is
  only a note, as registries accept it).

`check_mode` applies a registry compatibility level (BACKWARD, FORWARD, FULL, their *_TRANSITIVE
variants, NONE) to a new schema and the registered versions of its subject.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "error", "enum", "fixed"})
PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}


class SchemaParseError(ValueError):
    """The document is not an Avro schema this module understands (one-line message)."""


class Direction(str, Enum):
    """Which of the two schemas is the new one; only changes how reasons are worded."""

    BACKWARD = "backward"
    FORWARD = "forward"


class Mode(str, Enum):
    """A schema registry compatibility level."""

    NONE = "NONE"
    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"

    @classmethod
    def parse(cls, text: str) -> Mode:
        """The mode named by `text` (case-insensitive), or ValueError listing the valid names."""
        try:
            return cls(text.strip().upper())
        except ValueError:
            raise ValueError(f"unknown compatibility mode {text!r}; known: {', '.join(m.value for m in cls)}") from None

    @property
    def directions(self) -> tuple[Direction, ...]:
        if self is Mode.NONE:
            return ()
        if self.value.startswith("BACKWARD"):
            return (Direction.BACKWARD,)
        if self.value.startswith("FORWARD"):
            return (Direction.FORWARD,)
        return (Direction.BACKWARD, Direction.FORWARD)

    @property
    def transitive(self) -> bool:
        return self.value.endswith("_TRANSITIVE")


@dataclass(eq=False)
class Field:
    name: str
    type: Node
    has_default: bool
    aliases: frozenset[str] = frozenset()


@dataclass(eq=False)
class Node:
    """One parsed schema; named types are shared by reference, so recursive schemas are cyclic."""

    type: str
    name: str | None = None
    aliases: frozenset[str] = frozenset()
    logical: tuple[Any, ...] | None = None
    fields: list[Field] = field(default_factory=list)
    symbols: tuple[str, ...] = ()
    enum_default: str | None = None
    size: int | None = None
    items: Node | None = None
    values: Node | None = None
    branches: tuple[Node, ...] = ()


@dataclass(frozen=True)
class Incompatibility:
    """Data cannot be resolved at `path`; `field` is the innermost record field on that path."""

    path: str
    field: str | None
    reason: str
    kind: str


@dataclass(frozen=True)
class Note:
    """A change that resolves but may change meaning (logical types, enum defaults taking over)."""

    path: str
    field: str | None
    message: str
    kind: str


@dataclass(frozen=True)
class Resolution:
    incompatibilities: tuple[Incompatibility, ...]
    notes: tuple[Note, ...]

    @property
    def compatible(self) -> bool:
        return not self.incompatibilities


@dataclass(frozen=True)
class Finding:
    """An incompatibility or note found against one registered version, in one direction."""

    version: int
    direction: Direction
    item: Incompatibility | Note


@dataclass(frozen=True)
class ModeCheck:
    """The outcome of a compatibility level: compatible iff `incompatibilities` is empty."""

    mode: Mode
    compared: tuple[int, ...]
    incompatibilities: tuple[Finding, ...]
    notes: tuple[Finding, ...]

    @property
    def compatible(self) -> bool:
        return not self.incompatibilities


# ---------------------------------------------------------------------------------------------- parsing

def parse(schema: Any) -> Node:
    """Parse an Avro schema given as JSON text, or as the decoded JSON value; raises SchemaParseError."""
    if isinstance(schema, Node):
        return schema
    if isinstance(schema, str) and schema.lstrip()[:1] in ("{", "[", '"'):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise SchemaParseError(f"not JSON: {exc}") from None
    try:
        return _Parser().parse(schema, "")
    except (TypeError, AttributeError, KeyError) as exc:
        raise SchemaParseError(f"malformed schema: {type(exc).__name__}: {exc}") from None


def _fullname(name: str, namespace: str | None, enclosing: str) -> str:
    if "." in name:
        return name
    ns = enclosing if namespace is None else namespace
    return f"{ns}.{name}" if ns else name


def _short(name: str | None) -> str:
    return (name or "").rpartition(".")[2]


def _logical(doc: dict) -> tuple[Any, ...] | None:
    logical = doc.get("logicalType")
    if logical is None:
        return None
    if logical == "decimal":
        return ("decimal", doc.get("precision"), doc.get("scale", 0))
    return (logical,)


class _Parser:
    def __init__(self) -> None:
        self.names: dict[str, Node] = {}

    def parse(self, schema: Any, namespace: str) -> Node:
        if isinstance(schema, str):
            return Node(schema) if schema in PRIMITIVES else self._reference(schema, namespace)
        if isinstance(schema, list):
            return Node("union", branches=tuple(self.parse(b, namespace) for b in schema))
        if not isinstance(schema, dict) or "type" not in schema:
            raise SchemaParseError(f"not an Avro schema: {json.dumps(schema)[:80]}")
        kind = schema["type"]
        if isinstance(kind, (dict, list)):
            return self.parse(kind, namespace)
        if kind in PRIMITIVES:
            return Node(kind, logical=_logical(schema))
        if kind in NAMED:
            return self._named(schema, namespace)
        if kind == "array":
            return Node("array", items=self.parse(self._require(schema, "items"), namespace), logical=_logical(schema))
        if kind == "map":
            return Node("map", values=self.parse(self._require(schema, "values"), namespace), logical=_logical(schema))
        if isinstance(kind, str):
            return self._reference(kind, namespace)
        raise SchemaParseError(f"unknown type {kind!r}")

    @staticmethod
    def _require(doc: dict, key: str) -> Any:
        if key not in doc:
            raise SchemaParseError(f"{doc.get('type')} schema without {key!r}")
        return doc[key]

    def _reference(self, name: str, namespace: str) -> Node:
        candidates = [name] if "." in name else [_fullname(name, None, namespace), name]
        for candidate in candidates:
            if candidate in self.names:
                return self.names[candidate]
        raise SchemaParseError(f"unknown type {name!r}")

    def _named(self, doc: dict, namespace: str) -> Node:
        name = self._require(doc, "name")
        if not isinstance(name, str) or not name:
            raise SchemaParseError(f"{doc['type']} with an invalid name {name!r}")
        full = _fullname(name, doc.get("namespace"), namespace)
        if full in self.names:
            raise SchemaParseError(f"type {full!r} is defined twice")
        inner = full.rpartition(".")[0]
        kind = "record" if doc["type"] == "error" else doc["type"]
        node = Node(kind, name=full, aliases=frozenset(_fullname(a, None, inner) for a in doc.get("aliases", ())),
                    logical=_logical(doc))
        self.names[full] = node
        if kind == "record":
            node.fields = [self._field(f, inner) for f in self._require(doc, "fields")]
        elif kind == "enum":
            node.symbols = tuple(self._require(doc, "symbols"))
            node.enum_default = doc.get("default")
        else:
            size = self._require(doc, "size")
            if not isinstance(size, int) or size < 0:
                raise SchemaParseError(f"fixed {full} with an invalid size {size!r}")
            node.size = size
        return node

    def _field(self, doc: Any, namespace: str) -> Field:
        if not isinstance(doc, dict) or "name" not in doc or "type" not in doc:
            raise SchemaParseError(f"invalid record field: {json.dumps(doc)[:80]}")
        return Field(doc["name"], self.parse(doc["type"], namespace), "default" in doc,
                     frozenset(doc.get("aliases", ())))


# ---------------------------------------------------------------------------------------------- wording

def label(node: Node) -> str:
    """A short name for a union branch or a path segment: the unqualified name or the type."""
    return _short(node.name) if node.name else node.type


def describe(node: Node) -> str:
    """A readable type: `long (timestamp-micros)`, `array<record OrderLine>`, `union [null, string]`."""
    if node.type == "union":
        return "union [" + ", ".join(label(b) for b in node.branches) + "]"
    if node.type == "array":
        text = f"array<{describe(node.items)}>" if node.items else "array"
    elif node.type == "map":
        text = f"map<{describe(node.values)}>" if node.values else "map"
    elif node.type == "fixed":
        text = f"fixed {_short(node.name)}({node.size})"
    elif node.name:
        text = f"{node.type} {_short(node.name)}"
    else:
        text = node.type
    return f"{text} ({describe_logical(node.logical)})" if node.logical else text


def describe_logical(logical: tuple[Any, ...] | None) -> str:
    if logical is None:
        return "no logical type"
    if logical[0] == "decimal":
        return f"decimal({logical[1]},{logical[2]})"
    return str(logical[0])


_OLD_UNREADABLE = "data written with the old schema cannot be read"
_NEW_UNREADABLE = "data written with the new schema cannot be read by the old one"

_TEMPLATES: dict[str, tuple[str, str, str]] = {
    "missing_field": (
        "field '{name}' is in the reader's schema without a default and missing from the writer's",
        "field '{name}' was added without a default: " + _OLD_UNREADABLE,
        "field '{name}' was removed but the old schema has no default for it: " + _NEW_UNREADABLE),
    "type": (
        "writer type {writer} cannot be read as {reader}",
        "type changed from {old} to {new}: " + _OLD_UNREADABLE,
        "type changed from {old} to {new}: " + _NEW_UNREADABLE),
    "union_branch": (
        "writer union branch {branch} has no match in the reader's union",
        "union branch {branch} removed: " + _OLD_UNREADABLE,
        "union branch {branch} added: " + _NEW_UNREADABLE),
    "union_to_single": (
        "writer union branch {branch} cannot be read as {reader}",
        "type changed from {old} to {new}: union branch {branch} of the old schema cannot be read",
        "type changed from {old} to {new}: union branch {branch} of the new schema cannot be read by the old one"),
    "enum_symbol": (
        "writer enum symbol '{symbol}' is not in the reader's enum {enum}, which has no default",
        "enum symbol '{symbol}' removed from {enum}, which has no default: " + _OLD_UNREADABLE,
        "enum symbol '{symbol}' added to {enum} and the old enum has no default: " + _NEW_UNREADABLE),
    "name": (
        "writer {what} {writer} does not match reader {what} {reader} (names and aliases differ)",
        "{what} renamed from {old} to {new} without an alias for {old}: " + _OLD_UNREADABLE,
        "{what} renamed from {old} to {new} and the old schema has no alias for {new}: " + _NEW_UNREADABLE),
    "fixed_size": (
        "writer fixed size {writer} differs from reader fixed size {reader}",
        "fixed size changed from {old} to {new}: " + _OLD_UNREADABLE,
        "fixed size changed from {old} to {new}: " + _NEW_UNREADABLE),
    "decimal_scale": (
        "writer decimal scale {writer} differs from reader decimal scale {reader}",
        "decimal scale changed from {old} to {new}: stored values would be read as different numbers",
        "decimal scale changed from {old} to {new}: the old schema would read different numbers"),
    "logical_type": (
        "writer logical type {writer}, reader logical type {reader}: same encoding, values interpreted differently",
        "logical type changed from {old} to {new}: same encoding, values interpreted differently",
        "logical type changed from {old} to {new}: same encoding, values interpreted differently"),
    "decimal_precision": (
        "writer decimal precision {writer}, reader decimal precision {reader}",
        "decimal precision changed from {old} to {new}",
        "decimal precision changed from {old} to {new}"),
    "enum_default": (
        "writer enum symbol '{symbol}' is not in the reader's enum {enum}; it reads as the default '{default}'",
        "enum symbol '{symbol}' removed from {enum}; old data holding it reads as the default '{default}'",
        "enum symbol '{symbol}' added to {enum}; the old schema reads it as its default '{default}'"),
}


def _render(kind: str, direction: Direction | None, **details: Any) -> str:
    neutral, backward, forward = _TEMPLATES[kind]
    writer, reader = details.get("writer"), details.get("reader")
    if direction is Direction.BACKWARD:
        return backward.format(old=writer, new=reader, **details)
    if direction is Direction.FORWARD:
        return forward.format(old=reader, new=writer, **details)
    return neutral.format(**details)


# ---------------------------------------------------------------------------------------------- resolution

def _names_match(reader: Node, writer: Node) -> bool:
    if reader.name == writer.name or _short(reader.name) == _short(writer.name):
        return True
    return writer.name in reader.aliases or _short(writer.name) in {_short(a) for a in reader.aliases}


def _shallow(reader: Node, writer: Node) -> str | None:
    """None when the two match at the top level (Avro's "schemas match"), else the kind of mismatch."""
    if reader.type != writer.type:
        return None if reader.type in PROMOTIONS.get(writer.type, ()) else "type"
    if reader.type in ("record", "enum", "fixed") and not _names_match(reader, writer):
        return "name"
    if reader.type == "fixed" and reader.size != writer.size:
        return "fixed_size"
    return None


def _select(branches: Iterable[Node], writer: Node) -> Node | None:
    """The reader branch a writer value resolves to: exact full name or type first, then names, then promotions."""
    branches = tuple(branches)
    exact = [b for b in branches if b.type == writer.type and _shallow(b, writer) is None]
    for candidate in exact:
        if candidate.name == writer.name:
            return candidate
    if exact:
        return exact[0]
    return next((b for b in branches if _shallow(b, writer) is None), None)


class _Resolver:
    def __init__(self, direction: Direction | None) -> None:
        self.direction = direction
        self.problems: list[Incompatibility] = []
        self.notes: list[Note] = []
        self.seen: set[tuple[int, int]] = set()

    def fail(self, path: str, field_name: str | None, kind: str, **details: Any) -> None:
        self.problems.append(Incompatibility(path, field_name, _render(kind, self.direction, **details), kind))

    def note(self, path: str, field_name: str | None, kind: str, **details: Any) -> None:
        self.notes.append(Note(path, field_name, _render(kind, self.direction, **details), kind))

    def resolve(self, reader: Node, writer: Node, path: str, field_name: str | None) -> None:
        if writer.type == "union":
            self._writer_union(reader, writer, path, field_name)
        elif reader.type == "union":
            branch = _select(reader.branches, writer)
            if branch is None:
                self.fail(path, field_name, "type", writer=describe(writer), reader=describe(reader))
            else:
                self.resolve(branch, writer, path, field_name)
        else:
            self._same_shape(reader, writer, path, field_name)

    def _writer_union(self, reader: Node, writer: Node, path: str, field_name: str | None) -> None:
        for branch in writer.branches:
            branch_path = f"{path}[{label(branch)}]"
            if reader.type == "union":
                target = _select(reader.branches, branch)
                if target is None:
                    self.fail(branch_path, field_name, "union_branch", branch=label(branch))
                else:
                    self.resolve(target, branch, branch_path, field_name)
            elif _shallow(reader, branch) is not None:
                self.fail(branch_path, field_name, "union_to_single", branch=label(branch),
                          writer=describe(writer), reader=describe(reader))
            else:
                self.resolve(reader, branch, branch_path, field_name)

    def _same_shape(self, reader: Node, writer: Node, path: str, field_name: str | None) -> None:
        mismatch = _shallow(reader, writer)
        if mismatch == "type":
            self.fail(path, field_name, "type", writer=describe(writer), reader=describe(reader))
            return
        if mismatch == "name":
            self.fail(path, field_name, "name", what=reader.type, writer=_short(writer.name),
                      reader=_short(reader.name))
            return
        if mismatch == "fixed_size":
            self.fail(path, field_name, "fixed_size", writer=writer.size, reader=reader.size)
            return
        self._logical(reader, writer, path, field_name)
        if reader.type == "record":
            self._record(reader, writer, path)
        elif reader.type == "enum":
            self._enum(reader, writer, path, field_name)
        elif reader.type == "array":
            self.resolve(reader.items, writer.items, f"{path}[]", field_name)
        elif reader.type == "map":
            self.resolve(reader.values, writer.values, f"{path}{{}}", field_name)

    def _record(self, reader: Node, writer: Node, path: str) -> None:
        key = (id(reader), id(writer))
        if key in self.seen:
            return
        self.seen.add(key)
        try:
            self._fields(reader, writer, path)
        finally:
            self.seen.discard(key)

    def _fields(self, reader: Node, writer: Node, path: str) -> None:
        by_name = {f.name: f for f in writer.fields}
        for reader_field in reader.fields:
            writer_field = by_name.get(reader_field.name) or next(
                (by_name[a] for a in sorted(reader_field.aliases) if a in by_name), None)
            field_path = f"{path}.{reader_field.name}"
            if writer_field is not None:
                self.resolve(reader_field.type, writer_field.type, field_path, reader_field.name)
            elif not reader_field.has_default:
                self.fail(field_path, reader_field.name, "missing_field", name=reader_field.name)

    def _enum(self, reader: Node, writer: Node, path: str, field_name: str | None) -> None:
        known = set(reader.symbols)
        for symbol in writer.symbols:
            if symbol in known:
                continue
            if reader.enum_default is None:
                self.fail(path, field_name, "enum_symbol", symbol=symbol, enum=_short(reader.name))
            else:
                self.note(path, field_name, "enum_default", symbol=symbol, enum=_short(reader.name),
                          default=reader.enum_default)

    def _logical(self, reader: Node, writer: Node, path: str, field_name: str | None) -> None:
        if reader.logical == writer.logical:
            return
        if reader.logical and writer.logical and reader.logical[0] == writer.logical[0] == "decimal":
            if reader.logical[2] != writer.logical[2]:
                self.fail(path, field_name, "decimal_scale", writer=writer.logical[2], reader=reader.logical[2])
            if reader.logical[1] != writer.logical[1]:
                self.note(path, field_name, "decimal_precision", writer=writer.logical[1], reader=reader.logical[1])
            return
        self.note(path, field_name, "logical_type", writer=describe_logical(writer.logical),
                  reader=describe_logical(reader.logical))


def resolve(reader: Any, writer: Any, direction: Direction | None = None) -> Resolution:
    """Incompatibilities and notes of reading `writer` data with `reader`. Schemas are JSON text, decoded
    JSON or parsed Nodes. `direction` only words the reasons (BACKWARD: the reader is the new schema)."""
    reader_node, writer_node = parse(reader), parse(writer)
    resolver = _Resolver(direction)
    root = "union" if "union" in (reader_node.type, writer_node.type) else label(reader_node)
    resolver.resolve(reader_node, writer_node, root, None)
    return Resolution(tuple(resolver.problems), tuple(resolver.notes))


def check(reader: Any, writer: Any, direction: Direction | None = None) -> list[Incompatibility]:
    """Every incompatibility of reading `writer` data with `reader`; empty iff all writer data resolves."""
    return list(resolve(reader, writer, direction).incompatibilities)


def check_mode(new: Any, registered: Sequence[tuple[int, Any]], mode: Mode) -> ModeCheck:
    """Apply a compatibility level to `new` against `registered` (version, schema) pairs: non-transitive
    levels compare with the highest version only, transitive ones with every version, NONE with none."""
    ordered = sorted(registered, key=lambda pair: pair[0])
    targets = [] if mode is Mode.NONE else ordered if mode.transitive else ordered[-1:]
    new_node = parse(new)
    problems: list[Finding] = []
    notes: list[Finding] = []
    for version, old in targets:
        old_node = parse(old)
        for direction in mode.directions:
            reader, writer = (new_node, old_node) if direction is Direction.BACKWARD else (old_node, new_node)
            outcome = resolve(reader, writer, direction)
            problems.extend(Finding(version, direction, i) for i in outcome.incompatibilities)
            notes.extend(Finding(version, direction, n) for n in outcome.notes)
    return ModeCheck(mode, tuple(v for v, _ in targets), tuple(problems), tuple(notes))
