"""Warm builders (build/builders.py): which builds share a daemon, the daemon's objects, and what the operator,
as the build's BuildKit client, hands buildctl."""
import base64
import json

import kubernetes_validate
import pytest
from cluster.versions import KUBERNETES_MINOR

from kiln.build.builders import (
    MissingInput,
    builder_name,
    client_args,
    client_files,
    render_builder,
    render_builder_secret,
)
from kiln.build.credentials import Credentials, ResolvedLogin
from kiln.build.platforms import BuildUnit
from kiln.spec.parse import parse_image_build
from kiln.spec.settings import Settings

SETTINGS = Settings(buildkit_image="moby/buildkit:v0.34.2-rootless")
LOGIN = ResolvedLogin("hub", "registry.example", Credentials("alice", "alice-Password-1"))
PLAIN_HTTP = ResolvedLogin("lab", "10.0.0.5:5000", Credentials("bob", "bob-Password-2"), insecure=True)
TLS = {"ca.crt": "CA", "tls.crt": "SERVER", "tls.key": "SERVER-KEY", "client.crt": "CLIENT", "client.key": "CLIENT-KEY"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def build(name="app", namespace="team", **spec):
    spec = {"source": {"git": {"url": "https://git.example/app.git"}}, "output": {"image": "registry.example/app"},
            "builder": {"warm": True}, **spec}
    return parse_image_build({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
                              "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"}, "spec": spec})


def test_builds_of_a_namespace_share_a_builder_when_they_need_the_same_daemon():
    one, other = build("one"), build("two", output={"image": "registry.example/other"})
    assert builder_name(one, BuildUnit(()), [LOGIN], SETTINGS) == builder_name(other, BuildUnit(()), [LOGIN], SETTINGS)


@pytest.mark.parametrize("change", [
    lambda spec, unit, logins: (spec, BuildUnit(("linux/arm64",), "arm64", "arm64"), logins),  # another architecture
    lambda spec, unit, logins: (spec, unit, [LOGIN, PLAIN_HTTP]),  # another buildkitd.toml
    lambda spec, unit, logins: (build(builder={"warm": True, "nodeSelector": {"pool": "builds"}}), unit, logins),
    lambda spec, unit, logins: (build(builder={"warm": True, "resources": {"limits": {"memory": "4Gi"}}}), unit, logins),
])
def test_a_build_that_needs_another_daemon_gets_another_builder(change):
    spec, unit = build(), BuildUnit(())
    assert builder_name(*change(spec, unit, [LOGIN]), SETTINGS) != builder_name(spec, unit, [LOGIN], SETTINGS)


def test_a_credential_change_keeps_the_builder_as_credentials_never_reach_it():
    rotated = ResolvedLogin("hub", "registry.example", Credentials("alice", "rotated-Password-3"))
    assert builder_name(build(), BuildUnit(()), [LOGIN], SETTINGS) == builder_name(build(), BuildUnit(()), [rotated], SETTINGS)


def test_the_builder_runs_rootless_buildkit_with_its_process_sandbox_behind_mutual_tls():
    spec, unit = build(), BuildUnit(("linux/arm64",), "arm64", "arm64")
    name = builder_name(spec, unit, [PLAIN_HTTP], SETTINGS)
    deployment = render_builder(spec, unit, [PLAIN_HTTP], SETTINGS, name)
    secret = render_builder_secret("team", name, TLS, [PLAIN_HTTP])
    for obj in (deployment, secret):
        kubernetes_validate.validate(obj, KUBERNETES_MINOR, strict=True)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["hostUsers"] is False and container["securityContext"] == {"procMount": "Unmasked"}
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"}
    assert container["args"] == ["--addr=tcp://0.0.0.0:1234", "--addr=unix:///run/user/1000/buildkit/buildkitd.sock",
                                 "--tlscacert=/kiln/builder/ca.crt", "--tlscert=/kiln/builder/tls.crt",
                                 "--tlskey=/kiln/builder/tls.key", "--config=/kiln/buildkitd/buildkitd.toml"]
    tls_volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert [item["key"] for item in tls_volume["secret"]["items"]] == ["ca.crt", "tls.crt", "tls.key"]  # not the client's
    assert "app.kubernetes.io/managed-by" not in deployment["spec"]["template"]["metadata"]["labels"]
    stored = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert stored["subid"] == "user:1:65535\n" and 'http = true' in stored["buildkitd.toml"]
    assert not [value for value in stored.values() if "Password" in value]  # no credential of any login


def test_the_client_gets_the_builds_credentials_secrets_and_context_as_files_under_its_directory():
    spec = build(source={"git": {"url": "https://git.example/app.git", "secretRef": {"name": "git"}}},
                 secrets=[{"id": "db", "secretRef": {"name": "db", "key": "password"}}])
    secrets = {"git": {"data": {"password": b64("git-Token-4")}}, "db": {"data": {"password": b64("db-Password-5")}}}
    files = client_files(spec, [LOGIN], TLS, secrets, None)
    assert sorted(files) == ["docker/config.json", "git/token", "secrets/0/value", "tls/ca.crt", "tls/client.crt",
                             "tls/client.key"]
    assert json.loads(files["docker/config.json"])["auths"]["registry.example"]["auth"] == b64("alice:alice-Password-1")
    assert (files["git/token"], files["secrets/0/value"]) == (b"git-Token-4", b"db-Password-5")
    args = client_args(spec, BuildUnit(()), [LOGIN], SETTINGS, address="10.88.1.7:1234", kind="kiln-builder-any-x",
                       root="/tmp/kiln-build-1")
    assert args[:5] == ["--addr=tcp://10.88.1.7:1234", "--tlsservername=kiln-builder-any-x",
                        "--tlscacert=/tmp/kiln-build-1/tls/ca.crt", "--tlscert=/tmp/kiln-build-1/tls/client.crt",
                        "--tlskey=/tmp/kiln-build-1/tls/client.key"]
    assert "--secret=id=db,src=/tmp/kiln-build-1/secrets/0/value" in args
    assert "--secret=id=GIT_AUTH_TOKEN.git.example,src=/tmp/kiln-build-1/git/token" in args
    assert args[-1] == "--metadata-file=/tmp/kiln-build-1/out/metadata.json"
    assert not [arg for arg in args if "Password" in arg or "Token" in arg]  # values only in files


def test_a_configmap_context_is_uploaded_by_the_client():
    spec = build(source={"configMap": {"name": "ctx"}})
    files = client_files(spec, [], TLS, {}, {"data": {"Dockerfile": "FROM scratch\n"},
                                             "binaryData": {"blob.bin": b64("\x00\x01")}})
    assert (files["context/Dockerfile"], files["context/blob.bin"]) == (b"FROM scratch\n", b"\x00\x01")
    args = client_args(spec, BuildUnit(()), [], SETTINGS, address="a", kind="b", root="/r")
    assert "--local=context=/r/context" in args and "--local=dockerfile=/r/context" in args


@pytest.mark.parametrize("secrets, config_map, message", [
    ({"db": {"data": {}}}, None, "Secret 'db' has no key 'password'"),
    ({"db": None}, None, "Secret 'db' is gone"),
])
def test_a_missing_secret_key_is_named_before_anything_runs(secrets, config_map, message):
    spec = build(secrets=[{"id": "db", "secretRef": {"name": "db", "key": "password"}}])
    with pytest.raises(MissingInput, match=message):
        client_files(spec, [], TLS, secrets, config_map)


def test_a_warm_build_with_a_local_cache_volume_gets_a_builder_whose_state_is_that_volume():
    spec = build(cache={"type": "local", "volume": {"claimName": "state"}})
    kind = builder_name(spec, BuildUnit(()), [LOGIN], SETTINGS)
    assert kind != builder_name(build(), BuildUnit(()), [LOGIN], SETTINGS)
    deployment = render_builder(spec, BuildUnit(()), [LOGIN], SETTINGS, kind)
    kubernetes_validate.validate(deployment, KUBERNETES_MINOR, strict=True)
    pod = deployment["spec"]["template"]
    assert {"name": "buildkit-state", "persistentVolumeClaim": {"claimName": "state"}} in pod["spec"]["volumes"]
    assert pod["metadata"]["labels"]["kiln.dev/cache-volume"] == "state"  # pod builds of the volume wait for it
    args = client_args(spec, BuildUnit(()), [LOGIN], SETTINGS, address="a:1", kind=kind, root="/r")
    assert not [a for a in args if a.startswith(("--export-cache", "--import-cache"))]
