"""Avro schema resolution rules, checked on small schemas and on the project's real event schemas."""
from __future__ import annotations

import copy
import io

import fastavro
import pytest
from fastavro.read import SchemaResolutionError

from schemas import TOPICS, load_schema
from schemas.compatibility import (
    Direction,
    Mode,
    SchemaParseError,
    check,
    check_mode,
    describe,
    parse,
    resolve,
)


def record(name: str, *fields: dict, **extra) -> dict:
    return {"type": "record", "name": name, "fields": list(fields), **extra}


def fld(name: str, type_, **extra) -> dict:
    return {"name": name, "type": type_, **extra}


def enum(name: str, *symbols: str, **extra) -> dict:
    return {"type": "enum", "name": name, "symbols": list(symbols), **extra}


def reasons(reader, writer, direction=None) -> list[str]:
    return [i.reason for i in check(reader, writer, direction)]


def paths(reader, writer) -> list[str]:
    return [i.path for i in check(reader, writer)]


# ------------------------------------------------------------------------------------------ primitives

@pytest.mark.parametrize("writer,reader", [
    ("int", "long"), ("int", "float"), ("int", "double"), ("long", "float"), ("long", "double"),
    ("float", "double"), ("string", "bytes"), ("bytes", "string"),
])
def test_promotions_resolve(writer, reader):
    assert check(reader, writer) == []


@pytest.mark.parametrize("writer,reader", [
    ("long", "int"), ("double", "float"), ("float", "long"), ("string", "int"), ("boolean", "int"),
    ("null", "string"), ("double", "long"),
])
def test_narrowing_and_unrelated_primitives_fail(writer, reader):
    (problem,) = check(reader, writer)
    assert problem.kind == "type"
    assert problem.reason == f"writer type {writer} cannot be read as {reader}"


@pytest.mark.parametrize("name", ["null", "boolean", "int", "long", "float", "double", "bytes", "string"])
def test_identical_primitives_resolve(name):
    assert check(name, {"type": name}) == []


# ------------------------------------------------------------------------------------------ records

def test_added_field_without_default_fails_backward_naming_the_field():
    old = record("Order", fld("id", "string"))
    new = record("Order", fld("id", "string"), fld("currency", "string"))
    (problem,) = check(new, old, Direction.BACKWARD)
    assert problem.path == "Order.currency"
    assert problem.field == "currency"
    assert problem.reason == ("field 'currency' was added without a default: "
                              "data written with the old schema cannot be read")


def test_added_field_with_default_resolves():
    old = record("Order", fld("id", "string"))
    new = record("Order", fld("id", "string"), fld("currency", "string", default="EUR"))
    assert check(new, old) == []


def test_removed_field_is_fine_backward_but_fails_forward_without_an_old_default():
    old = record("Order", fld("id", "string"), fld("note", "string"))
    new = record("Order", fld("id", "string"))
    assert check(new, old) == []
    (problem,) = check(old, new, Direction.FORWARD)
    assert problem.field == "note"
    assert "removed but the old schema has no default" in problem.reason


def test_removed_field_with_old_default_resolves_forward():
    old = record("Order", fld("id", "string"), fld("note", ["null", "string"], default=None))
    new = record("Order", fld("id", "string"))
    assert check(old, new) == []


def test_field_type_change_fails_with_old_and_new_types():
    old = record("Order", fld("total", "long"))
    new = record("Order", fld("total", "string"))
    (problem,) = check(new, old, Direction.BACKWARD)
    assert problem.path == "Order.total"
    assert problem.reason.startswith("type changed from long to string")
    (problem,) = check(old, new, Direction.FORWARD)
    assert problem.reason.startswith("type changed from long to string")


def test_field_order_does_not_matter():
    a = record("R", fld("x", "int"), fld("y", "string"))
    b = record("R", fld("y", "string"), fld("x", "int"))
    assert check(a, b) == [] and check(b, a) == []


def test_field_alias_maps_a_renamed_field():
    old = record("R", fld("total", "long"))
    new = record("R", fld("amount", "long", aliases=["total"]))
    assert check(new, old) == []
    assert [i.field for i in check(new, record("R", fld("sum", "long")))] == ["amount"]


def test_record_rename_needs_an_alias():
    old = record("Order", fld("id", "string"), namespace="a")
    renamed = record("Purchase", fld("id", "string"), namespace="a")
    aliased = record("Purchase", fld("id", "string"), namespace="a", aliases=["Order"])
    (problem,) = check(renamed, old, Direction.BACKWARD)
    assert problem.kind == "name"
    assert "record renamed from Order to Purchase" in problem.reason
    assert check(aliased, old) == []


def test_namespace_change_alone_resolves_by_unqualified_name():
    assert check(record("R", fld("x", "int"), namespace="a"), record("R", fld("x", "int"), namespace="b")) == []


def test_nested_record_field_path():
    line_old = record("Line", fld("qty", "int"))
    line_new = record("Line", fld("qty", "string"))
    old = record("Order", fld("lines", {"type": "array", "items": line_old}))
    new = record("Order", fld("lines", {"type": "array", "items": line_new}))
    (problem,) = check(new, old)
    assert problem.path == "Order.lines[].qty"
    assert problem.field == "qty"


def test_every_problem_is_reported_not_just_the_first():
    old = record("R", fld("a", "int"), fld("b", "int"))
    new = record("R", fld("a", "string"), fld("b", "string"), fld("c", "int"))
    assert sorted(paths(new, old)) == ["R.a", "R.b", "R.c"]


def test_recursive_records_terminate_and_resolve():
    node = {"type": "record", "name": "Node", "fields": [
        fld("value", "int"), fld("next", ["null", "Node"], default=None)]}
    wider = {"type": "record", "name": "Node", "fields": [
        fld("value", "long"), fld("next", ["null", "Node"], default=None)]}
    assert check(wider, node) == []
    assert [i.path for i in check(node, wider)] == ["Node.value"]


def test_named_type_reference_is_resolved_at_each_use():
    money = {"type": "fixed", "name": "Money", "size": 8}
    old = record("R", fld("a", money), fld("b", "Money"))
    new = record("R", fld("a", {**money, "size": 16}), fld("b", "Money"))
    problems = check(new, old, Direction.BACKWARD)
    assert [p.path for p in problems] == ["R.a", "R.b"]
    assert problems[0].reason.startswith("fixed size changed from 8 to 16")


# ------------------------------------------------------------------------------------------ enums

def test_enum_symbol_removed_fails_backward():
    old = enum("Status", "PAID", "REFUNDED")
    new = enum("Status", "PAID")
    (problem,) = check(new, old, Direction.BACKWARD)
    assert problem.kind == "enum_symbol"
    assert problem.reason.startswith("enum symbol 'REFUNDED' removed from Status")


def test_enum_symbol_added_fails_forward_only():
    old = enum("Status", "PAID")
    new = enum("Status", "PAID", "REFUNDED")
    assert check(new, old) == []
    (problem,) = check(old, new, Direction.FORWARD)
    assert problem.reason.startswith("enum symbol 'REFUNDED' added to Status")


def test_enum_default_absorbs_unknown_symbols_with_a_note():
    old = enum("Status", "PAID", "UNKNOWN", default="UNKNOWN")
    new = enum("Status", "PAID", "REFUNDED")
    outcome = resolve(old, new, Direction.FORWARD)
    assert outcome.compatible
    (note,) = outcome.notes
    assert "reads it as its default 'UNKNOWN'" in note.message


def test_enum_rename_fails():
    (problem,) = check(enum("B", "X"), enum("A", "X"))
    assert problem.kind == "name"


# ------------------------------------------------------------------------------------------ arrays, maps, fixed

def test_array_items_promote_and_narrow():
    assert check({"type": "array", "items": "long"}, {"type": "array", "items": "int"}) == []
    (problem,) = check({"type": "array", "items": "int"}, {"type": "array", "items": "long"})
    assert problem.path == "array[]"


def test_map_values_are_checked():
    (problem,) = check({"type": "map", "values": "int"}, {"type": "map", "values": "string"})
    assert problem.path == "map{}"
    assert check({"type": "map", "values": "double"}, {"type": "map", "values": "float"}) == []


def test_array_versus_map_fails():
    (problem,) = check({"type": "map", "values": "int"}, {"type": "array", "items": "int"})
    assert problem.reason == "writer type array<int> cannot be read as map<int>"


def test_fixed_size_and_name():
    assert check({"type": "fixed", "name": "H", "size": 16}, {"type": "fixed", "name": "H", "size": 16}) == []
    (problem,) = check({"type": "fixed", "name": "H", "size": 32}, {"type": "fixed", "name": "H", "size": 16})
    assert problem.kind == "fixed_size"
    (problem,) = check({"type": "fixed", "name": "G", "size": 16}, {"type": "fixed", "name": "H", "size": 16})
    assert problem.kind == "name"


# ------------------------------------------------------------------------------------------ unions

def test_reader_union_must_accept_every_writer_branch():
    (problem,) = check(["null", "string"], ["null", "string", "int"], Direction.BACKWARD)
    assert problem.path == "union[int]"
    assert problem.reason.startswith("union branch int removed")


def test_added_union_branch_fails_forward_only():
    assert check(["null", "string", "int"], ["null", "string"]) == []
    (problem,) = check(["null", "string"], ["null", "string", "int"], Direction.FORWARD)
    assert problem.reason.startswith("union branch int added")


def test_union_branch_order_does_not_matter():
    assert check(["string", "null"], ["null", "string"]) == []


def test_writer_branch_promotes_into_reader_union():
    assert check(["null", "long"], ["null", "int"]) == []


def test_non_union_writer_into_reader_union():
    assert check(["null", "string"], "string") == []
    assert check(["null", "double"], "int") == []
    (problem,) = check(["null", "int"], "string", Direction.BACKWARD)
    assert problem.reason.startswith("type changed from string to union [null, int]")


def test_writer_union_into_non_union_reader_needs_every_branch():
    assert check("long", ["int", "long"]) == []
    (problem,) = check("string", ["null", "string"], Direction.BACKWARD)
    assert problem.path == "union[null]"
    assert problem.reason.startswith("type changed from union [null, string] to string")


def test_union_record_branch_is_resolved_deeply():
    old = [record("A", fld("x", "int")), record("B", fld("y", "int"))]
    new = [record("A", fld("x", "int"), fld("z", "int")), record("B", fld("y", "long"))]
    (problem,) = check(new, old)
    assert problem.path == "union[A].z"
    new_root = record("Env", fld("payload", new))
    old_root = record("Env", fld("payload", old))
    assert [p.path for p in check(new_root, old_root)] == ["Env.payload[A].z"]


# ------------------------------------------------------------------------------------------ logical types

def test_logical_type_change_is_a_note_not_an_incompatibility():
    outcome = resolve({"type": "long", "logicalType": "timestamp-micros"},
                      {"type": "long", "logicalType": "timestamp-millis"}, Direction.BACKWARD)
    assert outcome.compatible
    (note,) = outcome.notes
    assert note.message.startswith("logical type changed from timestamp-millis to timestamp-micros")


def test_logical_type_added_or_dropped_is_a_note():
    outcome = resolve("string", {"type": "string", "logicalType": "uuid"})
    assert outcome.compatible and [n.kind for n in outcome.notes] == ["logical_type"]


def test_logical_types_resolve_as_their_underlying_type():
    (problem,) = check({"type": "int", "logicalType": "date"}, {"type": "long", "logicalType": "timestamp-micros"})
    assert problem.reason == "writer type long (timestamp-micros) cannot be read as int (date)"


def test_decimal_scale_change_fails_and_precision_change_is_a_note():
    dec = {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}
    (problem,) = check({**dec, "scale": 3}, dec, Direction.BACKWARD)
    assert problem.kind == "decimal_scale"
    outcome = resolve({**dec, "precision": 14}, dec)
    assert outcome.compatible and [n.kind for n in outcome.notes] == ["decimal_precision"]


# ------------------------------------------------------------------------------------------ parsing

def test_namespaces_and_references():
    schema = {"type": "record", "name": "Outer", "namespace": "a.b", "fields": [
        fld("inner", record("Inner", fld("x", "int"))),
        fld("again", "Inner"), fld("full", "a.b.Inner")]}
    node = parse(schema)
    assert node.fullname == "a.b.Outer"
    assert node.fields[0].type is node.fields[1].type is node.fields[2].type


def test_unknown_reference_is_a_parse_error():
    with pytest.raises(SchemaParseError, match="Could not make an Avro Schema object from Missing"):
        parse(record("R", fld("x", "Missing")))


@pytest.mark.parametrize("schema", [
    {"type": "record", "name": "R", "fields": 5},
    {"type": "enum", "name": "E", "symbols": 3},
    {"type": "array"},
    {"type": "fixed", "name": "F", "size": -1},
    {"no": "type"},
    42,
    "{not json",
])
def test_malformed_schemas_raise_one_parse_error(schema):
    with pytest.raises(SchemaParseError):
        parse(schema)


def test_json_text_is_accepted():
    assert check('{"type": "array", "items": "long"}', '{"type": "array", "items": "int"}') == []


def test_describe():
    assert describe(parse(["null", record("A", fld("x", "int"))])) == "union [null, A]"
    assert describe(parse({"type": "array", "items": record("A", fld("x", "int"))})) == "array<record A>"


# ------------------------------------------------------------------------------------------ modes

V1 = record("R", fld("a", "int"))
V2 = record("R", fld("a", "int"), fld("b", "string", default=""))
V3_REQUIRED_B = record("R", fld("a", "int"), fld("b", "string"))


def test_mode_parse():
    assert Mode.parse("full_transitive") is Mode.FULL_TRANSITIVE
    with pytest.raises(ValueError, match="unknown compatibility mode 'SIDEWAYS'"):
        Mode.parse("SIDEWAYS")


def test_non_transitive_compares_with_the_latest_version_only():
    result = check_mode(V3_REQUIRED_B, [(1, V1), (2, V2)], Mode.BACKWARD)
    assert result.compared == (2,) and result.compatible


def test_transitive_compares_with_every_version():
    result = check_mode(V3_REQUIRED_B, [(2, V2), (1, V1)], Mode.BACKWARD_TRANSITIVE)
    assert result.compared == (1, 2)
    assert [(f.version, f.item.field) for f in result.incompatibilities] == [(1, "b")]


def test_forward_and_full():
    narrowed = record("R", fld("a", "long"))
    assert check_mode(narrowed, [(1, V1)], Mode.BACKWARD).compatible
    forward = check_mode(narrowed, [(1, V1)], Mode.FORWARD)
    assert [f.direction for f in forward.incompatibilities] == [Direction.FORWARD]
    full = check_mode(record("R", fld("a", "string")), [(1, V1)], Mode.FULL)
    assert [f.direction for f in full.incompatibilities] == [Direction.BACKWARD, Direction.FORWARD]


def test_none_checks_nothing():
    result = check_mode(record("R", fld("a", "string")), [(1, V1)], Mode.NONE)
    assert result.compatible and result.compared == ()


def test_no_registered_version_is_compatible():
    assert check_mode(V1, [], Mode.FULL_TRANSITIVE).compatible


# ------------------------------------------------------------------------------------------ the real schemas

def order_events_and_a_copy() -> tuple[dict, dict]:
    """The real order-events schema and a deep copy to change (load_schema's result is shared: never edit it)."""
    old = load_schema("order-events")
    return old, copy.deepcopy(old)


def field_named(record: dict, name: str) -> dict:
    return next(f for f in record["fields"] if f["name"] == name)


def payload_record(schema: dict, name: str) -> dict:
    return next(b for b in field_named(schema, "payload")["type"] if isinstance(b, dict) and b["name"] == name)


@pytest.mark.parametrize("topic", TOPICS)
def test_real_schemas_are_fully_compatible_with_themselves(topic):
    schema = load_schema(topic)
    assert check_mode(schema, [(1, schema)], Mode.FULL_TRANSITIVE).compatible


def test_real_optional_payload_field_with_default_passes_backward():
    old, new = order_events_and_a_copy()
    payload_record(new, "OrderShipped")["fields"].append(fld("carrier", ["null", "string"], default=None))
    result = check_mode(new, [(1, old)], Mode.BACKWARD)
    assert result.compatible, result.incompatibilities
    assert check_mode(new, [(1, old)], Mode.FULL).compatible


def test_real_required_payload_field_fails_naming_it():
    old, new = order_events_and_a_copy()
    payload_record(new, "OrderCreated")["fields"].append(fld("currency", "string"))
    (finding,) = check_mode(new, [(1, old)], Mode.BACKWARD).incompatibilities
    assert finding.item.path == "OrderEvent.payload[OrderCreated].currency"
    assert finding.item.field == "currency"
    assert finding.item.reason == ("field 'currency' was added without a default: "
                                   "data written with the old schema cannot be read")


def test_real_removed_union_branch_fails():
    old, new = order_events_and_a_copy()
    payload = field_named(new, "payload")
    payload["type"] = [b for b in payload["type"] if b["name"] != "OrderDelivered"]
    (finding,) = check_mode(new, [(1, old)], Mode.BACKWARD).incompatibilities
    assert finding.item.path == "OrderEvent.payload[OrderDelivered]"
    assert finding.item.reason.startswith("union branch OrderDelivered removed")


def test_real_type_change_fails():
    old, new = order_events_and_a_copy()
    field_named(new, "sequence_number")["type"] = "string"
    (finding,) = check_mode(new, [(1, old)], Mode.BACKWARD).incompatibilities
    assert finding.item.path == "OrderEvent.sequence_number"
    assert finding.item.reason.startswith("type changed from long to string")


def test_real_int_to_long_promotion_passes_backward_but_not_forward():
    old, new = order_events_and_a_copy()
    line = payload_record(new, "OrderCreated")["fields"][1]["type"]["items"]
    field_named(line, "quantity")["type"] = "long"
    assert check_mode(new, [(1, old)], Mode.BACKWARD).compatible
    (finding,) = check_mode(new, [(1, old)], Mode.FORWARD).incompatibilities
    assert finding.item.path == "OrderEvent.payload[OrderCreated].items[].quantity"
    assert finding.item.reason.startswith("type changed from int to long")


# ------------------------------------------------------------------------------------------ against a real decoder

RESOLUTION_CASES = [
    ("long", "int", 7),
    ("double", "float", 1.5),
    ("bytes", "string", "abc"),
    ("string", "bytes", b"abc"),
    ("int", "long", 7),
    (["null", "long"], "int", 7),
    ("string", ["null", "string"], None),
    (["null", "string"], ["null", "string", "int"], 3),
    (record("R", fld("a", "int"), fld("b", "string", default="d")), record("R", fld("a", "int")), {"a": 1}),
    (record("R", fld("a", "int"), fld("b", "string")), record("R", fld("a", "int")), {"a": 1}),
    (record("R", fld("a", "int")), record("R", fld("a", "int"), fld("c", "long")), {"a": 1, "c": 2}),
    (enum("E", "A"), enum("E", "A", "B"), "B"),
    (enum("E", "A", "U", default="U"), enum("E", "A", "B"), "B"),
    ({"type": "map", "values": "long"}, {"type": "map", "values": "int"}, {"k": 1}),
    ({"type": "fixed", "name": "F", "size": 4}, {"type": "fixed", "name": "F", "size": 2}, b"ab"),
]


@pytest.mark.parametrize("reader,writer,datum", RESOLUTION_CASES)
def test_verdict_agrees_with_fastavro_reading_real_bytes(reader, writer, datum):
    """Compatible means a real decoder reads the writer's datum; for incompatible pairs the datum is one that
    exercises the unreadable part, which the decoder must refuse."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(writer), datum)
    buf.seek(0)
    try:
        fastavro.schemaless_reader(buf, fastavro.parse_schema(writer), fastavro.parse_schema(reader))
        decoded = True
    except SchemaResolutionError:
        decoded = False
    assert (check(reader, writer) == []) == decoded
