"""Everything in manifests/ is valid for a current Kubernetes release and grants no wildcards."""
import shutil
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from cluster.versions import KUBERNETES_MINOR

from conftest import ROOT, load_yaml_docs

BASE_FILES = sorted((ROOT / "manifests" / "base").glob("[0-9]*.yaml")) + sorted((ROOT / "manifests" / "namespaced").glob("*-*.yaml")) + sorted((ROOT / "crds").glob("kiln.dev_*.yaml")) \
    + sorted((ROOT / "manifests" / "argocd").glob("*.yaml")) + sorted((ROOT / "manifests" / "policy").glob("*-*.yaml"))
SAMPLE_K8S_OBJECTS = [
    doc for path in sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
    for doc in load_yaml_docs(path) if not doc["apiVersion"].startswith("kiln.dev/")
]


def kustomize_build() -> list[dict]:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed")
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "manifests")], check=True, capture_output=True, text=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.mark.parametrize("obj", [d for p in BASE_FILES for d in load_yaml_docs(p)] + SAMPLE_K8S_OBJECTS,
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_object_validates_against_kubernetes_schema(obj):
    kubernetes_validate.validate(obj, KUBERNETES_MINOR, strict=True)


def test_kustomize_build_renders_a_complete_deployable_set():
    objects = kustomize_build()
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_MINOR, strict=True)
        assert "generateName" not in obj["metadata"]  # Argo CD cannot sync generated names
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(["CustomResourceDefinition"] * 2 + ["Namespace", "ServiceAccount", "ClusterRole",
                                                                "ClusterRoleBinding", "Deployment", "Service"])
    namespaced = [o for o in objects if o["kind"] in ("ServiceAccount", "Deployment", "Service")]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"kiln-system"}


def _rules():
    for obj in load_yaml_docs(ROOT / "manifests" / "base" / "20-rbac.yaml"):
        yield from obj.get("rules", [])


def test_rbac_has_no_wildcards():
    for rule in _rules():
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule


def test_operator_pod_runs_restricted_with_health_probes():
    (deployment,) = load_yaml_docs(ROOT / "manifests" / "base" / "30-deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert container["resources"]["limits"]["memory"]


def test_the_only_writable_place_of_the_operator_is_a_tmp_in_memory_where_cosign_gets_the_credentials():
    """Signing writes the registry credentials for cosign into a temporary directory: it never reaches a disk."""
    (deployment,) = load_yaml_docs(ROOT / "manifests" / "base" / "30-deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}]


def test_the_deployment_pins_the_buildkit_image_the_operator_defaults_to():
    from kiln.spec.settings import DEFAULT_BUILDKIT_IMAGE

    (deployment,) = load_yaml_docs(ROOT / "manifests" / "base" / "30-deployment.yaml")
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KILN_BUILDKIT_IMAGE"] == DEFAULT_BUILDKIT_IMAGE
    assert DEFAULT_BUILDKIT_IMAGE in (ROOT / "README.md").read_text()


def test_the_image_the_manifests_deploy_is_tagged_with_kilns_one_version():
    from kiln import __version__

    (image,) = load_yaml_docs(ROOT / "manifests" / "base" / "kustomization.yaml")[0]["images"]
    assert image["newTag"] == __version__
    assert subprocess.run([sys.executable, "-m", "kiln", "--version"], capture_output=True, text=True,
                          check=True).stdout.strip() == f"kiln {__version__}"


def test_the_local_overlay_changes_nothing_but_the_image_which_comes_from_the_local_registry():
    from cluster import registry

    from kiln import __version__

    def build(path):
        out = subprocess.run(["kubectl", "kustomize", str(path)], check=True, capture_output=True, text=True).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    if not shutil.which("kubectl"):
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed")
    base, local = build(ROOT / "manifests"), build(ROOT / "manifests" / "local")
    deployments = [o for o in local if o["kind"] == "Deployment"]
    assert [c["image"] for d in deployments for c in d["spec"]["template"]["spec"]["containers"]] == [
        f"{registry.HOST}/kiln/operator:{__version__}"]
    for objects in (base, local):
        for d in (o for o in objects if o["kind"] == "Deployment"):
            d["spec"]["template"]["spec"]["containers"][0].pop("image")
    assert local == base


def test_the_build_pods_network_policy_selects_the_pods_kiln_renders_and_shuts_out_every_metadata_address():
    import ipaddress

    from kiln.build.platforms import BuildUnit
    from kiln.build.render import render_job
    from kiln.spec import addresses
    from kiln.spec.parse import parse_image_build
    from kiln.spec.settings import Settings

    (policy,) = load_yaml_docs(ROOT / "manifests" / "policy" / "build-pods-networkpolicy.yaml")
    spec = parse_image_build({"metadata": {"name": "app", "namespace": "team"}, "spec": {
        "source": {"git": {"url": "https://git.example/app.git"}}, "output": {"image": "r.example/app"}}})
    pod_labels = render_job(spec, BuildUnit(()), Settings())["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    blocks = [peer["ipBlock"] for rule in policy["spec"]["egress"] for peer in rule["to"]]
    excepted = [ipaddress.ip_network(net) for block in blocks for net in block.get("except", [])]
    shut_out = [*addresses.METADATA_ADDRESSES, ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fe80::1")]
    for address in shut_out:
        assert any(address in net for net in excepted if net.version == address.version), address
    assert {block["cidr"] for block in blocks} == {"0.0.0.0/0", "::/0"}  # everything else stays reachable
