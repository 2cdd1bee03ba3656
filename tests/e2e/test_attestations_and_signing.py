"""Provenance, SBOM and signatures on the real cluster: the seed story's image built natively for two platforms
with attestations on, signed by the operator in its pod, and checked with the real cosign and the registry."""
from __future__ import annotations

import json

from test_builds import PLATFORMS, SEED_DOCKERFILE, workspace

from harness import condition, host_volume, image_build, registry_login, wait_ready
from registries import PROVENANCE, SPDX, Client
from supply_chain import attestations_of, key_pair, push_generator, verify

PASSWORD = "e2e-Signing-Passw0rd"


def test_seed_story_native_with_provenance_and_sbom_is_signed_and_verifies_with_cosign(kubectl, lab, namespace, tmp_path):
    keys = key_pair(tmp_path / "keys", PASSWORD)
    other = key_pair(tmp_path / "other-keys", "another-Passw0rd")
    generator = push_generator(lab.a, "alice", "tools/sbom-scanner", PLATFORMS)
    work = tmp_path / "workspace"
    workspace(work, SEED_DOCKERFILE.format(base=lab.base_image))
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), keys.secret("cosign-key", namespace, **{"kiln.dev/build-secret": "true"}),
                  host_volume(kubectl, namespace, "workspace", work), namespace=namespace)
    # Registry A: cosign (go-containerregistry) refuses a token service at a private IP literal on another port
    # than its registry's, as registry B's is here (README, Troubleshooting); the unit tier signs through a
    # private CA and a token service on loopback.
    image = f"{lab.a.host}/yunxiao-demo/app1-signed"
    kubectl.apply(image_build("app1", source={"volume": {"claimName": "workspace"}}, platforms=PLATFORMS,
                              multiArch={"strategy": "native"}, buildArgs={"RELEASE": "2024.09"},
                              output={"image": image, "tags": ["v1"]},
                              attestations={"provenance": "max", "sbom": {"generator": generator}},
                              signing={"cosign": {"keySecretRef": {"name": "cosign-key"}}}), namespace=namespace)
    build = wait_ready(kubectl, namespace, "app1", timeout=900)
    status = build["status"]

    # What the tag holds: each platform's image and the attestation manifest BuildKit attached to it.
    client = Client(lab.a, "alice")
    _, index, digest = client.manifest("yunxiao-demo/app1-signed", "v1")
    assert status["digest"] == digest
    found = attestations_of(client, "yunxiao-demo/app1-signed", index)
    assert sorted(found) == PLATFORMS
    for entry in status["platforms"]:
        assert set(entry["attestation"]["predicateTypes"]) == {PROVENANCE, SPDX}
        provenance = found[entry["platform"]][PROVENANCE]
        assert provenance["runDetails"]["builder"]["id"] == \
            f"kiln://cluster.local/namespaces/{namespace}/imagebuilds/app1/builds/{status['buildID']}"
        base = [m for m in provenance["buildDefinition"]["resolvedDependencies"] if "hub-mirrors/base" in m["uri"]]
        assert base and base[0]["digest"]["sha256"], provenance["buildDefinition"]["resolvedDependencies"]
        assert provenance["buildDefinition"]["externalParameters"]["request"]["args"]["build-arg:RELEASE"] == "2024.09"
        assert "busybox" in {p["name"] for p in found[entry["platform"]][SPDX]["packages"]}

    # Signed by the operator in its pod; verified as a user verifies it.
    assert status["signature"]["reference"].startswith(f"{image}@sha256:")
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"auths": {lab.a.host: {"username": "alice",
                                                                           "password": lab.a.users["alice"]}}}))
    good = verify(f"{image}@{digest}", keys.public, tmp_path, docker, insecure=True)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)[0]["critical"]["image"]["docker-manifest-digest"] == digest
    assert verify(f"{image}@{digest}", other.public, tmp_path, docker, insecure=True).returncode != 0
    assert condition(build, "Ready")["message"] == f"pushed {image}@{digest}"
    # The key stayed with the operator: no build pod mounted it.
    pods = json.dumps(kubectl.items("pods", namespace))
    assert "cosign-key" not in pods and PASSWORD not in json.dumps(build)
