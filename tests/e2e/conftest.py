"""The real-cluster tier: the operator, as its own ServiceAccount, builds with real BuildKit pods.

`make e2e` runs it against KUBECONFIG, or the local cluster (`make cluster`) when KUBECONFIG is
unset. Registries and a git server run on a test host that pods reach: on the local cluster a
network namespace on its pod bridge (kiln0); elsewhere (kind, say) at KILN_E2E_ADDRESS, an
address of this machine that the cluster's pods can reach.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cluster.images import busybox_layer

import netns
from gitserver import GitServer, snapshot_repository
from harness import (
    GIT_TOKEN,
    OPERATOR,
    ROOT,
    SELF_BUILD_NAMESPACE,
    Kubectl,
    build_secret,
    deploy,
    diagnosis,
    operator_pod,
    overlay,
    short_id,
    wait_ready,
)
from registries import RunningRegistry, push_image, start_htpasswd_registry, start_token_registry

BRIDGE, TEST_HOST, PREFIX = "kiln0", "10.88.0.2", 16  # the local cluster's pod bridge (cluster/up.py)
BASE_IMAGE = "hub-mirrors/base:v1"
SAMPLES = ROOT / "manifests" / "samples"
OVERLAY = ROOT / "build" / "e2e-overlay"  # kustomize loads the base by a path relative to the overlay


def load_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def kubectl() -> Kubectl:
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        pytest.fail("KUBECONFIG is not set: `make e2e` sets it, starting the local cluster when needed")
    if not shutil.which("kubectl"):
        pytest.fail("kubectl is not on PATH: `make e2e` puts the pinned one there")
    kube = Kubectl(kubeconfig)
    probe = kube("version", "-o", "json", check=False)
    if probe.returncode != 0:
        pytest.fail(f"the cluster of {kubeconfig} does not answer: {probe.stderr.strip()[:300]}")
    return kube


@dataclass
class Lab:
    """The test host: registry A (plain HTTP, Basic), registry B (HTTPS with a private CA, Bearer), git."""
    a: RunningRegistry
    b: RunningRegistry
    git: GitServer
    repositories: Path  # what the git server serves
    base_image: str  # a private multi-arch busybox in registry A


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> Lab:
    address = os.environ.get("KILN_E2E_ADDRESS")
    namespace = None
    if not address:
        if not netns.bridge_exists(BRIDGE):
            pytest.fail(f"no bridge {BRIDGE} (the local cluster's) and no KILN_E2E_ADDRESS: nowhere pods could "
                        "reach the test registries")
        namespace = netns.create("kiln-e2e", BRIDGE, TEST_HOST, PREFIX)
        address = TEST_HOST
    work = tmp_path_factory.mktemp("lab")
    a = start_htpasswd_registry(work / "registry-a", {"alice": "alice-Secret-pw1"}, host=address, port=5000,
                                namespace=namespace)
    b = start_token_registry(work / "registry-b", {"carol": ("carol-Secret-pw5", {"pull", "push"}),
                                                   "reader": ("reader-Secret-pw4", {"pull"})},
                             tls=True, host=address, port=5001, issuer_port=5002, namespace=namespace)
    repositories = work / "git"
    repositories.mkdir()
    git = GitServer(repositories, GIT_TOKEN, host=address, namespace=namespace)
    platforms = ["linux/amd64", "linux/arm64"]
    push_image(a, "alice", BASE_IMAGE.split(":")[0], platforms, tag="v1",
               layers={p: busybox_layer(p.split("/")[1]) for p in platforms})
    yield Lab(a, b, git, repositories, f"{a.host}/{BASE_IMAGE}")
    git.shutdown()
    for registry in (a, b):
        registry.stop()
    if namespace:
        netns.delete(namespace.name)


@dataclass
class Operator:
    """kiln as users run it: the Deployment of manifests/, through an overlay that only sets its image."""
    kubectl: Kubectl
    started: str  # UTC, as the API server's audit log writes times: what came before is another run's
    image: str  # what the Deployment runs: on the local cluster, the image kiln built of itself
    bootstrap: str  # the image that built it (make image)

    def pod(self) -> dict:
        return operator_pod(self.kubectl)

    def tail(self, lines: int = 60) -> str:
        return self.kubectl("logs", "deployment/kiln-operator", f"--namespace={OPERATOR[0]}", f"--tail={lines}",
                            check=False).stdout

    @property
    def metrics(self) -> str:
        """Where Prometheus scrapes it: the kiln-operator-metrics Service (kube-proxy sends it to the pod)."""
        service = self.kubectl.get("service", "kiln-operator-metrics", OPERATOR[0])
        return f"{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"


def bootstrap_image() -> str:
    """KILN_E2E_IMAGE (make e2e: the image `make image` pushed to the local registry), by digest where known."""
    image = os.environ.get("KILN_E2E_IMAGE")
    if not image:
        pytest.fail("KILN_E2E_IMAGE is not set: `make e2e` builds the operator image and sets it")
    digest = ROOT / "build" / "kiln-operator.digest"
    return f"{image}@{digest.read_text().strip()}" if "@" not in image and digest.exists() else image


@pytest.fixture(scope="session")
def operator(kubectl, lab) -> Operator:
    """The operator Deployment, started from the image `make image` built; on the local cluster kiln then builds
    its own image from this checkout (manifests/samples/kiln-builds-kiln.yaml) and is deployed from that."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    bootstrap = bootstrap_image()
    deploy(kubectl, overlay(OVERLAY, bootstrap))
    image = bootstrap
    if not os.environ.get("KILN_E2E_ADDRESS"):  # the local cluster: its registry is there to build into
        image = kiln_builds_kiln(kubectl, lab)
        deploy(kubectl, overlay(OVERLAY, image))
    running = Operator(kubectl, started, image, bootstrap)
    yield running
    print(f"\noperator log tail:\n{running.tail(200)}")


def kiln_builds_kiln(kubectl: Kubectl, lab: Lab) -> str:
    """manifests/samples/kiln-builds-kiln.yaml, its git URL pointing at this checkout (served by the test git
    server), in a namespace of its own; the image it pushed, by digest."""
    namespace = SELF_BUILD_NAMESPACE
    kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=true", timeout=300)
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": namespace, "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}})
    login = [d for d in load_docs(SAMPLES / "00-quickstart.yaml") if d["kind"] in ("Secret", "RegistryLogin")]
    (build,) = load_docs(SAMPLES / "kiln-builds-kiln.yaml")
    snapshot_repository(lab.repositories / "kiln", ROOT)
    build["spec"]["source"]["git"] = {"url": lab.git.url.replace("/app.git", "/kiln/app.git"), "revision": "main",
                                      "secretRef": {"name": "git-token"}}
    build["spec"]["output"]["tags"] = [f"e2e-{short_id()}"]
    kubectl.apply(*login, build_secret("git-token", "x-access-token", GIT_TOKEN), build, namespace=namespace)
    built = wait_ready(kubectl, namespace, "kiln", timeout=900)
    return built["status"]["image"]


@pytest.fixture
def namespace(kubectl, operator, request) -> str:
    """A namespace for one test, where rootless BuildKit may run (its pods need seccomp Unconfined)."""
    name = f"e2e-{request.node.name.removeprefix('test_').replace('_', '-')[:40].strip('-')}-{short_id()}"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name, "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}})
    yield name
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(diagnosis(kubectl, name))
        print(f"--- operator log tail:\n{operator.tail()}")
    if not os.environ.get("KILN_E2E_KEEP"):  # set it to look around after a run
        kubectl("delete", "namespace", name, "--wait=false")
        kubectl("delete", "pv", f"--selector=kiln.dev/e2e={name}", "--wait=false")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
