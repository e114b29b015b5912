"""The OpenAPI 3.0 document of the serving REST API, served at `/openapi.json`.

Where it sits: a pure function of the served model's name (which is the only
`{name}` this server answers to, so it is an enum) and the server version.
Written by hand, next to the routes in `app.py`; the fuzz test
(schemathesis) drives the live server from this document, so a route that is
missing here goes unfuzzed and a schema that is wrong shows up as failures.
"""

from __future__ import annotations

from typing import Any

from .oip import DATATYPES

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed request or input that does not match the model signature",
        404: "Unknown model name, version or prediction id",
        413: "Request body larger than the limit",
        415: "Unsupported content type",
        422: "Well-formed input the model (or the feedback check) refused",
        503: "The model is not ready (loading, or failed to load or to pass its validation gate)",
    }
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": _ERROR}}} for c in codes}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document(model_name: str, server_version: str) -> dict[str, Any]:
    name_param = {
        "name": "name", "in": "path", "required": True,
        "description": "The served model's name (one model per server).",
        "schema": {"type": "string", "enum": [model_name]},
    }
    version_param = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    readiness = {
        "200": _json({"$ref": "#/components/schemas/Readiness"}, "Ready"),
        "503": _json({"$ref": "#/components/schemas/Readiness"}, "Not ready, with the reason"),
    }
    infer_op = {
        "summary": "Open Inference Protocol v2 inference",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/InferenceRequest"}}}},
        "responses": {"200": _json({"$ref": "#/components/schemas/InferenceResponse"}), **_errors(400, 404, 413, 415, 422, 503)},
    }
    feedback_op = {
        "summary": "Ground truth for earlier predictions (by prediction id)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
            {"$ref": "#/components/schemas/Feedback"},
            {"type": "array", "items": {"$ref": "#/components/schemas/Feedback"}, "minItems": 1},
        ]}}}},
        "responses": {"200": _json({"$ref": "#/components/schemas/FeedbackResult"}), **_errors(404, 413, 422)},
    }
    metadata_op = {
        "summary": "Model metadata, including the MLflow signature",
        "responses": {"200": _json({"$ref": "#/components/schemas/ModelMetadata"}), **_errors(404, 503)},
    }
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": {"summary": "Liveness", "responses": {"200": _json({"type": "object"})}}},
        "/v2/health/ready": {"get": {"summary": "Readiness (loaded and gated)", "responses": readiness}},
        "/v2": {"get": {"summary": "Server metadata", "responses": {"200": _json({"type": "object"})}}},
        "/invocations": {"post": {
            "summary": "MLflow scoring protocol",
            "parameters": [{"name": "x-modelpilot-prediction-id", "in": "header", "required": False,
                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:@/+=-]{1,256}$"}}],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ScoringRequest"}},
                "text/csv": {"schema": {"type": "string"}},
                "application/csv": {"schema": {"type": "string"}},
            }},
            "responses": {
                "200": {
                    "description": "Predictions",
                    "headers": {"x-modelpilot-prediction-id": {"schema": {"type": "string"},
                                                               "description": "Id for the feedback endpoint"}},
                    "content": {"application/json": {"schema": {
                        "type": "object", "required": ["predictions"], "properties": {"predictions": {}}}}},
                },
                **_errors(400, 413, 415, 422, 503),
            },
        }},
        "/ping": {"get": {"summary": "MLflow-style readiness", "responses": readiness}},
        "/health": {"get": {"summary": "MLflow-style readiness", "responses": readiness}},
        "/version": {"get": {"summary": "Server, MLflow and model versions", "responses": {"200": _json({"type": "object"})}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
            "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/feedback": {"post": feedback_op},
        "/v2/models/{name}": {"parameters": [name_param], "get": metadata_op},
        "/v2/models/{name}/ready": {"parameters": [name_param], "get": {"summary": "Model readiness", "responses": {
            **readiness, **_errors(404)}}},
        "/v2/models/{name}/infer": {"parameters": [name_param], "post": infer_op},
        "/v2/models/{name}/feedback": {"parameters": [name_param], "post": feedback_op},
        "/v2/models/{name}/versions/{version}": {"parameters": [name_param, version_param], "get": metadata_op},
        "/v2/models/{name}/versions/{version}/infer": {"parameters": [name_param, version_param], "post": infer_op},
        "/v2/models/{name}/versions/{version}/feedback": {"parameters": [name_param, version_param], "post": feedback_op},
    }
    scalar = {"oneOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}]}
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Readiness": {"type": "object", "required": ["ready", "state", "reason"], "properties": {
            "ready": {"type": "boolean"}, "state": {"type": "string", "enum": ["loading", "ready", "failed"]},
            "reason": {"type": "string"}, "name": {"type": "string"}}},
        "Tensor": {
            "type": "object", "required": ["name", "shape", "datatype", "data"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "shape": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
                "datatype": {"type": "string", "enum": list(DATATYPES)},
                "parameters": {"type": "object"},
                "data": {"type": "array", "description": "Row-major values, flat or nested"},
            },
        },
        "InferenceRequest": {
            "type": "object", "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Tensor"}},
                "outputs": {"type": "array", "items": {"type": "object"}},
            },
        },
        "InferenceResponse": {
            "type": "object", "required": ["model_name", "id", "outputs"],
            "properties": {
                "model_name": {"type": "string"}, "model_version": {"type": "string"},
                "id": {"type": "string", "description": "The prediction id (the request's id if it sent one)"},
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
            },
        },
        "ScoringRequest": {
            "type": "object",
            "description": "Exactly one of dataframe_split, dataframe_records, instances, inputs; optional params.",
            "properties": {
                "dataframe_split": {"type": "object", "properties": {
                    "columns": {"type": "array", "items": {"type": "string"}},
                    "data": {"type": "array", "items": {"type": "array"}}}},
                "dataframe_records": {"type": "array", "items": {"type": "object"}},
                "instances": {"type": "array"},
                "inputs": {},
                "params": {"type": "object"},
            },
        },
        "ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                          "properties": {"name": {"type": "string"}, "versions": {"type": "array"},
                                         "platform": {"type": "string"}, "inputs": {"type": "array"},
                                         "outputs": {"type": "array"}, "parameters": {"type": "object"}}},
        "Feedback": {
            "type": "object", "required": ["id", "truth"], "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "minLength": 1, "maxLength": 256},
                "truth": {"oneOf": [scalar, {"type": "array", "minItems": 1, "items": scalar}]},
            },
        },
        "FeedbackResult": {"type": "object", "required": ["accepted", "rows"], "properties": {
            "accepted": {"type": "integer"}, "rows": {"type": "integer"},
            "correct": {"type": "integer"}, "incorrect": {"type": "integer"},
            "mean_absolute_error": {"type": "number"}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "modelpilot serve",
            "version": server_version,
            "description": "Open Inference Protocol v2 and the MLflow scoring protocol for one MLflow model, "
                           "plus ground-truth feedback.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
