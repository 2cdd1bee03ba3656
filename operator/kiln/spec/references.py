"""Image references and registry host names, as the docker CLI and BuildKit read them.

The patterns are the ones in the CRDs (a test keeps them equal), so the operator
refuses exactly what the API server refuses, even when it reads files directly.
"""
from __future__ import annotations

from urllib.parse import urlsplit

_PORT = r"(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"  # 1-65535
_HOST = rf"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?{_PORT}"
_PATH = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
IMAGE_PATTERN = rf"^({_HOST}/)?{_PATH}$"
TAG_PATTERN = rf"^{_TAG}$"
TAGGED_REF_PATTERN = rf"^({_HOST}/)?{_PATH}:{_TAG}$"
# An image to run (an SBOM generator): a tag, a digest, both or neither.
IMAGE_REF_PATTERN = rf"^({_HOST}/)?{_PATH}(:{_TAG})?(@sha256:[a-f0-9]{{64}})?$"
PLATFORM_PATTERN = r"^[a-z0-9]+/[a-z0-9_]+(/v[0-9]+)?$"
# A registry as docker login takes it: host[:port], with a scheme and a path that are ignored; never user:password@.
SERVER_PATTERN = rf"^(https?://)?{_HOST}(/[^\s]*)?$"
# URLs that carry credentials (user:password@, or a token as the user): for http(s) and git:// any user info,
# for ssh:// a password (a user such as git@ is how SSH names the account).
CREDENTIALS_IN_URL = (r"^(https?|git)://[^/]*@", r"^ssh://[^/@]*:[^/@]*@")
# Query parameters that carry a credential (tokens, presigned S3, GCS and Azure URLs): kiln writes URLs into the
# build Job, where whoever may read Jobs sees them.
CREDENTIALS_IN_QUERY = (r"(?i)[?&](access_token|private_token|token|password|secret|sig|signature|x-amz-signature"
                        r"|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential)=")
# A host starting with '-' reads as an option to git or ssh.
OPTION_AS_HOST = r"^(([a-z+]+://)([^/@]*@)?|[^/@:]*@)-"

DOCKER_HUB = "docker.io"
# What the docker CLI and BuildKit use as Docker Hub's key in config.json.
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
# What an image's manifest and a multi-platform index are, in OCI's and Docker's words.
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
INDEX_MEDIA_TYPES = (OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_MEDIA_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")


def registry_host(image: str) -> str:
    """The registry of an image reference: its first component if it looks like a host, else Docker Hub."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return normalize_server(first)
    return DOCKER_HUB


def normalize_server(server: str) -> str:
    """host[:port], lowercase, with scheme and path dropped and Docker Hub's aliases folded."""
    server = server.strip()
    if "://" not in server:
        server = "//" + server
    host = urlsplit(server).netloc.lower()
    return DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


def docker_config_key(host: str) -> str:
    return DOCKER_HUB_CONFIG_KEY if host == DOCKER_HUB else host


def api_endpoint(host: str) -> str:
    """Where a registry's /v2/ API lives (Docker Hub's API is not at docker.io)."""
    return "registry-1.docker.io" if host == DOCKER_HUB else host


def repository_path(image: str) -> str:
    """The repository inside its registry, with Docker Hub's implicit library/ namespace."""
    first, sep, rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return rest
    return image if "/" in image else f"library/{image}"


def split_tagged(ref: str) -> tuple[str, str]:
    """repo:tag -> (repo, tag); the tag is after the last ':' that follows the last '/'."""
    repo, _, tag = ref.rpartition(":")
    return repo, tag
