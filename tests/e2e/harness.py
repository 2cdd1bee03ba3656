"""The e2e tier's hands: kubectl, the objects a user would apply, and what to print when a wait fails."""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

from registries import free_port

ROOT = Path(__file__).resolve().parents[2]
IB = "imagebuilds.kiln.dev"
OPERATOR = ("kiln-system", "kiln-operator")  # the operator's ServiceAccount: namespace, name
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
    """A basic-auth Secret, labelled so that kiln sees changes to it at once."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": {"kiln.dev/registry-login": "true"}},
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


def operator_kubeconfig(kubectl: Kubectl, path: Path) -> Path:
    """The cluster of KUBECONFIG, as the operator's ServiceAccount (a token from `kubectl create token`)."""
    current = json.loads(kubectl("config", "view", "--minify", "--raw", "-o", "json").stdout)
    cluster = current["clusters"][0]["cluster"]
    if "certificate-authority" in cluster:
        cluster = {"server": cluster["server"],
                   "certificate-authority-data": base64.b64encode(Path(cluster["certificate-authority"]).read_bytes()).decode()}
    token = kubectl("create", "token", OPERATOR[1], f"--namespace={OPERATOR[0]}", "--duration=6h").stdout.strip()
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "kiln",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "contexts": [{"name": "kiln", "context": {"cluster": "e2e", "user": "kiln-operator"}}],
        "users": [{"name": "kiln-operator", "user": {"token": token}}],
    }))
    path.chmod(0o600)
    return path


def operator_env(kubectl: Kubectl, work: Path) -> dict[str, str]:
    """`kiln run`'s environment on this host: the ServiceAccount's kubeconfig, /metrics on 127.0.0.1 only
    (every address is for a pod) at a port no other operator of the run holds."""
    return {**os.environ, "KUBECONFIG": str(operator_kubeconfig(kubectl, work / "kubeconfig")),
            "KILN_METRICS_ADDRESS": "127.0.0.1", "KILN_METRICS_PORT": str(free_port())}
