"""Validate objects against our CRDs the way the API server does at `kubectl apply`.

The schema check itself (defaults, types, required, enums, patterns, bounds, unknown fields,
pruning) is the operator's own (kiln.spec.schema), which the parser runs too; here every
`x-kubernetes-validations` CEL rule is evaluated on top with cel-python. Messages follow the
API server's wording so tests can assert what a user would see.
"""
from __future__ import annotations

import functools

import celpy

from kiln.spec.schema import crds, join, pruned, schema_of, show, structural_errors, with_defaults

__all__ = ["cel_rules", "crds", "errors", "pruned", "schema_of", "with_defaults"]


def errors(kind: str, obj: dict) -> list[str]:
    """Every message the API server would answer `kubectl apply` of obj with."""
    found = structural_errors(kind, obj)
    if not found:
        _cel(schema_of(kind), with_defaults(schema_of(kind), obj), "", found)
    return found


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
            found.append(f"{here}: Invalid value: {show(value)}: {message}")
    if isinstance(value, dict):
        for name, item in value.items():
            sub = schema.get("properties", {}).get(name) or schema.get("additionalProperties")
            if isinstance(sub, dict):
                _cel(sub, item, join(path, name), found)
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _cel(schema["items"], item, f"{path}[{i}]", found)


def cel_rules(schema: dict, path: str = "") -> list[tuple[str, dict]]:
    """(path, validation) for every CEL rule in a schema, for coverage checks."""
    out = [(path, v) for v in schema.get("x-kubernetes-validations", [])]
    for name, sub in schema.get("properties", {}).items():
        out += cel_rules(sub, join(path, name))
    if isinstance(schema.get("items"), dict):
        out += cel_rules(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += cel_rules(schema["additionalProperties"], f"{path}.*")
    return out
