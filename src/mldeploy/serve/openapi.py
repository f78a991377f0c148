"""The server's OpenAPI document, and the v2 model metadata.

`document()` without a signature is the generic document checked in at schema/serve.openapi.json;
a running server serves `document(its signature)` at /openapi.json, with each input's real shape
and type, so clients and fuzzers generate requests the model can actually take.
"""

from __future__ import annotations

from typing import Any

from mldeploy import __version__
from mldeploy.bundle import Signature, TensorSpec
from mldeploy.serve.codec import V2_NAMES
from mldeploy.serve.model import Model

_ITEM = {"bool": {"type": "boolean"}, "string": {"type": "string"}}
_ERROR = {"description": "the request was refused; `error` says why",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_OK_JSON = {"content": {"application/json": {"schema": {"type": "object"}}}}


def _tensor(spec: TensorSpec | None, drop_batch: bool = False) -> dict[str, Any]:
    if spec is None:
        return {"type": "array", "description": "a nested array of numbers"}
    item: dict[str, Any] = _ITEM.get(spec.dtype, {"type": "integer" if "int" in spec.dtype else "number"})
    shape = spec.shape[1:] if drop_batch else spec.shape
    for dim in reversed(shape):
        item = {"type": "array", "items": item, **({"minItems": dim, "maxItems": dim} if isinstance(dim, int) else {"minItems": 1})}
    return item


def _request_schemas(sig: Signature | None) -> dict[str, Any]:
    one = sig is None or len(sig.inputs) == 1
    specs = sig.inputs if sig else []
    named = ({"type": "object", "properties": {t.name: _tensor(t) for t in specs},
              "required": [t.name for t in specs], "additionalProperties": False}
             if sig else {"type": "object", "additionalProperties": {"type": "array"}})
    row = ({"type": "object", "properties": {t.name: _tensor(t, True) for t in specs},
            "required": [t.name for t in specs]} if sig and not one else
           _tensor(specs[0], True) if sig else {})
    v2_tensor = {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
        "name": {"type": "string", **({"enum": [t.name for t in specs]} if sig else {})},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                                                "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]},
        "data": {"type": "array"}}}
    return {
        "Instances": {"type": "object", "required": ["instances"], "properties": {
            "instances": {"type": "array", "minItems": 1, "items": row},
            "parameters": {"type": "object"}}},
        "Columnar": {"type": "object", "required": ["inputs"], "properties": {
            "inputs": _tensor(specs[0]) if sig and one else named}},
        "V2Request": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"}, "inputs": {"type": "array", "minItems": 1, "items": v2_tensor},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                                   "properties": {"name": {"type": "string"}}}},
            "parameters": {"type": "object"}}},
        "Error": {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "string"}, "request_id": {"type": "string"}}},
    }


def _get(summary: str, ok: str) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": {"description": ok, **_OK_JSON},
                                                      "503": _ERROR}}}


def _post(summary: str, schemas: list[str], csv: bool = True) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"oneOf": [
        {"$ref": f"#/components/schemas/{s}"} for s in schemas]} if len(schemas) > 1 else
        {"$ref": f"#/components/schemas/{schemas[0]}"}}}
    if csv:
        content["text/csv"] = {"schema": {"type": "string"}}
        content["application/x-npy"] = {"schema": {"type": "string", "format": "binary"}}
    return {"post": {"summary": summary, "requestBody": {"required": True, "content": content},
                     "responses": {"200": {"description": "the model's outputs", **_OK_JSON},
                                   **dict.fromkeys(("400", "401", "404", "413", "415", "422", "429", "503"), _ERROR)}}}


def document(signature: Signature | None = None, model_name: str | None = None) -> dict[str, Any]:
    name_param = {"name": "model_name", "in": "path", "required": True,
                  "schema": {"type": "string", **({"enum": [model_name]} if model_name else {})}}
    every_form = ["Instances", "Columnar", "V2Request"]
    paths = {
        "/": _get("liveness (Azure ML's default)", "the process is up"),
        "/ping": _get("SageMaker health: 200 once the model is loaded", "ready"),
        "/health": _get("Vertex AI health (default AIP_HEALTH_ROUTE)", "ready"),
        "/v2": _get("v2 server metadata", "name, version, extensions"),
        "/v2/health/live": _get("v2 liveness", "the process is up"),
        "/v2/health/ready": _get("v2 readiness", "ready"),
        "/v2/models/{model_name}": {**_get("v2 model metadata", "inputs and outputs"),
                                    "parameters": [name_param]},
        "/v2/models/{model_name}/ready": {**_get("v2 model readiness", "ready"), "parameters": [name_param]},
        "/v2/models/{model_name}/infer": {**_post("v2 inference", ["V2Request"], csv=False),
                                          "parameters": [name_param]},
        "/invocations": _post("SageMaker inference: JSON, CSV or .npy", every_form),
        "/predict": _post("inference (also Vertex AI's default AIP_PREDICT_ROUTE)", every_form),
        "/score": _post("Azure ML scoring", every_form),
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": _get("this document", "OpenAPI 3.0"),
    }
    title = f"mldeploy model server ({model_name})" if model_name else "mldeploy model server"
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": __version__ if signature else "1",
                 "description": "One ONNX Runtime server that speaks SageMaker's, Vertex AI's, Azure ML's "
                                "and the Open Inference Protocol v2's contracts."},
        "paths": paths,
        "components": {"schemas": _request_schemas(signature),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                           "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
        "security": [{}, {"bearer": []}, {"apiKey": []}],
    }


def v2_metadata(model: Model) -> dict[str, Any]:
    def tensors(specs: list[TensorSpec]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": V2_NAMES.get(t.dtype, t.dtype.upper()),
                 "shape": [d if isinstance(d, int) else -1 for d in t.shape]} for t in specs]

    return {"name": model.name, "versions": [model.version], "platform": "onnxruntime_onnx",
            "inputs": tensors(model.signature.inputs), "outputs": tensors(model.signature.outputs)}
