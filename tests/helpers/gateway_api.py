"""The Gateway API's HTTPRoute (gateway.networking.k8s.io/v1, standard channel) as a JSON Schema, for the
fields the kit writes, with the limits of the API reference (kubernetes-validate has no schema for
CRDs and only warns). Written here from the reference, not copied from the CRD: unknown fields are
refused (strict), as the API server's structural schema prunes them."""

from __future__ import annotations

from typing import Any

import jsonschema

NAME = {"type": "string", "minLength": 1, "maxLength": 253, "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}
LABEL = {"type": "string", "minLength": 1, "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
HEADER = {"type": "object", "additionalProperties": False, "required": ["name", "value"], "properties": {
    "type": {"enum": ["Exact", "RegularExpression"]},
    "name": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"},
    "value": {"type": "string", "minLength": 1, "maxLength": 4096}}}
MATCH = {"type": "object", "additionalProperties": False, "properties": {
    "path": {"type": "object", "additionalProperties": False, "properties": {
        "type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]},
        "value": {"type": "string", "maxLength": 1024, "pattern": "^/"}}},
    "headers": {"type": "array", "maxItems": 16, "items": HEADER},
    "method": {"enum": ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]}}}
BACKEND = {"type": "object", "additionalProperties": False, "required": ["name"], "properties": {
    "group": {"type": "string"}, "kind": {"type": "string"}, "name": NAME, "namespace": LABEL,
    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
    "weight": {"type": "integer", "minimum": 0, "maximum": 1000000}}}
HTTPROUTE: dict[str, Any] = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "gateway.networking.k8s.io/v1"}, "kind": {"const": "HTTPRoute"},
        "metadata": {"type": "object", "required": ["name"], "properties": {"name": NAME, "namespace": LABEL}},
        "spec": {"type": "object", "additionalProperties": False, "properties": {
            "parentRefs": {"type": "array", "minItems": 1, "maxItems": 32, "items": {
                "type": "object", "additionalProperties": False, "required": ["name"], "properties": {
                    "group": {"type": "string"}, "kind": {"type": "string"}, "name": NAME, "namespace": LABEL,
                    "sectionName": LABEL, "port": {"type": "integer", "minimum": 1, "maximum": 65535}}}},
            "hostnames": {"type": "array", "maxItems": 16, "items": {
                "type": "string", "maxLength": 253,
                "pattern": r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"}},
            "rules": {"type": "array", "maxItems": 16, "items": {
                "type": "object", "additionalProperties": False, "properties": {
                    "name": LABEL,
                    "matches": {"type": "array", "maxItems": 64, "items": MATCH},
                    "backendRefs": {"type": "array", "maxItems": 16, "items": BACKEND}}}}}}}}


def validate_httproute(doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, HTTPROUTE)
