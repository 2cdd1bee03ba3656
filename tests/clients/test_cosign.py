"""kiln's signing step with the real cosign (the pinned one `make test` builds) against real registries, checked
the way a user checks it: `cosign verify --key`."""
import base64
import hashlib
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization

from kiln.build.credentials import Credentials
from kiln.clients import cosign
from kiln.clients.cosign import SigningError, SigningKey, Target, sign, signing_key
from kiln.clients.registry import Registry, RegistryClient

from conftest import BASIC_USERS
from registries import push_image
from supply_chain import cosign_binary, key_pair, verify

pytestmark = pytest.mark.registry
PASSWORD = "Key-Passw0rd-7"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return key_pair(tmp_path_factory.mktemp("keys"), PASSWORD)


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory):
    return key_pair(tmp_path_factory.mktemp("other-keys"), "another-Passw0rd")


def config_for(registry, user: str) -> dict:
    password = registry.users[user]
    return {"auths": {registry.host: {"username": user, "password": password,
                                      "auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}


def pushed(registry, user: str, repository: str) -> str:
    _, digests = push_image(registry, user, repository, ["linux/amd64"])
    return f"{registry.host}/{repository}@{digests['linux/amd64']}"


async def test_a_signed_image_verifies_with_its_public_key_and_not_with_another(basic_registry, keys, other_keys, tmp_path):
    image = pushed(basic_registry, "alice", "team/signed")
    target = Target(image, config_for(basic_registry, "alice"), insecure=True)
    fingerprint = await sign(cosign_binary(), target, SigningKey(keys.private, PASSWORD))
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps(config_for(basic_registry, "alice")))
    good = verify(image, keys.public, tmp_path, docker, insecure=True)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)[0]["critical"]["image"]["docker-manifest-digest"] == image.split("@")[1]
    bad = verify(image, other_keys.public, tmp_path, docker, insecure=True)
    assert bad.returncode != 0 and "failed to verify signature" in bad.stderr
    der = serialization.load_pem_public_key(keys.public.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert fingerprint == "SHA256:" + hashlib.sha256(der).hexdigest()


async def test_the_signature_is_found_where_cosign_put_it(basic_registry, keys):
    image = pushed(basic_registry, "alice", "team/found")
    repository, digest = image.split("/", 1)[1].split("@")
    async with RegistryClient(Registry(basic_registry.host, insecure=True),
                              Credentials("alice", BASIC_USERS["alice"])) as client:
        assert await client.signatures(repository, digest) == []
        await sign(cosign_binary(), Target(image, config_for(basic_registry, "alice"), insecure=True),
                   SigningKey(keys.private, PASSWORD))
        assert len(await client.signatures(repository, digest)) == 1


async def test_a_registry_with_a_private_ca_is_trusted_through_the_logins_ca_only(tls_registry, keys, tmp_path):
    image = pushed(tls_registry, "dave", "team/tls")
    await sign(cosign_binary(), Target(image, config_for(tls_registry, "dave"), ca_pem=tls_registry.ca_pem),
               SigningKey(keys.private, PASSWORD))
    ca = tmp_path / "ca.crt"
    ca.write_text(tls_registry.ca_pem)
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps(config_for(tls_registry, "dave")))
    assert verify(image, keys.public, tmp_path, docker, ca_file=ca).returncode == 0
    with pytest.raises(SigningError) as caught:  # without the CA, TLS fails: kiln never skips verification
        await sign(cosign_binary(), Target(image, config_for(tls_registry, "dave")), SigningKey(keys.private, PASSWORD))
    assert "certificate" in caught.value.message


@pytest.mark.parametrize(("password", "has_password", "message"), [
    ("wrong-password", True, "cosign.password does not decrypt cosign.key"),
    ("", False, "cosign.key is encrypted and the Secret has no cosign.password"),
])
async def test_a_key_that_cannot_be_decrypted_fails_clearly_and_for_good(basic_registry, keys, password, has_password, message):
    image = pushed(basic_registry, "alice", "team/wrong-password")
    with pytest.raises(SigningError) as caught:
        await sign(cosign_binary(), Target(image, config_for(basic_registry, "alice"), insecure=True),
                   SigningKey(keys.private, password, has_password))
    assert (caught.value.message, caught.value.transient) == (message, False)


async def test_a_registry_that_refuses_the_credentials_fails_without_showing_them(basic_registry, keys):
    image = pushed(basic_registry, "alice", "team/refused")
    config = config_for(basic_registry, "alice")
    wrong = "Wr0ng-Registry-Pw"
    config["auths"][basic_registry.host].update(password=wrong, auth=base64.b64encode(f"alice:{wrong}".encode()).decode())
    with pytest.raises(SigningError) as caught:
        await sign(cosign_binary(), Target(image, config, insecure=True), SigningKey(keys.private, PASSWORD))
    text = str(caught.value)
    assert not caught.value.transient and "UNAUTHORIZED" in text.upper()
    for secret in (wrong, PASSWORD, *keys.private.splitlines()[1:-1], BASIC_USERS["alice"]):
        assert secret not in text


async def test_a_registry_that_is_down_is_worth_trying_again(keys):
    with pytest.raises(SigningError) as caught:
        await sign(cosign_binary(), Target(f"127.0.0.1:9/team/app@sha256:{'a' * 64}", {"auths": {}}, insecure=True),
                   SigningKey(keys.private, PASSWORD), timeout=60)
    assert caught.value.transient, caught.value.message


@pytest.mark.parametrize(("data", "message"), [
    ({}, "Secret 'k' has no cosign.key (cosign generate-key-pair k8s://NAMESPACE/k writes one)"),
    ({"cosign.key": "bm90IGEga2V5"}, "cosign.key in Secret 'k' is not a PEM private key"),
    ({"cosign.key": "//79"}, "cosign.key in Secret 'k' is not text"),
])
def test_a_secret_without_a_usable_key_says_what_is_missing(data, message):
    with pytest.raises(SigningError) as caught:
        signing_key({"data": data}, "k")
    assert caught.value.message == message


def test_a_missing_key_secret_is_named():
    with pytest.raises(SigningError, match="Secret 'k' with the cosign key does not exist"):
        signing_key(None, "k")


async def test_the_key_and_passwords_never_reach_cosigns_command_line_and_its_files_are_removed(tmp_path, keys, basic_registry):
    """A stand-in cosign records what it was given: what `ps` would show, and where its config lived."""
    fake = tmp_path / "cosign"
    record = tmp_path / "record"
    public = tmp_path / "cosign.pub"
    public.write_text(keys.public)
    fake.write_text(f'#!/bin/sh\necho "$@" >> {record}\necho "$DOCKER_CONFIG" >> {record}\n'
                    f'ls -l "$DOCKER_CONFIG/config.json" >> {record}\n'
                    f'if [ "$1" = public-key ]; then cat {public}; fi\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    await sign(str(fake), Target("r.example/team/app@sha256:" + "a" * 64, config_for(basic_registry, "alice")),
               SigningKey(keys.private, PASSWORD))
    text = record.read_text()
    for secret in (PASSWORD, BASIC_USERS["alice"], keys.private.splitlines()[1]):
        assert secret not in text
    assert "env://COSIGN_KEY" in text and "-rw-------" in text  # the config only its owner reads
    config_dir = text.splitlines()[1]
    assert not os.path.exists(config_dir)


async def test_no_cosign_where_the_operator_runs_is_a_clear_failure(keys):
    with pytest.raises(SigningError, match="is not installed where the operator runs"):
        await sign("/nonexistent/cosign", Target("r.example/a@sha256:" + "a" * 64, {"auths": {}}),
                   SigningKey(keys.private, PASSWORD))
    assert cosign.KEY == "cosign.key"
