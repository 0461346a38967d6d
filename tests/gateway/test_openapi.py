"""`/openapi.json` is generated from the route table; the served URL map must match it."""

from __future__ import annotations

import re

from allq.gateway.legacy import LEGACY_ROUTES
from allq.gateway.observability import PATHS as OBSERVABILITY_PATHS
from allq.gateway.routes import ROUTES
from tests.gateway.fakes import FakeCore
from tests.gateway.rest import Rest, make_app

#: api.md §2 (v1 and operations; /metrics and the dashboard are outside v1: observability.PATHS).
API_MD = {
    "POST /v1/tubes/{tube}/jobs", "POST /v1/reserve", "POST /v1/tubes/{tube}/reserve",
    "POST /v1/jobs/{id}/done", "POST /v1/jobs/done", "POST /v1/jobs/{id}/touch",
    "POST /v1/jobs/{id}/release", "POST /v1/jobs/{id}/bury", "POST /v1/jobs/{id}/kick",
    "GET /v1/jobs/{id}", "DELETE /v1/jobs/{id}", "POST /v1/tubes/{tube}/parents",
    "POST /v1/jobs/{id}/children-started", "GET /v1/tubes", "GET /v1/tubes/{tube}",
    "GET /v1/tubes/{tube}/peek", "POST /v1/tubes/{tube}/kick", "POST /v1/tubes/{tube}/pause",
    "POST /v1/tubes/{tube}/unpause", "PUT /v1/tubes/{tube}/throttle",
    "DELETE /v1/tubes/{tube}/throttle", "POST /v1/tubes/{tube}/drain",
    "POST /v1/tubes/{tube}/undrain", "PUT /v1/tubes/{tube}/shard-limit",
    "DELETE /v1/tubes/{tube}", "GET /v1/servers", "POST /v1/servers",
    "POST /v1/servers/{sid}/drain", "DELETE /v1/servers/{sid}", "GET /v1/stats",
    "GET /healthz", "GET /readyz", "GET /openapi.json",
}  # fmt: skip


#: The legacy AllQ routes (api.md §3) are served too, outside the v1 document.
LEGACY_PATHS = frozenset(route.path for route in LEGACY_ROUTES)


def openapi_path(rule: str) -> str:
    return re.sub(r"<(\w+)>", r"{\1}", rule)


async def test_document_matches_the_served_routes_and_api_md() -> None:
    app = make_app(FakeCore())
    document = (await Rest(app).get("/openapi.json")).json
    assert document["openapi"] == "3.1.0"
    documented = {
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method in operations
    }
    served = {
        f"{method} {openapi_path(rule.rule)}"
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        and rule.rule not in OBSERVABILITY_PATHS
        and rule.rule not in LEGACY_PATHS
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    assert documented == served == API_MD


def test_operations_are_well_formed() -> None:
    names = [route.name for route in ROUTES]
    assert len(names) == len(set(names))
    for route in ROUTES:
        assert route.method in ("GET", "POST", "PUT", "DELETE")
        if route.method in ("GET", "DELETE"):
            assert route.body is None, route.name


async def test_document_declares_parameters_bodies_and_errors() -> None:
    document = (await Rest(make_app(FakeCore())).get("/openapi.json")).json
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert declared == set(re.findall(r"\{(\w+)\}", path)), (method, path)
            assert operation["responses"], (method, path)
    put = document["paths"]["/v1/tubes/{tube}/jobs"]["post"]
    single = put["requestBody"]["content"]["application/json"]["schema"]["oneOf"][0]
    assert {"body", "body_b64", "priority", "idempotency_key"} <= set(single["properties"])
    assert single["additionalProperties"] is False
    assert {"201", "400", "413", "429", "503"} <= set(put["responses"])
    assert "security" not in document
    assert document["paths"]["/healthz"]["get"]["security"] == []
