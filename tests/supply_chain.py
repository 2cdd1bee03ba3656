"""The real supply-chain tools for tests: cosign (key pairs, verification) as `make test` builds it from its Go
module, and an SBOM generator image around syft's binary, as docker/buildkit-syft-scanner is one."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cluster.build import build
from cluster.images import busybox_layer
from cluster.versions import SYFT

from registries import Client, push_image

# BuildKit's scanner protocol: read BUILDKIT_SCAN_SOURCE, write in-toto statements into BUILDKIT_SCAN_DESTINATION,
# the core one named for the source ("sbom"). syft writes the SPDX document, the statement wraps it.
GENERATOR_SCRIPT = """#!/bin/sh
set -e
out="$BUILDKIT_SCAN_DESTINATION/$(basename "$BUILDKIT_SCAN_SOURCE").spdx.json"
{
  printf '{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://spdx.dev/Document","subject":[],"predicate":'
  /usr/bin/syft scan "dir:$BUILDKIT_SCAN_SOURCE" -o spdx-json -q
  printf '}'
} > "$out"
"""
GENERATOR_ENV = ["PATH=/usr/bin:/bin", "SYFT_CHECK_FOR_APP_UPDATE=false", "HOME=/tmp", "TMPDIR=/tmp"]


def cosign_binary() -> str:
    """cosign on PATH (make test puts the pinned one there); the tier fails where it must run, else skips."""
    found = shutil.which("cosign")
    if found:
        return found
    problem = "cosign is not on PATH (make test builds it from its Go module)"
    if os.environ.get("KILN_REQUIRE_BUILDKIT") or os.environ.get("KILN_E2E"):
        pytest.fail(problem)
    pytest.skip(problem)


@dataclass
class KeyPair:
    private: str = field(repr=False)
    public: str
    password: str = field(repr=False)

    def secret(self, name: str, namespace: str = "default", with_password: bool = True, **labels: str) -> dict:
        data = {"cosign.key": self.private, "cosign.pub": self.public, **({"cosign.password": self.password}
                                                                          if with_password else {})}
        return {"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
                "type": "Opaque", "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def key_pair(directory: Path, password: str) -> KeyPair:
    """A cosign key pair as `cosign generate-key-pair` writes it."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([cosign_binary(), "generate-key-pair"], cwd=directory, check=True, capture_output=True,
                   env={**os.environ, "COSIGN_PASSWORD": password, "HOME": str(directory)})
    return KeyPair((directory / "cosign.key").read_text(), (directory / "cosign.pub").read_text(), password)


def verify(image: str, public: str, workdir: Path, docker_config: Path | None = None, insecure: bool = False,
           ca_file: Path | None = None) -> subprocess.CompletedProcess:
    """`cosign verify --key` as a user runs it: with the public key, no transparency log (kiln signs without)."""
    key = workdir / "verify.pub"
    key.write_text(public)
    flags = ["--allow-http-registry", "--allow-insecure-registry"] if insecure else []
    flags += [f"--registry-cacert={ca_file}"] if ca_file else []
    env = {**os.environ, "HOME": str(workdir), **({"DOCKER_CONFIG": str(docker_config)} if docker_config else {})}
    return subprocess.run([cosign_binary(), "verify", f"--key={key}", "--insecure-ignore-tlog", *flags, image],
                          capture_output=True, text=True, env=env, timeout=120)


def generator_layer(arch: str) -> bytes:
    """busybox, syft for `arch` and the scanner script, as one layer."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        with tarfile.open(fileobj=io.BytesIO(busybox_layer(arch))) as busybox:
            for member in busybox.getmembers():
                tar.addfile(member, busybox.extractfile(member) if member.isfile() else None)
        for name, data, mode in [("usr/bin/syft", (build(SYFT, arch) / "syft").read_bytes(), 0o755),
                                 ("usr/bin/kiln-sbom-scanner", GENERATOR_SCRIPT.encode(), 0o755)]:
            for parent in ("usr", "usr/bin"):
                if parent not in tar.getnames():
                    directory = tarfile.TarInfo(parent)
                    directory.type, directory.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(directory)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def push_generator(registry, user: str, repository: str, platforms: list[str], tag: str = "1") -> str:
    """The SBOM generator image for each platform under one tag; its reference."""
    push_image(registry, user, repository, platforms, tag=tag,
               layers={p: generator_layer(p.split("/")[1]) for p in platforms},
               config={"Env": GENERATOR_ENV, "Entrypoint": ["/usr/bin/kiln-sbom-scanner"]})
    return f"{registry.host}/{repository}:{tag}"


def attestations_of(client: Client, repository: str, index: dict) -> dict[str, dict[str, dict]]:
    """{platform: {predicate type: predicate}} of the attestation manifests of an index, read from the registry."""
    images = {m["digest"]: f"{m['platform']['os']}/{m['platform']['architecture']}" for m in index["manifests"]
              if m["platform"]["os"] != "unknown"}
    found = {}
    for entry in index["manifests"]:
        annotations = entry.get("annotations") or {}
        if annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            layers = client.manifest(repository, entry["digest"])[1]["layers"]
            found[images[annotations["vnd.docker.reference.digest"]]] = {
                layer["annotations"]["in-toto.io/predicate-type"]: json.loads(client.blob(repository, layer["digest"]))["predicate"]
                for layer in layers}
    return found
