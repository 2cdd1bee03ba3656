"""Credentials (pure), the resolve step's first half: Secrets -> Credentials, RegistryLogins -> one docker config.

Pure functions. Problems raise CredentialsProblem whose message names the Secret,
the key and the registry, and never contains a credential value.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from kiln.build.opt_in import BUILDS, LOGINS, refusal, used_secrets
from kiln.spec import reasons
from kiln.spec.parse import BuildSpec, LoginSpec
from kiln.spec.references import docker_config_key, normalize_server


class CredentialsProblem(Exception):
    """Why a build's credentials are not to be had. `stalls`: it needs a change from the user; a login not
    checked yet (applied together with the build) needs only time."""

    def __init__(self, reason: str, message: str, stalls: bool = True):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.stalls = stalls


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ResolvedLogin:
    """A Ready login with its credentials, what a build's docker config is made of."""
    name: str
    server: str
    credentials: Credentials
    insecure: bool = False
    ca_pem: str | None = field(default=None, repr=False)


def credentials_from_secret(secret: dict | None, login: LoginSpec) -> Credentials:
    where = f"Secret {login.secret!r}"
    if secret is None:
        raise CredentialsProblem(reasons.SECRET_NOT_FOUND, f"{where} does not exist in namespace {login.namespace!r}")
    if refused := refusal(secret, LOGINS, login.name):
        raise CredentialsProblem(reasons.SECRET_NOT_OPTED_IN, refused)
    kind = secret.get("type") or "Opaque"
    data = secret.get("data") or {}
    if kind == "kubernetes.io/dockerconfigjson":
        return _from_docker_config(_decoded(data, ".dockerconfigjson", where), where, login.server)
    if kind in ("kubernetes.io/basic-auth", "Opaque"):
        username = _decoded(data, "username", where)
        password = _decoded(data, "password", where)
        if not username or not password:
            raise CredentialsProblem(reasons.INVALID_SECRET, f"{where}: keys username and password must not be empty")
        return Credentials(username, password)
    raise CredentialsProblem(
        reasons.INVALID_SECRET,
        f"{where} has type {kind}; use kubernetes.io/dockerconfigjson, kubernetes.io/basic-auth, "
        "or Opaque with username and password keys",
    )


def ca_from_config_map(config_map: dict | None, login: LoginSpec) -> str | None:
    """The PEM a login's caBundle names, from that ConfigMap (None when the login names none)."""
    if not login.ca_config_map:
        return None
    pem = ((config_map or {}).get("data") or {}).get(login.ca_key)
    if not pem:
        raise CredentialsProblem(reasons.CA_BUNDLE_NOT_FOUND, f"ConfigMap {login.ca_config_map!r} has no key {login.ca_key!r}"
                                 if config_map else f"ConfigMap {login.ca_config_map!r} does not exist")
    return pem


def resolved_login(login: LoginSpec, secret: dict | None, ca_config_map: dict | None) -> ResolvedLogin:
    """A login with what its Secret and CA ConfigMap hold, wherever they were read from (API or files)."""
    return ResolvedLogin(login.name, login.server, credentials_from_secret(secret, login), login.insecure,
                         ca_from_config_map(ca_config_map, login))


def _decoded(data: dict, key: str, where: str) -> str:
    if key not in data:
        raise CredentialsProblem(reasons.INVALID_SECRET, f"{where} has no key {key!r}")
    try:
        return base64.b64decode(data[key], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
        raise CredentialsProblem(reasons.INVALID_SECRET, f"{where}: key {key!r} is not valid base64 text") from None


def _from_docker_config(text: str, where: str, server: str) -> Credentials:
    try:
        auths = json.loads(text)["auths"]
        if not isinstance(auths, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise CredentialsProblem(
            reasons.INVALID_SECRET, f"{where}: key '.dockerconfigjson' is not a docker config with an 'auths' object"
        ) from None
    entries = [entry for key, entry in auths.items() if normalize_server(key) == server]
    if not entries:
        raise CredentialsProblem(reasons.INVALID_SECRET, f"{where}: '.dockerconfigjson' has no entry for {server}")
    entry = entries[0] if isinstance(entries[0], dict) else {}
    username, password = entry.get("username"), entry.get("password")
    if not (username and password) and entry.get("auth"):
        try:
            username, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
            sep = ""
        if not sep:
            raise CredentialsProblem(
                reasons.INVALID_SECRET, f"{where}: the 'auth' field for {server} is not base64 of user:password"
            ) from None
    if not username or not password:
        raise CredentialsProblem(
            reasons.INVALID_SECRET, f"{where}: the entry for {server} has neither username/password nor auth"
        )
    return Credentials(username, password)


def selected_logins(build: BuildSpec, logins: list[LoginSpec]) -> list[LoginSpec]:
    """The logins a build uses: those it names (all must exist), or every one in its namespace."""
    by_name = {login.name: login for login in logins if login.namespace == build.namespace}
    if build.registry_logins is None:
        return [by_name[name] for name in sorted(by_name)]
    missing = [name for name in build.registry_logins if name not in by_name]
    if missing:
        raise CredentialsProblem(
            reasons.LOGIN_NOT_FOUND,
            f"RegistryLogin {', '.join(repr(m) for m in missing)} named in spec.registryLogins "
            f"does not exist in namespace {build.namespace!r}",
        )
    return [by_name[name] for name in build.registry_logins]


def merged_docker_config(logins: list[ResolvedLogin]) -> dict:
    """One docker config.json with every login; two logins for one registry are a conflict, never a guess."""
    auths: dict[str, dict] = {}
    owner: dict[str, str] = {}
    for login in logins:
        key = docker_config_key(normalize_server(login.server))
        if key in owner:
            raise CredentialsProblem(
                reasons.LOGIN_CONFLICT,
                f"RegistryLogins {owner[key]!r} and {login.name!r} both log in to {normalize_server(login.server)}; "
                "keep one, or name only one in spec.registryLogins",
            )
        owner[key] = login.name
        user, password = login.credentials.username, login.credentials.password
        auths[key] = {"username": user, "password": password,
                      "auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {"auths": auths}


def mounted_secrets_problem(spec: BuildSpec, found: dict[str, dict | None]) -> CredentialsProblem | None:
    """Why the build may not mount the Secrets it names (found: name -> the Secret's metadata, None if missing)."""
    for name in used_secrets(spec):
        if found.get(name) is None:
            return CredentialsProblem(reasons.SECRET_NOT_FOUND, f"Secret {name!r} that the build uses does not "
                                                                f"exist in namespace {spec.namespace!r}")
        if refused := refusal(found[name], BUILDS, spec.name):
            return CredentialsProblem(reasons.SECRET_NOT_OPTED_IN, refused)
    return None


def unshown_values(logins: list[ResolvedLogin], secrets: Iterable[dict | None]) -> frozenset[str]:
    """What a build's output shown anywhere must not hold: its logins' passwords and the values of the Secrets it
    uses (secrets: those Secrets, None for one that is gone)."""
    return frozenset({login.credentials.password for login in logins}.union(
        *(secret_values(secret) for secret in secrets if secret)))


def secret_values(secret: dict) -> set[str]:
    """Every value a Secret holds, as text."""
    values = set()
    for value in (secret.get("data") or {}).values():
        try:
            values.add(base64.b64decode(value, validate=True).decode())
        except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
            continue  # not text: a log cannot show it as it is
    return values
