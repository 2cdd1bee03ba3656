"""The only module that talks to the Kubernetes API.

Creation is idempotent: children have deterministic names, so a 409 means
"already there" and is never a second build.
"""
from __future__ import annotations

import kubernetes


def load_config() -> None:
    """In-cluster credentials when running in a pod, else the current kube context."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


def cluster_problem(timeout: float = 5.0) -> str | None:
    """Why the cluster cannot be used, or None when its API server answers."""
    try:
        load_config()
    except (kubernetes.config.ConfigException, OSError) as exc:
        return f"no kube context ({exc})"
    host = kubernetes.client.Configuration.get_default_copy().host
    try:
        kubernetes.client.VersionApi().get_code(_request_timeout=timeout)
    except Exception as exc:  # any transport or API failure means "not usable"
        return f"the API server at {host} did not answer ({type(exc).__name__})"
    return None
