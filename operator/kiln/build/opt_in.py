"""Which Secrets kiln may use, and for whom (pure).

Whoever may create a RegistryLogin or an ImageBuild names Secrets in it, and kiln reads them with its own
rights: without a rule, a namespace's users could read through kiln what RBAC does not let them read (send a
password to a server of theirs, print a key in a RUN step). So a Secret is used only when it says so: a
label opens it to every login (or every build) of its namespace, an annotation to the ones it names. Only
someone who may change the Secret can say so, and they may read it anyway.
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.spec import labels
from kiln.spec.parse import BuildSpec, GitSource


@dataclass(frozen=True)
class Users:
    """Who may use a Secret that opts in to them, and how it says so."""
    kind: str  # as a message names them
    label: str  # "true": every one of the namespace
    annotation: str  # the names of the ones allowed, comma-separated
    one: str  # one of them, in a message
    use: str  # what they do with it


LOGINS = Users("RegistryLogins", labels.REGISTRY_LOGIN, labels.LOGINS_ALLOWED, "login", "use")
BUILDS = Users("ImageBuilds", labels.BUILD_SECRET, labels.BUILDS_ALLOWED, "build", "use")


def refusal(secret: dict, users: Users, name: str) -> str | None:
    """None when `name`, one of `users`, may use this Secret; otherwise why not, and how to allow it."""
    meta = secret.get("metadata") or {}
    if (meta.get("labels") or {}).get(users.label) == "true":
        return None
    if name in {item.strip() for item in (meta.get("annotations") or {}).get(users.annotation, "").split(",")}:
        return None
    return (f"Secret {meta.get('name')!r} has not opted in to {users.kind}: label it {users.label}=true (any "
            f"{users.one} of the namespace may {users.use} it) or annotate it {users.annotation}={name} "
            f"(this {users.one} only)")


def used_secrets(spec: BuildSpec) -> tuple[str, ...]:
    """The Secrets of its own namespace a build uses: those its pod mounts (spec.secrets, the git credentials),
    and the cosign key kiln signs its image with."""
    names = [secret.secret for secret in spec.secrets]
    if isinstance(spec.source.origin, GitSource) and spec.source.origin.secret:
        names.append(spec.source.origin.secret)
    if spec.signing.key_secret:
        names.append(spec.signing.key_secret)
    return tuple(dict.fromkeys(names))

