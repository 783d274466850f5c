"""The OpenAPI 3.0 document served at /openapi.json: the exact shapes clients are written against.

Kept as data beside the code it describes; the test suite runs schemathesis against the running
API with it, so a drift between the two shows up as a failed conformance check.
"""

from __future__ import annotations

from typing import Any

from api.inputs import DECISIONS, MAX_SUBJECTS
from api.records import EVIDENCE_FIELDS, MAX_EVIDENCE_CHARS, MAX_ID_CHARS, MAX_RECORDS, MAX_SOURCE_CHARS
from api.subjects import MAX_SCOPE_CHARS, MAX_SUBJECT_CHARS
from shared.settings import PROVIDERS
from shared.timeline import MAX_LIMIT

# stale: opted in before the number was reported disconnected or reassigned (not allowed).
STATES = ["opted_in", "opted_out", "stale", "unknown"]
# These route names win over a subject of that name.
FIXED = ["check", "review", "changes", "records", "deactivations"]


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
    "properties": {"scope": TEXT, "state": {"type": "string", "enum": ["opted_in", "opted_out", "stale"]},
                   "changed_at": TIME},
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


IMPORT_RECORD = {
    "type": "object", "additionalProperties": False,
    "required": ["id", "subject", "scope", "state", "occurred_at", "source"],
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS,
               "description": "your idempotency key: the same id again is a retry; with other content, a 409"},
        "subject": {"type": "string", "minLength": 1, "maxLength": MAX_SUBJECT_CHARS},
        "scope": {"type": "string", "minLength": 1, "maxLength": MAX_SCOPE_CHARS, "description": "`*`: every scope"},
        "state": {"type": "string", "enum": ["opted_in", "opted_out"]},
        "occurred_at": {**TIME, "description": "when the person gave or withdrew consent, with an offset; not future"},
        "source": {"type": "string", "minLength": 1, "maxLength": MAX_SOURCE_CHARS,
                   "description": "where it was collected: web_form, checkout, paper, call_centre, ..."},
        "evidence": _nullable({"type": "object", "additionalProperties": False, "properties": {
            key: _nullable({"type": "string", "minLength": 1, "maxLength": MAX_EVIDENCE_CHARS})
            for key in EVIDENCE_FIELDS}}),
    },
}

IMPORT_REQUEST = {
    "type": "object", "additionalProperties": False, "required": ["records"],
    "properties": {"records": {"type": "array", "minItems": 1, "maxItems": MAX_RECORDS, "items": IMPORT_RECORD}},
}

IMPORT_RESULT = {
    "type": "object", "additionalProperties": False,
    "required": ["import_id", "records", "imported", "repeated", "changes"],
    "properties": {"import_id": TEXT, "records": {"type": "integer"}, "imported": {"type": "integer"},
                   "repeated": {"type": "integer", "description": "ids imported before with the same content"},
                   "changes": {"type": "integer", "description": "consent changes the new records made"}},
}

DEACTIVATION_REQUEST = {
    "type": "object", "additionalProperties": False, "required": ["subjects", "since", "source"],
    "properties": {
        "subjects": {"type": "array", "minItems": 1, "maxItems": MAX_SUBJECTS,
                     "items": {"type": "string", "minLength": 1, "maxLength": MAX_SUBJECT_CHARS}},
        "since": {**TIME, "description": "reported disconnected or reassigned since then"},
        "source": {"type": "string", "minLength": 1, "maxLength": MAX_SOURCE_CHARS,
                   "description": "carrier deactivation file, reassigned numbers database, ..."},
    },
}

DEACTIVATION_RESULT = {
    "type": "object", "additionalProperties": False, "required": ["recorded", "stale"],
    "properties": {"recorded": {"type": "integer"},
                   "stale": {"type": "integer", "description": "subjects whose opt-in is now stale"}},
}

ROWS = {"type": "array", "items": {"type": "object"}}
EXPORT = {
    "type": "object", "additionalProperties": False,
    "required": ["subject", "exported_at", "consent", "changes", "records", "deactivations", "events", "statuses",
                 "erasures"],
    "properties": {"subject": TEXT, "exported_at": TIME, "consent": ROWS,
                   "changes": {**ROWS, "description": "every consent change with its evidence and hash chain"},
                   "records": {**ROWS, "description": "imported consent records"}, "deactivations": ROWS,
                   "events": ROWS, "statuses": ROWS, "erasures": ROWS},
}

ERASURE = {
    "type": "object", "additionalProperties": False,
    "required": ["subject_hash", "requested_by", "requested_at", "counts", "repeated"],
    "properties": {"subject_hash": {**TEXT, "description": "the keyed hash that replaced the subject"},
                   "requested_by": TEXT, "requested_at": TIME,
                   "counts": {"type": "object", "additionalProperties": {"type": "integer"},
                              "description": "rows rewritten per table, stream entries deleted or marked"},
                   "repeated": {"type": "boolean", "description": "nothing was left to erase"}},
}


TIMELINE_STEP = {
    "type": "object", "additionalProperties": False,
    "required": ["recipient", "status", "reason", "provider_status", "provider_reason", "provider_time", "received_at",
                 "decided_by", "outcome", "why", "late", "event_key", "archive"],
    "properties": {
        "recipient": {**TEXT, "description": "E.164 ('' when the provider does not name it)"},
        "status": {"type": "string", "enum": ["queued", "sent", "delivered", "failed", "expired", "rejected",
                                              "unknown"]},
        "reason": _nullable({**TEXT, "description": "normalized: invalid_number, blocked, opted_out, expired,"
                                                    " other, no_receipt"}),
        "provider_status": _nullable({**TEXT, "description": "the provider's own status, verbatim"}),
        "provider_reason": _nullable({**TEXT, "description": "the provider's own reason, verbatim"}),
        "provider_time": _nullable(TIME), "received_at": TIME,
        "decided_by": {"type": "string", "enum": ["provider", "hookstream"],
                       "description": "hookstream: our receipt expiry, not a report"},
        "outcome": {"type": "string", "enum": ["current", "superseded", "repeat"],
                    "description": "what the monotonic status rule made of this report"},
        "why": TEXT, "late": {"type": "boolean", "description": "arrived after a report later in provider time"},
        "event_key": TEXT,
        "archive": _nullable({**TEXT, "description": "the raw request: raw_archive's received_at/stream_id"}),
    },
}

TIMELINE = {
    "type": "object", "additionalProperties": False, "required": ["provider", "message_ref", "statuses"],
    "properties": {"provider": TEXT, "message_ref": TEXT,
                   "statuses": {"type": "array", "items": {"$ref": "#/components/schemas/TimelineStep"},
                                "description": "per recipient, in provider-time order (then receive time)"}},
}

MESSAGE_PAGE = {
    "type": "object", "additionalProperties": False, "required": ["messages", "next", "has_more"],
    "properties": {
        "messages": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["provider", "message_ref", "recipient", "status", "reason", "status_at", "received_at"],
            "properties": {"provider": TEXT, "message_ref": TEXT, "recipient": TEXT, "status": TEXT,
                           "reason": _nullable(TEXT), "status_at": _nullable(TIME), "received_at": TIME}}},
        "next": _nullable({**TEXT, "description": "pass as `cursor` for the next page; null on the last"}),
        "has_more": {"type": "boolean"},
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
    405: "method not allowed",
    409: "another decision was taken already, or a record id was imported before with other content",
    413: "body too large",
    422: "invalid input; `detail` says why", 503: "the database is unavailable; retry"}.items()}

SUBJECT = {"name": "subject", "in": "path", "required": True,
           "description": "a phone number in any common form, or a known id (Mx2 subscriberId)",
           "schema": {"type": "string", "minLength": 1, "maxLength": MAX_SUBJECT_CHARS}}
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
                        "Decision": DECISION, "ImportRequest": IMPORT_REQUEST, "ImportResult": IMPORT_RESULT,
                        "DeactivationRequest": DEACTIVATION_REQUEST, "DeactivationResult": DEACTIVATION_RESULT,
                        "Export": EXPORT, "Erasure": ERASURE, "TimelineStep": TIMELINE_STEP,
                        "Timeline": TIMELINE, "MessagePage": MESSAGE_PAGE},
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
            "/v1/consent/records": {"post": {
                "operationId": "importRecords",
                "summary": "consent collected elsewhere: all or nothing, idempotent by id, in time order with replies",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ImportRequest"}}}},
                "responses": {"200": _json({"$ref": "#/components/schemas/ImportResult"}, "imported"),
                              **_errors(400, 401, 409, 413, 422, 503)},
            }},
            "/v1/consent/deactivations": {"post": {
                "operationId": "reportDeactivations",
                "summary": "numbers disconnected or reassigned: consent given before `since` is stale",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/DeactivationRequest"}}}},
                "responses": {"200": _json({"$ref": "#/components/schemas/DeactivationResult"}, "recorded"),
                              **_errors(400, 401, 413, 422, 503)},
            }},
            "/v1/subjects/{subject}/export": {"get": {
                "operationId": "exportSubject", "summary": "everything held about one person (access request)",
                "parameters": [SUBJECT, {"name": "format", "in": "query", "required": False,
                                         "schema": {"type": "string", "enum": ["json", "csv"], "default": "json"}}],
                "responses": {"200": {"description": "the export", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Export"}},
                    "text/csv": {"schema": {"type": "string"}}}},
                    **_errors(401, 404, 422, 503)},
            }},
            "/v1/subjects/{subject}": {"delete": {
                "operationId": "eraseSubject",
                "summary": "erase a person: the number and texts become a keyed hash everywhere (audited, idempotent)",
                "parameters": [SUBJECT],
                "responses": {"200": _json({"$ref": "#/components/schemas/Erasure"}, "erased"),
                              **_errors(401, 404, 422, 503)},
            }},
            "/v1/messages": {"get": {
                "operationId": "searchMessages",
                "summary": "messages by provider message id, phone number (any notation), provider and time range,"
                           " newest first",
                "parameters": [
                    {"name": "ref", "in": "query", "required": False, "description": "the provider's message id",
                     "schema": {"type": "string", "minLength": 1, "maxLength": 200}},
                    {"name": "phone", "in": "query", "required": False,
                     "description": "a phone number, parsed as the ingress parses it",
                     "schema": {"type": "string", "minLength": 1, "maxLength": 64}},
                    {"name": "provider", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": list(PROVIDERS)}},
                    *({"name": name, "in": "query", "required": False,
                       "description": "ISO-8601, today, yesterday or an age (2h)",
                       "schema": {"type": "string", "minLength": 1, "maxLength": 40}} for name in ("since", "until")),
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}},
                    {"name": "cursor", "in": "query", "required": False, "description": "the `next` of a previous page",
                     "schema": {"type": "string", "minLength": 1, "maxLength": 1024}},
                ],
                "responses": {"200": _json({"$ref": "#/components/schemas/MessagePage"}, "a page"),
                              **_errors(401, 422, 503)},
            }},
            "/v1/messages/{provider}/{message_ref}": {"get": {
                "operationId": "showMessage", "summary": "every status report of a message, and which one is current",
                "parameters": [
                    {"name": "provider", "in": "path", "required": True,
                     "schema": {"type": "string", "enum": list(PROVIDERS)}},
                    {"name": "message_ref", "in": "path", "required": True, "description": "the provider's message id",
                     "schema": {"type": "string", "minLength": 1, "maxLength": 200}},
                ],
                "responses": {"200": _json({"$ref": "#/components/schemas/Timeline"}, "the timeline"),
                              **_errors(401, 404, 422, 503)},
            }},
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "this document", "security": [],
                "responses": {"200": {"description": "OpenAPI 3.0", "content": {"application/json": {}}}},
            }},
        },
    }
