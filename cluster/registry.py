"""The local cluster's registry: Debian's docker-registry with a login, at one address for everyone.

It runs on a host of its own on the pod bridge (a network namespace, ADDRESS), so build pods, the
nodes' containerd and this machine all reach it as HOST, with no DNS. Plain HTTP: it is reachable only
from this machine and its pods. The nodes pull from it with its login through a kubelet image
credential provider, as nodes on a cloud pull from their provider's registry: a Deployment needs no
imagePullSecret for it. The quick start's RegistryLogin uses the same login
(manifests/samples/00-quickstart.yaml), so it is fixed, not secret.
"""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from cluster.images import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, busybox_layer

ADDRESS, PORT = "10.88.0.3", 5000
HOST = f"{ADDRESS}:{PORT}"
USER, PASSWORD = "kiln", "kiln-local-registry"
# A multi-arch base with a shell, for the quick start and the tests' Dockerfiles.
BUSYBOX = f"{HOST}/library/busybox:1.35"
BUSYBOX_ARCHES = ("amd64", "arm64")
# kiln's image base (cluster/operator_image.py), pushed beside the operator image: kiln builds kiln FROM it.
BASE = f"{HOST}/kiln/base:latest"
PROVIDER = "kiln-local-registry"  # the kubelet's credential provider (its executable's name)


def config(state: Path) -> dict:
    """docker-registry's configuration (JSON is YAML)."""
    return {
        "version": 0.1, "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(state / "data")}, "delete": {"enabled": True}},
        "auth": {"htpasswd": {"realm": "kiln-local", "path": str(state / "htpasswd")}},
        "http": {"addr": HOST, "secret": hashlib.sha256(str(state).encode()).hexdigest()},
    }


def auth() -> str:
    return base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def docker_config(state: Path) -> Path:
    """A DOCKER_CONFIG directory with the registry's login, for clients on this machine (buildctl, docker)."""
    return state / "docker"


def write_files(state: Path) -> None:
    """The registry's configuration and htpasswd, a docker config with its login, containerd's hosts entry (plain
    HTTP), the kubelets' credential provider."""
    state.mkdir(parents=True, exist_ok=True)
    hashed = subprocess.run(["htpasswd", "-nbB", USER, PASSWORD], check=True, capture_output=True, text=True).stdout
    (state / "htpasswd").write_text(hashed.strip() + "\n")
    (state / "config.yml").write_text(json.dumps(config(state), indent=2))
    docker_config(state).mkdir(exist_ok=True)
    (docker_config(state) / "config.json").write_text(json.dumps({"auths": {HOST: {"auth": auth()}}}))
    hosts = state / "containerd-hosts" / HOST
    hosts.mkdir(parents=True, exist_ok=True)
    (hosts / "hosts.toml").write_text(f'server = "http://{HOST}"\n\n[host."http://{HOST}"]\n'
                                      '  capabilities = ["pull", "resolve"]\n')
    provider = state / "credential-provider"
    (provider / "bin").mkdir(parents=True, exist_ok=True)
    (provider / "config.json").write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig",
        "providers": [{"name": PROVIDER, "matchImages": [HOST], "defaultCacheDuration": "12h",
                       "apiVersion": "credentialprovider.kubelet.k8s.io/v1"}]}, indent=2))
    (provider / "response.json").write_text(json.dumps({
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1", "kind": "CredentialProviderResponse",
        "cacheKeyType": "Registry", "auth": {HOST: {"username": USER, "password": PASSWORD}}}))
    executable = provider / "bin" / PROVIDER
    # The kubelet writes a request on stdin and reads the response on stdout.
    executable.write_text(f"#!/bin/sh\ncat >/dev/null\nexec cat {provider / 'response.json'}\n")
    executable.chmod(0o755)


def answers() -> bool:
    """The registry answers with its login."""
    try:
        return Client().request("GET", "/v2/")[0] == 200
    except OSError:
        return False


class Client:
    """Just enough of the OCI distribution API to push what the cluster seeds: Basic auth, plain HTTP."""

    def __init__(self, host: str = HOST):
        self.base = f"http://{host}"

    def request(self, method: str, url: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(url if url.startswith("http") else self.base + url, data=body or None,
                                         method=method, headers={"Authorization": f"Basic {auth()}", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers)

    def push_blob(self, repository: str, blob: bytes) -> str:
        digest = _digest(blob)
        if self.request("HEAD", f"/v2/{repository}/blobs/{digest}")[0] == 200:
            return digest
        status, headers = self.request("POST", f"/v2/{repository}/blobs/uploads/")
        if status != 202:
            raise SystemExit(f"registry {self.base}: starting an upload to {repository} answered {status}")
        location = headers["Location"]
        location = location if location.startswith("http") else self.base + location
        status, _ = self.request("PUT", f"{location}{'&' if '?' in location else '?'}digest={digest}", blob,
                                 {"Content-Type": "application/octet-stream"})
        if status != 201:
            raise SystemExit(f"registry {self.base}: a blob upload to {repository} answered {status}")
        return digest

    def push_manifest(self, repository: str, reference: str, media_type: str, body: bytes) -> str:
        status, _ = self.request("PUT", f"/v2/{repository}/manifests/{reference}", body, {"Content-Type": media_type})
        if status != 201:
            raise SystemExit(f"registry {self.base}: pushing {repository}:{reference} answered {status}")
        return _digest(body)


def _split(image: str) -> tuple[str, str, str]:
    host, rest = image.split("/", 1)
    repository, tag = rest.rsplit(":", 1)
    return host, repository, tag


def push_busybox(image: str = BUSYBOX) -> str:
    """A busybox image for each of BUSYBOX_ARCHES under one index tag; its digest."""
    host, repository, tag = _split(image)
    client, entries = Client(host), []
    for arch in BUSYBOX_ARCHES:
        layer = busybox_layer(arch)
        config = json.dumps({"architecture": arch, "os": "linux", "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
                             "rootfs": {"type": "layers", "diff_ids": [client.push_blob(repository, layer)]}}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG,
                       "digest": client.push_blob(repository, config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _digest(layer),
                        "size": len(layer)}]}).encode()
        entries.append({"mediaType": OCI_MANIFEST, "size": len(manifest), "platform": {"os": "linux", "architecture": arch},
                        "digest": client.push_manifest(repository, _digest(manifest), OCI_MANIFEST, manifest)})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    return client.push_manifest(repository, tag, OCI_INDEX, index)


def push_layout(layout: Path, image: str) -> str:
    """The one image of an OCI layout directory, pushed as `image`; its digest."""
    host, repository, tag = _split(image)
    client = Client(host)
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    blob = lambda digest: (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()  # noqa: E731
    manifest = blob(entry["digest"])
    for descriptor in [json.loads(manifest)["config"], *json.loads(manifest)["layers"]]:
        client.push_blob(repository, blob(descriptor["digest"]))
    return client.push_manifest(repository, tag, entry["mediaType"], manifest)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
