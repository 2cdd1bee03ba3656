"""Warm builders: long-running rootless BuildKit daemons, one per namespace and configuration (pure).

A build with spec.builder.warm runs on its namespace's builder, with the operator as the BuildKit client: no pod
starts for it, and BuildKit's state stays between builds. Builds share a builder when they need the same daemon:
the same architecture (native multi-arch: one builder per architecture, on nodes of it), the same registry TLS
settings (buildkitd.toml is the daemon's), and the same builder knobs. Never across namespaces: a builder lives in
its namespace, and its certificate authority is its own.

The daemon listens on TCP with mutual TLS, and runs with BuildKit's process sandbox, in a user-namespaced pod:
a RUN step of one build sees no process of another (docs/builders.md). Credentials never reach it but through
BuildKit's session, from the operator, for the build that asks.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping

from kiln import __version__
from kiln.build.credentials import ResolvedLogin, merged_docker_config
from kiln.build.platforms import BuildUnit
from kiln.build.render import (
    BUILDKITD_DIR,
    STATE_DIR,
    SUBORDINATE_IDS,
    buildctl_args,
    buildkitd_files,
    git_auth_item,
    registry_auth_tls,
    rootless_pod,
    short_name,
)
from kiln.spec import labels
from kiln.spec.parse import BuildSpec, ConfigMapSource, GitSource
from kiln.spec.settings import Settings

PORT = 1234
BUILDER_LABEL = "kiln.dev/builder"  # on a builder's Deployment, Secret and pods: its name
KIND_LABEL = "kiln.dev/builder-kind"  # the builders of one kind (builder_name), which share a Secret
TLS_DIR = "/kiln/builder"
SERVER_FILES = ("ca.crt", "tls.crt", "tls.key")  # what the daemon mounts; the client's pair stays with the operator
CLIENT_FILES = ("ca.crt", "client.crt", "client.key")
SOCKET = "/run/user/1000/buildkit/buildkitd.sock"


def builder_name(spec: BuildSpec, unit: BuildUnit, logins: list[ResolvedLogin], settings: Settings) -> str:
    """The builder of this unit: named for everything its daemon is made with (kiln's version among them, which
    renders it), so builds that need another daemon get another builder, never a changed one under a running build."""
    knobs = spec.builder
    made_with = {"kiln": __version__, "image": settings.buildkit_image, "arch": unit.arch or "",
                 "config": buildkitd_files(logins), "resources": knobs.resources, "nodeSelector": knobs.node_selector,
                 "tolerations": knobs.tolerations, "serviceAccount": knobs.service_account, "volume": spec.cache.volume}
    digest = hashlib.sha256(json.dumps(made_with, sort_keys=True).encode()).hexdigest()[:10]
    return f"kiln-builder-{unit.arch or 'any'}-{digest}"


def builder_of_kind(kind: str, index: int) -> str:
    """The index-th builder of a kind: the kind's name for the first, then with -1, -2 ..."""
    return f"{kind}-{index}" if index else kind


def _labels(name: str, kind: str, managed: bool = True) -> dict[str, str]:
    """A builder's labels; its pods' lack managed-by, so kiln's watch of build pods never streams them."""
    return {"app.kubernetes.io/name": "kiln", "app.kubernetes.io/component": "builder",
            **(labels.MANAGED if managed else {}), BUILDER_LABEL: name, KIND_LABEL: kind}


def render_builder_secret(namespace: str, name: str, tls: dict[str, str], logins: list[ResolvedLogin]) -> dict:
    """The builder's certificates (its CA, the daemon's pair, the operator's client pair), its user namespace's
    subordinate IDs and its buildkitd.toml with the CA files it names, if any. No credentials: those come per build."""
    files = {**tls, "subid": SUBORDINATE_IDS, **buildkitd_files(logins)}
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "labels": _labels(name, name)},
            "data": {key: base64.b64encode(text.encode()).decode() for key, text in sorted(files.items())}}


def render_builder(spec: BuildSpec, unit: BuildUnit, logins: list[ResolvedLogin], settings: Settings,
                   kind: str, index: int = 0) -> dict:
    """A builder's Deployment: one rootless daemon with its process sandbox, in a pod of its own user namespace;
    the builders of a kind share its Secret (kind), and prefer nodes where no other of them runs."""
    name = builder_of_kind(kind, index)
    config = sorted(buildkitd_files(logins))
    args = [f"--addr=tcp://0.0.0.0:{PORT}", f"--addr=unix://{SOCKET}",
            *(f"--tls{kind}={TLS_DIR}/{file}" for kind, file in zip(("cacert", "cert", "key"), SERVER_FILES, strict=True))]
    if config:
        args.append(f"--config={BUILDKITD_DIR}/buildkitd.toml")
    mounts = [{"name": "buildkit-state", "mountPath": STATE_DIR},
              {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
              *({"name": "subordinate-ids", "mountPath": f"/etc/{ids}", "subPath": "subid", "readOnly": True}
                for ids in ("subuid", "subgid"))]
    # Its state: on the build's local cache volume where it names one (the seed's story 3: it outlives the builder's
    # scaling to zero), else the pod's own.
    state = {"persistentVolumeClaim": {"claimName": spec.cache.volume}} if spec.cache.volume else {"emptyDir": {}}
    volumes = [{"name": "buildkit-state", **state},
               {"name": "tls", "secret": {"secretName": kind, "defaultMode": 0o440,
                                          "items": [{"key": k, "path": k} for k in SERVER_FILES]}},
               {"name": "subordinate-ids", "secret": {"secretName": kind, "defaultMode": 0o444,
                                                      "items": [{"key": "subid", "path": "subid"}]}}]
    if config:
        mounts.append({"name": "buildkitd-config", "mountPath": BUILDKITD_DIR, "readOnly": True})
        volumes.append({"name": "buildkitd-config", "secret": {"secretName": kind, "defaultMode": 0o440,
                                                               "items": [{"key": k, "path": k} for k in config]}})
    container = {
        "name": "buildkitd",
        "image": settings.buildkit_image,  # its entrypoint: rootlesskit buildkitd
        "args": args,
        "ports": [{"name": "buildkit", "containerPort": PORT}],
        "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 1},
        "securityContext": {"procMount": "Unmasked"},
        "volumeMounts": mounts,
    }
    if spec.builder.resources:
        container["resources"] = spec.builder.resources
    pod = {"hostUsers": False, **rootless_pod(spec, unit, container, volumes),
           "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
               "weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {KIND_LABEL: kind}},
                                                  "topologyKey": "kubernetes.io/hostname"}}]}}}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": spec.namespace, "labels": {**_labels(name, kind), **_volume_label(spec)}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {BUILDER_LABEL: name}},
            "strategy": {"type": "Recreate"},  # one daemon on its state at a time
            "template": {"metadata": {"labels": {**_labels(name, kind, managed=False), **_volume_label(spec)}},
                         "spec": pod},
        },
    }


def _volume_label(spec: BuildSpec) -> dict[str, str]:
    return {labels.CACHE_VOLUME: short_name(spec.cache.volume)} if spec.cache.volume else {}


def client_args(spec: BuildSpec, unit: BuildUnit, logins: list[ResolvedLogin], settings: Settings, *, address: str,
                kind: str, root: str) -> list[str]:
    """buildctl's arguments, run by the operator against a builder of `kind` (its certificate's name) at address
    (host:port), with its files under root."""
    tls = dict(zip(("--tlscacert", "--tlscert", "--tlskey"), CLIENT_FILES, strict=True))
    return [f"--addr=tcp://{address}", f"--tlsservername={kind}",
            *(f"{flag}={root}/tls/{file}" for flag, file in tls.items()),
            *buildctl_args(spec, unit, settings, root),
            *(f"--registry-auth-tlscontext={item}" for item in registry_auth_tls(logins, root))]


class MissingInput(Exception):
    """A Secret key or ConfigMap the build names is not there (a pod would wait for it; the client cannot)."""


def _secret_bytes(secrets: Mapping[str, dict | None], name: str, key: str) -> bytes:
    value = ((secrets.get(name) or {}).get("data") or {}).get(key)
    if value is None:
        raise MissingInput(f"Secret {name!r} has no key {key!r}" if secrets.get(name) else f"Secret {name!r} is gone")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MissingInput(f"key {key!r} of Secret {name!r} is not base64") from None


def client_files(spec: BuildSpec, logins: list[ResolvedLogin], tls: Mapping[str, str],
                 secrets: Mapping[str, dict | None], config_map: dict | None) -> dict[str, bytes]:
    """What buildctl reads, by path under its directory (client_args): the builder's client certificates, the
    merged docker config, the registries' CA files, the build's secrets and git credentials, a ConfigMap context.
    secrets: the Secrets the build uses, by name."""
    files = {f"tls/{name}": tls[name].encode() for name in CLIENT_FILES}
    files["docker/config.json"] = json.dumps(merged_docker_config(logins), sort_keys=True).encode()
    files |= {f"buildkitd/{key}": text.encode() for key, text in buildkitd_files(logins).items()
              if key != "buildkitd.toml"}
    for i, secret in enumerate(spec.secrets):
        files[f"secrets/{i}/value"] = _secret_bytes(secrets, secret.secret, secret.key)
    origin = spec.source.origin
    if isinstance(origin, GitSource) and origin.secret:
        item = git_auth_item(origin)
        files[f"git/{item['path']}"] = _secret_bytes(secrets, origin.secret, item["key"])
    if isinstance(origin, ConfigMapSource):
        if config_map is None:
            raise MissingInput(f"ConfigMap {origin.name!r} with the build context does not exist")
        files |= {f"context/{key}": text.encode() for key, text in (config_map.get("data") or {}).items()}
        files |= {f"context/{key}": base64.b64decode(data) for key, data in (config_map.get("binaryData") or {}).items()}
    return files
