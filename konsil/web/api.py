"""Kernel JSON API under /api/v1 and the base of the OpenAPI document features extend."""

from __future__ import annotations

from datetime import date
from typing import Any

from aiohttp import web

from konsil import __version__
from konsil import appkeys as K
from konsil.errors import ValidationError
from konsil.identity.models import Patient
from konsil.identity.service import NewPatient
from konsil.web.request import actor_of, json_response, read_json, require_login, require_role

routes = web.RouteTableDef()

PROBLEM = {"$ref": "#/components/responses/Problem"}


def base_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Konsil API", "version": __version__},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "konsil_session"},
            },
            "responses": {
                "Problem": {
                    "description": "An RFC 9457 problem",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                }
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "errors": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                },
                "Patient": {
                    "type": "object",
                    "required": ["matricule", "given_name", "family_name", "birth_date"],
                    "properties": {
                        "id": {"type": "string", "readOnly": True},
                        "matricule": {"type": "string", "pattern": "^[0-9]{13}$"},
                        "given_name": {"type": "string"},
                        "family_name": {"type": "string"},
                        "birth_date": {"type": "string", "format": "date"},
                        "sex": {"type": "string", "enum": ["F", "M", "U"]},
                        "email": {"type": ["string", "null"]},
                        "phone": {"type": ["string", "null"]},
                    },
                },
            },
        },
        "security": [{"bearer": []}, {"cookie": []}],
        "paths": {
            "/api/v1/me": {
                "get": {
                    "summary": "The caller",
                    "responses": {"200": {"description": "ok"}, "401": PROBLEM},
                }
            },
            "/api/v1/patients": {
                "post": {
                    "summary": "Register a patient (matricule validated)",
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Patient"}}
                        }
                    },
                    "responses": {
                        "201": {"description": "created"},
                        "400": PROBLEM,
                        "409": PROBLEM,
                    },
                }
            },
            "/api/v1/patients/{id}": {
                "get": {
                    "summary": "One patient (the read is audited)",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {"200": {"description": "ok"}, "404": PROBLEM},
                }
            },
        },
    }


def patient_json(p: Patient) -> dict[str, Any]:
    return {
        "id": p.id,
        "matricule": p.matricule,
        "given_name": p.given_name,
        "family_name": p.family_name,
        "birth_date": p.birth_date.isoformat(),
        "sex": p.sex,
        "email": p.email,
        "phone": p.phone,
    }


@routes.get("/api/v1/me")
async def me(request: web.Request) -> web.Response:
    p = require_login(request)
    return json_response(
        {
            "account_id": p.account_id,
            "username": p.username,
            "role": p.role,
            "display_name": p.display_name,
        }
    )


@routes.post("/api/v1/patients")
async def create_patient(request: web.Request) -> web.Response:
    require_role(request, "admin", "practitioner", "coordinator")
    body = await read_json(request)
    try:
        birth = date.fromisoformat(str(body.get("birth_date", "")))
    except ValueError:
        raise ValidationError(
            "the patient record is not valid", fields={"birth_date": "expected a date (YYYY-MM-DD)"}
        ) from None
    patient = await request.app[K.IDENTITY].do_create_patient(
        actor_of(request),
        NewPatient(
            matricule=str(body.get("matricule", "")),
            given_name=str(body.get("given_name", "")),
            family_name=str(body.get("family_name", "")),
            birth_date=birth,
            sex=str(body.get("sex", "U")),
            email=body.get("email"),
            phone=body.get("phone"),
        ),
    )
    return json_response(patient_json(patient), status=201)


@routes.get("/api/v1/patients/{id}")
async def get_patient(request: web.Request) -> web.Response:
    require_role(request, "admin", "practitioner", "coordinator")
    patient = await request.app[K.IDENTITY].get_patient(actor_of(request), request.match_info["id"])
    return json_response(patient_json(patient))
