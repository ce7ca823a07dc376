"""The public API's documents as pydantic models: one source for validation, serialisation and OpenAPI.

A view parses its JSON body with :func:`parse` (400 for a body that is not a JSON object, 415 for one
that is not JSON, 422 with one entry per bad field), answers with :func:`respond`, and moves between
models and protobuf messages with :func:`to_message` and :func:`from_message` (the models' field names
are the messages' JSON names). The OpenAPI components come from the same models (:func:`components`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from flask import Response, request
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from coffeeping_gateway.problems import Problem

T = TypeVar("T", bound=BaseModel)
M = TypeVar("M", bound=Message)

REF = "#/components/schemas/{model}"


class Input(BaseModel):
    """A request document: unknown fields are refused, and no value is coerced to another type."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Output(BaseModel):
    """A response document."""


class Query(BaseModel):
    """A query string: parameters it does not name are ignored."""

    model_config = ConfigDict(extra="ignore")


def field_name(loc: Iterable[int | str]) -> str:
    """``("follow_ups", 0, "delay")`` as ``follow_ups[0].delay``."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else part)
    return name


def parse(model: type[T]) -> T:
    """The request's JSON body as ``model`` (an empty body is an empty object)."""
    data = request.get_data(cache=False)
    if data and not (request.mimetype or "").endswith("json"):
        raise Problem(415, "send the body as application/json")
    return parse_json(model, data)


def parse_json(model: type[T], data: bytes) -> T:
    """``data`` (JSON; empty means an empty object) as ``model``, or the problem that says what is wrong."""
    try:
        return model.model_validate_json(data or b"{}")
    except ValidationError as exc:
        kinds = {(e["type"], bool(e["loc"])) for e in exc.errors(include_url=False)}
        if ("json_invalid", False) in kinds:
            raise Problem(400, "the request body is not valid JSON") from None
        if any(not located for _, located in kinds):
            raise Problem(400, "the request body must be a JSON object") from None
        raise invalid(exc) from None


def parse_query(model: type[T], args: dict[str, str] | None = None) -> T:
    """The query string (or ``args``) as ``model``, a model that ignores the parameters it does not name."""
    try:
        return model.model_validate(request.args.to_dict() if args is None else args)
    except ValidationError as exc:
        raise invalid(exc) from None


def invalid(exc: ValidationError) -> Problem:
    """422 with one ``{field, message}`` per violation, as the mailer's field violations are answered."""
    return Problem(422, "the request has invalid fields", errors=[
        {"field": field_name(e["loc"]), "message": e["msg"]} for e in exc.errors(include_url=False)])


def respond(document: BaseModel, status: int = 200) -> Response:
    return Response(document.model_dump_json(), status=status, mimetype="application/json")


def from_message(model: type[T], message: Message, **values: Any) -> T:
    """``message`` (and ``values``, which win) as ``model``; an unset optional field is None."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    return model.model_validate({**data, **values})


def to_message(document: BaseModel, message: M) -> M:
    """The fields the client gave in ``document`` as ``message`` (a null clears the field)."""
    return json_format.ParseDict(document.model_dump(mode="json", exclude_unset=True), message)


def content(model: type[BaseModel], media_type: str = "application/json") -> dict[str, Any]:
    return {media_type: {"schema": {"$ref": REF.format(model=model.__name__)}}}


def components(models: Iterable[type[BaseModel]]) -> dict[str, Any]:
    """The JSON Schemas of ``models`` (inputs as validated, outputs as serialised) for ``components``."""
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (m, "validation" if issubclass(m, Input) else "serialization") for m in models]
    _, schema = models_json_schema(pairs, ref_template=REF)
    return dict(schema.get("$defs", {}))


def query_parameters(model: type[Query]) -> list[dict[str, Any]]:
    """OpenAPI ``parameters`` for the query string ``model`` reads."""
    parameters = []
    for name, prop in model.model_json_schema()["properties"].items():
        parameter = {"name": name, "in": "query",
                     "schema": {k: v for k, v in prop.items() if k not in ("title", "description")}}
        if "description" in prop:
            parameter["description"] = prop["description"]
        parameters.append(parameter)
    return parameters
