"""The OpenAPI 3.1 document of REST v1, generated from the route table (`routes.ROUTES`).

The same table registers the Quart routes, so the document cannot drift from what is
served; `tests/gateway/test_openapi.py` checks the registered URL map against it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from allq.gateway.route import Route

_STATUS_TEXT = {
    400: "BAD_FORMAT or BAD_TUBE",
    401: "UNAUTHORIZED (a token is configured and the request lacks it)",
    404: "NOT_FOUND",
    409: "NOT_RESERVED, LEASE_EXPIRED or DRAINING",
    413: "JOB_TOO_BIG (a body above the limit, or a request above the size limit)",
    429: "OVERLOADED; see Retry-After",
    500: "INTERNAL",
    503: "NO_SERVER; see Retry-After",
    507: "TOO_MANY_TUBES or SERVER_FULL",
}

_COMPONENTS: dict[str, Any] = {
    "schemas": {
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "field": {"type": "string"},
                    },
                    "required": ["code", "message"],
                }
            },
            "required": ["error"],
        },
        "ItemResult": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "state": {"type": "string"},
                "error": {"$ref": "#/components/schemas/Error/properties/error"},
            },
        },
        "Job": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "tube": {"type": "string"},
                "body": {"type": "string"},
                "body_b64": {"type": "string", "contentEncoding": "base64"},
                "state": {
                    "enum": ["ready", "reserved", "delayed", "buried", "waiting"],
                },
                "priority": {"type": "integer"},
                "ttr": {"type": "number"},
                "lease": {"type": "string", "description": "only on reserve"},
                "deadline_in_s": {"type": "number", "description": "reserved only"},
                "delay_left_s": {"type": "number", "description": "delayed only"},
                "age_s": {"type": "number"},
                "reserves": {"type": "integer"},
                "timeouts": {"type": "integer"},
                "releases": {"type": "integer"},
                "buries": {"type": "integer"},
                "kicks": {"type": "integer"},
                "parent_id": {"type": "string"},
                "shard_key": {"type": "string"},
            },
            "required": ["id", "tube", "state", "priority", "ttr", "age_s"],
        },
    },
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
}


def _operation(route: Route, *, auth: bool) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in route.path_params
    ]
    parameters += [
        {"name": q.name, "in": "query", "required": False, "schema": q.schema}
        | ({"description": q.description} if q.description else {})
        for q in route.query
    ]
    error_ref = {"$ref": "#/components/schemas/Error"}
    responses: dict[str, Any] = {
        str(route.status): {
            "description": "success",
            "content": {"application/json": {"schema": route.response}},
        }
    }
    statuses = set(route.errors)
    if route.bounded:
        statuses |= {429, 500}
    if route.auth and auth:
        statuses.add(401)
    if route.body is not None:
        statuses |= {400, 413}
    for status in sorted(statuses):
        if str(status) not in responses:
            responses[str(status)] = {
                "description": _STATUS_TEXT.get(status, "error"),
                "content": {"application/json": {"schema": error_ref}},
            }
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": parameters,
        "responses": responses,
    }
    if route.body is not None:
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": route.body.schema()}},
        }
    if not route.auth:
        operation["security"] = []
    return operation


def build_document(routes: Iterable[Route], *, auth: bool, version: str) -> dict[str, Any]:
    """OpenAPI 3.1 for `routes`; `auth` says whether a bearer token is required."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, auth=auth)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "allq gateway REST API",
            "version": version,
            "description": "REST v1 of the allq gateway (api.md §1-2). Errors have the "
            'shape {"error": {"code", "message", "field"?}}.',
        },
        "paths": paths,
        "components": _COMPONENTS,
    }
    if auth:
        document["security"] = [{"bearer": []}]
    return document
