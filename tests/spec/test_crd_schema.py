"""The CRDs refuse bad specs at `kubectl apply` time, with messages a user can act on."""
import re

import pytest

from kiln.spec import parse
from kiln.spec.parse import InvalidSpec, parse_image_build

from conftest import SAMPLES, load_yaml_docs
from crdcheck import cel_rules, crds, errors, schema_of, with_defaults
from malformed import BUILD, LOGIN, MALFORMED_BUILDS, MALFORMED_LOGINS, changed

SAMPLE_OBJECTS = [
    pytest.param(doc, id=f"{path.name}:{doc['kind']}/{doc['metadata']['name']}")
    for path in sorted(SAMPLES.glob("*.yaml"))
    for doc in load_yaml_docs(path)
    if doc["apiVersion"].startswith("kiln.dev/")
]


@pytest.mark.parametrize("obj", SAMPLE_OBJECTS)
def test_every_sample_is_accepted_by_its_crd(obj):
    assert errors(obj["kind"], obj) == []


def test_samples_cover_every_user_story():
    builds = [p.values[0] for p in SAMPLE_OBJECTS if p.values[0]["kind"] == "ImageBuild"]
    specs = [with_defaults(schema_of("ImageBuild"), b)["spec"] for b in builds]
    assert any(len(b.get("registryLogins", [])) >= 2 for b in specs)
    assert any(s["cache"]["type"] == "registry" and "ref" in s["cache"] for s in specs if "cache" in s)
    assert any(s.get("cache", {}).get("type") == "local" for s in specs)
    assert any(s.get("multiArch", {}).get("strategy") == "qemu" for s in specs)
    assert any(s.get("multiArch", {}).get("strategy") == "native" for s in specs)
    assert any("volume" in s["source"] for s in specs)


def test_defaults_fill_in_what_a_user_leaves_out():
    spec = with_defaults(schema_of("ImageBuild"), changed(BUILD, spec__output={"image": "r.io/a"}))["spec"]
    assert spec["output"] == {"image": "r.io/a", "tags": ["latest"], "push": True}
    assert spec["source"]["contextDir"] == "." and spec["source"]["dockerfile"] == "Dockerfile"
    assert (spec["timeout"], spec["retries"], spec["historyLimit"], spec["suspend"]) == ("30m", 1, 5, False)
    login = with_defaults(schema_of("RegistryLogin"), LOGIN)["spec"]
    assert (login["verify"], login["insecure"]) == (True, False)


def test_a_spec_that_passed_the_schema_is_not_checked_again_and_one_that_failed_always_is(monkeypatch):
    """The operator parses a build's spec at every reconcile: the check runs once per distinct spec."""
    checked = []
    check = parse.structural_errors
    monkeypatch.setattr(parse, "structural_errors", lambda kind, obj: checked.append(kind) or check(kind, obj))
    monkeypatch.setattr(parse, "_PASSED", {})
    parse_image_build(BUILD)
    parse_image_build(changed(BUILD, metadata__annotations={"kiln.dev/rebuild": "again"}))  # the same spec
    assert checked == ["ImageBuild"]
    unknown = changed(BUILD, spec__outputs={"image": "r.io/a"})
    for _ in range(2):
        with pytest.raises(InvalidSpec, match="spec.outputs"):
            parse_image_build(unknown)
    assert checked == ["ImageBuild"] * 3
    monkeypatch.setattr(parse, "PASSED_KEPT", 2)
    for tag in ("a", "b", "c"):
        parse_image_build(changed(BUILD, spec__output={"image": "r.io/a", "tags": [tag]}))
    assert len(parse._PASSED) == 2 and checked == ["ImageBuild"] * 6


@pytest.mark.parametrize(("changes", "expected"), [pytest.param(c, e, id=i) for i, c, e in MALFORMED_BUILDS])
def test_malformed_image_build_is_refused_with_a_specific_message(changes, expected):
    found = errors("ImageBuild", changed(BUILD, **changes))
    assert any(expected in message for message in found), found


@pytest.mark.parametrize(("changes", "expected"), [pytest.param(c, e, id=i) for i, c, e in MALFORMED_LOGINS])
def test_malformed_registry_login_is_refused_with_a_specific_message(changes, expected):
    found = errors("RegistryLogin", changed(LOGIN, **changes))
    assert any(expected in message for message in found), found


VALID_VARIANTS = [
    ("docker-hub-url-server", "RegistryLogin", {"spec__server": "https://index.docker.io/v1/"}),
    ("server-with-port", "RegistryLogin", {"spec__server": "127.0.0.1:5000"}),
    ("image-with-port", "ImageBuild", {"spec__output": {"image": "localhost:5000/a/b-c__d"}}),
    ("docker-hub-short-image", "ImageBuild", {"spec__output": {"image": "library/app"}}),
    ("arm-variant", "ImageBuild", {"spec__platforms": ["linux/arm/v7", "linux/arm64"]}),
    ("local-cache", "ImageBuild", {"spec__cache": {"type": "local", "volume": {"claimName": "c"}}}),
    ("inline-cache-import", "ImageBuild", {"spec__cache": {"type": "inline", "importRefs": ["r.io/a:main"]}}),
    ("registry-cache-min", "ImageBuild", {"spec__cache": {"ref": "r-vpc.io/m/openjdk:app1-flow-cache", "mode": "min"}}),
    ("volume-source", "ImageBuild", {"spec__source": {"volume": {"claimName": "ws", "path": "a/b..c"}}}),
    ("config-map-source", "ImageBuild", {"spec__source": {"configMap": {"name": "ctx"}}}),
    ("volume-context-dir", "ImageBuild", {"spec__source": {"volume": {"claimName": "ws"}, "contextDir": "sub/dir"}}),
    ("ssh-git", "ImageBuild", {"spec__source": {"git": {"url": "git@github.com:org/repo.git"}}}),
    ("timeout-hours", "ImageBuild", {"spec__timeout": "1h30m"}),
    ("quantities", "ImageBuild", {"spec__builder": {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": 2}}}}),
]


@pytest.mark.parametrize(("kind", "changes"), [pytest.param(k, c, id=i) for i, k, c in VALID_VARIANTS])
def test_valid_variants_are_accepted(kind, changes):
    base = BUILD if kind == "ImageBuild" else LOGIN
    assert errors(kind, changed(base, **changes)) == []


def test_every_cel_rule_has_a_case_that_fails_it():
    """Each rule's message must be produced by some malformed case above."""
    expected = [e for _, _, e in MALFORMED_BUILDS + MALFORMED_LOGINS]
    for kind in crds():
        for path, rule in cel_rules(schema_of(kind)):
            assert any(rule["message"] in e or e in rule["message"] for e in expected), (kind, path, rule)


def _properties(schema: dict, path: str):
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}", sub
        yield from _properties(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _properties(schema[key], f"{path}[]")


@pytest.mark.parametrize("kind", ["ImageBuild", "RegistryLogin"])
def test_every_crd_property_has_a_description(kind):
    # The API server refuses anything but `type` on the root metadata ("must not specify anything other
    # than name and generateName"); kubectl explain documents it from its own schema.
    missing = [path for path, sub in _properties(schema_of(kind), "")
               if not sub.get("description", "").strip() and path != ".metadata"]
    assert missing == []


def _schema_has_path(schema: dict, json_path: str) -> bool:
    node = schema
    for part in re.sub(r"\[\?\(.*?\)\]|\[\d+\]", ".[]", json_path).strip(".").split("."):
        if part == "[]":
            node = node.get("items", {})
            continue
        if part not in node.get("properties", {}):
            return part in ("creationTimestamp",) and node.get("type") == "object" and not node.get("properties")
        node = node["properties"][part]
    return True


@pytest.mark.parametrize("kind", ["ImageBuild", "RegistryLogin"])
def test_printer_columns_name_fields_the_schema_has(kind):
    (version,) = crds()[kind]["spec"]["versions"]
    bad = [c["jsonPath"] for c in version["additionalPrinterColumns"] if not _schema_has_path(schema_of(kind), c["jsonPath"])]
    assert bad == []


def test_printer_column_lint_catches_a_typo():
    assert not _schema_has_path(schema_of("ImageBuild"), ".status.phaze")
    assert _schema_has_path(schema_of("ImageBuild"), '.status.conditions[?(@.type=="Ready")].status')


def _rules_with_nodes(schema: dict, path: str = ""):
    for validation in schema.get("x-kubernetes-validations", []):
        yield path or "<root>", schema, validation["rule"]
    for name, sub in schema.get("properties", {}).items():
        yield from _rules_with_nodes(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _rules_with_nodes(schema[key], f"{path}[]")


def _unbounded(node: dict) -> str | None:
    """Why the API server's CEL cost estimator would assume a worst-case size here, if it would."""
    kind = node.get("type")
    if kind == "string" and "maxLength" not in node:
        return "a string without maxLength"
    if kind == "array" and "maxItems" not in node:
        return "an array without maxItems"
    if kind == "array" and node.get("items", {}).get("type") == "string" and "maxLength" not in node["items"]:
        return "array items without maxLength"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return "a map (its keys can have no maxLength)"
    return None


@pytest.mark.parametrize("kind", ["ImageBuild", "RegistryLogin"])
def test_every_cel_rule_reads_only_bounded_values_so_the_api_server_accepts_the_crd(kind):
    """An over-budget estimated cost makes `kubectl apply` of the CRD itself fail."""
    problems = []
    for path, node, rule in _rules_with_nodes(schema_of(kind)):
        touched = [("self", node)] + [(f"self.{name}", node["properties"][name])
                                      for name in re.findall(r"self\.(\w+)", rule) if name in node.get("properties", {})]
        problems += [f"{path}: {rule!r} reads {where}, {why}" for where, sub in touched if (why := _unbounded(sub))]
    assert problems == []


def test_the_cost_lint_catches_an_unbounded_value():
    assert _unbounded({"type": "string"}) and _unbounded({"type": "object", "additionalProperties": {"type": "string"}})
    assert not _unbounded({"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 5}})


def _unbounded_fields(schema: dict, path: str):
    kind = schema.get("type")
    if kind == "string" and "maxLength" not in schema and "enum" not in schema:
        yield path, "a string without maxLength"
    if "anyOf" in schema and "maxLength" not in schema:
        yield path, "an int-or-string without maxLength"
    if kind == "array" and "maxItems" not in schema:
        yield path, "a list without maxItems"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict) and "maxProperties" not in schema:
        yield path, "a map without maxProperties"
    if kind == "integer" and ("minimum" not in schema or "maximum" not in schema):
        yield path, "an integer without minimum and maximum"
    for name, sub in schema.get("properties", {}).items():
        yield from _unbounded_fields(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _unbounded_fields(schema[key], f"{path}[]")


@pytest.mark.parametrize("kind", ["ImageBuild", "RegistryLogin"])
def test_every_spec_field_has_explicit_bounds(kind):
    """Lengths, counts and ranges: what a user may write is bounded, so no spec can make kiln do unbounded work."""
    assert list(_unbounded_fields(schema_of(kind)["properties"]["spec"], "spec")) == []
