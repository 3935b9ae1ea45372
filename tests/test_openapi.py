"""The OpenAPI document: valid 3.1, covers every HTTP route, and agrees with the validators.

Imports modules only: no Redis, no app lifespan. The schemas are generated from the
models that validate; these tests check that what the document says is what
`validate_task` does (bounds, defaults, nullability, choices).
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from app.main import API, build_routes
from app.openapi import DOCUMENT, openapi
from app.validation import ValidationError, validate_task
from livepix import wire
from livepix.images import ImageLimits
from livepix.wire import ErrorCode, TaskType

SCHEMAS: dict[str, Any] = DOCUMENT["components"]["schemas"]
PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def camel(task_type: TaskType) -> str:
    return "".join(word.title() for word in task_type.value.split("_"))


def validator(name: str) -> jsonschema.protocols.Validator:
    """A JSON Schema validator for one component, its `$ref`s resolved in the document."""
    root = {"$ref": f"#/components/schemas/{name}", "components": DOCUMENT["components"]}
    return jsonschema.Draft202012Validator(root)


def test_document_is_valid_openapi_3_1() -> None:
    validate = pytest.importorskip("openapi_spec_validator").validate
    assert DOCUMENT["openapi"] == "3.1.0"
    validate(DOCUMENT)


def test_document_is_json_and_every_local_ref_resolves() -> None:
    text = json.dumps(DOCUMENT)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        node: Any = DOCUMENT
        for key in ref.removeprefix("#/").split("/"):
            node = node[key]  # KeyError: a dangling $ref


def http_routes() -> dict[str, set[str]]:
    """The api's HTTP routes under /api/v1, without the bare-path duplicates of the seed."""
    found: dict[str, set[str]] = {}
    for route in build_routes():
        bare = (route.name or "").endswith("_bare") if isinstance(route, Route) else True
        if isinstance(route, Route) and route.path.startswith(API + "/") and not bare:
            found[route.path] = {m.lower() for m in route.methods or ()} - {"head"}
    return found


def test_every_http_route_is_documented_and_nothing_else() -> None:
    routes = http_routes()
    paths = DOCUMENT["paths"]
    assert set(paths) == set(routes)
    for path, methods in routes.items():
        assert set(paths[path]) - {"parameters"} == methods, path


def test_websocket_endpoints_are_described() -> None:
    description = DOCUMENT["info"]["description"]
    for path in (API + "/tasks/{task_id}/ws", API + "/ws"):
        assert f"`{path}" in description
    for op in ("subscribe", "unsubscribe", "submit", "cancel", "ping", "submitted", "pong"):
        assert f'"op":"{op}"' in description


def test_task_id_is_a_uuid_path_parameter() -> None:
    for path, item in DOCUMENT["paths"].items():
        if "{task_id}" in path:
            assert item["parameters"][0]["schema"] == {"type": "string", "format": "uuid"}


def test_error_codes_and_statuses_come_from_the_wire() -> None:
    assert SCHEMAS["Error"]["properties"]["code"]["enum"] == [c.value for c in ErrorCode]
    assert SCHEMAS["TaskStatus"]["properties"]["status"]["enum"] == [s.value for s in wire.Status]
    mapping = SCHEMAS["Event"]["discriminator"]["mapping"]
    assert set(mapping) == {e.value for e in wire.EventType}
    for event_type, ref in mapping.items():
        assert SCHEMAS[ref.rsplit("/", 1)[1]]["properties"]["type"]["const"] == event_type


def test_event_and_result_schemas_have_the_wire_fields() -> None:
    events = [SCHEMAS[ref.rsplit("/", 1)[1]] for ref in SCHEMAS["Event"]["discriminator"]["mapping"].values()]
    fields = set().union(*(event["properties"] for event in events))
    assert fields == set(wire.Event.__annotations__)
    assert set(wire.TaskResult.__annotations__) <= set(SCHEMAS["TaskResult"]["properties"])


# A valid body of each task type, to vary one parameter in.
VALID: dict[TaskType, dict[str, Any]] = {
    TaskType.IMAGE_GENERATION: {"task_type": "image_generation", "prompt": "a fox"},
    TaskType.FACE_SWAP: {"task_type": "face_swap", "image": PNG_1PX, "target_image": PNG_1PX},
    TaskType.STYLE_TRANSFER: {"task_type": "style_transfer", "image": PNG_1PX, "prompt": "ink"},
    TaskType.BACKGROUND_REMOVAL: {"task_type": "background_removal", "image": PNG_1PX},
    TaskType.OBJECT_REMOVAL: {"task_type": "object_removal", "image": PNG_1PX, "mask": PNG_1PX},
}


def validates(task_type: TaskType, name: str, value: Any) -> bool:
    """Whether the api's validation takes `value` for parameter `name`; a refusal must
    name that parameter and nothing else."""
    try:
        validate_task({**VALID[task_type], "parameters": {name: value}}, ImageLimits())
    except ValidationError as exc:
        assert list(exc.details) == [f"parameters.{name}"], exc.details
        return False
    return True


@pytest.mark.parametrize("task_type", list(TaskType), ids=str)
def test_parameter_schemas_agree_with_the_validators(task_type: TaskType) -> None:
    properties = SCHEMAS[camel(task_type) + "Parameters"]["properties"]
    defaults = validate_task(VALID[task_type], ImageLimits()).parameters
    assert {name: schema["default"] for name, schema in properties.items()} == defaults
    for name, schema in properties.items():
        jsonschema.Draft202012Validator(schema).validate(schema["default"])
        members = schema.get("anyOf", [schema])
        nullable = {"type": "null"} in members
        assert validates(task_type, name, None) is nullable, name
        for member in members:
            if "minimum" in member:
                lo, hi = member["minimum"], member["maximum"]
                below = 1 if member["type"] == "integer" else 0.01
                assert validates(task_type, name, lo) and validates(task_type, name, hi), name
                assert not validates(task_type, name, lo - below), name
                assert not validates(task_type, name, hi + below), name
                if "multipleOf" in member:
                    assert not validates(task_type, name, lo + 1), name
                if member["type"] == "integer":
                    assert not validates(task_type, name, True), name  # a bool is no int
        for value in schema.get("enum", []):
            assert validates(task_type, name, value), (name, value)
        if "enum" in schema:
            assert not validates(task_type, name, "no-such-choice"), name


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"task_type": "image_generation", "prompt": "a fox",
          "parameters": {"width": 768, "seed": None}}, True),
        ({"task_type": "image_generation", "prompt": "a fox", "parameters": {"width": 100}}, False),
        ({"task_type": "image_generation"}, False),
        ({"task_type": "face_swap", "image": PNG_1PX, "target_image": PNG_1PX}, True),
        ({"task_type": "face_swap", "image": PNG_1PX}, False),
        ({"task_type": "style_transfer", "image": PNG_1PX, "parameters": {"style": "anime"}}, True),
        ({"task_type": "style_transfer", "image": PNG_1PX, "prompt": "as a sketch"}, True),
        ({"task_type": "style_transfer", "image": PNG_1PX}, False),
        ({"task_type": "background_removal", "image": PNG_1PX,
          "parameters": {"bgcolor": "#ffffff"}}, True),
        ({"task_type": "background_removal", "image": PNG_1PX, "parameters": {"x": 1}}, False),
        ({"task_type": "object_removal", "image": PNG_1PX,
          "parameters": {"boxes": [[0, 0, 1, 1]]}}, True),
        ({"task_type": "object_removal", "image": PNG_1PX, "mask": PNG_1PX}, True),
        ({"task_type": "object_removal", "image": PNG_1PX}, False),
        ({"task_type": "upscale", "image": PNG_1PX}, False),
    ],
)
def test_task_request_schema(body: dict[str, Any], valid: bool) -> None:
    assert validator("TaskRequest").is_valid(body) is valid


def test_error_examples_match_the_error_schema() -> None:
    error = validator("Error")
    documents = [DOCUMENT["paths"], DOCUMENT["components"]["responses"]]
    examples = [
        example["value"]
        for media in _walk(documents, "application/json")
        for example in media.get("examples", {}).values()
    ]
    assert examples
    for example in examples:
        error.validate(example)


def _walk(node: Any, key: str) -> list[Any]:
    if isinstance(node, dict):
        return ([node[key]] if key in node else []) + [
            found for value in node.values() for found in _walk(value, key)
        ]
    if isinstance(node, list):
        return [found for value in node for found in _walk(value, key)]
    return []


def test_endpoint_serves_the_document() -> None:
    app = Starlette(routes=[Route("/openapi.json", openapi)])
    with TestClient(app) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == json.loads(json.dumps(DOCUMENT))
