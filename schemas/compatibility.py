"""Avro schema compatibility for the schema gate (`cqrs schemas check`). Pure: no I/O.

`check(reader, writer)` lists every place where data written with `writer` cannot be read with `reader`: empty
iff every datum the writer can produce resolves against the reader. `check_mode` applies a registry level
(BACKWARD, FORWARD, FULL, their *_TRANSITIVE variants, NONE) to a new schema and its subject's versions.

Apache avro's `ReaderWriterCompatibilityChecker` decides every pair of non-union schemas (promotions, enum
symbols and defaults, fixed sizes, type mismatches) and its field lookup (name, then alias) pairs record fields.
By hand, as the checker lacks them: the walk into records, arrays, maps and unions, so that each finding keeps
its path (for those the checker's results are merged sets); the union branch Avro's rule picks; unqualified
names and aliases; logical types (a change is a note; a decimal scale change fails: the bytes read differently).
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import avro.errors
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaIncompatibilityType, lookup_writer_field
from avro.schema import NamedSchema, Schema, make_avsc_object


class SchemaParseError(ValueError):
    """The document is not an Avro schema (one-line message)."""


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
        """BACKWARD: the new schema reads old data; FORWARD: the old schema reads new data; FULL: both."""
        return tuple(d for d in Direction if self.value.startswith((d.name, "FULL")))

    @property
    def transitive(self) -> bool:
        """Compared with every registered version, not only the latest."""
        return self.value.endswith("_TRANSITIVE")


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
    """What reading one writer schema's data with one reader schema finds."""
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


def parse(schema: Any) -> Schema:
    """An avro Schema from JSON text, decoded JSON or a Schema, else SchemaParseError naming the innermost
    cause. Named types are shared by reference; logical types avro cannot use stay as properties."""
    if isinstance(schema, Schema):
        return schema
    if isinstance(schema, str) and schema.lstrip()[:1] in ("{", "[", '"'):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise SchemaParseError(f"not JSON: {exc}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", avro.errors.IgnoredLogicalType)
            return make_avsc_object(_errors_as_records(schema))
    except (avro.errors.AvroException, TypeError, AttributeError, KeyError, ValueError) as exc:
        while exc.__context__ is not None:   # avro wraps the cause once per enclosing type
            exc = exc.__context__
        text = str(exc) if isinstance(exc, avro.errors.AvroException) else f"{type(exc).__name__}: {exc}"
        raise SchemaParseError(" ".join(text.split())) from None


def _errors_as_records(doc: Any) -> Any:
    """A protocol `error` is a record; the checker has no rule for `error` and fails on one."""
    if isinstance(doc, list):
        return [_errors_as_records(item) for item in doc]
    if not isinstance(doc, dict):
        return doc
    nested = {key: _errors_as_records(doc[key]) for key in ("type", "fields", "items", "values") if key in doc}
    return {**doc, **nested, **({"type": "record"} if doc.get("type") == "error" else {})}


def label(schema: Schema) -> str:
    """A short name for a union branch or a path segment: the unqualified name or the type."""
    return schema.name if isinstance(schema, NamedSchema) else schema.type


def describe(schema: Schema) -> str:
    """A readable type: `long (timestamp-micros)`, `array<record OrderLine>`, `union [null, string]`."""
    if schema.type == "union":
        return "union [" + ", ".join(label(b) for b in schema.schemas) + "]"
    if schema.type in ("array", "map"):
        text = f"{schema.type}<{describe(schema.items if schema.type == 'array' else schema.values)}>"
    elif schema.type == "fixed":
        text = f"fixed {schema.name}({schema.size})"
    else:
        text = f"{schema.type} {schema.name}" if isinstance(schema, NamedSchema) else schema.type
    return f"{text} ({_logical(schema)})" if _logical(schema) else text


def _logical(schema: Schema) -> str | None:
    """The logical type as written (`decimal(12,2)`, `uuid`), also one avro ignores as invalid."""
    props = schema.props
    if props.get("logicalType") == "decimal":
        return f"decimal({props.get('precision')},{props.get('scale', 0)})"
    return props.get("logicalType")


# kind: (neutral wording, BACKWARD wording (old = writer), FORWARD wording (old = reader); None: as BACKWARD).
# {unreadable} says whose data the change makes unreadable.
_TEMPLATES: dict[str, tuple[str, str, str | None]] = {
    "missing_field": ("field '{name}' is in the reader's schema without a default and missing from the writer's",
                      "field '{name}' was added without a default: {unreadable}",
                      "field '{name}' was removed but the old schema has no default for it: {unreadable}"),
    "type": ("writer type {writer} cannot be read as {reader}", "type changed from {old} to {new}: {unreadable}", None),
    "union_branch": ("writer union branch {branch} has no match in the reader's union",
                     "union branch {branch} removed: {unreadable}", "union branch {branch} added: {unreadable}"),
    "union_to_single": (
        "writer union branch {branch} cannot be read as {reader}",
        "type changed from {old} to {new}: union branch {branch} of the old schema cannot be read",
        "type changed from {old} to {new}: union branch {branch} of the new schema cannot be read by the old one"),
    "enum_symbol": ("writer enum symbol '{symbol}' is not in the reader's enum {enum}, which has no default",
                    "enum symbol '{symbol}' removed from {enum}, which has no default: {unreadable}",
                    "enum symbol '{symbol}' added to {enum} and the old enum has no default: {unreadable}"),
    "name": ("writer {what} {writer} does not match reader {what} {reader} (names and aliases differ)",
             "{what} renamed from {old} to {new} without an alias for {old}: {unreadable}",
             "{what} renamed from {old} to {new} and the old schema has no alias for {new}: {unreadable}"),
    "fixed_size": ("writer fixed size {writer} differs from reader fixed size {reader}",
                   "fixed size changed from {old} to {new}: {unreadable}", None),
    "decimal_scale": ("writer decimal scale {writer} differs from reader decimal scale {reader}",
                      "decimal scale changed from {old} to {new}: stored values would be read as different numbers",
                      "decimal scale changed from {old} to {new}: the old schema would read different numbers"),
    "logical_type": (
        "writer logical type {writer}, reader logical type {reader}: same encoding, values interpreted differently",
        "logical type changed from {old} to {new}: same encoding, values interpreted differently", None),
    "decimal_precision": ("writer decimal precision {writer}, reader decimal precision {reader}",
                          "decimal precision changed from {old} to {new}", None),
    "enum_default": (
        "writer enum symbol '{symbol}' is not in the reader's enum {enum}; it reads as the default '{default}'",
        "enum symbol '{symbol}' removed from {enum}; old data holding it reads as the default '{default}'",
        "enum symbol '{symbol}' added to {enum}; the old schema reads it as its default '{default}'"),
}
_UNREADABLE = {Direction.BACKWARD: "data written with the old schema cannot be read",
               Direction.FORWARD: "data written with the new schema cannot be read by the old one"}


def _render(kind: str, direction: Direction | None, **details: Any) -> str:
    neutral, backward, forward = _TEMPLATES[kind]
    if direction is None:
        return neutral.format(**details)
    old, new = details.get("writer"), details.get("reader")
    if direction is Direction.FORWARD:
        old, new, backward = new, old, forward or backward
    return backward.format(old=old, new=new, unreadable=_UNREADABLE[direction], **details)


def _names_match(reader: NamedSchema, writer: NamedSchema) -> bool:
    """Named types match by unqualified name or by a reader alias, whatever their namespaces."""
    return writer.name in {reader.name, *(str(a).rpartition(".")[2] for a in reader.props.get("aliases") or ())}


def _matches(reader: Schema, writer: Schema) -> bool:
    """Avro's "schemas match" test, which picks a union branch: a type the checker promotes, or the same type
    with matching names and, for fixed, the same size."""
    if reader.type != writer.type:
        return not _checker_finds(reader, writer)
    named_alike = not isinstance(reader, NamedSchema) or _names_match(reader, writer)
    return named_alike and (reader.type != "fixed" or reader.size == writer.size)


def _pick(branches: Sequence[Schema], writer: Schema) -> Schema | None:
    """The reader branch a (non-union) writer value resolves to: the same type, with the same full name first,
    else the first it promotes to; None when none matches."""
    same = [b for b in branches if b.type == writer.type and _matches(b, writer)]
    exact = [b for b in same if getattr(b, "fullname", None) == getattr(writer, "fullname", None)]
    return next(iter(exact + same + [b for b in branches if _matches(b, writer)]), None)


def _checker_finds(reader: Schema, writer: Schema) -> set[SchemaIncompatibilityType]:
    """What avro's checker finds for a pair; for a pair of different types, or of primitives, enums or fixed,
    it looks at nothing inside, so each type found belongs to the pair itself."""
    return set(ReaderWriterCompatibilityChecker().get_compatibility(reader, writer).incompatibilities)


class _Resolver:
    """Walks a reader/writer pair as Avro resolution does, recording each Incompatibility and Note at its path;
    the checker decides every pair of non-union schemas."""

    def __init__(self, direction: Direction | None) -> None:
        self.direction = direction
        self.problems: list[Incompatibility] = []
        self.notes: list[Note] = []
        self.in_progress: set[tuple[int, int]] = set()

    def resolve(self, reader: Schema, writer: Schema, path: str, field: str | None) -> None:
        """Unions first: a writer union resolves branch by branch, a reader union by the branch Avro picks."""
        if writer.type == "union":
            self._writer_union(reader, writer, path, field)
        elif reader.type == "union":
            target = _pick(reader.schemas, writer)
            if target is None:
                self._fail(path, field, "type", writer=describe(writer), reader=describe(reader))
            else:
                self.resolve(target, writer, path, field)
        else:
            self._pair(reader, writer, path, field)

    def _writer_union(self, reader: Schema, writer: Schema, path: str, field: str | None) -> None:
        """Each branch the writer can produce must resolve against the reader (branch) Avro picks for it."""
        for branch in writer.schemas:
            at = f"{path}[{label(branch)}]"
            target = _pick(reader.schemas if reader.type == "union" else [reader], branch)
            if target is not None:
                self.resolve(target, branch, at, field)
            elif reader.type == "union":
                self._fail(at, field, "union_branch", branch=label(branch))
            else:
                self._fail(at, field, "union_to_single", branch=label(branch), writer=describe(writer),
                           reader=describe(reader))

    def _pair(self, reader: Schema, writer: Schema, path: str, field: str | None) -> None:
        """Two non-union schemas: names, the checker's verdict on the pair, logical types, then what is inside."""
        if reader.type == writer.type and isinstance(reader, NamedSchema) and not _names_match(reader, writer):
            return self._fail(path, field, "name", what=reader.type, writer=writer.name, reader=reader.name)
        container = reader.type == writer.type and reader.type in ("record", "array", "map")
        found = set() if container else _checker_finds(reader, writer)
        if SchemaIncompatibilityType.type_mismatch in found:
            return self._fail(path, field, "type", writer=describe(writer), reader=describe(reader))
        if SchemaIncompatibilityType.fixed_size_mismatch in found:
            return self._fail(path, field, "fixed_size", writer=writer.size, reader=reader.size)
        self._logical_types(reader, writer, path, field)
        if reader.type == "enum":
            self._enum(reader, writer, path, field, SchemaIncompatibilityType.missing_enum_symbols in found)
        elif reader.type == "record":
            self._record(reader, writer, path)
        elif reader.type == "array":
            self.resolve(reader.items, writer.items, f"{path}[]", field)
        elif reader.type == "map":
            self.resolve(reader.values, writer.values, f"{path}{{}}", field)

    def _record(self, reader: Schema, writer: Schema, path: str) -> None:
        """Every reader field resolves against its writer field, or needs a default when the writer lacks it."""
        pair = (id(reader), id(writer))
        if pair in self.in_progress:   # a recursive type met again inside itself adds nothing
            return
        self.in_progress.add(pair)
        for reader_field in reader.fields:
            at, name = f"{path}.{reader_field.name}", reader_field.name
            writer_field = lookup_writer_field(writer, reader_field)
            if writer_field is not None:
                self.resolve(reader_field.type, writer_field.type, at, name)
            elif not reader_field.has_default:
                self._fail(at, name, "missing_field", name=name)
        self.in_progress.discard(pair)

    def _enum(self, reader: Schema, writer: Schema, path: str, field: str | None, refused: bool) -> None:
        """One finding per writer symbol the reader lacks: refused, or read as the reader's default (a note)."""
        for symbol in [s for s in writer.symbols if s not in reader.symbols]:
            details = {"symbol": symbol, "enum": reader.name, "default": reader.props.get("default")}
            if refused:
                self._fail(path, field, "enum_symbol", **details)
            else:
                self._note(path, field, "enum_default", **details)

    def _logical_types(self, reader: Schema, writer: Schema, path: str, field: str | None) -> None:
        """A decimal scale change fails (the bytes would read as another number); other changes are notes."""
        old, new = writer.props, reader.props
        if _logical(writer) == _logical(reader):
            return
        if not old.get("logicalType") == new.get("logicalType") == "decimal":
            return self._note(path, field, "logical_type", writer=_logical(writer) or "no logical type",
                              reader=_logical(reader) or "no logical type")
        if old.get("scale", 0) != new.get("scale", 0):
            self._fail(path, field, "decimal_scale", writer=old.get("scale", 0), reader=new.get("scale", 0))
        if old.get("precision") != new.get("precision"):
            self._note(path, field, "decimal_precision", writer=old.get("precision"), reader=new.get("precision"))

    def _fail(self, path: str, field: str | None, kind: str, **details: Any) -> None:
        self.problems.append(Incompatibility(path, field, _render(kind, self.direction, **details), kind))

    def _note(self, path: str, field: str | None, kind: str, **details: Any) -> None:
        self.notes.append(Note(path, field, _render(kind, self.direction, **details), kind))


def resolve(reader: Any, writer: Any, direction: Direction | None = None) -> Resolution:
    """Incompatibilities and notes of reading `writer` data with `reader`, in the order the schemas read.
    Schemas are JSON text, decoded JSON or avro Schemas; `direction` only words the reasons (BACKWARD: the
    reader is the new schema)."""
    reader_schema, writer_schema = parse(reader), parse(writer)
    resolver = _Resolver(direction)
    root = "union" if "union" in (reader_schema.type, writer_schema.type) else label(reader_schema)
    resolver.resolve(reader_schema, writer_schema, root, None)
    return Resolution(tuple(resolver.problems), tuple(resolver.notes))


def check(reader: Any, writer: Any, direction: Direction | None = None) -> list[Incompatibility]:
    """Every incompatibility of reading `writer` data with `reader`; empty iff all writer data resolves."""
    return list(resolve(reader, writer, direction).incompatibilities)


def check_mode(new: Any, registered: Sequence[tuple[int, Any]], mode: Mode) -> ModeCheck:
    """Apply a compatibility level to `new` against `registered` (version, schema) pairs: non-transitive
    levels compare with the highest version only, transitive ones with every version, NONE with none."""
    ordered = sorted(registered, key=lambda pair: pair[0])
    targets = [] if mode is Mode.NONE else ordered if mode.transitive else ordered[-1:]
    new_schema = parse(new)
    problems: list[Finding] = []
    notes: list[Finding] = []
    for version, old in targets:
        old_schema = parse(old)
        for direction in mode.directions:
            reader, writer = (new_schema, old_schema) if direction is Direction.BACKWARD else (old_schema, new_schema)
            outcome = resolve(reader, writer, direction)
            problems.extend(Finding(version, direction, i) for i in outcome.incompatibilities)
            notes.extend(Finding(version, direction, n) for n in outcome.notes)
    return ModeCheck(mode, tuple(v for v, _ in targets), tuple(problems), tuple(notes))
