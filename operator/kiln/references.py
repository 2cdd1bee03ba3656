"""Image references and registry host names, as the docker CLI and BuildKit read them.

The patterns are the ones in the CRDs (a test keeps them equal), so the operator
refuses exactly what the API server refuses, even when it reads files directly.
"""
from __future__ import annotations

from urllib.parse import urlsplit

_HOST = r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?"
_PATH = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
IMAGE_PATTERN = rf"^({_HOST}/)?{_PATH}$"
TAG_PATTERN = rf"^{_TAG}$"
TAGGED_REF_PATTERN = rf"^({_HOST}/)?{_PATH}:{_TAG}$"
PLATFORM_PATTERN = r"^[a-z0-9]+/[a-z0-9_]+(/v[0-9]+)?$"

DOCKER_HUB = "docker.io"
# What the docker CLI and BuildKit use as Docker Hub's key in config.json.
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}


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
