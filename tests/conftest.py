import os
import pathlib
import shutil

import pytest
import yaml

from registries import REGISTRY_BINARY, start_htpasswd_registry, start_token_registry

# The real-cluster tier needs a cluster and root: `make e2e` runs it (KILN_E2E=1), `make test` the rest.
collect_ignore = [] if os.environ.get("KILN_E2E") else ["e2e"]
ROOT = pathlib.Path(__file__).parent.parent
SAMPLES = ROOT / "manifests" / "samples"
BASIC_USERS = {"alice": "alice-Secret-pw1", "bob": "bob-Secret-pw2"}
# What an API server answers to GET /version (kiln's commands check that the cluster answers before they start).
VERSION = {"major": "1", "minor": "37", "gitVersion": "v1.37.2", "gitCommit": "x", "gitTreeState": "clean",
           "buildDate": "2026-11-01T00:00:00Z", "goVersion": "go1.26", "compiler": "gc", "platform": "linux/amd64"}
TOKEN_USERS = {"pusher": ("pusher-Secret-pw3", {"pull", "push"}), "reader": ("reader-Secret-pw4", {"pull"})}


def load_yaml_docs(path: pathlib.Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _serve(tmp_path_factory, name: str, start, *args, **kwargs):
    """Start one registry for the session, and stop it at the end."""
    if not shutil.which(REGISTRY_BINARY):
        pytest.fail(f"{REGISTRY_BINARY} is missing: install Debian's docker-registry (make test does)")
    registry = start(tmp_path_factory.mktemp(name), *args, **kwargs)
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory):
    yield from _serve(tmp_path_factory, "basic-registry", start_htpasswd_registry, BASIC_USERS)


@pytest.fixture(scope="session")
def second_basic_registry(tmp_path_factory):
    yield from _serve(tmp_path_factory, "second-registry", start_htpasswd_registry, {"carol": "carol-Secret-pw5"})


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory):
    """HTTPS with a certificate from a private CA (tls_registry.ca_pem), Basic auth."""
    yield from _serve(tmp_path_factory, "tls-registry", start_htpasswd_registry, {"dave": "dave-Secret-pw6"}, tls=True)


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory):
    yield from _serve(tmp_path_factory, "token-registry", start_token_registry, TOKEN_USERS)


# -- the operator tier: the real kopf operator against kmock (see kubefake.py) --

@pytest.fixture
async def cluster(kmock, tmp_path, monkeypatch):
    from kubefake import Cluster, declare_resources, kubeconfig

    declare_resources(kmock)
    monkeypatch.setenv("KUBECONFIG", kubeconfig(kmock, tmp_path / "kubeconfig"))
    monkeypatch.setenv("KILN_RESYNC_INTERVAL", "1")
    monkeypatch.setenv("KILN_METRICS_PORT", "0")  # one test at a time asks for the endpoint
    return Cluster(kmock)


def b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def login_objects(name: str, host: str, user: str, password: str, **spec) -> list[dict]:
    """A basic-auth Secret and a RegistryLogin using it."""
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": f"{name}-creds", "labels": {"kiln.dev/registry-login": "true"}},
              "type": "kubernetes.io/basic-auth", "data": {"username": b64(user), "password": b64(password)}}
    login = {"apiVersion": "kiln.dev/v1alpha1", "kind": "RegistryLogin", "metadata": {"name": name},
             "spec": {"server": host, "secretRef": {"name": f"{name}-creds"}, "insecure": True, **spec}}
    return [secret, login]


def ready_of(obj: dict | None) -> dict:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})
