"""The e2e tier's hands: kubectl, the objects a user would apply, and what to print when a wait fails."""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IB = "imagebuilds.kiln.dev"
OPERATOR = ("kiln-system", "kiln-operator")  # the operator's ServiceAccount: namespace, name
SELF_BUILD_NAMESPACE = "e2e-kiln-builds-kiln"  # where kiln builds its own image (conftest.kiln_builds_kiln)
GIT_TOKEN = "gitea-Token-e2e"  # what the test git server wants


class Kubectl:
    """kubectl (the pinned one first on PATH) against one kubeconfig."""

    def __init__(self, kubeconfig: str):
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(["kubectl", f"--kubeconfig={self.kubeconfig}", *args], input=input,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def apply(self, *objects: dict, namespace: str | None = None) -> None:
        args = ["apply", "-f", "-"] + ([f"--namespace={namespace}"] if namespace else [])
        self(*args, input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        args = ["get", kind, name, "-o", "json"] + ([f"--namespace={namespace}"] if namespace else [])
        result = self(*args, check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(result.stderr)
        return json.loads(result.stdout)

    def items(self, kind: str, namespace: str, selector: str = "") -> list[dict]:
        args = ["get", kind, f"--namespace={namespace}", "-o", "json"] + ([f"--selector={selector}"] if selector else [])
        return json.loads(self(*args).stdout)["items"]


def condition(obj: dict | None, kind: str) -> dict:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def eventually(check, timeout: float, what: str, diagnose=None, interval: float = 1.0):
    """Wait until check() returns something truthy; on timeout fail with `what` and the diagnosis."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}\n{diagnose() if diagnose else ''}")
        time.sleep(interval)


def wait_ready(kubectl, namespace: str, name: str, timeout: int = 600) -> dict:
    """Ready, or fail as soon as the build is Stalled; then `kubectl wait --for=condition=Ready` returns, as a
    user or a pipeline waits. Returns the ImageBuild."""
    def settled():
        build = kubectl.get(IB, name, namespace)
        generation = build["metadata"]["generation"]
        done = [c for c in ("Ready", "Stalled") if condition(build, c).get("status") == "True"
                and condition(build, c).get("observedGeneration") == generation]
        return done and (done, build)

    (done, build) = eventually(settled, timeout, f"ImageBuild {name} Ready or Stalled", lambda: diagnosis(kubectl, namespace))
    assert done == ["Ready"], f"{name} stalled: {json.dumps(build['status'], indent=1)}\n{diagnosis(kubectl, namespace)}"
    result = kubectl("wait", f"{IB}/{name}", "--for=condition=Ready", "--timeout=10s", f"--namespace={namespace}",
                     check=False)
    assert result.returncode == 0, result.stderr
    return build


def diagnosis(kubectl: Kubectl, namespace: str) -> str:
    """What a user would look at: the builds' status, the Jobs and pods, their events and logs."""
    out = [kubectl("get", "ib,rl,jobs,pods", "-o", "wide", f"--namespace={namespace}", check=False).stdout]
    for build in kubectl.items(IB, namespace):
        out.append(f"ImageBuild {build['metadata']['name']} status: {json.dumps(build.get('status'), indent=1)}")
    for pod in kubectl.items("pods", namespace):
        name = pod["metadata"]["name"]
        out.append(f"--- pod {name} log tail:\n" + kubectl("logs", name, f"--namespace={namespace}", "--tail=25",
                                                           "--all-containers", check=False).stdout)
    out.append(kubectl("get", "events", f"--namespace={namespace}", "--sort-by=.lastTimestamp", check=False).stdout[-3000:])
    return "\n".join(out)


def secret(name: str, user: str, password: str) -> dict:
    """A basic-auth Secret that the namespace's logins may use (and kiln watches)."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": {"kiln.dev/registry-login": "true"}},
            "type": "kubernetes.io/basic-auth", "stringData": {"username": user, "password": password}}


def build_secret(name: str, user: str, password: str) -> dict:
    """A basic-auth Secret that the namespace's builds may mount (a git token)."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": {"kiln.dev/build-secret": "true"}},
            "type": "kubernetes.io/basic-auth", "stringData": {"username": user, "password": password}}


def registry_login(name: str, registry, user: str, password: str | None = None) -> list[dict]:
    """A Secret and a RegistryLogin for `user` at `registry` (plain HTTP: insecure; private CA: caBundle)."""
    spec: dict = {"server": registry.host, "secretRef": {"name": f"{name}-creds"}}
    objects = [secret(f"{name}-creds", user, password or registry.users[user])]
    if registry.ca_pem:
        spec["caBundle"] = {"name": f"{name}-ca"}
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-ca"},
                        "data": {"ca.crt": registry.ca_pem}})
    else:
        spec["insecure"] = True
    return objects + [{"apiVersion": "kiln.dev/v1alpha1", "kind": "RegistryLogin", "metadata": {"name": name}, "spec": spec}]


def image_build(name: str, **spec) -> dict:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": name}, "spec": spec}


def host_volume(kubectl: Kubectl, namespace: str, claim: str, directory: Path) -> dict:
    """A PersistentVolume over a directory of this machine (the nodes' machine), bound to a new claim."""
    directory.mkdir(parents=True, exist_ok=True)
    volume = f"{namespace}-{claim}"
    kubectl.apply({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume, "labels": {"kiln.dev/e2e": namespace}},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "kiln-e2e",
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(directory), "type": "Directory"},
                 "claimRef": {"namespace": namespace, "name": claim}},
    })
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "kiln-e2e", "volumeName": volume,
                     "resources": {"requests": {"storage": "1Gi"}}}}


def short_id() -> str:
    return uuid.uuid4().hex[:5]


def layer_files(blob: bytes) -> dict[str, bytes]:
    """The regular files in an image layer (gzip or plain tar)."""
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def overlay(directory: Path, image: str, base: Path = ROOT / "manifests") -> Path:
    """A kustomize overlay of `base` that only sets the operator image (NAME:TAG, NAME@DIGEST or NAME:TAG@DIGEST),
    as a user deploying their own build writes one. It lives under the checkout: kustomize loads bases by path."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    new = {"newName": name.rsplit(":", 1)[0] if ":" in last else name}
    new.update({"digest": digest} if digest else {"newTag": last.rsplit(":", 1)[1]} if ":" in last else {})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(json.dumps({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(base, directory)],
        "images": [{"name": "ghcr.io/kiln-dev/kiln", **new}]}, indent=2))
    return directory


def deploy(kubectl: Kubectl, directory: Path) -> dict:
    """`kubectl apply -k` of an overlay; returns the operator pod once the Deployment has rolled out and its pod is
    Ready (its readiness probe answered)."""
    kubectl("apply", "-k", str(directory))
    kubectl("wait", "--for=condition=Established", "crd/imagebuilds.kiln.dev", "crd/registrylogins.kiln.dev")
    rolled = kubectl(f"--namespace={OPERATOR[0]}", "rollout", "status", "deployment/kiln-operator", "--timeout=300s",
                     check=False, timeout=320)
    assert rolled.returncode == 0, f"{rolled.stderr}\n{operator_diagnosis(kubectl)}"
    return operator_pod(kubectl)


def operator_pod(kubectl: Kubectl) -> dict:
    """The one running, Ready operator pod."""
    def ready() -> dict | None:
        pods = [p for p in kubectl.items("pods", OPERATOR[0], "app.kubernetes.io/component=operator")
                if not p["metadata"].get("deletionTimestamp")]
        return len(pods) == 1 and condition(pods[0], "Ready").get("status") == "True" and pods[0]

    return eventually(ready, 300, "one Ready operator pod", lambda: operator_diagnosis(kubectl))


def operator_diagnosis(kubectl: Kubectl) -> str:
    namespace = f"--namespace={OPERATOR[0]}"
    return "\n".join([kubectl("get", "deployment,replicaset,pods", "-o", "wide", namespace, check=False).stdout,
                      kubectl("describe", "pods", "-l", "app.kubernetes.io/component=operator", namespace,
                              check=False).stdout[-4000:],
                      kubectl("logs", "deployment/kiln-operator", namespace, "--tail=40", check=False).stdout])


BIN = Path(sys.executable).parent  # the venv's: kiln, and kubectl-kiln beside it


def kiln(kubectl: Kubectl, *args: str, plugin: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """`kiln ARGS`, or `kubectl kiln ARGS` (kubectl finds the plugin on PATH), with the cluster's kubeconfig."""
    argv = ["kubectl", "kiln", *args] if plugin else [str(BIN / "kiln"), *args]
    env = {**os.environ, "KUBECONFIG": kubectl.kubeconfig, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
