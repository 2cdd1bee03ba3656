"""The real-cluster tier: the operator, as its own ServiceAccount, builds with real BuildKit pods.

`make e2e` runs it against KUBECONFIG, or the local cluster (`make cluster`) when KUBECONFIG is
unset. Registries and a git server run on a test host that pods reach: on the local cluster a
network namespace on its pod bridge (kiln0); elsewhere (kind, say) at KILN_E2E_ADDRESS, an
address of this machine that the cluster's pods can reach.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import netns
from gitserver import GitServer
from harness import GIT_TOKEN, ROOT, Kubectl, diagnosis, operator_env, short_id
from registries import RunningRegistry, push_image, start_htpasswd_registry, start_token_registry

BRIDGE, TEST_HOST, PREFIX = "kiln0", "10.88.0.2", 16  # the local cluster's pod bridge (cluster/up.py)
BASE_IMAGE = "hub-mirrors/base:v1"
# Applets the base image links to busybox: what the tests' Dockerfiles run.
APPLETS = ("sh", "cat", "echo", "uname", "sleep", "ls", "mkdir", "true", "false", "env", "wc", "head")


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


def busybox_layer(arch: str) -> bytes:
    """A layer with Debian's static busybox for `arch` and a few applets: a base image with a shell."""
    cache = Path(os.environ.get("KILN_CACHE") or Path.home() / ".cache" / "kiln") / "images" / f"busybox-{arch}.tar"
    if not cache.exists():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["mmdebstrap", "--quiet", "--variant=extract", f"--architectures={arch}",
                            "--include=busybox-static", "bookworm", tmp, "deb http://deb.debian.org/debian bookworm main"],
                           check=True)
            cache.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(cache, "w") as tar:
                tar.add(Path(tmp) / "bin" / "busybox", arcname="bin/busybox")
                for applet in APPLETS:
                    link = tarfile.TarInfo(f"bin/{applet}")
                    link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                    tar.addfile(link)
                scratch = tarfile.TarInfo("tmp")
                scratch.type, scratch.mode = tarfile.DIRTYPE, 0o1777
                tar.addfile(scratch)
    return cache.read_bytes()


@dataclass
class Operator:
    process: subprocess.Popen
    log: Path
    started: str  # UTC, as the API server's audit log writes times: what came before is another run's
    metrics_port: int

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def operator(kubectl, lab, tmp_path_factory) -> Operator:
    """The CRDs and manifests/ as a user applies them, and `kiln run` as the operator's ServiceAccount."""
    kubectl("apply", "-k", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/imagebuilds.kiln.dev", "crd/registrylogins.kiln.dev")
    rendered = [doc for doc in yaml.safe_load_all(kubectl("kustomize", str(ROOT / "manifests")).stdout) if doc]
    kubectl.apply(*[doc for doc in rendered if doc["kind"] not in ("Deployment", "CustomResourceDefinition")])
    work = tmp_path_factory.mktemp("operator")
    log = work / "operator.log"
    env = operator_env(kubectl, work)
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "kiln", "run", "--all-namespaces", "--standalone"],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    running = Operator(process, log, started, int(env["KILN_METRICS_PORT"]))
    time.sleep(3)
    assert process.poll() is None, running.tail()
    yield running
    process.terminate()
    process.wait(timeout=30)
    print(f"\noperator log: {log}")


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
