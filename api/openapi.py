"""The OpenAPI 3.0 document served at /openapi.json: the exact shapes clients are written against.

Kept as data beside the code it describes; the test suite runs schemathesis against the running
API with it, so a drift between the two shows up as a failed conformance check.
"""

from __future__ import annotations

from typing import Any

from api.inputs import DECISIONS, MAX_SUBJECTS
from api.subjects import MAX_SCOPE_CHARS, MAX_SUBJECT_CHARS

STATES = ["opted_in", "opted_out", "unknown"]
FIXED = ["check", "review", "changes"]  # these route names win over a subject of that name


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


TIME = {"type": "string", "format": "date-time"}
TEXT = {"type": "string"}

ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": TEXT, "detail": TEXT,
                   "invalid": {"type": "array", "items": {"type": "object"}}, "count": {"type": "integer"}},
}

SCOPE_STATE = {
    "type": "object", "additionalProperties": False, "required": ["scope", "state", "changed_at"],
    "properties": {"scope": TEXT, "state": {"type": "string", "enum": ["opted_in", "opted_out"]}, "changed_at": TIME},
}

CONSENT = {
    "type": "object", "additionalProperties": False,
    "required": ["subject", "scope", "state", "allowed", "changed_at", "keyword", "provider", "event_id", "scopes"],
    "properties": {
        "subject": {**TEXT, "description": "E.164 number, or the id as stored (Mx2 subscriberId)"},
        "scope": _nullable({**TEXT, "description": "the scope asked about; null when none was given"}),
        "state": {"type": "string", "enum": STATES},
        "allowed": {"type": "boolean", "description": "false when opted out (in any scope, when no scope was given)"},
        "changed_at": _nullable(TIME), "keyword": _nullable(TEXT), "provider": _nullable(TEXT),
        "event_id": _nullable({**TEXT, "description": "the event that decided the state"}),
        "scopes": {"type": "array", "items": SCOPE_STATE,
                   "description": "every scope of the subject with its state, the `*` row counted"},
    },
}

CHECK_REQUEST = {
    "type": "object", "additionalProperties": False, "required": ["subjects"],
    "properties": {
        "subjects": {"type": "array", "maxItems": MAX_SUBJECTS,
                     "items": {"type": "string", "minLength": 1, "maxLength": MAX_SUBJECT_CHARS}},
        "scope": _nullable({"type": "string", "minLength": 1, "maxLength": MAX_SCOPE_CHARS}),
    },
}

CHECK_RESULT = {
    "type": "object", "additionalProperties": False, "required": ["results"],
    "properties": {"results": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["subject", "allowed", "state"],
        "properties": {"subject": TEXT, "allowed": {"type": "boolean"}, "state": {"type": "string", "enum": STATES}},
    }}},
}

REVIEW_ITEM = {
    "type": "object", "additionalProperties": False,
    "required": ["event_id", "subject", "scope", "provider", "body", "keyword", "occurred_at", "received_at"],
    "properties": {
        "event_id": TEXT, "subject": _nullable(TEXT), "scope": _nullable(TEXT), "provider": TEXT,
        "body": _nullable(TEXT), "keyword": _nullable(TEXT), "occurred_at": _nullable(TIME), "received_at": TIME,
    },
}

CHANGE = {
    "type": "object", "additionalProperties": False,
    "required": ["change_id", "event_id", "subject", "scope", "old_state", "new_state", "outcome", "keyword",
                 "provider", "occurred_at", "received_at", "decided_by"],
    "properties": {
        "change_id": {"type": "integer"}, "event_id": TEXT, "subject": TEXT, "scope": TEXT,
        "old_state": _nullable({"type": "string", "enum": ["opted_in", "opted_out"]}),
        "new_state": {"type": "string", "enum": ["opted_in", "opted_out"]},
        "outcome": TEXT, "keyword": _nullable(TEXT), "provider": TEXT, "occurred_at": TIME, "received_at": TIME,
        "decided_by": _nullable({**TEXT, "description": "the API token label of a person's decision"}),
    },
}

DECISION_REQUEST = {
    "type": "object", "additionalProperties": False, "required": ["decision"],
    "properties": {"decision": {"type": "string", "enum": list(DECISIONS)}},
}

DECISION = {
    "type": "object", "additionalProperties": False,
    "required": ["event_id", "subject", "scope", "decision", "decided_by", "decided_at", "change", "repeated"],
    "properties": {
        "event_id": TEXT, "subject": _nullable(TEXT), "scope": _nullable(TEXT),
        "decision": {"type": "string", "enum": list(DECISIONS)}, "decided_by": TEXT, "decided_at": TIME,
        "change": _nullable({**CHANGE, "description": "the consent change the decision made; null when none"}),
        "repeated": {"type": "boolean", "description": "true when this decision had been taken already"},
    },
}


def _page(item: dict[str, Any], key: str) -> dict[str, Any]:
    return {
        "type": "object", "additionalProperties": False, "required": [key, "next", "has_more"],
        "properties": {key: {"type": "array", "items": item},
                       "next": {**TEXT, "description": "pass as `since` for the next page (also when empty)"},
                       "has_more": {"type": "boolean"}},
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): {"$ref": f"#/components/responses/E{code}"} for code in codes}


ERROR_RESPONSES = {f"E{code}": _json({"$ref": "#/components/schemas/Error"}, text) for code, text in {
    400: "the body is not JSON", 401: "missing or wrong bearer token", 404: "not found",
    405: "method not allowed", 409: "another decision was taken already", 413: "body too large",
    422: "invalid input; `detail` says why", 503: "the database is unavailable; retry"}.items()}

LIMIT = {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}
SINCE = {"name": "since", "in": "query", "required": False,
         "schema": {"type": "string", "minLength": 1, "maxLength": 64},
         "description": "the `next` of a previous page; absent: from the beginning"}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "hookstream consent API", "version": "1",
                 "description": "May a sender text this person? Consent as hookstream learned it from STOP/START "
                                "replies and provider signals, the review queue, and the change feed."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR, "Consent": CONSENT, "CheckRequest": CHECK_REQUEST, "CheckResult": CHECK_RESULT,
                        "ReviewItem": REVIEW_ITEM, "Change": CHANGE, "DecisionRequest": DECISION_REQUEST,
                        "Decision": DECISION},
            "responses": ERROR_RESPONSES,
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/consent/check": {"post": {
                "operationId": "checkConsent", "summary": "many subjects at once, answers in input order",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/CheckRequest"}}}},
                "responses": {"200": _json({"$ref": "#/components/schemas/CheckResult"}, "one result per subject"),
                              **_errors(400, 401, 413, 422, 503)},
            }},
            "/v1/consent/review": {"get": {
                "operationId": "listReview", "summary": "possible opt-outs waiting for a person, oldest first",
                "parameters": [SINCE, LIMIT],
                "responses": {"200": _json(_page({"$ref": "#/components/schemas/ReviewItem"}, "items"), "a page"),
                              **_errors(401, 422, 503)},
            }},
            "/v1/consent/review/{event_id}": {"post": {
                "operationId": "decideReview", "summary": "opt the person out (audited), or dismiss",
                "parameters": [{"name": "event_id", "in": "path", "required": True,
                                "schema": {"type": "string", "minLength": 1, "maxLength": 512}}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/DecisionRequest"}}}},
                "responses": {"200": _json({"$ref": "#/components/schemas/Decision"}, "the decision"),
                              **_errors(400, 401, 404, 409, 413, 422, 503)},
            }},
            "/v1/consent/changes": {"get": {
                "operationId": "listChanges", "summary": "every consent change once, in commit order",
                "parameters": [SINCE, LIMIT],
                "responses": {"200": _json(_page({"$ref": "#/components/schemas/Change"}, "changes"), "a page"),
                              **_errors(401, 422, 503)},
            }},
            "/v1/consent/{subject}": {"get": {
                "operationId": "getConsent", "summary": "may I text this subject (in this scope)?",
                "parameters": [
                    {"name": "subject", "in": "path", "required": True,
                     "description": "a phone number in any common form, or a known id (Mx2 subscriberId)",
                     "schema": {"type": "string", "minLength": 1, "maxLength": MAX_SUBJECT_CHARS,
                                "not": {"enum": FIXED}}},
                    {"name": "scope", "in": "query", "required": False,
                     "schema": {"type": "string", "minLength": 1, "maxLength": MAX_SCOPE_CHARS}},
                ],
                "responses": {"200": _json({"$ref": "#/components/schemas/Consent"}, "the consent state"),
                              **_errors(401, 404, 405, 422, 503)},
            }},
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "this document", "security": [],
                "responses": {"200": {"description": "OpenAPI 3.0", "content": {"application/json": {}}}},
            }},
        },
    }
