"""manifests/namespaced/: one namespace served with Roles only, and the same rules as the cluster-wide install."""
import subprocess

import kubernetes_validate
import pytest
import yaml
from cluster.versions import KUBERNETES_MINOR

from conftest import ROOT, load_yaml_docs

NAMESPACED_RESOURCES = {"imagebuilds", "registrylogins", "imagebuilds/status", "registrylogins/status",
                        "imagebuilds/finalizers", "secrets", "configmaps", "jobs", "pods", "pods/log", "events"}


def _rendered() -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "manifests" / "namespaced")], check=True,
                         capture_output=True, text=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def _rules(obj: dict) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in obj["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_the_namespaced_install_grants_nothing_on_namespaced_resources_cluster_wide():
    objects = _rendered()
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_MINOR, strict=True)
    cluster_roles = [o for o in objects if o["kind"] == "ClusterRole"]
    assert [o["metadata"]["name"] for o in cluster_roles] == ["kiln-operator-cluster-read"]
    assert not {r for _, r, _ in _rules(cluster_roles[0])} & NAMESPACED_RESOURCES
    (role,) = [o for o in objects if o["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "team-a"
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert "--namespace=team-a" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_namespaced_grants_are_the_cluster_wide_ones_but_crd_scanning():
    (cluster_wide,) = [d for d in load_yaml_docs(ROOT / "manifests" / "base" / "20-rbac.yaml") if d["kind"] == "ClusterRole"]
    objects = _rendered()
    (role,) = [o for o in objects if o["kind"] == "Role"]
    (reads,) = [o for o in objects if o["kind"] == "ClusterRole"]
    scanning = {("apiextensions.k8s.io", "customresourcedefinitions", verb) for verb in ("list", "watch")}
    assert _rules(role) | _rules(reads) == _rules(cluster_wide) - scanning


@pytest.fixture(autouse=True)
def _kubectl():
    import shutil

    if not shutil.which("kubectl"):
        pytest.fail("kubectl is needed for `kubectl kustomize` (make test puts the pinned one on PATH)")
