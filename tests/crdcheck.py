"""Validate objects against our CRDs the way the API server does at `kubectl apply`.

Defaults are applied first, then the structural schema is checked (types, required,
enums, patterns, bounds, unknown fields), then every `x-kubernetes-validations`
CEL rule is evaluated with cel-python. Messages follow the API server's wording so
tests can assert what a user would see.
"""
from __future__ import annotations

import copy
import functools
import json
import pathlib
import re

import celpy
import yaml

CRD_DIR = pathlib.Path(__file__).parent.parent / "crds"


@functools.cache
def crds() -> dict[str, dict]:
    """kind -> CRD object, for every CRD in crds/."""
    out = {}
    for path in sorted(CRD_DIR.glob("kiln.dev_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        out[crd["spec"]["names"]["kind"]] = crd
    return out


def schema_of(kind: str) -> dict:
    (version,) = crds()[kind]["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


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


def errors(kind: str, obj: dict) -> list[str]:
    """Every message the API server would answer `kubectl apply` of obj with."""
    schema = schema_of(kind)
    obj = with_defaults(schema, obj)
    found: list[str] = []
    _structural(schema, obj, "", found, top=True)
    if not found:
        _cel(schema, obj, "", found)
    return found


_SHOWN = {dict: "object", list: "array"}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


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


def _show(value) -> str:
    return f'"{_SHOWN[type(value)]}"' if isinstance(value, (dict, list)) else json.dumps(value)


def _structural(schema: dict, value, path: str, found: list[str], top: bool = False) -> None:
    here = path or "<root>"
    if not _type_ok(schema, value):
        found.append(f'{here}: Invalid value: {_show(value)}: {here} in body must be of type {schema.get("type", "int-or-string")}')
        return
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(json.dumps(v) for v in schema["enum"])
        found.append(f"{here}: Unsupported value: {json.dumps(value)}: supported values: {supported}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            found.append(f"{here}: Invalid value: {json.dumps(value)}: {here} in body should match '{schema['pattern']}'")
        if len(value) < schema.get("minLength", 0):
            found.append(f"{here}: Invalid value: {json.dumps(value)}: {here} in body should be at least {schema['minLength']} chars long")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            found.append(f"{here}: Too long: may not be more than {schema['maxLength']} bytes")
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
        for i, item in enumerate(value):
            _structural(schema.get("items", {}), item, f"{path}[{i}]", found)
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                found.append(f"{_join(path, name)}: Required value")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            found.append(f"{here}: Too many: {len(value)}: must have at most {schema['maxProperties']} items")
        for name, item in value.items():
            if name in props:
                if not (top and name == "metadata"):
                    _structural(props[name], item, _join(path, name), found)
            elif isinstance(extra, dict):
                _structural(extra, item, _join(path, name), found)
            elif not schema.get("x-kubernetes-preserve-unknown-fields") and props:
                found.append(f'unknown field "{_join(path, name)}"')


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


@functools.cache
def _program(rule: str):
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel(schema: dict, value, path: str, found: list[str]) -> None:
    here = path or "<root>"
    for validation in schema.get("x-kubernetes-validations", []):
        result = _program(validation["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        if result is not True and result != celpy.celtypes.BoolType(True):
            message = validation.get("message") or f"failed rule: {validation['rule']}"
            found.append(f"{here}: Invalid value: {_show(value)}: {message}")
    if isinstance(value, dict):
        for name, item in value.items():
            sub = schema.get("properties", {}).get(name) or schema.get("additionalProperties")
            if isinstance(sub, dict):
                _cel(sub, item, _join(path, name), found)
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _cel(schema["items"], item, f"{path}[{i}]", found)


def cel_rules(schema: dict, path: str = "") -> list[tuple[str, dict]]:
    """(path, validation) for every CEL rule in a schema, for coverage checks."""
    out = [(path, v) for v in schema.get("x-kubernetes-validations", [])]
    for name, sub in schema.get("properties", {}).items():
        out += cel_rules(sub, _join(path, name))
    if isinstance(schema.get("items"), dict):
        out += cel_rules(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += cel_rules(schema["additionalProperties"], f"{path}.*")
    return out


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
