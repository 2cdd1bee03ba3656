"""The CRDs' OpenAPI schemas, checked the way the API server checks them (types, required fields,
enums, patterns, lengths, counts, unknown fields), with its defaults and its pruning.

The parser runs every object through this before reading it, so objects from files (`kiln render`)
or from a server that did not validate meet the same schema the API server enforces. The CRDs'
CEL rules have their counterparts in parse.py; the tests evaluate the rules themselves (cel-python)
and prove parity on generated specs.
"""
from __future__ import annotations

import copy
import functools
import json
import re
from importlib import resources

import yaml

_SHOWN = {dict: "object", list: "array"}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


@functools.cache
def crds() -> dict[str, dict]:
    """kind -> CRD object, for every CRD kiln serves."""
    out = {}
    for entry in sorted(resources.files("kiln").joinpath("crds").iterdir(), key=lambda e: e.name):
        if entry.name.startswith("kiln.dev_") and entry.name.endswith(".yaml"):
            crd = yaml.safe_load(entry.read_text())
            out[crd["spec"]["names"]["kind"]] = crd
    return out


def schema_of(kind: str) -> dict:
    (version,) = crds()[kind]["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


@functools.cache
def go_pattern(pattern: str) -> re.Pattern:
    """A CRD pattern as the API server (Go's RE2) reads it: a final `$` is the end of the text; in Python
    it would also match before a trailing newline."""
    return re.compile(re.sub(r"(?<!\\)\$$", r"\\Z", pattern))


def with_defaults(schema: dict, value):
    """The value with schema defaults filled in, as the API server stores it."""
    value = copy.deepcopy(value)
    _default(schema, value)
    return value


def _default(schema: dict, value) -> None:
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _default(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for item in value.values():
                _default(extra, item)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default(schema["items"], item)


def structural_errors(kind: str, obj: dict) -> list[str]:
    """What the API server's schema check says about obj (defaults applied first), in its words."""
    schema = schema_of(kind)
    found: list[str] = []
    _structural(schema, with_defaults(schema, obj), "", found, top=True)
    return found


def _type_ok(schema: dict, value) -> bool:
    if "anyOf" in schema:
        return any(_type_ok(s, value) for s in schema["anyOf"])
    kind = schema.get("type")
    if kind is None:
        return True
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def show(value) -> str:
    return f'"{_SHOWN[type(value)]}"' if isinstance(value, (dict, list)) else json.dumps(value)


def _structural(schema: dict, value, path: str, found: list[str], top: bool = False) -> None:
    here = path or "<root>"
    if not _type_ok(schema, value):
        kind = schema.get("type", "int-or-string")
        found.append(f"{here}: Invalid value: {show(value)}: {here} in body must be of type {kind}")
        return
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(json.dumps(v) for v in schema["enum"])
        found.append(f"{here}: Unsupported value: {json.dumps(value)}: supported values: {supported}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            found.append(f"{here}: Too long: may not be more than {schema['maxLength']} bytes")
        elif "pattern" in schema and not go_pattern(schema["pattern"]).search(value):
            found.append(f"{here}: Invalid value: {json.dumps(value)}: {here} in body should match '{schema['pattern']}'")
        if len(value) < schema.get("minLength", 0):
            found.append(f"{here}: Invalid value: {json.dumps(value)}: {here} in body should be at least "
                         f"{schema['minLength']} chars long")
    if isinstance(value, int) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{here}: Invalid value: {value}: {here} in body should be greater than or equal to {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{here}: Invalid value: {value}: {here} in body should be less than or equal to {schema['maximum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            found.append(f"{here}: Invalid value: {len(value)}: {here} in body should have at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            found.append(f"{here}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
            return  # the API server does not look into a list that is too long
        for i, item in enumerate(value):
            _structural(schema.get("items", {}), item, f"{path}[{i}]", found)
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                found.append(f"{join(path, name)}: Required value")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            found.append(f"{here}: Too many: {len(value)}: must have at most {schema['maxProperties']} items")
            return
        for name, item in value.items():
            if name in props:
                if not (top and name == "metadata"):
                    _structural(props[name], item, join(path, name), found)
            elif isinstance(extra, dict):
                _structural(extra, item, join(path, name), found)
            elif not schema.get("x-kubernetes-preserve-unknown-fields") and props:
                found.append(f'unknown field "{join(path, name)}"')


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def pruned(schema: dict, value, top: bool = True):
    """value without the fields the schema does not declare, as the API server stores it (structural pruning)."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return value
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        if props is None and not isinstance(extra, dict):
            return value  # e.g. metadata: the server validates it on its own
        out = {}
        for key, item in value.items():
            if top and key in ("apiVersion", "kind", "metadata"):
                out[key] = item
            elif props is not None and key in props:
                out[key] = pruned(props[key], item, top=False)
            elif isinstance(extra, dict):
                out[key] = pruned(extra, item, top=False)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [pruned(schema["items"], item, top=False) for item in value]
    return value
