"""The CRDs refuse bad specs at `kubectl apply` time, with messages a user can act on."""
import copy
import re

import pytest

from conftest import SAMPLES, load_yaml_docs
from crdcheck import cel_rules, crds, errors, schema_of, with_defaults

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


BUILD = {
    "apiVersion": "kiln.dev/v1alpha1",
    "kind": "ImageBuild",
    "metadata": {"name": "app", "namespace": "default"},
    "spec": {
        "source": {"git": {"url": "https://example.com/app.git", "revision": "main"}},
        "output": {"image": "registry.example.com/team/app", "tags": ["v1"]},
    },
}
LOGIN = {
    "apiVersion": "kiln.dev/v1alpha1",
    "kind": "RegistryLogin",
    "metadata": {"name": "hub", "namespace": "default"},
    "spec": {"server": "registry.example.com", "secretRef": {"name": "hub-creds"}},
}


def changed(base: dict, **paths) -> dict:
    """A copy of base with dotted paths set (None deletes)."""
    obj = copy.deepcopy(base)
    for dotted, value in paths.items():
        *parents, leaf = dotted.split("__")
        node = obj
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return obj


def test_defaults_fill_in_what_a_user_leaves_out():
    spec = with_defaults(schema_of("ImageBuild"), changed(BUILD, spec__output={"image": "r.io/a"}))["spec"]
    assert spec["output"] == {"image": "r.io/a", "tags": ["latest"], "push": True}
    assert spec["source"]["contextDir"] == "." and spec["source"]["dockerfile"] == "Dockerfile"
    assert (spec["timeout"], spec["retries"], spec["historyLimit"], spec["suspend"]) == ("30m", 1, 5, False)
    login = with_defaults(schema_of("RegistryLogin"), LOGIN)["spec"]
    assert (login["verify"], login["insecure"]) == (True, False)


GIT = {"url": "https://example.com/app.git"}
MALFORMED_BUILDS = [
    # (id, spec changes, expected message fragment)
    ("no-spec", {"spec": None}, "spec: Required value"),
    ("no-output", {"spec__output": None}, "spec.output: Required value"),
    ("no-output-image", {"spec__output": {"tags": ["v1"]}}, "spec.output.image: Required value"),
    ("image-with-tag", {"spec__output": {"image": "r.io/app:v1"}}, 'spec.output.image: Invalid value: "r.io/app:v1": spec.output.image in body should match'),
    ("image-uppercase-path", {"spec__output": {"image": "r.io/Team/app"}}, "spec.output.image in body should match"),
    ("tag-with-space", {"spec__output": {"image": "r.io/a", "tags": ["v 1"]}}, "spec.output.tags[0] in body should match"),
    ("empty-tags", {"spec__output": {"image": "r.io/a", "tags": []}}, "spec.output.tags in body should have at least 1 items"),
    ("duplicate-tags", {"spec__output": {"image": "r.io/a", "tags": ["v1", "v1"]}}, "output.tags must be unique"),
    ("push-not-bool", {"spec__output": {"image": "r.io/a", "push": "yes"}}, "spec.output.push in body must be of type boolean"),
    ("no-source", {"spec__source": None}, "spec.source: Required value"),
    ("two-sources", {"spec__source": {"git": GIT, "url": "https://e.com/c.tgz"}}, "exactly one of source.git, source.volume, source.configMap or source.url must be set"),
    ("zero-sources", {"spec__source": {"contextDir": "app"}}, "exactly one of source.git, source.volume, source.configMap or source.url must be set"),
    ("git-url-scheme", {"spec__source": {"git": {"url": "file:///etc"}}}, "spec.source.git.url in body should match"),
    ("git-url-newline", {"spec__source": {"git": {"url": "https://e.com/a\n--x"}}}, "spec.source.git.url in body should match"),
    ("volume-without-claim", {"spec__source": {"volume": {"path": "ws"}}}, "spec.source.volume.claimName: Required value"),
    ("volume-path-escapes", {"spec__source": {"volume": {"claimName": "ws", "path": "../etc"}}}, "source.volume.path must be relative and must not contain '..'"),
    ("absolute-context-dir", {"spec__source": {"git": GIT, "contextDir": "/etc"}}, "source.contextDir must be relative and must not contain '..'"),
    ("dockerfile-escapes", {"spec__source": {"git": GIT, "dockerfile": "a/../../Dockerfile"}}, "source.dockerfile must be relative and must not contain '..'"),
    ("context-dir-in-tarball", {"spec__source": {"url": "https://e.com/c.tgz", "contextDir": "sub"}}, "source.contextDir is only supported with source.git and source.volume"),
    ("git-url-with-fragment", {"spec__source": {"git": {"url": "https://e.com/a.git#main:/etc"}}}, "spec.source.git.url in body should match"),
    ("revision-with-colon", {"spec__source": {"git": {"url": "https://e.com/a.git", "revision": "main:sub"}}}, "spec.source.git.revision in body should match"),
    ("tarball-not-http", {"spec__source": {"url": "ftp://e.com/c.tgz"}}, "spec.source.url in body should match"),
    ("wrong-platform-string", {"spec__platforms": ["linux-amd64"]}, "spec.platforms[0] in body should match"),
    ("platform-uppercase", {"spec__platforms": ["Linux/AMD64"]}, "spec.platforms[0] in body should match"),
    ("duplicate-platforms", {"spec__platforms": ["linux/amd64", "linux/amd64"]}, "platforms must be unique"),
    ("empty-platforms", {"spec__platforms": []}, "spec.platforms in body should have at least 1 items"),
    ("unknown-strategy", {"spec__platforms": ["linux/amd64"], "spec__multiArch": {"strategy": "docker"}}, 'spec.multiArch.strategy: Unsupported value: "docker": supported values: "qemu", "native", "auto"'),
    ("multiarch-without-platforms", {"spec__multiArch": {"strategy": "native"}}, "multiArch needs spec.platforms"),
    ("unknown-cache-type", {"spec__cache": {"type": "s3"}}, 'spec.cache.type: Unsupported value: "s3"'),
    ("local-cache-without-volume", {"spec__cache": {"type": "local"}}, "cache.volume is required when cache.type is local"),
    ("volume-on-registry-cache", {"spec__cache": {"type": "registry", "volume": {"claimName": "c"}}}, "cache.volume is only used when cache.type is local"),
    ("ref-on-inline-cache", {"spec__cache": {"type": "inline", "ref": "r.io/a:cache"}}, "cache.ref is only used when cache.type is registry"),
    ("mode-on-local-cache", {"spec__cache": {"type": "local", "mode": "max", "volume": {"claimName": "c"}}}, "cache.mode is only used when cache.type is registry"),
    ("import-refs-without-cache", {"spec__cache": {"type": "none", "importRefs": ["r.io/a:c"]}}, "cache.importRefs cannot be used when cache.type is none"),
    ("cache-ref-without-tag", {"spec__cache": {"ref": "r.io/a"}}, "spec.cache.ref in body should match"),
    ("unknown-cache-mode", {"spec__cache": {"mode": "all"}}, 'spec.cache.mode: Unsupported value: "all"'),
    ("negative-timeout", {"spec__timeout": "-5m"}, "spec.timeout in body should match"),
    ("zero-timeout", {"spec__timeout": "0m"}, "timeout must be a positive duration"),
    ("timeout-as-number", {"spec__timeout": 600}, "spec.timeout in body must be of type string"),
    ("negative-retries", {"spec__retries": -1}, "spec.retries in body should be greater than or equal to 0"),
    ("zero-history", {"spec__historyLimit": 0}, "spec.historyLimit in body should be greater than or equal to 1"),
    ("build-arg-not-string", {"spec__buildArgs": {"N": 1}}, "spec.buildArgs.N in body must be of type string"),
    ("duplicate-secret-ids", {"spec__secrets": [{"id": "npm", "secretRef": {"name": "a", "key": "k"}}, {"id": "npm", "secretRef": {"name": "b", "key": "k"}}]}, "secrets ids must be unique"),
    ("secret-without-key", {"spec__secrets": [{"id": "npm", "secretRef": {"name": "a"}}]}, "spec.secrets[0].secretRef.key: Required value"),
    ("duplicate-login-names", {"spec__registryLogins": ["a", "a"]}, "registryLogins must not name a login twice"),
    ("unknown-field", {"spec__outputs": {"image": "r.io/a"}}, 'unknown field "spec.outputs"'),
    ("bad-toleration-operator", {"spec__builder": {"tolerations": [{"operator": "In"}]}}, 'spec.builder.tolerations[0].operator: Unsupported value: "In"'),
    ("bad-quantity", {"spec__builder": {"resources": {"limits": {"memory": "4 gigs"}}}}, "spec.builder.resources.limits.memory in body should match"),
    ("target-with-space", {"spec__target": "my stage"}, "spec.target in body should match"),
]


@pytest.mark.parametrize(("changes", "expected"), [pytest.param(c, e, id=i) for i, c, e in MALFORMED_BUILDS])
def test_malformed_image_build_is_refused_with_a_specific_message(changes, expected):
    found = errors("ImageBuild", changed(BUILD, **changes))
    assert any(expected in message for message in found), found


MALFORMED_LOGINS = [
    ("no-server", {"spec__server": None}, "spec.server: Required value"),
    ("server-with-space", {"spec__server": "my registry"}, "spec.server in body should match"),
    ("no-secret-ref", {"spec__secretRef": None}, "spec.secretRef: Required value"),
    ("verify-not-bool", {"spec__verify": "no"}, "spec.verify in body must be of type boolean"),
    ("insecure-with-ca", {"spec__insecure": True, "spec__caBundle": {"name": "ca"}}, "caBundle has no effect with insecure=true"),
]


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
