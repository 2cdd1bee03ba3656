"""Which Secrets kiln may use, and for whom (pure).

Whoever may create a RegistryLogin or an ImageBuild names Secrets in it, and kiln reads them with its own
rights: without a rule, a namespace's users could read through kiln what RBAC does not let them read (send a
password to a server of theirs, print a key in a RUN step). So a Secret is used only when it says so: a
label opens it to every login (or every build) of its namespace, an annotation to the ones it names. Only
someone who may change the Secret can say so, and they may read it anyway.
"""
from __future__ import annotations

from kiln.spec import labels
from kiln.spec.parse import BuildSpec, GitSource


def _opted_in(secret: dict, label: str, annotation: str, name: str) -> bool:
    meta = secret.get("metadata") or {}
    if (meta.get("labels") or {}).get(label) == "true":
        return True
    allowed = (meta.get("annotations") or {}).get(annotation, "")
    return name in {item.strip() for item in allowed.split(",")}


def login_may_use(secret: dict, login: str) -> str | None:
    """None when RegistryLogin `login` may use this Secret's credentials; otherwise why not, and how to allow it."""
    if _opted_in(secret, labels.REGISTRY_LOGIN, labels.LOGINS_ALLOWED, login):
        return None
    name = secret["metadata"]["name"]
    return (f"Secret {name!r} has not opted in to RegistryLogins: label it {labels.REGISTRY_LOGIN}=true (any login "
            f"of the namespace may use it) or annotate it {labels.LOGINS_ALLOWED}={login} (this login only)")


def build_may_use(secret: dict, build: str) -> str | None:
    """None when ImageBuild `build` may mount this Secret; otherwise why not, and how to allow it."""
    if _opted_in(secret, labels.BUILD_SECRET, labels.BUILDS_ALLOWED, build):
        return None
    name = secret["metadata"]["name"]
    return (f"Secret {name!r} has not opted in to ImageBuilds: label it {labels.BUILD_SECRET}=true (any build of "
            f"the namespace may mount it) or annotate it {labels.BUILDS_ALLOWED}={build} (this build only)")


def mounted_secrets(spec: BuildSpec) -> tuple[str, ...]:
    """The Secrets a build's pod mounts of its own namespace: spec.secrets and the git credentials."""
    names = [secret.secret for secret in spec.secrets]
    if isinstance(spec.source.origin, GitSource) and spec.source.origin.secret:
        names.append(spec.source.origin.secret)
    return tuple(dict.fromkeys(names))

