"""Secrets -> credentials -> one merged docker config; problems named, values never shown."""
import base64
import json

import pytest

from kiln.build.credentials import (
    Credentials,
    CredentialsProblem,
    ResolvedLogin,
    credentials_from_secret,
    merged_docker_config,
    selected_logins,
)
from kiln.spec import reasons
from kiln.spec.parse import LoginSpec, parse_image_build, parse_registry_login
from kiln.spec.references import docker_config_key, normalize_server, registry_host, repository_path

PASSWORD = "s3cr3t-Pa55"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def login(server="registry.example.com", name="login", namespace="default") -> LoginSpec:
    return parse_registry_login({"metadata": {"name": name, "namespace": namespace},
                                 "spec": {"server": server, "secretRef": {"name": "creds"}}})


def opted_in(secret: dict | None) -> dict | None:
    """The Secret as its owner lets logins use it: labelled kiln.dev/registry-login=true."""
    if secret is None:
        return None
    return {**secret, "metadata": {"name": "creds", "labels": {"kiln.dev/registry-login": "true"}}}


def docker_secret(auths: dict) -> dict:
    return {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": b64(json.dumps({"auths": auths}))}}


@pytest.mark.parametrize("server", ["docker.io", "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/",
                                    "DOCKER.IO", "registry.hub.docker.com"])
def test_docker_hub_aliases_are_one_registry(server):
    assert normalize_server(server) == "docker.io"
    assert docker_config_key(normalize_server(server)) == "https://index.docker.io/v1/"


@pytest.mark.parametrize(("server", "host"), [
    ("https://Registry.Example.com/v2/", "registry.example.com"), ("registry.example.com:5000", "registry.example.com:5000"),
    ("http://127.0.0.1:5000", "127.0.0.1:5000"), ("  ghcr.io  ", "ghcr.io"),
])
def test_server_normalization_drops_scheme_and_path_and_keeps_the_port(server, host):
    assert normalize_server(server) == host


@pytest.mark.parametrize(("image", "host", "path"), [
    ("registry.cn-hangzhou.aliyuncs.com/yunxiao-demo/app1", "registry.cn-hangzhou.aliyuncs.com", "yunxiao-demo/app1"),
    ("localhost:5000/app", "localhost:5000", "app"), ("library/nginx", "docker.io", "library/nginx"),
    ("nginx", "docker.io", "library/nginx"), ("localhost/app", "localhost", "app"),
])
def test_image_registry_and_repository_follow_docker_reference_rules(image, host, path):
    assert (registry_host(image), repository_path(image)) == (host, path)


@pytest.mark.parametrize("secret", [
    {"type": "kubernetes.io/basic-auth", "data": {"username": b64("u"), "password": b64(PASSWORD)}},
    {"type": "Opaque", "data": {"username": b64("u"), "password": b64(PASSWORD)}},
    docker_secret({"https://registry.example.com": {"auth": b64(f"u:{PASSWORD}")}}),
    docker_secret({"registry.example.com": {"username": "u", "password": PASSWORD}}),
], ids=["basic-auth", "opaque", "dockerconfig-auth-field", "dockerconfig-user-password"])
def test_every_supported_secret_type_yields_the_credentials(secret):
    assert credentials_from_secret(opted_in(secret), login()) == Credentials("u", PASSWORD)


def test_docker_hub_entry_is_found_under_any_alias():
    secret = docker_secret({"https://index.docker.io/v1/": {"auth": b64(f"u:{PASSWORD}")}})
    assert credentials_from_secret(opted_in(secret), login("registry-1.docker.io")).password == PASSWORD


MALFORMED = [
    ("missing", None, reasons.SECRET_NOT_FOUND, "Secret 'creds' does not exist in namespace 'default'"),
    ("wrong-type", {"type": "kubernetes.io/tls", "data": {}}, reasons.INVALID_SECRET, "Secret 'creds' has type kubernetes.io/tls"),
    ("no-password-key", {"type": "Opaque", "data": {"username": b64("u")}}, reasons.INVALID_SECRET, "Secret 'creds' has no key 'password'"),
    ("bad-base64", {"type": "Opaque", "data": {"username": b64("u"), "password": "%%%" + PASSWORD}}, reasons.INVALID_SECRET,
     "Secret 'creds': key 'password' is not valid base64 text"),
    ("empty-password", {"type": "kubernetes.io/basic-auth", "data": {"username": b64("u"), "password": ""}}, reasons.INVALID_SECRET,
     "keys username and password must not be empty"),
    ("no-dockerconfigjson-key", {"type": "kubernetes.io/dockerconfigjson", "data": {}}, reasons.INVALID_SECRET,
     "Secret 'creds' has no key '.dockerconfigjson'"),
    ("not-json", {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": b64(PASSWORD)}}, reasons.INVALID_SECRET,
     "is not a docker config with an 'auths' object"),
    ("no-entry", docker_secret({"other.example.com": {"auth": b64(f"u:{PASSWORD}")}}), reasons.INVALID_SECRET,
     "'.dockerconfigjson' has no entry for registry.example.com"),
    ("auth-without-colon", docker_secret({"registry.example.com": {"auth": b64(PASSWORD)}}), reasons.INVALID_SECRET,
     "the 'auth' field for registry.example.com is not base64 of user:password"),
    ("auth-not-base64", docker_secret({"registry.example.com": {"auth": PASSWORD + "!"}}), reasons.INVALID_SECRET,
     "the 'auth' field for registry.example.com is not base64 of user:password"),
    ("empty-entry", docker_secret({"registry.example.com": {}}), reasons.INVALID_SECRET,
     "the entry for registry.example.com has neither username/password nor auth"),
]


@pytest.mark.parametrize(("secret", "reason", "message"), [pytest.param(s, r, m, id=i) for i, s, r, m in MALFORMED])
def test_malformed_secret_gets_its_own_reason_and_a_message_without_the_value(secret, reason, message):
    with pytest.raises(CredentialsProblem) as caught:
        credentials_from_secret(opted_in(secret), login())
    assert caught.value.reason == reason
    assert message in caught.value.message
    assert PASSWORD not in caught.value.message and b64(PASSWORD)[:8] not in caught.value.message


BASIC = {"type": "kubernetes.io/basic-auth", "data": {"username": b64("u"), "password": b64(PASSWORD)}}


@pytest.mark.parametrize("metadata", [
    {"name": "creds"},
    {"name": "creds", "labels": {"kiln.dev/registry-login": "false"}},
    {"name": "creds", "annotations": {"kiln.dev/registry-logins": "other, login-2"}},
    {"name": "creds", "labels": {"kiln.dev/build-secret": "true"}},  # open to builds, not to logins
], ids=["nothing", "label-false", "annotation-names-others", "build-label"])
def test_a_secret_that_has_not_opted_in_to_logins_gives_none_of_its_credentials(metadata):
    with pytest.raises(CredentialsProblem) as caught:
        credentials_from_secret({**BASIC, "metadata": metadata}, login())
    assert caught.value.reason == reasons.SECRET_NOT_OPTED_IN and caught.value.stalls
    assert caught.value.message == ("Secret 'creds' has not opted in to RegistryLogins: label it "
                                    "kiln.dev/registry-login=true (any login of the namespace may use it) or annotate "
                                    "it kiln.dev/registry-logins=login (this login only)")
    assert "u" not in caught.value.message.split() and PASSWORD not in caught.value.message


def test_an_annotation_naming_the_login_opts_the_secret_in_for_that_login_only():
    secret = {**BASIC, "metadata": {"name": "creds", "annotations": {"kiln.dev/registry-logins": "ci, login"}}}
    assert credentials_from_secret(secret, login()) == Credentials("u", PASSWORD)
    with pytest.raises(CredentialsProblem):
        credentials_from_secret(secret, login(name="attacker"))


def resolved(name, server, user="u", password=PASSWORD):
    return ResolvedLogin(name, normalize_server(server), Credentials(user, password))


def test_two_accounts_on_two_registries_merge_into_one_config():
    config = merged_docker_config([resolved("account-a", "registry.cn-beijing.aliyuncs.com", "a", "pa"),
                                   resolved("account-b", "registry.cn-hangzhou.aliyuncs.com", "b", "pb")])
    assert config == {"auths": {
        "registry.cn-beijing.aliyuncs.com": {"username": "a", "password": "pa", "auth": b64("a:pa")},
        "registry.cn-hangzhou.aliyuncs.com": {"username": "b", "password": "pb", "auth": b64("b:pb")},
    }}


def test_two_logins_for_the_same_registry_are_a_conflict_naming_both():
    with pytest.raises(CredentialsProblem) as caught:
        merged_docker_config([resolved("first", "https://Registry.example.com/"), resolved("second", "registry.example.com")])
    assert caught.value.reason == reasons.LOGIN_CONFLICT
    assert "'first' and 'second' both log in to registry.example.com" in caught.value.message


def test_docker_hub_aliases_collapse_to_one_key_and_conflict():
    config = merged_docker_config([resolved("hub", "index.docker.io")])
    assert list(config["auths"]) == ["https://index.docker.io/v1/"]
    with pytest.raises(CredentialsProblem):
        merged_docker_config([resolved("hub", "docker.io"), resolved("hub2", "registry-1.docker.io")])


BUILD = {"metadata": {"name": "app", "namespace": "team"},
         "spec": {"source": {"url": "https://e/c.tgz"}, "output": {"image": "r.io/app"}}}


def test_a_build_without_registry_logins_uses_every_login_in_its_namespace():
    logins = [login(name="b", namespace="team"), login(name="a", namespace="team"), login(name="c", namespace="other")]
    assert [item.name for item in selected_logins(parse_image_build(BUILD), logins)] == ["a", "b"]


def test_a_named_login_that_does_not_exist_is_reported_by_name():
    build = parse_image_build({**BUILD, "spec": {**BUILD["spec"], "registryLogins": ["a", "ghost"]}})
    with pytest.raises(CredentialsProblem) as caught:
        selected_logins(build, [login(name="a", namespace="team")])
    assert caught.value.reason == reasons.LOGIN_NOT_FOUND
    assert "RegistryLogin 'ghost' named in spec.registryLogins does not exist in namespace 'team'" == caught.value.message
