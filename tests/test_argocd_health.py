"""The Argo CD health checks in manifests/argocd/, run in a real Lua runtime (lupa) on the statuses kiln writes."""
import pytest
from lupa import LuaRuntime

from kiln.build.status import BUILDING, CANCELLED, FAILED, PENDING, SUCCEEDED, condition, phase_conditions

from conftest import ROOT, load_yaml_docs

(PATCH,) = load_yaml_docs(ROOT / "manifests" / "argocd" / "argocd-cm-patch.yaml")


def health(kind: str, obj: dict) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)
    check = lua.eval(f"function(obj) {PATCH['data'][f'resource.customizations.health.kiln.dev_{kind}']} end")
    result = check(_to_lua(lua, obj))
    return result["status"], result["message"]


def _to_lua(lua, value):
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def build(phase: str, reason: str, message: str, generation: int = 1, observed: int = 1) -> dict:
    conditions = phase_conditions(phase, reason, message, observed)
    return {"metadata": {"generation": generation}, "status": {"observedGeneration": observed, "conditions": conditions}}


@pytest.mark.parametrize(("obj", "expected"), [
    (build(SUCCEEDED, "Succeeded", "pushed r.io/app@sha256:1"), ("Healthy", "pushed r.io/app@sha256:1")),
    (build(FAILED, "DockerfileError", "a Dockerfile step failed"), ("Degraded", "DockerfileError: a Dockerfile step failed")),
    (build(BUILDING, "Building", "building"), ("Progressing", "Building: building")),
    (build(PENDING, "BuildPending", "waiting for a node"), ("Progressing", "BuildPending: waiting for a node")),
    (build(CANCELLED, "Suspended", "suspended"), ("Suspended", "suspended")),
    (build(SUCCEEDED, "Succeeded", "pushed", generation=2, observed=1), ("Progressing", "Waiting for kiln to build the current spec")),
    ({"metadata": {"generation": 1}}, ("Progressing", "Waiting for kiln to build the current spec")),
], ids=["succeeded", "failed", "building", "pending", "suspended", "new-generation", "no-status"])
def test_imagebuild_health_follows_the_conditions(obj, expected):
    assert health("ImageBuild", obj) == expected


@pytest.mark.parametrize(("ready", "expected"), [
    (condition("Ready", True, "Verified", "alice logged in to r.io (Bearer)", 1), ("Healthy", "alice logged in to r.io (Bearer)")),
    (condition("Ready", False, "AuthenticationFailed", "r.io refused the credentials", 1),
     ("Degraded", "AuthenticationFailed: r.io refused the credentials")),
])
def test_registrylogin_health_follows_ready(ready, expected):
    obj = {"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "conditions": [ready]}}
    assert health("RegistryLogin", obj) == expected
