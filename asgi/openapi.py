"""The OpenAPI 3.1 document of the app, built from its operation table and pydantic models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from lodger.asgi.protocol_responses import ErrorResponse

_REF = "#/components/schemas/{model}"


@dataclass(slots=True, frozen=True)
class Operation:
    method: str  # "get" | "post"
    path: str  # relative to where the app is mounted
    summary: str
    request_model: type[BaseModel] | None = None  # JSON body
    response_model: type[BaseModel] | None = None  # JSON answer (200)
    stream_model: type[BaseModel] | None = None  # SSE chunk type when "stream": true
    media_type: str = "application/json"  # of the 200 answer when it is not a model
    protected: bool = False  # needs the API key when the app has one


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def openapi_schema(operations: list[Operation], title: str, version: str) -> dict[str, Any]:
    inputs = {op.request_model for op in operations if op.request_model}
    outputs = {m for op in operations for m in (op.response_model, op.stream_model) if m}
    outputs.add(ErrorResponse)
    # validation mode for answers too: fields with defaults may be left out (DeltaMessage is)
    pairs = [(m, "validation") for m in sorted(inputs | outputs, key=lambda m: m.__name__)]
    _, top = models_json_schema(pairs, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(op: Operation) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if op.response_model is not None:
        content["application/json"] = {"schema": _ref(op.response_model)}
    else:
        content[op.media_type] = {"schema": {"type": "string"}}
    if op.stream_model is not None:
        content["text/event-stream"] = {
            "schema": {"type": "string"},
            "x-chunk-schema": _ref(op.stream_model),  # each `data:` line, then [DONE]
        }
    error_content = {"application/json": {"schema": _ref(ErrorResponse)}}
    error = {"description": "error", "content": error_content}
    out: dict[str, Any] = {
        "summary": op.summary,
        "responses": {"200": {"description": "OK", "content": content}, "default": error},
    }
    if op.request_model is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(op.request_model)}},
        }
    if op.protected:
        out["security"] = [{"bearer": []}]
    return out
