"""Attestations and signing through the real operator (kmock), a real registry and the real cosign: the test plays
the Job controller and the kubelet, and pushes what BuildKit would have pushed."""
import asyncio
import json

import pytest

from controller.test_operator_builds import INDEX, cond, image_build, jobs, metadata, phase, ready_login, status

from conftest import BASIC_USERS
from kubefake import KubeFake, eventually, operator
from registries import PROVENANCE, SPDX, push_attested
from supply_chain import cosign_binary, key_pair, verify

pytestmark = [pytest.mark.operator, pytest.mark.registry, pytest.mark.kmock(cls=KubeFake)]
PLATFORMS = ["linux/amd64", "linux/arm64"]
PASSWORD = "Signing-Passw0rd-9"
SIGNING = {"cosign": {"keySecretRef": {"name": "cosign-key"}}}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return key_pair(tmp_path_factory.mktemp("keys"), PASSWORD)


async def native_pods_push_attested_images(cluster, registry, repository: str) -> dict[str, tuple[str, str, str]]:
    """Each native pod pushes an index of its image and its attestations, and ends: {platform: (index, image,
    attestation)}."""
    pushed = {}
    for job in await jobs(cluster, 2):
        platform = "linux/" + job["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/arch"]
        index, images, attestations = await asyncio.to_thread(push_attested, registry, "alice", repository, [platform],
                                                              (PROVENANCE, SPDX))
        pushed[platform] = (index, images[platform], attestations[platform])
        await cluster.finish(job, await cluster.start_pod(job), exit_code=0, message=metadata(index, INDEX))
    return pushed


async def test_a_native_build_is_signed_by_the_operator_and_verifies_with_cosign(cluster, basic_registry, keys, tmp_path):
    cosign_binary()
    async with operator():
        await cluster.apply(keys.secret("cosign-key", **{"kiln.dev/build-secret": "true"}))
        await ready_login(cluster, basic_registry)
        await cluster.apply(image_build(basic_registry.host, platforms=PLATFORMS, multiArch={"strategy": "native"},
                                        signing=SIGNING, attestations={"provenance": "max", "sbom": {}}))
        pushed = await native_pods_push_attested_images(cluster, basic_registry, "team/app")
        done = await phase(cluster, "Succeeded")
    assert done["platforms"] == [
        {"platform": p, "digest": pushed[p][1], "builtBy": "native",
         "attestation": {"digest": pushed[p][2], "predicateTypes": [PROVENANCE, SPDX]}} for p in PLATFORMS]
    assert done["signature"]["reference"].startswith(f"{basic_registry.host}/team/app@sha256:")
    assert done["signature"]["keyFingerprint"].startswith("SHA256:")
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"auths": {basic_registry.host: {
        "username": "alice", "password": BASIC_USERS["alice"]}}}))
    checked = verify(done["image"], keys.public, tmp_path, docker, insecure=True)
    assert checked.returncode == 0, checked.stderr
    # The Job never held the key: only the operator read it.
    assert "cosign-key" not in json.dumps(cluster.jobs())


async def test_a_key_secret_that_has_not_opted_in_holds_the_build_before_any_job(cluster, basic_registry, keys):
    async with operator():
        await cluster.apply(keys.secret("cosign-key"))
        await ready_login(cluster, basic_registry)
        await cluster.apply(image_build(basic_registry.host, signing=SIGNING))
        await eventually(lambda: cond(cluster, "Ready").get("reason") == "SecretNotOptedIn",
                         message=f"SecretNotOptedIn; status {status(cluster)}")
        assert cluster.jobs() == []
        assert "kiln.dev/build-secret=true" in cond(cluster, "Ready")["message"]


async def test_a_wrong_key_password_fails_the_build_keeps_the_pushed_digest_and_shows_no_secret(cluster, basic_registry, keys):
    secret = keys.secret("cosign-key", **{"kiln.dev/build-secret": "true"})
    secret["data"]["cosign.password"] = "V3JvbmctcGFzc3dvcmQ="  # Wrong-password
    async with operator():
        await cluster.apply(secret)
        await ready_login(cluster, basic_registry)
        await cluster.apply(image_build(basic_registry.host, platforms=PLATFORMS, multiArch={"strategy": "native"},
                                        signing=SIGNING))
        await native_pods_push_attested_images(cluster, basic_registry, "team/app")
        failed = await phase(cluster, "Failed")
        events = json.dumps(cluster.events())
    assert cond(cluster, "Ready")["reason"] == "SigningFailed"
    assert failed["failure"] == {"reason": "SigningFailed", "message": f"pushed {basic_registry.host}/team/app@"
                                 f"{failed['digest']}, but signing it failed: cosign.password does not decrypt cosign.key"}
    assert failed["image"] == f"{basic_registry.host}/team/app@{failed['digest']}" and len(failed["platforms"]) == 2
    for shown in (json.dumps(failed), events):
        for value in ("Wrong-password", PASSWORD, keys.private.splitlines()[1], BASIC_USERS["alice"]):
            assert value not in shown
